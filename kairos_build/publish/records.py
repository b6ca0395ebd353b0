"""The records beside each artifact: NAME.spdx.json (what is in it) and NAME.build.json (what
made it; see manifest.py). Both are written whole under their names, after the artifact."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kairos_build import __version__
from kairos_build.config.buildconfig import BuildConfig
from kairos_build.core.reproducible import given_epoch
from kairos_build.exporters.base import ExportContext
from kairos_build.publish import manifest
from kairos_build.publish.artifact_cache import code_digest
from kairos_build.publish.files import Artifact, publish_json
from kairos_build.publish.sbom.packages import Package
from kairos_build.publish.sbom.spdx import ImageInfo, spdx_document
from kairos_build.publish.toolversions import python_versions, tool_versions
from kairos_build.source.resolve import Base

SBOM_SUFFIX = ".spdx.json"
MANIFEST_SUFFIX = ".build.json"


@dataclass(frozen=True)
class BuildFacts:
    """What the artifacts of one build share: the base, the image's packages, the stages
    every artifact came through (the base and the conversion), our framework files."""

    base: Base
    database: str
    packages: Sequence[Package]
    stages: Sequence[tuple[str, str]]
    framework_digest: str


def beside(artifact: Path, suffix: str) -> Path:
    return artifact.with_name(artifact.name + suffix)


def image_info(config: BuildConfig, artifact: Artifact, framework_digest: str) -> ImageInfo:
    flavor, release = config.flavor, config.release
    return ImageInfo(
        artifact=artifact.path.name,
        sha256=artifact.sha256,
        format=artifact.format,
        version=config.version,
        description=f"Kairos {flavor.pretty_name} {release.flavor_release} {config.variant} image",
        purl_namespace=flavor.name,
        distro=f"{flavor.name}-{release.flavor_release}",
        framework_digest=framework_digest,
    )


def package_lines(packages: Sequence[Package]) -> list[str]:
    return [f"{p.name} {p.version} {p.arch}" for p in packages]


def build_manifest(
    artifact: Artifact,
    context: ExportContext,
    facts: BuildFacts,
    stages: Sequence[tuple[str, str]],
    tools: Sequence[str],
) -> dict[str, Any]:
    config = context.config
    settings = dict(config.settings)
    return {
        "kairos-build-manifest": manifest.FORMAT,
        "artifact": {
            "file": artifact.path.name,
            "format": artifact.format,
            "sha256": artifact.sha256,
            "size": artifact.size,
        },
        "flavor": config.flavor.name,
        "release": config.release.name,
        "base": {
            "ref": config.base or config.release.image,
            "key": facts.base.key,
            "description": facts.base.description,
        },
        "settings": manifest.settings_record(settings),
        "inputs": manifest.input_files(settings),
        "source_date_epoch": context.epoch,
        "source_date_epoch_given": given_epoch() is not None,
        "stages": [list(s) for s in dict.fromkeys([*facts.stages, *stages])],
        "packages": {
            "database": facts.database,
            "count": len(facts.packages),
            "sha256": manifest.packages_digest(package_lines(facts.packages)),
        },
        "tool": {"kairos-build": __version__, "code": code_digest(), "framework": facts.framework_digest},
        "python": python_versions(),
        "host_tools": tool_versions(tuple(sorted(set(tools)))),
        "sbom": beside(artifact.path, SBOM_SUFFIX).name,
    }


def write_records(
    artifact: Artifact,
    context: ExportContext,
    facts: BuildFacts,
    stages: Sequence[tuple[str, str]],
    tools: Sequence[str],
) -> Artifact:
    """NAME.spdx.json and NAME.build.json beside the published artifact."""
    sbom = beside(artifact.path, SBOM_SUFFIX)
    record = beside(artifact.path, MANIFEST_SUFFIX)
    info = image_info(context.config, artifact, facts.framework_digest)
    publish_json(sbom, spdx_document(info, facts.database, facts.packages, context.epoch))
    publish_json(record, build_manifest(artifact, context, facts, stages, tools))
    return dataclasses.replace(artifact, sbom=sbom, manifest=record)
