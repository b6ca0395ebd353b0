"""Licences as packages state them, turned into SPDX license expressions.

A Debian package states its licences in its machine-readable copyright file (DEP-5), an rpm in
its License tag, an apk in its `L:` field. Each name becomes an SPDX identifier where one is
known (sbom/spdx-license-ids.txt, sbom/licence-aliases.yaml, the GPL-style rule below), and a
LicenseRef- of its own otherwise; the SBOM declares each LicenseRef it uses.
"""

from __future__ import annotations

import functools
import re

import yaml

from kairos_build.core.data import data_dir
from kairos_build.publish.sbom.stanzas import paragraphs

# GPL-2+, GPLv2+, GPL-2.0+, LGPL-2.1, AGPL-3, GFDL-1.3+ ...
_GPL_STYLE = re.compile(r"^(AGPL|LGPL|GPL|GFDL)-?v?(\d)(?:\.(\d))?(\+)?$", re.IGNORECASE)
_TOKEN = re.compile(r"\(|\)|[^\s()]+")
_KEYWORDS = {"and": "AND", "or": "OR", "with": "WITH"}


@functools.cache
def _ids(name: str) -> dict[str, str]:
    """An SPDX identifier list (sbom/NAME), by lower-cased identifier."""
    lines = (data_dir("sbom") / name).read_text().splitlines()
    return {line.lower(): line for line in lines if line and not line.startswith("#")}


@functools.cache
def _aliases() -> dict[str, str]:
    loaded = yaml.safe_load((data_dir("sbom") / "licence-aliases.yaml").read_text()) or {}
    return {str(k).lower(): str(v) for k, v in loaded.items()}


def copyright_licences(text: str) -> tuple[str, ...]:
    """The licence expressions of a DEP-5 copyright file: its header's and each Files
    paragraph's, once each, in order. A free-form copyright file states none we can read."""
    stanzas = list(paragraphs(text))
    if (
        not stanzas
        or "copyright-format" not in stanzas[0].get("Format", "")
        and "dep5" not in stanzas[0].get("Format", "").lower()
    ):
        return ()
    found: dict[str, None] = {}
    for index, stanza in enumerate(stanzas):
        if (index == 0 or "Files" in stanza) and stanza.get("License"):
            found.setdefault(stanza["License"].split("\n")[0].strip(), None)
    return tuple(found)


def ref_id(name: str) -> str:
    """The LicenseRef- identifier of a name SPDX does not list."""
    return "LicenseRef-" + (re.sub(r"[^A-Za-z0-9.-]+", "-", name).strip("-") or "unnamed")


def licence_id(name: str) -> str:
    """The SPDX identifier of one licence name, or its LicenseRef-."""
    licences = _ids("spdx-license-ids.txt")
    if name.lower() in licences:
        return licences[name.lower()]
    if name.lower() in _aliases():
        return _aliases()[name.lower()]
    if match := _GPL_STYLE.match(name):
        family, major, minor, plus = match.groups()
        candidate = f"{family.upper()}-{major}.{minor or 0}-{'or-later' if plus else 'only'}"
        if candidate.lower() in licences:
            return licences[candidate.lower()]
    if name.endswith("+") and name[:-1].lower() in licences:  # SPDX's own "or later" operator
        return licences[name[:-1].lower()] + "+"
    return ref_id(name)


def exception_id(name: str) -> str | None:
    """The SPDX exception of a name ("Libtool", "GCC-exception-3.1"), or None."""
    exceptions = _ids("spdx-exception-ids.txt")
    for candidate in (name, f"{name}-exception"):
        if candidate.lower() in exceptions:
            return exceptions[candidate.lower()]
    return None


def _convert(words: list[str]) -> str:
    """One comma-free expression: names, and/or/with, parentheses."""
    out: list[str] = []
    index = 0
    while index < len(words):
        word = words[index]
        keyword = _KEYWORDS.get(word.lower())
        if word in "()" or keyword in ("AND", "OR"):
            out.append(keyword or word)
        elif keyword == "WITH" and out and index + 1 < len(words):
            # "GPL-2+ with OpenSSL exception": the exception's words up to the next operator.
            end = index + 1
            while end < len(words) and words[end].lower() not in ("and", "or", ")"):
                end += 1
            exception = " ".join(w for w in words[index + 1 : end] if w.lower() != "exception")
            known = exception_id(exception.replace(" ", "-"))
            if known:
                out.append(f"WITH {known}")
            else:  # the licence and its exception as one name SPDX does not list
                out[-1] = ref_id(f"{out[-1]}-with-{exception}")
            index = end
            continue
        else:
            out.append(licence_id(word))
        index += 1
    return " ".join(out).replace("( ", "(").replace(" )", ")")


def spdx_expression(stated: tuple[str, ...]) -> str:
    """One SPDX expression for all the licences a package states (each must hold: AND), or
    NOASSERTION when it states none."""
    parts: list[str] = []
    for text in stated:
        # DEP-5: "A or B, and C" groups what comes before the comma: (A OR B) AND C.
        segments = re.split(r",\s*(and|or)\s+", text.strip().rstrip(","))
        expression = _convert(_TOKEN.findall(segments[0].replace(",", " ")))
        for op, segment in zip(segments[1::2], segments[2::2], strict=True):
            expression = f"({expression}) {op.upper()} {_convert(_TOKEN.findall(segment.replace(',', ' ')))}"
        if expression and expression not in parts:
            parts.append(expression)
    if not parts:
        return "NOASSERTION"
    if len(parts) == 1:
        return parts[0]
    return " AND ".join(
        p if " " not in p or p.startswith("(") and p.endswith(")") else f"({p})" for p in parts
    )


def licence_refs(expression: str) -> list[str]:
    """The LicenseRef- identifiers an expression uses, once each."""
    return list(dict.fromkeys(re.findall(r"LicenseRef-[A-Za-z0-9.-]+", expression)))
