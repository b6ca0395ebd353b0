"""Where the data folders (flavors/, overlays/, templates/, sbom/) are: installed or in a checkout."""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent  # kairos_build/


def data_dir(name: str) -> Path:
    """Return the folder `name` ("flavors", "overlays", "templates").

    KAIROS_BUILD_DATA overrides (for users with their own flavors); an installed package has
    the folders under kairos_build/data; a source checkout has them at the repository top.
    """
    override = os.environ.get("KAIROS_BUILD_DATA")
    candidates = [Path(override)] if override else []
    candidates += [_PACKAGE / "data", _PACKAGE.parent]
    for base in candidates:
        if (base / name).is_dir():
            return base / name
    raise FileNotFoundError(f"data folder '{name}' not found in {', '.join(map(str, candidates))}")
