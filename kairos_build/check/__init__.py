"""The requirement checks, read statically from a rootfs's files: rules.py (the rules per boot
mode), with the readers they need: pe.py (PE/Authenticode, grub's embedded config) and
rpmdb.py (the rpm database)."""
