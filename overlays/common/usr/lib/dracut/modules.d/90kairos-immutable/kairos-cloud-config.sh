#!/bin/sh
# dracut pre-pivot hook (sourced by dracut, so no `exit`): hand the node's cloud-config to
# cloud-init's NoCloud datasource before the real root starts, so cloud-init's generator
# already sees it. Sources, in order:
#   - the live medium's /config.yaml, when the boot entry asks for it (kairos.live_config=)
#   - every *.yaml on the COS_OEM partition (disks; 90_custom.yaml from --cloud-config), or
#     the sealed volume in it on a Trusted Boot node
# Each source is also copied to /run/kairos/cloud-config/ (kept across the switch to the real
# root) for kairos-agent, which applies the Kairos keys (users, stages...) before cloud-init.
# With none, cloud-init is disabled for this boot: its datasource_list names NoCloud alone,
# and ds-identify enables a single listed datasource without looking for it, so the
# generator would start every stage with nothing to read (they then fail). The marker file
# /etc/cloud/cloud-init.disabled (on the in-memory /etc, so for this boot only) keeps
# cloud-init.target out (cloud-init 22.x and 25.x generators) and skips each unit by its
# ConditionPathExists, so nothing runs and nothing fails.

kairos_seed_cloud_config() {
    set --  # the sources, one parameter each: a file name may hold a space
    live_config=""
    # shellcheck disable=SC2013  # the command line's words (one line, split on whitespace)
    for arg in $(cat /proc/cmdline); do
        case "$arg" in
            kairos.live_config=*) live_config=${arg#kairos.live_config=} ;;
        esac
    done
    # The live medium: dmsquash-live's mount, or ours (a Trusted Boot ISO boots its verified
    # image through kairos-immutable, the ISO mounted as the state partition).
    case "$live_config" in
        /*) for medium in /run/initramfs/live /run/kairos/state; do
                if [ -f "$medium$live_config" ]; then
                    set -- "$medium$live_config"
                    break
                fi
            done ;;
    esac
    marker=/sysroot/etc/cloud/cloud-init.disabled
    marker_text="# kairos: no cloud-config on this boot"
    oem=/run/kairos/oem
    oem_mounted=no
    # kairos-immutable-setup names the COS_OEM it read (on a Trusted Boot node, the volume the
    # TPM opened); a live boot through dmsquash-live has none.
    oem_device=/dev/disk/by-label/COS_OEM
    [ -f /run/kairos/oem-device ] && oem_device=$(cat /run/kairos/oem-device)
    if [ -b "$oem_device" ]; then
        mkdir -p "$oem"
        if mount -o ro "$oem_device" "$oem"; then
            oem_mounted=yes
            for file in "$oem"/*.yaml; do
                [ -f "$file" ] && set -- "$@" "$file"
            done
        fi
    fi
    if [ "$#" -gt 0 ]; then
        copies=/run/kairos/cloud-config
        mkdir -p "$copies"
        chmod 0700 "$copies"
        number=10
        for file in "$@"; do
            cp "$file" "$copies/$number-${file##*/}"
            number=$((number + 1))
        done
        seed=/sysroot/var/lib/cloud/seed/nocloud
        mkdir -p "$seed"
        {
            echo 'Content-Type: multipart/mixed; boundary="KAIROS-CLOUD-CONFIG-PART"'
            echo 'MIME-Version: 1.0'
            for file in "$@"; do
                echo
                echo '--KAIROS-CLOUD-CONFIG-PART'
                echo 'Content-Type: text/cloud-config; charset="utf-8"'
                echo "Content-Disposition: attachment; filename=\"${file##*/}\""
                echo
                cat "$file"
            done
            echo
            echo '--KAIROS-CLOUD-CONFIG-PART--'
        } > "$seed/user-data"
        # A new config is a new instance to cloud-init: per-instance modules run again.
        sum=$(cat "$@" | cksum)
        echo "instance-id: kairos-${sum%% *}" > "$seed/meta-data"
        echo "kairos: cloud-config from: $*" > /dev/kmsg 2> /dev/null
        # Our own marker from a boot without config, should /etc/cloud be kept (persist).
        [ "$(head -n 1 "$marker" 2> /dev/null)" = "$marker_text" ] && rm -f "$marker"
    elif [ -d /sysroot/etc/cloud ] && [ ! -e "$marker" ]; then
        if echo "$marker_text" > "$marker"; then
            echo "kairos: no cloud-config, cloud-init disabled for this boot" > /dev/kmsg 2> /dev/null
        fi
    fi
    [ "$oem_mounted" = yes ] && umount "$oem"
}

kairos_seed_cloud_config
