"""`kairos-build check`: resolve the base -> check its files against a boot mode."""

from __future__ import annotations

from kairos_build.check.rules import Report, check_rootfs
from kairos_build.config.buildconfig import BuildConfig
from kairos_build.convert.stages import resolve_config_base
from kairos_build.core.cache import Cache
from kairos_build.source.resolve import Base


def check_base(config: BuildConfig, mode: str) -> tuple[Base, Report]:
    """`kairos-build check`: resolve the base and check its files against `mode`."""
    base = resolve_config_base(config, Cache(config.cache_dir))
    return base, check_rootfs(base.rootfs, mode)
