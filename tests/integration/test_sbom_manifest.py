"""The records beside a real artifact: the SBOM passes the SPDX project's own validator and
lists what the image's own dpkg lists; the build manifest rebuilds the artifact bit for bit,
and a manifest whose input changed says which; --json names every record."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest

from kairos_build.core.cache import Cache
from kairos_build.core.sandbox import run_in_root
from tests.conftest import run_cli

pytestmark = pytest.mark.integration

BASE = "bootstrap:debian/trixie"


def pyspdxtools() -> str:
    tool = Path(sys.executable).parent / "pyspdxtools"
    assert tool.exists(), "pyspdxtools is missing: bash ci/setup.sh --dev installs spdx-tools"
    return str(tool)


def sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def test_the_sbom_validates_and_lists_what_dpkg_lists(built_iso: tuple[Path, str], test_cache: Path) -> None:
    iso, _stderr = built_iso
    sbom = iso.with_name(iso.name + ".spdx.json")
    record = json.loads(iso.with_name(iso.name + ".build.json").read_text())
    validated = subprocess.run([pyspdxtools(), "-i", str(sbom)], capture_output=True, text=True, check=False)
    assert validated.returncode == 0 and not validated.stdout.strip(), validated.stdout[-3000:]

    document = json.loads(sbom.read_text())
    assert document["spdxVersion"] == "SPDX-2.3"
    packages = {p["SPDXID"]: p for p in document["packages"]}
    artifact = packages["SPDXRef-Artifact"]
    assert artifact["checksums"] == [{"algorithm": "SHA256", "checksumValue": sha256(iso)}]
    assert packages["SPDXRef-Framework"]["name"] == "kairos-build-framework"
    listed = {
        (p["name"], p["versionInfo"]) for id_, p in packages.items() if id_.startswith("SPDXRef-Package-deb-")
    }
    contained = {
        r["relatedSpdxElement"]
        for r in document["relationships"]
        if r["spdxElementId"] == "SPDXRef-Artifact" and r["relationshipType"] == "CONTAINS"
    }
    assert contained == set(packages) - {"SPDXRef-Artifact"}

    # What the image's own package manager says, run in the image (the converted rootfs the
    # ISO was made from, named by the manifest).
    converted = next(key for kind, key in record["stages"] if kind == "converted")
    root = Cache(test_cache).path("converted", converted)
    output = run_in_root(
        root,
        ["dpkg-query", "-W", "-f", "${db:Status-Status}\\t${binary:Package}\\t${Version}\\n"],
        read_only=True,
    )
    installed = {
        (name.split(":")[0], version)
        for status, name, version in (line.split("\t") for line in output.splitlines())
        if status == "installed"
    }
    assert len(installed) > 100
    assert listed == installed
    assert record["packages"]["count"] == len(installed)
    # Every package has a purl with its version, and a licence where its copyright file says.
    by_name = {p["name"]: p for id_, p in packages.items() if id_.startswith("SPDXRef-Package-")}
    bash = by_name["bash"]
    purl = bash["externalRefs"][0]["referenceLocator"]
    assert purl == f"pkg:deb/debian/bash@{quote(bash['versionInfo'], safe='')}?arch=amd64&distro=debian-13"
    assert "GPL-3.0-or-later" in bash["licenseDeclared"]


def test_the_manifest_rebuilds_the_same_bytes_and_names_a_changed_input(
    test_cache: Path, tmp_path: Path
) -> None:
    config = tmp_path / "cloud-config.yaml"
    config.write_text("#cloud-config\nhostname: rebuild-one\n")
    out = tmp_path / "out"
    result = run_cli(
        "iso",
        "--base",
        BASE,
        "--cloud-config",
        str(config),
        "--output",
        str(out),
        "--cache-dir",
        str(test_cache),
        "--json",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    [entry] = json.loads(result.stdout)["artifacts"]
    iso = Path(entry["path"])
    assert entry["sha256"] == sha256(iso)
    for key, suffix in (("checksum", ".sha256"), ("sbom", ".spdx.json"), ("manifest", ".build.json")):
        assert entry[key] == str(iso) + suffix and Path(entry[key]).is_file(), key
    record = json.loads(Path(entry["manifest"]).read_text())
    assert record["artifact"]["sha256"] == entry["sha256"]
    assert record["settings"]["cloud-config"] == str(config)
    assert record["settings"]["version"] == "v0.1.0" and record["base"]["ref"] == BASE
    assert {kind for kind, _key in record["stages"]} >= {"rootfs", "converted", "artifact"}

    # The same inputs: the same bytes (the artifact is exported anew, not copied).
    same = run_cli(
        "rebuild", entry["manifest"], "--output", str(tmp_path / "again"), "--cache-dir", str(test_cache)
    )
    assert same.returncode == 0, same.stderr[-3000:]
    assert f"sha256 matches: {entry['sha256']}" in same.stdout
    assert "exporting iso" in same.stderr and "reusing the cached artifact" not in same.stderr
    assert sha256(tmp_path / "again" / iso.name) == entry["sha256"]

    # The cloud-config changed since: another ISO, and the rebuild says what changed.
    config.write_text("#cloud-config\nhostname: rebuild-two\n")
    changed = run_cli(
        "rebuild",
        entry["manifest"],
        "--output",
        str(tmp_path / "changed"),
        "--cache-dir",
        str(test_cache),
        "--json",
    )
    assert changed.returncode == 1, changed.stderr[-3000:]
    report = json.loads(changed.stdout)
    assert report["matches"] is False and report["recorded_sha256"] == entry["sha256"]
    assert report["changes"][0].startswith(f"cloud-config {config} changed: sha256 ")
    assert not any("setting" in c or "base" in c for c in report["changes"]), report["changes"]
    assert "is not the recorded one" in changed.stderr

    # Never over the artifact being checked.
    refused = run_cli("rebuild", entry["manifest"], "--output", str(out))
    assert refused.returncode == 2 and "folder of the artifact being checked" in refused.stderr
    shutil.rmtree(tmp_path)
