"""What every floor shares and nothing above it: errors, the log, the tool runner, the cache,
the data folders and templates, safe paths in a rootfs, reproducible timestamps, flavors, the
conversion sandbox and the binary format readers (PE, DER, FAT, squashfs).

The node agent ships some of these modules (errors, rootfs): this file stays standard-library
only and imports nothing.
"""
