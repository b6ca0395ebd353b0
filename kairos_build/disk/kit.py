"""The install kit: the boot loader pieces the build makes for an installed disk (the same the
raw exporter writes), carried on the live ISO and on COS_RECOVERY for the agent to lay down."""

from __future__ import annotations

KIT_DIR = "kairos/install"  # on the live medium and on COS_RECOVERY
ESP_DIR = "esp"  # the ESP's files, as a tree
BIOS_CORE = "bios/core.img"  # grub's i386-pc core image finding COS_STATE
BIOS_BOOT = "bios/boot.img"  # grub's MBR code
STATE_MENU = "grub.cfg"  # COS_STATE's /boot/grub/grub.cfg
