#!/bin/sh
# Sourced by kairos-immutable-setup on a Trusted Boot UKI's boot (`rd.kairos.encrypt=tpm2`):
# COS_PERSISTENT and COS_OEM as LUKS2 volumes that only this machine's TPM opens, and only
# while PCR 11 holds a value our PCR key signed (under one of our UKIs, in the initrd).
#
# A volume is sealed in steps a power cut can stop anywhere. It is made with the LUKS2
# subsystem `kairos-sealing` and marked `kairos` only once it is whole (TPM enrolled, random
# key gone, filesystem made, files back), so a boot that finds `kairos-sealing` knows the
# last one was cut off and seals again. COS_OEM arrives as a plain filesystem (the build and
# the installer write the node's cloud-config into it); its files wait on the already sealed
# COS_PERSISTENT while it is made anew, and are removed from there only once it is whole.
# A partition that is neither blank, nor plain COS_OEM, nor LUKS is never touched.

# The volumes' device-mapper names (/dev/mapper/NAME).
seal_persistent_name=kairos-persistent
seal_oem_name=kairos-oem
seal_signature=/run/systemd/tpm2-pcr-signature.json
seal_public_key=/run/systemd/tpm2-pcr-public-key.pem
[ -f "$seal_signature" ] || seal_signature=/.extra/tpm2-pcr-signature.json
[ -f "$seal_public_key" ] || seal_public_key=/.extra/tpm2-pcr-public-key.pem

# blank, sealing (a seal cut off), luks, or other (a filesystem, or anything else).
seal_state() {
    if cryptsetup isLuks "$1"; then
        if [ "$(blkid -p -o value -s SUBSYSTEM "$1" 2> /dev/null)" = kairos-sealing ]; then
            echo sealing
        else
            echo luks
        fi
    elif [ -z "$(blkid -p -o value -s TYPE "$1" 2> /dev/null)" ]; then
        echo blank
    else
        echo other
    fi
}

# NAME PART LABEL: /dev/mapper/NAME opened by the TPM.
attach_sealed() {
    /usr/lib/systemd/systemd-cryptsetup attach "$1" "$2" - \
        "tpm2-device=auto,tpm2-signature=$seal_signature,headless=true" > /dev/console 2>&1 \
        || { say "the TPM did not unlock $3 (a UKI we did not sign, or another machine)"; return 1; }
}

# NAME PART LABEL: a new LUKS2 volume only the TPM opens, an empty ext4 labelled LABEL in it,
# left open as /dev/mapper/NAME and still marked `kairos-sealing` (seal_done marks it whole).
seal_new() {
    # shellcheck disable=SC2154  # run: set by kairos-immutable-setup, which sources this file
    key=$run/$1.key
    ( umask 077 && dd if=/dev/urandom of="$key" bs=64 count=1 2> /dev/null ) || return 1
    # The key is 64 random bytes, gone once the TPM slot exists: no password to stretch, so
    # PBKDF2 at its minimum instead of argon2's second of work and 1 GiB of memory.
    if cryptsetup luksFormat --batch-mode --type luks2 --label "${3}_LUKS" \
            --subsystem kairos-sealing --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
            --key-file "$key" "$2" \
        && systemd-cryptenroll --unlock-key-file="$key" --tpm2-device=auto \
            --tpm2-public-key="$seal_public_key" --tpm2-public-key-pcrs=11 \
            --tpm2-signature="$seal_signature" "$2" > /dev/console 2>&1 \
        && cryptsetup open --key-file "$key" "$2" "$1" \
        && cryptsetup luksRemoveKey --batch-mode "$2" "$key" \
        && mkfs.ext4 -q -L "$3" "/dev/mapper/$1"; then
        rm -f "$key"
        return 0
    fi
    rm -f "$key"
    cryptsetup close "$1" 2> /dev/null
    say "sealing $3 failed"
    return 1
}

# PART LABEL: the seal is whole. (`config` rewrites the label too unless it is given.)
seal_done() {
    cryptsetup config --label "${2}_LUKS" --subsystem kairos "$1"
}

# PART: writes the opened COS_PERSISTENT's path to fd 3; fails (saying why) when it cannot.
open_sealed_persistent() {
    part=$1
    wait_for "$part" || { say "no partition named persistent"; return 1; }
    case $(seal_state "$part") in
        luks)
            attach_sealed "$seal_persistent_name" "$part" COS_PERSISTENT || return 1 ;;
        blank|sealing)
            say "first boot: sealing COS_PERSISTENT to this machine's TPM"
            # shellcheck disable=SC2154  # persistent_label: set by kairos-immutable-setup
            seal_new "$seal_persistent_name" "$part" "$persistent_label" || return 1
            seal_done "$part" "$persistent_label" || return 1 ;;
        *)
            say "COS_PERSISTENT is neither LUKS nor blank: left alone"
            return 1 ;;
    esac
    echo "/dev/mapper/$seal_persistent_name" >&3
}

# PART STASH: COS_OEM sealed anew, with the files kept in STASH (if any) put back in it.
seal_oem_from() {
    seal_new "$seal_oem_name" "$1" COS_OEM || return 1
    if [ -d "$2" ]; then
        mkdir -p "$run/oem-seal"
        if ! { mount "/dev/mapper/$seal_oem_name" "$run/oem-seal" && cp -a "$2/." "$run/oem-seal/" \
                && umount "$run/oem-seal"; }; then
            umount "$run/oem-seal" 2> /dev/null
            say "COS_OEM's files could not be put back: they stay on COS_PERSISTENT for the next boot"
            return 1
        fi
    fi
    seal_done "$1" COS_OEM || return 1
    rm -rf "$2"
}

# PART PERSISTENT_MOUNT (empty when COS_PERSISTENT is not open): writes the COS_OEM device to
# read to fd 3 (the sealed volume, or a plain COS_OEM not sealed yet); fails when there is none.
open_sealed_oem() {
    part=$1
    wait_for "$part" || return 1
    stash=${2:+$2/.kairos-oem-seal}
    case $(seal_state "$part") in
        luks)
            attach_sealed "$seal_oem_name" "$part" COS_OEM || return 1
            [ -n "$stash" ] && rm -rf "$stash" "$stash.new" ;;
        other)
            if [ -z "$stash" ]; then
                say "COS_OEM is not sealed yet: it is, on a boot with a sealed COS_PERSISTENT"
                echo "$part" >&3
                return 0
            fi
            mkdir -p "$run/oem-seal" || return 1
            if ! mount -o ro "$part" "$run/oem-seal"; then
                # A copy on our COS_PERSISTENT: the seal was cut off inside luksFormat.
                [ -d "$stash" ] || { say "COS_OEM cannot be mounted: left alone"; return 1; }
                say "COS_OEM's seal was cut off: sealing it again"
                seal_oem_from "$part" "$stash" || return 1
                echo "/dev/mapper/$seal_oem_name" >&3
                return 0
            fi
            say "sealing COS_OEM to this machine's TPM (its files wait on COS_PERSISTENT)"
            rm -rf "$stash.new"
            # shellcheck disable=SC2015  # either failing is what the cleanup is for
            mkdir -p "$stash.new" && chmod 0700 "$stash.new" \
                || { umount "$run/oem-seal"; return 1; }
            if ! cp -a "$run/oem-seal/." "$stash.new/"; then
                umount "$run/oem-seal"
                say "COS_OEM's files could not be copied: left unsealed"
                echo "$part" >&3
                return 0
            fi
            umount "$run/oem-seal"
            sync
            rm -rf "$stash" && mv "$stash.new" "$stash" && sync || return 1
            seal_oem_from "$part" "$stash" || return 1 ;;
        sealing)
            [ -n "$stash" ] || { say "COS_OEM's seal was cut off: it is finished on a boot with a sealed COS_PERSISTENT"; return 1; }
            say "COS_OEM's seal was cut off: sealing it again"
            seal_oem_from "$part" "$stash" || return 1 ;;
        blank)
            if [ -n "$stash" ] && [ -d "$stash" ]; then
                # Blank with a copy waiting: the seal was cut off inside luksFormat.
                say "COS_OEM's seal was cut off: sealing it again"
                seal_oem_from "$part" "$stash" || return 1
            else
                say "sealing the blank COS_OEM to this machine's TPM"
                seal_new "$seal_oem_name" "$part" COS_OEM && seal_done "$part" COS_OEM || return 1
            fi ;;
    esac
    echo "/dev/mapper/$seal_oem_name" >&3
}
