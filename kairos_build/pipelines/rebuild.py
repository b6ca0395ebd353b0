"""`kairos-build rebuild NAME.build.json`: make the artifact a manifest describes again, from the
settings it records, and say whether its sha256 is the one recorded; when it is not, which
recorded input differs (the base, a setting, a file, SOURCE_DATE_EPOCH, the packages, a tool).

The artifact is exported anew (never taken from the artifact cache); the stages before it are
taken from the cache when their keys match, as in any build (--no-cache makes them anew too).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from kairos_build.config.buildconfig import BuildConfig, config_from
from kairos_build.core.errors import InputError
from kairos_build.core.log import log
from kairos_build.publish import manifest
from kairos_build.publish.files import Artifact


@dataclass(frozen=True)
class Rebuilt:
    artifact: Artifact
    recorded_sha256: str
    matches: bool
    # What differs between the recorded inputs and this rebuild's (empty when none does).
    changes: tuple[str, ...]
    package_changes: tuple[str, ...]


@contextmanager
def source_date_epoch(recorded: dict[str, object]) -> Iterator[None]:
    """SOURCE_DATE_EPOCH as the recorded build had it: set when it was given, unset when the
    build took the base's date (a given one is part of the packages stage's key)."""
    before = os.environ.get("SOURCE_DATE_EPOCH")
    if recorded.get("source_date_epoch_given"):
        os.environ["SOURCE_DATE_EPOCH"] = str(recorded["source_date_epoch"])
    else:
        os.environ.pop("SOURCE_DATE_EPOCH", None)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("SOURCE_DATE_EPOCH", None)
        else:
            os.environ["SOURCE_DATE_EPOCH"] = before


def check_output(manifest_path: Path, output: Path) -> None:
    """The rebuild must not overwrite the artifact it is checked against."""
    if output.resolve() == manifest_path.parent.resolve():
        raise InputError(
            f"--output {output} is the folder of the artifact being checked",
            hint="rebuild into another folder, e.g. --output rebuild",
        )


# The build pipeline, handed in by the verb: a pipeline is one verb's table of contents and
# never imports another.
Build = Callable[[BuildConfig, list[str]], list[Artifact]]


def rebuild(
    manifest_path: Path, output: Path, build: Build, cache_dir: Path | None = None, no_cache: bool = False
) -> Rebuilt:
    recorded = manifest.load(manifest_path)
    check_output(manifest_path, output)
    values = manifest.settings_values(recorded["settings"])
    values.update({"output": output, "no-cache": no_cache})
    if cache_dir is not None:
        values["cache-dir"] = cache_dir
    config = replace(config_from(values), fresh_artifact=True)
    fmt = str(recorded["artifact"].get("format"))
    log.info("rebuilding %s (%s) from %s", recorded["artifact"].get("file"), fmt, manifest_path.name)
    with source_date_epoch(recorded):
        artifact = next(a for a in build(config, [fmt]) if a.format == fmt)
    assert artifact.manifest is not None and artifact.sbom is not None
    new = json.loads(artifact.manifest.read_text())
    recorded_sha = str(recorded["artifact"].get("sha256"))
    matches = artifact.sha256 == recorded_sha
    changes: list[str] = []
    package_changes: list[str] = []
    if not matches:
        changes = manifest.differences(recorded, new)
        old_sbom = manifest_path.with_name(str(recorded.get("sbom", "")))
        if recorded.get("sbom") and old_sbom.is_file():
            package_changes = manifest.package_changes(old_sbom, artifact.sbom)
    return Rebuilt(artifact, recorded_sha, matches, tuple(changes), tuple(package_changes))
