"""RFC 822-style stanzas, the format of dpkg's status file and of Debian's machine-readable
copyright files: read by the package list and by the licence reader alike."""

from __future__ import annotations

from collections.abc import Iterator


def paragraphs(text: str) -> Iterator[dict[str, str]]:
    """RFC 822-style stanzas (dpkg status, Debian copyright files): continuation lines are
    joined to their field with a newline."""
    fields: dict[str, str] = {}
    last = ""
    for line in text.splitlines():
        if not line.strip():
            if fields:
                yield fields
            fields, last = {}, ""
        elif line[0] in " \t" and last:
            fields[last] += "\n" + line.strip()
        elif ":" in line:
            last, _, value = line.partition(":")
            fields[last] = value.strip()
    if fields:
        yield fields
