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
# With `rd.kairos.encrypt=tpm2` (a Trusted Boot UKI's signed command line) COS_PERSISTENT is a
# LUKS2 volume (GPT name "persistent") that only this machine's TPM opens, and only while PCR
# 11 holds a value our PCR key signed: under one of our UKIs, in the initrd. A blank partition
# (a new disk's first boot) is sealed here; anything else that is not LUKS is left alone.

root=/sysroot
run=/run/kairos
persistent_label=COS_PERSISTENT
encrypt=none
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        rd.kairos.persistent=*) persistent_label=${arg#rd.kairos.persistent=} ;;
        rd.kairos.encrypt=*) encrypt=${arg#rd.kairos.encrypt=} ;;
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

wait_for() {
    tries=0
    while [ ! -b "$1" ] && [ $tries -lt 5 ]; do
        command -v udevadm > /dev/null && udevadm settle --timeout=2
        tries=$((tries + 1))
        [ -b "$1" ] || sleep 1
    done
    [ -b "$1" ]
}

# Writes the opened volume's path to fd 3; fails (saying why) when it cannot be opened.
# Called with stdout on stderr, so no tool's output is taken for the path.
open_sealed() {
    part=/dev/disk/by-partlabel/persistent
    name=kairos-persistent
    wait_for "$part" || { say "no partition named persistent"; return 1; }
    # Without blkid a used partition could look blank: never format on a guess.
    command -v blkid > /dev/null || { say "no blkid in the initramfs: COS_PERSISTENT left alone"; return 1; }
    signature=/run/systemd/tpm2-pcr-signature.json
    public_key=/run/systemd/tpm2-pcr-public-key.pem
    [ -f "$signature" ] || signature=/.extra/tpm2-pcr-signature.json
    [ -f "$public_key" ] || public_key=/.extra/tpm2-pcr-public-key.pem
    if cryptsetup isLuks "$part"; then
        /usr/lib/systemd/systemd-cryptsetup attach "$name" "$part" - \
            "tpm2-device=auto,tpm2-signature=$signature,headless=true" > /dev/console 2>&1 \
            || { say "the TPM did not unlock COS_PERSISTENT (a UKI we did not sign, or another machine)"; return 1; }
    elif [ -z "$(blkid -p -o value -s TYPE "$part" 2> /dev/null)" ]; then
        say "first boot: sealing COS_PERSISTENT to this machine's TPM"
        key=$run/persistent.key
        ( umask 077 && dd if=/dev/urandom of="$key" bs=64 count=1 2> /dev/null ) || return 1
        # The key is 64 random bytes, gone once the TPM slot exists: no password to stretch,
        # so PBKDF2 at its minimum instead of argon2's second of work and 1 GiB of memory.
        if cryptsetup luksFormat --batch-mode --type luks2 --label COS_PERSISTENT_LUKS \
                --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file "$key" "$part" \
            && systemd-cryptenroll --unlock-key-file="$key" --tpm2-device=auto \
                --tpm2-public-key="$public_key" --tpm2-public-key-pcrs=11 \
                --tpm2-signature="$signature" "$part" > /dev/console 2>&1 \
            && cryptsetup open --key-file "$key" "$part" "$name" \
            && cryptsetup luksRemoveKey --batch-mode "$part" "$key" \
            && mkfs.ext4 -q -L "$persistent_label" "/dev/mapper/$name"; then
            rm -f "$key"
        else
            rm -f "$key"
            say "sealing COS_PERSISTENT failed"
            return 1
        fi
    else
        say "COS_PERSISTENT is neither LUKS nor blank: left alone"
        return 1
    fi
    echo "/dev/mapper/$name" >&3
}

store="$run/overlay/.persistent"
device="/dev/disk/by-label/$persistent_label"
if [ "$persistent_label" = none ]; then
    :
elif [ "$encrypt" = tpm2 ]; then
    device=$(open_sealed 3>&1 1>&2) || { device=""; persistent_label="sealed COS_PERSISTENT"; }
else
    wait_for "$device"
fi
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
    say "no usable $persistent_label partition: persistent paths live in memory this boot"
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
