"""User cloud-config files: checked before a build uses them."""

from __future__ import annotations

from pathlib import Path

import yaml

from kairos_build.core.errors import InputError

HEADER = "#cloud-config"


def validate_cloud_config(path: Path) -> Path:
    """`path` if it is a readable `#cloud-config` YAML mapping; otherwise a clear error."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the cloud-config {path}: {exc}") from exc
    if not text.startswith(HEADER):
        raise InputError(
            f"{path} does not start with '{HEADER}'",
            hint=f"make '{HEADER}' its first line, as cloud-init and Kairos expect",
        )
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(f"{path} is not valid YAML: {exc}") from exc
    if data is not None and not isinstance(data, dict):
        raise InputError(
            f"{path} is not a YAML mapping", hint="a cloud-config is keys like users:, hostname:"
        )
    return path
