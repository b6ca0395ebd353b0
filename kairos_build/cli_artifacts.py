"""The verbs that build artifacts: `build --format iso,raw,...` and one verb per format
(`iso`, `raw`, `qcow2`, ...), all with the same options, all through build.build()."""

from __future__ import annotations

import inspect
import shlex
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from kairos_build.cli_options import (
    Base,
    CacheDir,
    Compression,
    Flavor,
    Insecure,
    Json,
    NoBootstrap,
    NoCache,
    Output,
    Platform,
    Pull,
    Release,
    SquashfsCompression,
    Version,
)
from kairos_build.errors import InputError
from kairos_build.log import quiet_progress, timings

FORMAT_HELP = {
    "iso": "Build a live ISO (BIOS + UEFI) from a base.",
    "raw": "Build a raw GPT disk with the Kairos partition layout (dd it to a disk).",
    "qcow2": "Build a qcow2 disk for QEMU/KVM, libvirt, OpenStack.",
    "vmdk": "Build a VMDK disk for VMware.",
    "vhd": "Build a fixed VHD for Azure (size aligned to 1 MiB).",
    "gce": "Build a Google Compute Engine image (disk.raw in a GNU tar.gz).",
    "netboot": "Build a netboot directory: kernel, initrd, rootfs.squashfs and an iPXE script (HTTP).",
}


def build(
    formats: Annotated[str | None, typer.Option(  # noqa: UP007
        "--format", help="Comma-separated formats: iso,raw,qcow2,vmdk,vhd,gce.")] = None,
    flavor: Flavor = "debian", release: Release = None, base: Base = None,
    output: Output = Path("build"), version: Version = "v0.1.0", cache_dir: CacheDir = None,
    pull: Pull = "missing", platform: Platform = "linux/amd64", insecure_registry: Insecure = None,
    no_bootstrap: NoBootstrap = False, no_cache: NoCache = False,
    compression: Compression = "zstd", squashfs_compression: SquashfsCompression = None,
    kernel_arg: Annotated[list[str] | None, typer.Option(  # noqa: UP007
        help="Extra kernel argument for every boot entry (repeatable).")] = None,
    extra_cmdline: Annotated[str | None, typer.Option(  # noqa: UP007
        help="Extra kernel arguments for every boot entry, as one string ('quiet rd.debug').")] = None,
    overlay_iso: Annotated[Path | None, typer.Option(  # noqa: UP007
        help="ISO: a folder whose files are added to the ISO's root.")] = None,
    overlay_rootfs: Annotated[Path | None, typer.Option(  # noqa: UP007
        help="A folder whose files are added to the converted rootfs (every format).")] = None,
    cloud_config: Annotated[Path | None, typer.Option(  # noqa: UP007
        help="A #cloud-config file: /config.yaml on the ISO, 90_custom.yaml on COS_OEM.")] = None,
    firmware: Annotated[str, typer.Option(help="Disks: uefi|bios|both.")] = "both",
    disk_size: Annotated[str | None, typer.Option(  # noqa: UP007
        help="Disks: total size, e.g. 16G (default: what the partitions need).")] = None,
    partition_size: Annotated[list[str] | None, typer.Option(  # noqa: UP007
        help="Disks: NAME=SIZE for efi, oem, recovery, state, persistent (repeatable).")] = None,
    image_size: Annotated[str | None, typer.Option(  # noqa: UP007
        help="Disks: size of cOS/active.img (default: rootfs + 10% + 200 MiB).")] = None,
    compress: Annotated[bool, typer.Option(
        "--compress", help="qcow2: zstd-compressed clusters (about half the size).")] = False,
    as_json: Json = False,
) -> None:
    """Build several artifacts in one run; shared parts (rootfs, squashfs, disk) are made once."""
    from kairos_build.build import build as run_build
    from kairos_build.cloudconfig import validate_cloud_config
    from kairos_build.config import make_config
    from kairos_build.disk.layout import DiskOptions, parse_partition_sizes, parse_size

    if not formats:
        raise InputError("no format given", hint="e.g. kairos-build build --format iso,raw,qcow2")
    chosen = list(dict.fromkeys(f.strip() for f in formats.split(",") if f.strip()))
    if as_json:
        quiet_progress()
    disk = DiskOptions(
        firmware=firmware,
        disk_size=parse_size(disk_size, "--disk-size") if disk_size else None,
        sizes=parse_partition_sizes(partition_size or []),
        image_size=parse_size(image_size, "--image-size") if image_size else None,
        compress=compress)
    config = make_config(flavor, release, base=base, output_dir=output, version=version,
                         cache_dir=cache_dir, pull=pull,
                         squashfs_compression=squashfs_compression or compression,
                         extra_kernel_args=kernel_args(kernel_arg, extra_cmdline), platform=platform,
                         insecure_registries=tuple(insecure_registry or ()),
                         bootstrap_fallback=not no_bootstrap, disk=disk,
                         cloud_config=validate_cloud_config(cloud_config) if cloud_config else None,
                         overlay_iso=existing_dir(overlay_iso, "--overlay-iso"),
                         overlay_rootfs=existing_dir(overlay_rootfs, "--overlay-rootfs"),
                         no_cache=no_cache)
    artifacts = run_build(config, chosen)
    if as_json:
        import json

        print(json.dumps({"artifacts": [vars(a) for a in artifacts], "timings": timings},
                         indent=2, default=str))


def kernel_args(repeated: list[str] | None, line: str | None) -> tuple[str, ...]:
    """--kernel-arg A --kernel-arg B and --extra-cmdline 'C D' together: (A, B, C, D)."""
    try:
        words = shlex.split(line or "")
    except ValueError as exc:
        raise InputError(f"--extra-cmdline {line!r} does not parse: {exc}") from exc
    for word in [*(repeated or []), *words]:
        if not word.isprintable():
            raise InputError(f"kernel argument {word!r} has control characters")
    return (*(repeated or []), *words)


def existing_dir(path: Path | None, option: str) -> Path | None:
    if path is not None and not path.is_dir():
        raise InputError(f"{option} {path} is not a folder")
    return path.resolve() if path is not None else None


def format_verb(name: str) -> Callable[..., None]:
    """`kairos-build NAME ...`: `build --format NAME` with the same options minus --format."""

    def verb(**options: Any) -> None:
        build(formats=name, **options)

    # Resolved annotations (not the strings of `from __future__ import annotations`): Typer
    # reads the option declarations from them.
    signature = inspect.signature(build, eval_str=True)
    parameters = [p for key, p in signature.parameters.items() if key != "formats"]
    verb.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    hints = typing.get_type_hints(build, include_extras=True)
    verb.__annotations__ = {k: v for k, v in hints.items() if k != "formats"}
    verb.__doc__ = FORMAT_HELP[name]
    verb.__name__ = name
    return verb


def register(app: typer.Typer) -> None:
    app.command("build")(build)
    for name in FORMAT_HELP:
        app.command(name)(format_verb(name))
