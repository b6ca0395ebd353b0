"""`kairos-build unpack REF DIR`: a resolved base, copied out of the cache for other tools."""

from __future__ import annotations

from pathlib import Path

from kairos_build.config.buildconfig import BuildConfig
from kairos_build.convert.stages import resolve_config_base
from kairos_build.core.cache import Cache
from kairos_build.core.errors import InputError
from kairos_build.publish.files import copy_tree
from kairos_build.source.resolve import Base


def unpack_to(config: BuildConfig, target: Path) -> Base:
    """Resolve `config.base` and copy its tree to `target`, which must be empty or absent.

    The copy goes to a temporary sibling first and is renamed at the end, so an interrupted
    unpack never leaves a half-filled `target`.
    """
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise InputError(
            f"{target} exists and is not an empty directory", hint="choose a new directory to unpack into"
        )
    base = resolve_config_base(config, Cache(config.cache_dir))
    copy_tree(base.rootfs, target)
    return base
