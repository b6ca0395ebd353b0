"""The build manifest beside an artifact (NAME.build.json): everything that made it, so that
`kairos-build rebuild` makes it again and, when the sha256 differs, says which input did.

Recorded: the artifact's sha256; the base (its reference, the key naming its content, its
description); flavor and release; every effective setting (the keys of a config file), with
the files they name by digest; SOURCE_DATE_EPOCH; each cache stage the artifact came from;
kairos-build's version and code, its Python dependencies, and the host programs the build
drove, by package version; the image's packages by digest (the SBOM lists them).
Never a private key: the keys folder is recorded by path and its certificates' digests.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from kairos_build.config.settings import BY_KEY, Value
from kairos_build.core.cache import hash_tree
from kairos_build.core.errors import InputError

FORMAT = 1
# What a rebuild chooses for itself: where it writes and caches, how it reports, whether it
# fetches the base anew (the base's digest is checked either way).
NOT_RECORDED = ("output", "cache-dir", "json", "no-cache", "pull")
# The public halves of Trusted Boot keys: they decide the artifact's bytes with the private
# ones, which are never read here.
PUBLIC_KEY_FILES = ("PK.pem", "KEK.pem", "db.pem", "tpm2-pcr-public.pem")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def settings_record(settings: dict[str, object]) -> dict[str, object]:
    """The effective settings a rebuild needs, paths absolute."""
    record: dict[str, object] = {}
    for key, value in settings.items():
        if key in NOT_RECORDED:
            continue
        if BY_KEY[key].kind == "path" and value is not None:
            value = str(Path(str(value)).resolve())
        record[key] = value
    return record


def input_files(settings: dict[str, object]) -> dict[str, dict[str, str]]:
    """What the files and folders the settings name held: a changed one is named by rebuild."""
    inputs: dict[str, dict[str, str]] = {}
    for key, value in settings.items():
        if BY_KEY[key].kind != "path" or value is None or key in NOT_RECORDED:
            continue
        path = Path(str(value))
        if key == "keys":
            inputs[key] = {
                name: sha256_bytes((path / name).read_bytes())
                for name in PUBLIC_KEY_FILES
                if (path / name).is_file()
            }
        elif path.is_dir():
            inputs[key] = {"tree": hash_tree(path)}
        elif path.is_file():
            inputs[key] = {"sha256": sha256_bytes(path.read_bytes())}
    return inputs


def packages_digest(lines: list[str]) -> str:
    return sha256_bytes("\n".join(lines).encode())


def load(path: Path) -> dict[str, Any]:
    """A manifest file, checked for what rebuild reads from it."""
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise InputError(f"cannot read the build manifest {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise InputError(f"{path} is not a build manifest: not JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("kairos-build-manifest") != FORMAT:
        raise InputError(
            f"{path} is not a build manifest of this kairos-build",
            hint=f"give a NAME.build.json written beside an artifact (format {FORMAT})",
        )
    for field, kind in (
        ("artifact", dict),
        ("settings", dict),
        ("base", dict),
        ("stages", list),
        ("source_date_epoch", int),
    ):
        if not isinstance(data.get(field), kind):
            raise InputError(f"the build manifest {path} has no valid {field!r}")
    for key in data["settings"]:
        if key not in BY_KEY or not BY_KEY[key].takes("build"):
            raise InputError(
                f"the build manifest {path} has a setting this kairos-build does not know: {key}",
                hint="rebuild with the kairos-build version "
                f"it names: {data.get('tool', {}).get('kairos-build', 'unknown')}",
            )
    return data


def settings_values(recorded: dict[str, object]) -> dict[str, Value]:
    """The recorded settings as resolved setting values (each checked again, as given)."""
    values: dict[str, Value] = {}
    for key, value in recorded.items():
        setting = BY_KEY[key]
        given: Value
        if setting.kind == "list":
            given = tuple(str(v) for v in value) if isinstance(value, list) else ()
        elif setting.kind == "flag":
            given = value is True
        elif setting.kind == "path":
            given = None if value is None else Path(str(value))
        else:
            given = None if value is None else str(value)
        try:
            values[key] = setting.validate(given)
        except InputError as exc:
            raise InputError(
                f"the manifest's {key}: {exc.message}",
                hint=exc.hint or "put the file back where the manifest says",
            ) from None
    return values


def _digests(record: object) -> str:
    """A file record ({"sha256": ...}, {"tree": ...}, {"db.pem": ...}) in short."""
    if not isinstance(record, dict) or not record:
        return "(none)"
    return ", ".join(f"{name} {str(value)[:12]}" for name, value in sorted(record.items()))


def _changed(label: str, old: object, new: object) -> str:
    return f"{label}: {old} -> {new}"


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between the inputs two manifests record, most telling first."""
    found: list[str] = []
    if old["base"].get("key") != new["base"].get("key"):
        found.append(
            _changed(f"the base {old['base'].get('ref')}", old["base"].get("key"), new["base"].get("key"))
        )
    for key in sorted(set(old["settings"]) | set(new["settings"])):
        if old["settings"].get(key) != new["settings"].get(key):
            found.append(_changed(f"setting {key}", old["settings"].get(key), new["settings"].get(key)))
    old_inputs, new_inputs = old.get("inputs", {}), new.get("inputs", {})
    for key in sorted(set(old_inputs) | set(new_inputs)):
        if old_inputs.get(key) != new_inputs.get(key):
            where = new["settings"].get(key) or old["settings"].get(key)
            found.append(
                f"{key} {where} changed: {_digests(old_inputs.get(key))} -> {_digests(new_inputs.get(key))}"
            )
    if old["source_date_epoch"] != new["source_date_epoch"]:
        found.append(_changed("SOURCE_DATE_EPOCH", old["source_date_epoch"], new["source_date_epoch"]))
    old_pk, new_pk = old.get("packages", {}), new.get("packages", {})
    if old_pk.get("sha256") != new_pk.get("sha256"):
        found.append(f"the image's packages differ ({old_pk.get('count')} -> {new_pk.get('count')} packages)")
    for group in ("tool", "python", "host_tools"):
        old_group, new_group = old.get(group, {}), new.get(group, {})
        for name in sorted(set(old_group) | set(new_group)):
            if old_group.get(name) != new_group.get(name):
                found.append(
                    _changed(f"{group.replace('_', ' ')} {name}", old_group.get(name), new_group.get(name))
                )
    old_stages = [tuple(s) for s in old["stages"]]
    new_stages = [tuple(s) for s in new["stages"]]
    if old_stages != new_stages:
        kinds = [kind for kind, key in old_stages if (kind, key) not in new_stages]
        found.append("stages with other inputs: " + (", ".join(dict.fromkeys(kinds)) or "added ones"))
    return found


def package_changes(old_sbom: Path, new_sbom: Path) -> list[str]:
    """Packages added, removed or at another version between two SBOMs of ours."""

    def versions(path: Path) -> dict[str, str]:
        try:
            packages = json.loads(path.read_text())["packages"]
        except (OSError, ValueError, KeyError, TypeError):
            return {}
        return {
            str(p.get("name")): str(p.get("versionInfo"))
            for p in packages
            if str(p.get("SPDXID", "")).startswith("SPDXRef-Package-")
        }

    old, new = versions(old_sbom), versions(new_sbom)
    return [
        f"{name} {old.get(name, '(none)')} -> {new.get(name, '(none)')}"
        for name in sorted(set(old) | set(new))
        if old.get(name) != new.get(name)
    ]
