"""A format from a third party: a distribution of its own, installed with pip, that registers an
exporter in the `kairos_build.exporters` entry point group and nothing else. kairos-build lists
it, offers it in --help and `build --format`, and builds it, published and checksummed like its
own formats."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.integration

DIST = "kb-tarball-plugin"
VERSION = "0.1.0"
PYPROJECT = f"""[project]
name = "{DIST}"
version = "{VERSION}"

[project.entry-points."kairos_build.exporters"]
tarball = "kb_tarball_plugin:TarballExporter"
"""
# It follows the protocol of docs/formats.md's "Writing a format" and imports nothing of
# kairos-build: the protocol is the whole contract.
MODULE = '''"""A kairos-build format: a few files of the converted rootfs in a tar."""

import tarfile
from pathlib import Path

MEMBERS = ("etc/kairos-release", "etc/os-release")


class TarballExporter:
    """Build a tar of the rootfs's release files."""

    name = "tarball"
    extension = "tar"
    boot_mode = "secureboot"
    tools = ()
    files = ()

    def export(self, context, output: Path) -> None:
        with tarfile.open(output, "w", format=tarfile.GNU_FORMAT) as tar:
            for member in MEMBERS:
                info = tar.gettarinfo(context.rootfs / member, arcname=member)
                info.mtime, info.uid, info.gid, info.uname, info.gname = context.epoch, 0, 0, "", ""
                if info.isreg():
                    with (context.rootfs / member).open("rb") as data:
                        tar.addfile(info, data)
                else:
                    tar.addfile(info)  # a link is kept as a link, never followed on the host
'''


def record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def write_wheel(source: Path, target: Path) -> Path:
    """The distribution in `source` as a wheel (PEP 427): its pyproject's name, version and entry
    points, spelled as a wheel spells them. Written here because the venv's setuptools (65)
    cannot build a wheel without the `wheel` package, which the venv does not have."""
    project = tomllib.loads((source / "pyproject.toml").read_text())["project"]
    name, version = project["name"], project["version"]
    stem = f"{name.replace('-', '_')}-{version}"
    info = f"{stem}.dist-info"
    entry_points = "".join(
        f"[{group}]\n" + "".join(f"{key} = {value}\n" for key, value in entries.items())
        for group, entries in project["entry-points"].items()
    )
    files = {module.name: module.read_bytes() for module in sorted(source.glob("*.py"))}
    files |= {
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: kairos-build tests\n"
        b"Root-Is-Purelib: true\nTag: py3-none-any\n",
        f"{info}/entry_points.txt": entry_points.encode(),
    }
    record = [record_line(path, data) for path, data in files.items()] + [f"{info}/RECORD,,"]
    wheel = target / f"{stem}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
        archive.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return wheel


def pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", *args, "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture()
def tarball_plugin(tmp_path: Path) -> Iterator[str]:
    """The plugin installed into this venv for the test, uninstalled after it, pass or fail."""
    source = tmp_path / "kb-tarball-plugin"
    source.mkdir()
    (source / "pyproject.toml").write_text(PYPROJECT)
    (source / "kb_tarball_plugin.py").write_text(MODULE)
    wheel = write_wheel(source, tmp_path)
    try:
        installed = pip("install", "--no-deps", "--no-index", str(wheel))
        assert installed.returncode == 0, installed.stdout + installed.stderr
        yield "tarball"
    finally:
        pip("uninstall", "--yes", DIST)


def test_a_plugin_format_is_listed_offered_and_built(
    tarball_plugin: str, test_cache: Path, tmp_path: Path
) -> None:
    listed = run_cli("formats", "--json")
    assert listed.returncode == 0, listed.stderr
    formats = {f["name"]: f for f in json.loads(listed.stdout)["formats"]}
    assert formats[tarball_plugin]["provider"] == DIST, formats[tarball_plugin]
    assert formats[tarball_plugin]["summary"] == "Build a tar of the rootfs's release files."
    assert "iso" in formats  # kairos-build's own formats are still there

    shown = run_cli("--help")
    assert shown.returncode == 0 and tarball_plugin in shown.stdout, shown.stdout
    build_help = run_cli("build", "--help")
    assert tarball_plugin in build_help.stdout, build_help.stdout

    out = tmp_path / "out"
    built = run_cli(
        "build",
        "--format",
        tarball_plugin,
        "--base",
        "bootstrap:debian/trixie",
        "--output",
        str(out),
        "--cache-dir",
        str(test_cache),
    )
    assert built.returncode == 0, built.stderr[-4000:]
    artifacts = list(out.glob("*.tar"))
    assert len(artifacts) == 1, list(out.iterdir())
    artifact = artifacts[0]
    checksum = artifact.with_name(f"{artifact.name}.sha256").read_text().split()[0]
    assert checksum == hashlib.sha256(artifact.read_bytes()).hexdigest()
    with tarfile.open(artifact) as tar:
        assert "KAIROS_VERSION" in tar.extractfile("etc/kairos-release").read().decode()  # type: ignore[union-attr]


def test_the_plugin_is_gone_after_its_test() -> None:
    """The fixture's uninstall really removes it: no other test sees a stray format."""
    listed = run_cli("formats", "--json")
    assert listed.returncode == 0, listed.stderr
    assert "tarball" not in {f["name"] for f in json.loads(listed.stdout)["formats"]}
