"""The conversion plan: every step of a conversion, in order, as data.

One plan serves three readers: the conversion's stages run its commands inside the rootfs,
`kairos-build convert --dry-run` prints it, and `kairos-build dockerfile` renders it. Making it
needs no root, no network and no base image: only the flavor and the config.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from kairos_build.agent import IMAGE_DIR as AGENT_DIR
from kairos_build.config.buildconfig import BuildConfig
from kairos_build.convert.framework import (
    IDENTITY_FILES,
    SSH_KEY_DIR,
    boot_link_target,
    framework_units,
    overlay_dirs,
)
from kairos_build.convert.initramfs import KVER, initramfs_command, initramfs_paths
from kairos_build.convert.packages import Argv, package_manager
from kairos_build.core.flavors import Flavor

SHELL_KVER = "${KVER}"  # how a shell (the Dockerfile, the dry run) spells the kernel version


# The conversion's cached stages, in order (convert/stages.py keys each by its inputs).
STAGES = ("packages", "initramfs", "framework")


@dataclass(frozen=True)
class Step:
    name: str  # the function that carries it out
    summary: str
    commands: tuple[Argv, ...] = ()  # run inside the rootfs, in order; {kver} = the kernel
    env: tuple[tuple[str, str], ...] = ()
    actions: tuple[str, ...] = ()  # what a step done by kairos-build itself changes
    stage: str = "packages"  # the cached stage it belongs to (STAGES)


def install_env(flavor: Flavor) -> tuple[tuple[str, str], ...]:
    """The install commands' environment: the manager's, then the flavor's (install_env)."""
    manager = package_manager(flavor.package_manager)
    return (*manager.env, *sorted(flavor.quirks.install_env.items()))


def service_commands(flavor: Flavor) -> list[Argv]:
    """Enable the framework's units and the flavor's services the way the init system does."""
    services = flavor.quirks.services
    if flavor.init == "openrc":
        return [
            ("rc-update", "add", name, runlevel) for runlevel, names in services.items() for name in names
        ]
    commands: list[Argv] = []
    if units := framework_units(flavor.family):
        commands.append(("systemctl", "preset", *units))
    for verb in ("enable", "disable"):
        if names := services.get(verb):
            commands.append(("systemctl", verb, *names))
    return commands


def conversion_plan(config: BuildConfig, base: str | None = None) -> list[Step]:
    flavor, release, quirks = config.flavor, config.release, config.flavor.quirks
    manager = package_manager(flavor.package_manager)
    packages = flavor.all_packages(release)
    overlays = tuple(f"overlays/{d.name}/ -> /" for d in overlay_dirs(flavor.family))
    images = " or ".join(f"/{image}" for image in quirks.kernel_image).replace(KVER, SHELL_KVER)
    vmlinuz, initrd = (
        boot_link_target(p).replace(KVER, SHELL_KVER) for p in (quirks.kernel_image[0], quirks.initrd)
    )
    steps = [
        Step("copy_base", f"copy the base {base or release.image} (the cached base stays untouched)"),
        Step(
            "write_flavor_files",
            "write the flavor's files the package scripts read",
            actions=tuple(f"write /{path}" for path in quirks.files),
        ),
        Step(
            "install_packages",
            f"install {len(packages)} packages with {manager.name} "
            "(downloads kept in the cache's pkgcache/, fsync skipped)",
            commands=tuple(manager.commands(packages, quirks.install_options)),
            env=install_env(config.flavor),
        ),
        Step(
            "find_kernel",
            "find the one kernel: the /lib/modules/KVER with a kernel image",
            actions=(f"the image is {images}",),
            stage="initramfs",
        ),
        Step(
            "build_initramfs",
            f"build the initramfs with {flavor.initramfs}, on the packages "
            f"stage's tree plus the framework's {flavor.initramfs} files",
            commands=(initramfs_command(flavor.initramfs, quirks.initrd),),
            actions=tuple(
                f"overlays/{d.name}/{p}/ -> /{p}/"
                for d in overlay_dirs(flavor.family)
                for p in initramfs_paths(flavor.initramfs)
                if (d / p).exists()
            )
            + (
                "run with its staging folder kept, to record what it copied; an initramfs made "
                "from the same files by an earlier conversion is taken instead",
            ),
            stage="initramfs",
        ),
        Step(
            "layer_overlays",
            "layer the framework files and the node agent",
            actions=(*overlays, f"kairos-agent's modules -> /{AGENT_DIR}/kairos_build/"),
            stage="framework",
        ),
    ]
    if services := service_commands(flavor):
        steps.append(
            Step("enable_services", f"enable services ({flavor.init})", tuple(services), stage="framework")
        )
    steps += [
        Step(
            "write_kairos_release",
            "write /etc/kairos-release",
            actions=(
                f"KAIROS_FLAVOR={flavor.name} KAIROS_FAMILY={flavor.family} "
                f"KAIROS_VERSION={config.version}; KAIROS_FLAVOR_RELEASE from the base's "
                f"os-release (VERSION_ID), else {release.flavor_release}",
            ),
            stage="framework",
        ),
        Step(
            "link_kernel",
            "put the initramfs in place; link the kernel and the initramfs to their fixed names",
            actions=(
                f"/boot/vmlinuz -> {vmlinuz} (or the other image found)"
                if len(quirks.kernel_image) > 1
                else f"/boot/vmlinuz -> {vmlinuz}",
                f"/boot/initrd -> {initrd}",
            ),
            stage="framework",
        ),
        Step(
            "reset_identity",
            "reset the identity: every node makes its own",
            actions=tuple(f"remove /{path}" for path in IDENTITY_FILES)
            + (f"remove /{SSH_KEY_DIR}/ssh_host_*",),
            stage="framework",
        ),
    ]
    return steps


def shell_words(argv: Argv) -> str:
    """A command as one shell line: quoted words, {kver} as ${KVER}; `sh -c SCRIPT` as SCRIPT."""
    if len(argv) == 3 and argv[:2] == ("sh", "-c"):
        return argv[2]
    words = []
    for arg in argv:
        parts = arg.split(KVER)
        words.append(SHELL_KVER.join(shlex.quote(p) if p else "" for p in parts) or "''")
    return " ".join(words)


def kernel_link_script(images: tuple[str, ...], initrd: str) -> str:
    """The shell equivalent of link_kernel, for a Dockerfile: the first image that exists."""
    branches = [f'if [ -f "/{images[0]}" ]; then ln -sf "{boot_link_target(images[0])}" /boot/vmlinuz']
    branches += [
        f'elif [ -f "/{image}" ]; then ln -sf "{boot_link_target(image)}" /boot/vmlinuz'
        for image in images[1:]
    ]
    script = "; ".join(branches) + '; else echo "no kernel image for $KVER" >&2; exit 1; fi'
    script += f'; ln -sf "{boot_link_target(initrd)}" /boot/initrd'
    return script.replace(KVER, SHELL_KVER)


def describe_plan(steps: list[Step]) -> str:
    """The plan for people: numbered steps, the exact commands (`#` marks work done by
    kairos-build itself rather than by a program inside the rootfs)."""
    lines, stage = [], ""
    for number, step in enumerate(steps, 1):
        if step.stage != stage:
            stage = step.stage
            lines.append(f"stage {stage}:")
        lines.append(f"{number}. {step.name}: {step.summary}")
        if step.env:
            lines.append("   env " + " ".join(f"{k}={v}" for k, v in step.env))
        lines += [f"   $ {shell_words(argv)}" for argv in step.commands]
        lines += [f"   # {action}" for action in step.actions]
    return "\n".join(lines)
