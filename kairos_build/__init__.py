"""kairos-build: any distro container image in, a bootable immutable Kairos OS out."""

from importlib import metadata

try:
    __version__ = metadata.version("kairos-build")
except metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+source"
