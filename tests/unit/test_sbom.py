"""The SBOM's parts on small trees: package databases read as the managers write them, licence
names turned into SPDX expressions, package URLs, and a document the SPDX validator accepts
(and one it refuses, so the check can fail)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kairos_build.core.errors import BuildError
from kairos_build.publish.sbom.licences import copyright_licences, licence_id, spdx_expression
from kairos_build.publish.sbom.packages import Package, installed_packages, parse_rpm_query
from kairos_build.publish.sbom.spdx import ImageInfo, spdx_document, supplier

STATUS = """Package: bash
Status: install ok installed
Priority: required
Architecture: amd64
Multi-Arch: foreign
Maintainer: Matthias Klose <doko@debian.org>
Version: 5.2.37-2+b10
Description: GNU Bourne Again SHell
 Bash is an sh-compatible command language interpreter.

Package: libc6
Status: install ok installed
Architecture: amd64
Source: glibc
Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>
Version: 2.41-12
Description: GNU C Library: Shared libraries

Package: oldpkg
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0
"""
DEP5 = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: bash

Files: *
Copyright: 1987-2024 Free Software Foundation, Inc.
License: GPL-3+

Files: lib/malloc/*
Copyright: 1985 Regents
License: BSD-3-clause or GPL-2+, and Expat

License: GPL-3+
 The full text is in /usr/share/common-licenses/GPL-3.
"""
INFO = ImageInfo(
    "kairos-test.iso", "ab" * 32, "iso", "v1.0.0", "Kairos Test image", "debian", "debian-13", "cd" * 32
)


def dpkg_tree(root: Path) -> Path:
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text(STATUS)
    (root / "usr/share/doc/bash").mkdir(parents=True)
    (root / "usr/share/doc/bash/copyright").write_text(DEP5)
    # A hostile image: its copyright file is a link to a host file (one that states licences).
    host_file = root.parent / "host-copyright"
    host_file.write_text(DEP5)
    (root / "usr/share/doc/libc6").mkdir(parents=True)
    (root / "usr/share/doc/libc6/copyright").symlink_to(host_file)
    return root


@pytest.mark.parametrize(
    ("stated", "expected"),
    [
        (("GPL-2+",), "GPL-2.0-or-later"),
        (("GPL-2",), "GPL-2.0-only"),
        (("LGPLv2.1+",), "LGPL-2.1-or-later"),
        (("Expat", "BSD-3-clause"), "MIT AND BSD-3-Clause"),
        (
            ("GPL-2+ or Artistic, and BSD-3-clause",),
            "(GPL-2.0-or-later OR Artistic-1.0-Perl) AND BSD-3-Clause",
        ),
        (("GPL-3+ with GCC-exception-3.1",), "GPL-3.0-or-later WITH GCC-exception-3.1"),
        (("GPL-2+ with OpenSSL exception",), "LicenseRef-GPL-2.0-or-later-with-OpenSSL"),
        (("MIT AND (GPL-2.0-or-later OR LGPL-2.1-only)",), "MIT AND (GPL-2.0-or-later OR LGPL-2.1-only)"),
        (("public-domain",), "LicenseRef-public-domain"),
        (("MPL-1.1+",), "MPL-1.1+"),
        ((), "NOASSERTION"),
    ],
)
def test_licence_names_become_spdx_expressions(stated: tuple[str, ...], expected: str) -> None:
    assert spdx_expression(stated) == expected


def test_only_machine_readable_copyright_files_state_licences() -> None:
    assert copyright_licences(DEP5) == ("GPL-3+", "BSD-3-clause or GPL-2+, and Expat")
    assert copyright_licences("This package was debianized by someone.\nLicense: GPL\n") == ()
    assert licence_id("bsd-2-CLAUSE") == "BSD-2-Clause"


def test_dpkg_status_lists_installed_packages_and_never_reads_outside(tmp_path: Path) -> None:
    database, packages = installed_packages(dpkg_tree(tmp_path / "root"))
    assert database == "dpkg"
    assert [(p.name, p.version, p.arch) for p in packages] == [
        ("bash", "5.2.37-2+b10", "amd64"),
        ("libc6", "2.41-12", "amd64"),
    ]
    bash, libc = packages
    assert bash.licences == ("GPL-3+", "BSD-3-clause or GPL-2+, and Expat")
    assert libc.licences == () and libc.source == "glibc"
    assert bash.summary == "GNU Bourne Again SHell"


def test_apk_and_rpm_databases(tmp_path: Path) -> None:
    root = tmp_path / "alpine"
    (root / "lib/apk/db").mkdir(parents=True)
    (root / "lib/apk/db/installed").write_text(
        "C:Q1abc=\nP:musl\nV:1.2.5-r0\nA:x86_64\nL:MIT\nT:the musl c library\no:musl\n"
        "m:Natanael Copa <ncopa@alpinelinux.org>\n\nP:busybox\nV:1.36.1-r29\nA:x86_64\n"
        "L:GPL-2.0-only\n"
    )
    database, packages = installed_packages(root)
    assert database == "apk"
    assert [(p.name, p.version, p.licences) for p in packages] == [
        ("busybox", "1.36.1-r29", ("GPL-2.0-only",)),
        ("musl", "1.2.5-r0", ("MIT",)),
    ]
    output = (
        "bash\t(none)\t5.2.26\t3.fc40\tx86_64\tGPL-3.0-or-later\tFedora Project\tThe shell\n"
        "shadow-utils\t2\t4.15.1\t3.fc40\tx86_64\tBSD-3-Clause\tFedora Project\tUtilities\n"
        "gpg-pubkey\t(none)\ta15b79cc\t63d04c2c\t(none)\tpubkey\t(none)\tgpg key\n"
    )
    rpms = parse_rpm_query(output)
    assert [(p.name, p.version) for p in rpms] == [
        ("bash", "5.2.26-3.fc40"),
        ("shadow-utils", "2:4.15.1-3.fc40"),
    ]
    assert (
        rpms[1].purl("fedora", "fedora-40")
        == "pkg:rpm/fedora/shadow-utils@2%3A4.15.1-3.fc40?arch=x86_64&distro=fedora-40"
    )
    with pytest.raises(BuildError, match="no package database"):
        installed_packages(tmp_path / "empty")


def test_suppliers() -> None:
    assert supplier("Matthias Klose <doko@debian.org>") == "Person: Matthias Klose (doko@debian.org)"
    assert (
        supplier("GNU Libc Maintainers <debian-glibc@lists.debian.org>")
        == "Organization: GNU Libc Maintainers (debian-glibc@lists.debian.org)"
    )
    assert supplier("") == "NOASSERTION"


def validate(document: dict[str, object], path: Path) -> subprocess.CompletedProcess[str]:
    path.write_text(json.dumps(document))
    tool = Path(sys.executable).parent / "pyspdxtools"
    assert tool.exists(), "pyspdxtools is missing: bash ci/setup.sh --dev installs spdx-tools"
    return subprocess.run([str(tool), "-i", str(path)], capture_output=True, text=True, check=False)


def test_the_document_passes_the_spdx_validator_and_a_broken_one_does_not(tmp_path: Path) -> None:
    _database, packages = installed_packages(dpkg_tree(tmp_path / "root"))
    packages = [*packages, Package("deb", "odd+name", "1:2.0~rc1", "all", ("public-domain",))]
    document = spdx_document(INFO, "dpkg", packages, 1_700_000_000)
    assert document["creationInfo"]["created"] == "2023-11-14T22:13:20Z"  # the epoch, not now
    assert document == spdx_document(INFO, "dpkg", packages, 1_700_000_000)
    refs = [r["licenseId"] for r in document["hasExtractedLicensingInfos"]]
    assert refs == ["LicenseRef-public-domain"]
    good = validate(document, tmp_path / "good.spdx.json")
    assert good.returncode == 0 and not good.stdout.strip(), good.stdout
    # A LicenseRef used but not declared, and a relationship to nothing: refused.
    del document["hasExtractedLicensingInfos"]
    document["relationships"].append(
        {
            "spdxElementId": "SPDXRef-Artifact",
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": "SPDXRef-Missing",
        }
    )
    bad = validate(document, tmp_path / "bad.spdx.json")
    assert bad.returncode != 0 or bad.stdout.strip()
    assert "LicenseRef-public-domain" in bad.stdout + bad.stderr


def test_a_package_database_too_large_to_be_real_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "var/lib/dpkg").mkdir(parents=True)
    with (root / "var/lib/dpkg/status").open("wb") as handle:
        handle.truncate(300 << 20)  # sparse: nothing is written
    with pytest.raises(BuildError, match="too large to be a package database"):
        installed_packages(root)
