"""`kairos-build unpack REF DIR`: a resolved base, copied out of the cache for other tools."""

from __future__ import annotations

from pathlib import Path

from kairos_build.build import resolve_config_base
from kairos_build.cache import Cache
from kairos_build.config import BuildConfig
from kairos_build.errors import InputError
from kairos_build.log import step
from kairos_build.source.resolve import Base
from kairos_build.tools import run


def unpack_to(config: BuildConfig, target: Path) -> Base:
    """Resolve `config.base` and copy its tree to `target`, which must be empty or absent.

    The copy goes to a temporary sibling first and is renamed at the end, so an interrupted
    unpack never leaves a half-filled `target`.
    """
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise InputError(f"{target} exists and is not an empty directory",
                         hint="choose a new directory to unpack into")
    base = resolve_config_base(config, Cache(config.cache_dir))
    copy_tree(base.rootfs, target)
    return base


def copy_tree(source: Path, target: Path) -> None:
    """Copy a tree to `target` (absent or an empty directory) through a temporary sibling."""
    partial = target.with_name(f".{target.name}.partial")
    target.parent.mkdir(parents=True, exist_ok=True)  # as --output DIR does for artifacts
    run(["rm", "-rf", str(partial)])
    try:
        with step(f"copying into {target}"):
            run(["cp", "-a", "--reflink=auto", str(source), str(partial)])
            if target.exists():
                target.rmdir()
            partial.rename(target)
    except BaseException:
        run(["rm", "-rf", str(partial)])
        raise
