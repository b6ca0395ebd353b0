"""Turn a distro rootfs into the Kairos layout."""
