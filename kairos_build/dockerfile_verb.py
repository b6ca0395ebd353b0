"""`kairos-build dockerfile`: the conversion as a Dockerfile plus its build context, for people
who build with docker or buildah in their CI. The same data drives it as a conversion: the
flavor's packages, overlays/, the presets that enable framework units, kairos-release."""

from __future__ import annotations

import shutil
from pathlib import Path

from kairos_build import __version__
from kairos_build.config import BuildConfig
from kairos_build.convert.framework import framework_units, kairos_release_values, overlay_dirs
from kairos_build.data import data_dir
from kairos_build.errors import InputError
from kairos_build.templates import render


def write_build_context(config: BuildConfig, directory: Path, image: str | None = None) -> Path:
    """Dockerfile, overlay/ and kairos-release in `directory` (absent or empty); the Dockerfile
    starts FROM `image`, by default the flavor release's base image."""
    flavor = config.flavor
    template = f"Dockerfile.{flavor.package_manager}.j2"
    if not (data_dir("templates") / template).is_file():
        raise InputError(f"no Dockerfile template for {flavor.package_manager} yet",
                         hint="kairos-build convert works without one")
    if directory.exists() and any(directory.iterdir()):
        raise InputError(f"{directory} is not empty", hint="choose a new directory")
    directory.mkdir(parents=True, exist_ok=True)
    for overlay in overlay_dirs(flavor.family):
        shutil.copytree(overlay, directory / "overlay", symlinks=True, dirs_exist_ok=True)
    values = kairos_release_values(config, config.release.flavor_release)
    (directory / "kairos-release").write_text(render("kairos-release.j2", **values))
    dockerfile = directory / "Dockerfile"
    dockerfile.write_text(render(
        template, tool_version=__version__, flavor=flavor.name,
        image=(image or config.release.image).removeprefix("docker://"),
        packages=flavor.all_packages(),
        units=framework_units(flavor.family)))
    return dockerfile
