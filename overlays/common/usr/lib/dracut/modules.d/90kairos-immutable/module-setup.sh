#!/bin/bash
# kairos-immutable: boot an installed or raw-disk Kairos system from an image file on the
# state partition, read-only, with writable overlays and persistent bind mounts on top (the
# job Kairos's immucore does). Only active when the kernel command line names an image
# (cos-img/filename=...); the live ISO keeps booting through dmsquash-live. On every boot it
# also hands the node's cloud-config (live medium or COS_OEM) to cloud-init.

check() {
    # Only when asked for (add_dracutmodules in /etc/dracut.conf.d/10-kairos.conf).
    require_binaries mount cp || return 1
    return 255
}

depends() {
    # A Trusted Boot image opens its root through dm-verity: dracut's dm module brings the
    # device-mapper udev rules, without which the mapped root never shows up as ready.
    if find_binary veritysetup > /dev/null; then
        echo systemd dm
    else
        echo systemd
    fi
}

installkernel() {
    instmods loop overlay ext4 squashfs dm-verity
}

# shellcheck disable=SC2154  # moddir, systemdutildir: dracut's, set for every module it installs
install() {
    inst_multiple mount umount mkdir cp cat tr sleep cksum chmod
    inst_multiple -o udevadm veritysetup
    # Trusted Boot: COS_PERSISTENT and COS_OEM sealed to the TPM on first boot, opened by it
    # after.
    inst_multiple -o cryptsetup systemd-cryptenroll blkid dd mkfs.ext4 rm mv sync \
        /usr/lib/systemd/systemd-cryptsetup
    inst_simple "$moddir/kairos-sealed.sh" /usr/lib/kairos/kairos-sealed.sh
    inst_script "$moddir/kairos-immutable-generator.sh" \
        "$systemdutildir/system-generators/kairos-immutable-generator"
    inst_script "$moddir/kairos-immutable-setup.sh" /usr/bin/kairos-immutable-setup
    inst_hook pre-pivot 50 "$moddir/kairos-cloud-config.sh"
}
