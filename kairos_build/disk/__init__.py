"""Building blocks for artifacts: squashfs, FAT images, grub images. They know no formats."""
