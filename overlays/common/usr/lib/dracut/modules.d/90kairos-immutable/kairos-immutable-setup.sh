#!/bin/sh
# Runs in the initrd once the system image is mounted read-only on /sysroot. Reads the
# layout from the image itself:
#   /usr/lib/kairos/immutable.conf               the framework's defaults
#   /etc/kairos/immutable.conf.d/*.conf          additions (a derived image or a Dockerfile)
#   immutable.conf on COS_OEM                    the node's own (install's bind_mounts and
#                                                ephemeral_mounts, written by kairos-agent)
# Lines are `overlay PATH` (writable, in memory, gone at reboot) and `persist PATH` (kept on
# the COS_PERSISTENT partition, bind-mounted). Parents come before children (e.g. `overlay
# /var` before `persist /var/log`): overlays are set up first, then persistent paths, each in
# file order.
#
# With `rd.kairos.encrypt=tpm2` (a Trusted Boot UKI's signed command line) COS_PERSISTENT and
# COS_OEM are LUKS2 volumes sealed to this machine's TPM (kairos-sealed.sh). The COS_OEM
# device read here is written to /run/kairos/oem-device for the cloud-config hook.

root=/sysroot
run=/run/kairos
persistent_label=COS_PERSISTENT
encrypt=none
# shellcheck disable=SC2013  # the command line's words (one line, split on whitespace)
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        rd.kairos.persistent=*) persistent_label=${arg#rd.kairos.persistent=} ;;
        rd.kairos.encrypt=*) encrypt=${arg#rd.kairos.encrypt=} ;;
        # Recovery leaves COS_PERSISTENT alone: reset formats it from there.
        kairos.entry=recovery|kairos.entry=statereset) persistent_label=none ;;
    esac
done

say() { echo "kairos-immutable: $*"; }

wait_for() {
    tries=0
    while [ ! -b "$1" ] && [ $tries -lt 5 ]; do
        command -v udevadm > /dev/null && udevadm settle --timeout=2
        tries=$((tries + 1))
        [ -b "$1" ] || sleep 1
    done
    [ -b "$1" ]
}

mkdir -p "$run"
if [ "$encrypt" = tpm2 ]; then
    # Without blkid a used partition could look blank: never format on a guess.
    if command -v blkid > /dev/null && command -v cryptsetup > /dev/null; then
        # shellcheck source=SCRIPTDIR/kairos-sealed.sh
        . /usr/lib/kairos/kairos-sealed.sh
    else
        say "no blkid or cryptsetup in the initramfs: sealed partitions left alone"
        encrypt=unavailable
    fi
fi

# COS_PERSISTENT first: a COS_OEM being sealed keeps its files there meanwhile. The open_
# functions write the device to fd 3, their stdout going to stderr: no tool's output is
# taken for the device.
persistent_mount=""
device="/dev/disk/by-label/$persistent_label"
if [ "$persistent_label" = none ] || [ "$encrypt" = unavailable ]; then
    device=""
elif [ "$encrypt" = tpm2 ]; then
    device=$(open_sealed_persistent /dev/disk/by-partlabel/persistent 3>&1 1>&2) \
        || { device=""; persistent_label="sealed COS_PERSISTENT"; }
else
    wait_for "$device"
fi
if [ -b "$device" ]; then
    mkdir -p "$run/persistent"
    if mount -o rw,noatime "$device" "$run/persistent"; then
        persistent_mount=$run/persistent
    else
        say "cannot mount $device: persistent paths live in memory this boot"
    fi
elif [ "$persistent_label" = none ]; then
    say "recovery: persistent paths live in memory this boot"
else
    say "no usable $persistent_label partition: persistent paths live in memory this boot"
fi

oem=""
if [ "$encrypt" = tpm2 ]; then
    oem=$(open_sealed_oem /dev/disk/by-partlabel/oem "$persistent_mount" 3>&1 1>&2) || oem=""
elif [ -b /dev/disk/by-label/COS_OEM ]; then
    oem=/dev/disk/by-label/COS_OEM
fi
node_conf=$run/immutable-oem.conf
if [ -b "$oem" ]; then
    echo "$oem" > "$run/oem-device"
    if mkdir -p "$run/oem-conf" && mount -o ro "$oem" "$run/oem-conf" 2> /dev/null; then
        [ -f "$run/oem-conf/immutable.conf" ] && cp "$run/oem-conf/immutable.conf" "$node_conf"
        umount "$run/oem-conf"
    fi
fi

entries() {
    # Every config line as "KIND PATH", comments and blank lines dropped.
    for file in "$root/usr/lib/kairos/immutable.conf" "$root"/etc/kairos/immutable.conf.d/*.conf \
            "$node_conf"; do
        [ -f "$file" ] || continue
        while read -r kind path _rest; do
            case "$kind" in ''|\#*) continue ;; esac
            echo "$kind $path"
        done < "$file"
    done
}

valid_path() {
    case "$1" in
        /|/*/../*|*/..|/../*|*//*) return 1 ;;
        /*) return 0 ;;
        *) return 1 ;;
    esac
}

mkdir -p "$run/overlay"
mount -t tmpfs -o mode=0755,size=50% kairos-overlay "$run/overlay" || exit 1

entries | while read -r kind path; do
    [ "$kind" = overlay ] || continue
    valid_path "$path" || { say "ignoring overlay '$path': not an absolute path"; continue; }
    [ -d "$root$path" ] || { say "no $path in the image: no overlay for it"; continue; }
    name=$(echo "$path" | tr / _)
    mkdir -p "$run/overlay/$name/upper" "$run/overlay/$name/work"
    mount -t overlay -o "lowerdir=$root$path,upperdir=$run/overlay/$name/upper,workdir=$run/overlay/$name/work" \
        "kairos-overlay$name" "$root$path" || say "overlay on $path failed"
done

store="$run/overlay/.persistent"
[ -n "$persistent_mount" ] && store="$persistent_mount/.state"
mkdir -p "$store"

entries | while read -r kind path; do
    [ "$kind" = persist ] || continue
    valid_path "$path" || { say "ignoring persist '$path': not an absolute path"; continue; }
    kept="$store$path"
    if [ ! -e "$kept" ]; then
        # First boot with this path: start from what the image ships there.
        if [ -d "$root$path" ]; then
            mkdir -p "$kept" && cp -a "$root$path/." "$kept/"
        else
            mkdir -p "$kept"
        fi
    fi
    [ -d "$root$path" ] || mkdir -p "$root$path" 2> /dev/null \
        || { say "cannot create $path (its parent is read-only): not persisted"; continue; }
    mount --bind "$kept" "$root$path" || say "bind mount of $path failed"
done

# A machine-id made on first boot and kept: systemd would otherwise make a new one on every
# boot, because /etc is in memory.
if [ "$store" = "$run/persistent/.state" ] && [ -w "$root/etc" ]; then
    if [ ! -s "$store/machine-id" ]; then
        tr -d '-' < /proc/sys/kernel/random/uuid > "$store/machine-id"
    fi
    cat "$store/machine-id" > "$root/etc/machine-id"
fi
exit 0
