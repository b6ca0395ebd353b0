"""What an image has installed, read from its own package database.

dpkg's status file and apk's installed database are text files, read here as they lie in the
rootfs. The rpm database is a binary header store in one of three formats (sqlite, ndb, bdb)
that only the image's own rpm reads with certainty: it runs in the build sandbox over the
read-only rootfs, as the conversion runs the package manager.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from kairos_build.core.errors import BuildError, HostileContentError, KairosError
from kairos_build.core.rootfs import regular_file, resolve_in
from kairos_build.publish.sbom.licences import copyright_licences
from kairos_build.publish.sbom.stanzas import paragraphs

DPKG_STATUS = "var/lib/dpkg/status"
APK_INSTALLED = "lib/apk/db/installed"
RPM_DATABASES = ("usr/lib/sysimage/rpm", "var/lib/rpm")
# One line per package; fields by tab. %{EPOCH} is "(none)" when the package has none.
RPM_QUERY = (
    "%{NAME}\\t%{EPOCHNUM}\\t%{VERSION}\\t%{RELEASE}\\t%{ARCH}\\t%{LICENSE}\\t%{VENDOR}\\t%{SUMMARY}\\n"
)


@dataclass(frozen=True)
class Package:
    """One installed package, as its manager records it."""

    kind: str  # the purl type: deb, rpm, apk
    name: str
    version: str
    arch: str
    licences: tuple[str, ...] = ()  # as the package states them (copyright file, tag)
    supplier: str = ""
    summary: str = ""
    source: str = ""  # the source package, where it differs from the name

    def purl(self, namespace: str, distro: str) -> str:
        """The package URL (github.com/package-url/purl-spec): type, the distro's namespace,
        name, version and qualifiers, each percent-encoded."""
        qualifiers = [f"arch={quote(self.arch, safe='')}", f"distro={quote(distro, safe='')}"]
        if self.source and self.source != self.name:
            qualifiers.append(f"upstream={quote(self.source, safe='')}")
        return (
            f"pkg:{self.kind}/{quote(namespace, safe='')}/{quote(self.name, safe='')}@"
            f"{quote(self.version, safe='')}?{'&'.join(qualifiers)}"
        )


def _read(rootfs: Path, path: str, limit: int = 256 << 20) -> str:
    """A text file of the image ("" when missing); a link never leads out of the rootfs, and
    a file larger than `limit` (a hostile image's) is refused, not loaded."""
    found = regular_file(rootfs, path)
    if found is None:
        return ""
    if found.stat().st_size > limit:
        raise BuildError(
            f"the image's /{path} is {found.stat().st_size >> 20} MiB: too large to be a package database",
            hint="check where the base image comes from",
        )
    return found.read_text(errors="replace")


def _copyright(rootfs: Path, package: str) -> str:
    """A package's copyright file; none that is larger than any real one (16 MiB)."""
    try:
        return _read(rootfs, f"usr/share/doc/{package}/copyright", limit=16 << 20)
    except BuildError:
        return ""


def dpkg_packages(rootfs: Path) -> list[Package]:
    """Every package dpkg has installed (Status: ... installed), its licences from its
    machine-readable copyright file."""
    found = []
    for stanza in paragraphs(_read(rootfs, DPKG_STATUS)):
        if stanza.get("Status", "").split()[-1:] != ["installed"]:
            continue  # removed with its configuration kept, half-installed, ...
        name = stanza["Package"]
        source = stanza.get("Source", "").split(" ")[0]
        found.append(
            Package(
                "deb",
                name,
                stanza.get("Version", ""),
                stanza.get("Architecture", ""),
                copyright_licences(_copyright(rootfs, name)),
                stanza.get("Maintainer", ""),
                stanza.get("Description", "").split("\n")[0],
                source,
            )
        )
    return found


def apk_packages(rootfs: Path) -> list[Package]:
    """apk's installed database: one stanza per package, one letter per field."""
    found = []
    for stanza in paragraphs(_read(rootfs, APK_INSTALLED)):
        if "P" not in stanza:
            continue
        licence = stanza.get("L", "")
        found.append(
            Package(
                "apk",
                stanza["P"],
                stanza.get("V", ""),
                stanza.get("A", ""),
                (licence,) if licence else (),
                stanza.get("m", ""),
                stanza.get("T", ""),
                stanza.get("o", ""),
            )
        )
    return found


def parse_rpm_query(output: str) -> list[Package]:
    """Packages from rpm's answer to RPM_QUERY; the version is rpm's EVR ([E:]V-R)."""
    found = []
    for line in output.splitlines():
        parts = line.split("\t")
        if len(parts) != 8 or parts[0].startswith("gpg-pubkey"):
            continue  # imported signing keys are headers in the database, not packages
        name, epoch, version, release, arch, licence, vendor, summary = parts
        evr = f"{version}-{release}" if epoch in ("", "0", "(none)") else f"{epoch}:{version}-{release}"
        found.append(
            Package(
                "rpm",
                name,
                evr,
                arch,
                (licence,) if licence and licence != "(none)" else (),
                "" if vendor == "(none)" else vendor,
                summary,
            )
        )
    return found


def rpm_packages(rootfs: Path) -> list[Package]:
    from kairos_build.core.sandbox import run_in_root

    try:
        output = run_in_root(rootfs, ["rpm", "-qa", "--queryformat", RPM_QUERY], read_only=True)
    except KairosError as exc:
        raise BuildError(
            f"the image's own rpm could not list its packages: {exc.message}",
            hint="an image with an rpm database needs its rpm to read it",
        ) from None
    return parse_rpm_query(output)


def _has_rpm_database(rootfs: Path) -> bool:
    for folder in RPM_DATABASES:
        try:
            found = resolve_in(rootfs, folder)
        except HostileContentError:
            continue
        if found.is_dir() and any(found.iterdir()):
            return True
    return False


READERS: tuple[tuple[str, Callable[[Path], bool], Callable[[Path], list[Package]]], ...] = (
    ("dpkg", lambda root: regular_file(root, DPKG_STATUS) is not None, dpkg_packages),
    ("apk", lambda root: regular_file(root, APK_INSTALLED) is not None, apk_packages),
    ("rpm", _has_rpm_database, rpm_packages),
)


def installed_packages(rootfs: Path) -> tuple[str, list[Package]]:
    """The database found in `rootfs` and its packages, sorted by name and architecture."""
    for database, present, read in READERS:
        if present(rootfs):
            packages = sorted(read(rootfs), key=lambda p: (p.name, p.arch, p.version))
            return database, packages
    raise BuildError(
        "the image has no package database to make an SBOM from",
        hint=f"looked for {DPKG_STATUS}, {APK_INSTALLED} and {' or '.join(RPM_DATABASES)}",
    )
