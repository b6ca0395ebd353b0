"""Options shared by several verbs (Typer annotations), declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Flavor = Annotated[str, typer.Option("--flavor", "-f", help="Flavor name (see `kairos-build flavors`).")]
Release = Annotated[str | None, typer.Option(help="Flavor release, e.g. trixie or bookworm.")]  # noqa: UP007
Base = Annotated[str | None, typer.Option(  # noqa: UP007
    help="Base: docker://NAME, oci:DIR[:TAG], oci-archive:FILE[:TAG], dir:PATH, bootstrap:DISTRO/SUITE.")]
Output = Annotated[Path, typer.Option("--output", "-o", help="Directory for the artifacts.")]
Version = Annotated[str, typer.Option(help="Kairos version of the image (v1.2.3).")]
CacheDir = Annotated[Path | None, typer.Option(help="Cache directory.")]  # noqa: UP007
Pull = Annotated[str, typer.Option(help="missing|always|never: when to fetch the base anew.")]
Platform = Annotated[str, typer.Option(help="linux/amd64 or linux/arm64: picks from multi-platform images.")]
Insecure = Annotated[list[str] | None, typer.Option(
    "--insecure-registry", help="Registry host reached over plain http (repeatable).")]
NoBootstrap = Annotated[bool, typer.Option(
    "--no-bootstrap", help="Fail instead of bootstrapping when the flavor's image cannot be had.")]
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
NoCache = Annotated[bool, typer.Option(
    "--no-cache", help="Make every stage anew (base unpack, conversion, squashfs, images) and "
    "replace its cache entry; pulled blobs, checked by their digest, are still reused and "
    "tags are resolved as --pull says.")]
Compression = Annotated[str, typer.Option(
    "--compression", help="Squashfs compression: zstd (default, level 3), zstd:LEVEL (1-22), xz (with "
    "the arch's BCJ filter), gzip[:LEVEL], lz4, lzo.")]
# The option's former name, still accepted.
SquashfsCompression = Annotated[str | None, typer.Option(  # noqa: UP007
    "--squashfs-compression", hidden=True)]
