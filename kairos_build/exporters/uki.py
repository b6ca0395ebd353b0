"""Trusted Boot's signed EFI files as a directory: what a Trusted Boot disk's ESP holds, plus
the verified root image the UKIs' command lines pin (kairos_build.trusted.disk)."""

from __future__ import annotations

import shutil
from pathlib import Path

from kairos_build.convert.image_writer import image_config, tar_directory, write_layer, write_oci_layout
from kairos_build.exporters.base import ExportContext
from kairos_build.trusted import uki, verity
from kairos_build.trusted.disk import image_path


class UkiExporter:
    """Build signed UKIs, systemd-boot and the loader files (a directory), with the verity root image."""

    name = "uki"
    extension = "uki"
    boot_mode = "trusted"
    tools: tuple[str, ...] = (*verity.TOOLS, *uki.TOOLS, "mksquashfs")
    files: tuple[str, ...] = ()

    def export(self, context: ExportContext, output: Path) -> None:
        image = context.verity_image()
        output.mkdir()
        files = {**context.trusted_esp_files(), image_path(image).lstrip("/"): image.path}
        for path, source in files.items():
            (output / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, output / path)


class UkiImageExporter:
    """The `uki` folder as a one-layer OCI image archive: what a Trusted Boot node upgrades from
    (`kairos-agent upgrade --source oci-archive:FILE`, or `docker://REF` once pushed to a
    registry, e.g. with `skopeo copy oci-archive:FILE docker://REF`). Nothing in it runs: the
    node copies the signed files; the firmware and dm-verity judge them at boot."""

    name = "uki-image"
    extension = "uki.tar"
    boot_mode = "trusted"
    tools: tuple[str, ...] = (*UkiExporter.tools, "tar")
    files: tuple[str, ...] = ()

    def export(self, context: ExportContext, output: Path) -> None:
        folder, layer, layout = (
            context.workdir / name for name in ("uki-image", "uki-layer.tar", "uki-layout")
        )
        UkiExporter().export(context, folder)
        diff_id = write_layer(folder, layer, context.epoch)
        shutil.rmtree(folder)
        config = image_config(context.config, diff_id, context.epoch)
        # Not a system to run: no command or environment, and a label saying what it is.
        config["config"] = {"Labels": {**config["config"]["Labels"], "io.kairos.boot-mode": "trusted"}}
        config["history"][0]["created_by"] = "kairos-build uki-image"
        write_oci_layout(layout, layer, diff_id, config, context.config.version)
        tar_directory(layout, output, context.epoch)
        shutil.rmtree(layout)
