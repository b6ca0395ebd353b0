"""What `kairos-build boot` can be asked: the machine's firmware, its network card, and what
the boot report must say. Declared here, beside the harness that acts on them; the settings
table offers them as the boot verb's choices."""

from __future__ import annotations

# The firmware QEMU runs (harness.FIRMWARE_FILES has their files).
MACHINE_FIRMWARES = ("bios", "uefi", "uefi-secureboot", "uefi-secureboot-setup")
ROOT_EXPECTATIONS = ("live", "immutable", "any")
SECUREBOOT_STATES = ("enabled", "disabled", "unsupported", "any")
TPM_STATES = ("2.0", "none", "any")
VERITY_STATES = ("verity", "none", "any")
NICS = ("none", "user")
