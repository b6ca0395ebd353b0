"""Trusted Boot's signed EFI files as a directory: what a Trusted Boot disk's ESP holds, plus
the verified root image the UKIs' command lines pin (kairos_build.trusted.disk)."""

from __future__ import annotations

import shutil
from pathlib import Path

from kairos_build.exporters.base import ExportContext
from kairos_build.trusted import uki, verity
from kairos_build.trusted.disk import esp_files, image_path, root_image
from kairos_build.trusted.keys import load_keys


class UkiExporter:
    """Build signed UKIs, systemd-boot and the loader files (a directory), with the verity root image."""

    name = "uki"
    extension = "uki"
    boot_mode = "trusted"
    tools: tuple[str, ...] = (*verity.TOOLS, *uki.TOOLS, "mksquashfs")
    files: tuple[str, ...] = ()

    def export(self, context: ExportContext, output: Path) -> None:
        assert context.config.keys is not None  # the build refuses the format without keys
        keys = load_keys(context.config.keys, context.config.cache_dir)
        image = root_image(context)
        output.mkdir()
        files = {**esp_files(context, keys, image), image_path(image).lstrip("/"): image.path}
        for path, source in files.items():
            (output / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, output / path)
