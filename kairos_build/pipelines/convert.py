"""`kairos-build convert REF -o OUTPUT`: the converted image itself, to `FROM` in a Dockerfile,
customise, and build artifacts from (`kairos-build iso --base docker://their-image`)."""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

from kairos_build.config.buildconfig import BuildConfig
from kairos_build.convert.image_writer import (
    image_config,
    scratch,
    tar_directory,
    write_docker_archive,
    write_layer,
    write_oci_layout,
)
from kairos_build.convert.stages import convert_base, resolve_config_base
from kairos_build.core.cache import Cache
from kairos_build.core.errors import InputError
from kairos_build.core.log import step
from kairos_build.core.reproducible import build_epoch
from kairos_build.publish.files import copy_tree
from kairos_build.source.refs import parse_ref

OUTPUT_FORMS = "oci-archive:FILE[:TAG], oci:DIR[:TAG], dir:PATH or docker://NAME[:TAG]"


def _docker_name(name: str) -> str:
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last or "@" in name else f"{name}:latest"


def convert_to(config: BuildConfig, output: str) -> str:
    """Resolve and convert `config.base`, then write it to `output`; returns what was written."""
    target = parse_ref(output)
    if target.transport not in ("oci-archive", "oci", "dir", "docker"):
        raise InputError(f"--output {output!r} is not an image destination", hint=f"use {OUTPUT_FORMS}")
    path = Path(target.target)
    if target.transport != "docker" and path.exists():
        raise InputError(f"--output {output}: {path} exists already", hint="choose a new path")
    cache = Cache(config.cache_dir)
    base = resolve_config_base(config, cache)
    rootfs, _key = convert_base(config, base, cache)

    if target.transport == "dir":
        copy_tree(rootfs, path)
        return str(path)
    # Beside the output (renamed into place at the end), or in the cache for the daemon.
    with cache.workdir() if target.transport == "docker" else scratch(path.absolute().parent) as work:
        layer = Path(work) / "layer.tar"
        with step("writing the converted image"):
            epoch = build_epoch(rootfs)
            diff_id = write_layer(rootfs, layer, epoch)
            image = image_config(config, diff_id, epoch)
            if target.transport == "docker":
                return _load_into_daemon(
                    Path(work), layer, diff_id, image, _docker_name(target.target), epoch
                )
            layout = Path(work) / "layout"
            write_oci_layout(layout, layer, diff_id, image, target.tag or config.version)
            if target.transport == "oci":
                layout.rename(path)
            else:
                tar_directory(layout, Path(work) / "image.tar", epoch)
                (Path(work) / "image.tar").rename(path)
    return str(path)


def _load_into_daemon(
    work: Path, layer: Path, diff_id: str, image: dict[str, object], name: str, epoch: int
) -> str:
    import docker
    from docker.errors import DockerException

    archive = work / "image.docker.tar"
    write_docker_archive(archive, layer, diff_id, image, name, epoch)
    try:
        with closing(docker.from_env(timeout=600)) as client, archive.open("rb") as data:
            client.images.load(data)
    except DockerException as exc:
        raise InputError(
            f"cannot load the converted image into the docker daemon: {exc}",
            hint="is dockerd running? (DOCKER_HOST names it), or write --output oci-archive:FILE instead",
        ) from None
    return f"docker://{name}"
