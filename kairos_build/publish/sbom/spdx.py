"""An SPDX 2.3 document (JSON) for one artifact: every package of the image, from its own
package database, and our framework layer as one more package, all contained in the artifact.

Reproducible: the creation date is the build's SOURCE_DATE_EPOCH and the namespace is made of
the artifact's name and sha256, so the same artifact gets the same SBOM byte for byte.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kairos_build import __version__
from kairos_build.publish.sbom.licences import licence_refs, spdx_expression
from kairos_build.publish.sbom.packages import Package

LICENCE_LIST_VERSION = "3.24"  # sbom/spdx-license-ids.txt
# Our own licence (pyproject.toml): the framework layer's files are ours.
FRAMEWORK_LICENCE = "Apache-2.0"
_ORGANIZATION = re.compile(
    r"(?i)\b(team|maintainers|developers|project|group|community|"
    r"foundation|packagers|debian|ubuntu|fedora|opensuse|alpine)\b"
)


@dataclass(frozen=True)
class ImageInfo:
    """What the SBOM says of the artifact and where its packages come from."""

    artifact: str  # the file (or folder) name
    sha256: str
    format: str
    version: str
    description: str  # e.g. "Kairos Debian 13 core image"
    purl_namespace: str  # debian, ubuntu, fedora, alpine, ...
    distro: str  # the purl distro qualifier, e.g. debian-13
    framework_digest: str  # sha256 of our framework files in the image


def supplier(stated: str) -> str:
    """SPDX's supplier form ("Person: NAME (EMAIL)" or "Organization: ...") of a maintainer
    or vendor field, or NOASSERTION."""
    name, _, rest = stated.partition("<")
    email = rest.split(">")[0].strip()
    name = re.sub(r"[()\n\t]", " ", name)
    name = " ".join(name.split())
    if not name:
        return "NOASSERTION"
    kind = "Organization" if _ORGANIZATION.search(name) else "Person"
    return f"{kind}: {name} ({email})" if email and re.fullmatch(r"[^()\s]+", email) else f"{kind}: {name}"


def _spdx_id(index: int, package: Package) -> str:
    return f"SPDXRef-Package-{package.kind}-{index}-" + re.sub(r"[^A-Za-z0-9.-]+", "-", package.name)


def _package(index: int, package: Package, image: ImageInfo) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "SPDXID": _spdx_id(index, package),
        "name": package.name,
        "versionInfo": package.version,
        "supplier": supplier(package.supplier),
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": False,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": spdx_expression(package.licences),
        "copyrightText": "NOASSERTION",
        "externalRefs": [
            {
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": package.purl(image.purl_namespace, image.distro),
            }
        ],
        "primaryPackagePurpose": "LIBRARY" if package.name.startswith("lib") else "APPLICATION",
    }
    if package.summary:
        entry["summary"] = package.summary
    if package.source and package.source != package.name:
        entry["sourceInfo"] = f"built from the source package {package.source}"
    return entry


def spdx_document(image: ImageInfo, database: str, packages: Sequence[Package], epoch: int) -> dict[str, Any]:
    """The SPDX 2.3 document of an artifact holding `packages` (read from `database`)."""
    artifact = {
        "SPDXID": "SPDXRef-Artifact",
        "name": image.artifact,
        "versionInfo": image.version,
        "supplier": "NOASSERTION",
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": False,
        "checksums": [{"algorithm": "SHA256", "checksumValue": image.sha256}],
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "primaryPackagePurpose": "OPERATING-SYSTEM",
        "description": f"{image.description} ({image.format}); its packages are listed from "
        f"the image's {database} database.",
    }
    framework = {
        "SPDXID": "SPDXRef-Framework",
        "name": "kairos-build-framework",
        "versionInfo": __version__,
        "supplier": "Organization: kairos-build",
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": False,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": FRAMEWORK_LICENCE,
        "copyrightText": "NOASSERTION",
        "primaryPackagePurpose": "FRAMEWORK",
        "description": "The Kairos framework layer kairos-build adds: kairos-agent, the "
        "initramfs module that mounts the image read-only, the boot files and "
        "services, /etc/kairos-release.",
        "comment": f"sha256 of the framework files: {image.framework_digest}",
    }
    listed = [_package(index, p, image) for index, p in enumerate(packages, 1)]
    relationships = [
        {
            "spdxElementId": "SPDXRef-DOCUMENT",
            "relationshipType": "DESCRIBES",
            "relatedSpdxElement": "SPDXRef-Artifact",
        }
    ]
    relationships += [
        {
            "spdxElementId": "SPDXRef-Artifact",
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": p["SPDXID"],
        }
        for p in [framework, *listed]
    ]
    refs = {ref: None for p in listed for ref in licence_refs(p["licenseDeclared"])}
    document: dict[str, Any] = {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": image.artifact,
        "documentNamespace": f"https://spdx.org/spdxdocs/kairos-build/{image.artifact}-{image.sha256}",
        "creationInfo": {
            "created": datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "creators": [f"Tool: kairos-build-{__version__}"],
            "licenseListVersion": LICENCE_LIST_VERSION,
        },
        "packages": [artifact, framework, *listed],
        "relationships": relationships,
    }
    if refs:
        document["hasExtractedLicensingInfos"] = [
            {
                "licenseId": ref,
                "name": ref.removeprefix("LicenseRef-"),
                "extractedText": "A licence the package names that the SPDX License List does not "
                f"have: {ref.removeprefix('LicenseRef-')}. See the package's own "
                "copyright statement in the image.",
            }
            for ref in refs
        ]
    return document
