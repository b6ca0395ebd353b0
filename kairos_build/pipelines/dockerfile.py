"""`kairos-build dockerfile`: the conversion as a Dockerfile plus its build context, for people
who build with docker or buildah in their CI. The conversion plan drives it (convert/plan.py):
the package manager's exact commands, the services, the initramfs command, the kernel links;
overlays/ and the flavor's files become the context's overlay/ folder."""

from __future__ import annotations

import shutil
from pathlib import Path

from kairos_build import __version__
from kairos_build.agent import agent_files
from kairos_build.config.buildconfig import BuildConfig
from kairos_build.convert.framework import IDENTITY_FILES, SSH_KEY_DIR, kairos_release_values, overlay_dirs
from kairos_build.convert.plan import conversion_plan, kernel_link_script, shell_words
from kairos_build.core.errors import InputError
from kairos_build.core.templates import render

# An engine bind-mounts /etc/hostname into every build container: it cannot be removed there
# (and is not part of the image anyway).
_NOT_IN_CONTAINERS = {"etc/hostname"}


def write_build_context(config: BuildConfig, directory: Path, image: str | None = None) -> Path:
    """Dockerfile, overlay/ and kairos-release in `directory` (absent or empty); the Dockerfile
    starts FROM `image`, by default the flavor release's base image."""
    flavor = config.flavor
    if directory.exists() and any(directory.iterdir()):
        raise InputError(f"{directory} is not empty", hint="choose a new directory")
    base = (image or config.release.image).removeprefix("docker://")
    plan = {planned.name: planned for planned in conversion_plan(config, base)}
    directory.mkdir(parents=True, exist_ok=True)
    overlay = directory / "overlay"
    for source in overlay_dirs(flavor.family):
        shutil.copytree(source, overlay, symlinks=True, dirs_exist_ok=True)
    for path, source in agent_files().items():
        (overlay / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, overlay / path)
    for path, text in sorted(flavor.quirks.files.items()):
        (overlay / path).parent.mkdir(parents=True, exist_ok=True)
        (overlay / path).write_text(text)
    values = kairos_release_values(config, config.release.flavor_release)
    (directory / "kairos-release").write_text(render("kairos-release.j2", **values))
    run_steps = [plan[name] for name in ("install_packages", "enable_services") if name in plan]
    dockerfile = directory / "Dockerfile"
    dockerfile.write_text(
        render(
            "Dockerfile.j2",
            tool_version=__version__,
            flavor=flavor.name,
            image=base,
            package_manager=flavor.package_manager,
            initramfs_tool=flavor.initramfs,
            env=plan["install_packages"].env,
            install=[shell_words(argv) for planned in run_steps for argv in planned.commands],
            initramfs=shell_words(plan["build_initramfs"].commands[0]),
            kernel_links=kernel_link_script(flavor.quirks.kernel_image, flavor.quirks.initrd),
            identity=[f"/{p}" for p in IDENTITY_FILES if p not in _NOT_IN_CONTAINERS]
            + [f"/{SSH_KEY_DIR}/ssh_host_*"],
        )
    )
    return dockerfile
