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

root=/sysroot
run=/run/kairos
persistent_label=COS_PERSISTENT
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        rd.kairos.persistent=*) persistent_label=${arg#rd.kairos.persistent=} ;;
        # Recovery leaves COS_PERSISTENT alone: reset formats it from there.
        kairos.entry=recovery|kairos.entry=statereset) persistent_label=none ;;
    esac
done

say() { echo "kairos-immutable: $*"; }

node_conf=$run/immutable-oem.conf
if [ -b /dev/disk/by-label/COS_OEM ] && mkdir -p "$run/oem-conf" \
        && mount -o ro /dev/disk/by-label/COS_OEM "$run/oem-conf" 2> /dev/null; then
    [ -f "$run/oem-conf/immutable.conf" ] && cp "$run/oem-conf/immutable.conf" "$node_conf"
    umount "$run/oem-conf"
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
device="/dev/disk/by-label/$persistent_label"
tries=0
[ "$persistent_label" = none ] && tries=5
while [ ! -b "$device" ] && [ $tries -lt 5 ]; do
    command -v udevadm > /dev/null && udevadm settle --timeout=2
    tries=$((tries + 1))
    [ -b "$device" ] || sleep 1
done
if [ -b "$device" ]; then
    mkdir -p "$run/persistent"
    if mount -o rw,noatime "$device" "$run/persistent"; then
        store="$run/persistent/.state"
    else
        say "cannot mount $device: persistent paths live in memory this boot"
    fi
elif [ "$persistent_label" = none ]; then
    say "recovery: persistent paths live in memory this boot"
else
    say "no $persistent_label partition: persistent paths live in memory this boot"
fi
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
