"""OVMF's variable store: the pflash file holding the guest's UEFI variables (boot entries,
Secure Boot keys). `boot` makes it from the firmware's template, keeps it when asked
(`--vars FILE`, so keys a guest enrolled are there on the next run) and reads it for whether
the firmware enforces Secure Boot.

The store (EDK2's authenticated variable format, as in /usr/share/OVMF/OVMF_VARS_4M*.fd) is a
header found by its GUID, then variables one after the other, each a 60-byte header, its
UTF-16 name and its data, aligned to 4 bytes. A variable that was replaced or deleted stays
in the file, marked by its state byte, until the firmware reclaims the space.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path
from uuid import UUID

from kairos_build.core.errors import InputError

STORE_GUID = UUID("aaf32c78-947b-439a-a180-2e144ec37792")  # gEfiAuthenticatedVariableGuid
GLOBAL_GUID = UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")  # PK, KEK, SecureBoot...
# OVMF's own switch: with a PK enrolled, Secure Boot is enforced unless this says 0.
SECURE_BOOT_ENABLE_GUID = UUID("f0a30bc7-af08-4556-99c4-001009c93a44")
_HEADER = struct.Struct("<HBBIQ16sIII16s")  # StartId, State, -, Attributes, count, time, ...
_START = 0x55AA
# State bytes of a live variable: added (0x3F), or added and about to be replaced (0x3E; the
# firmware keeps it when the new copy never got written). 0x3C and 0x3D are deleted ones.
_ADDED, _IN_TRANSITION = 0x3F, 0x3E

Variables = dict[tuple[str, UUID], bytes]


def read_variables(store: bytes) -> Variables:
    """The live variables of a store, by (name, vendor GUID); {} when no store is found."""
    at = store.find(STORE_GUID.bytes_le)
    if at < 0:
        return {}
    (size,) = struct.unpack_from("<I", store, at + 16)
    end = min(len(store), at + size)
    pos = at + 28  # the store header: GUID, size, format, state, reserved
    live: Variables = {}
    replaced: Variables = {}
    while pos + _HEADER.size <= end:
        start, state, _, _, _, _, _, name_size, data_size, vendor = _HEADER.unpack_from(store, pos)
        if start != _START:
            break
        name_at = pos + _HEADER.size
        name = store[name_at : name_at + name_size].decode("utf-16-le", "replace").rstrip("\0")
        data = store[name_at + name_size : name_at + name_size + data_size]
        key = (name, UUID(bytes_le=vendor))
        if state == _ADDED:
            live[key] = data
        elif state == _IN_TRANSITION:
            replaced[key] = data
        pos = (name_at + name_size + data_size + 3) & ~3
    return {**replaced, **live}


def secure_boot_enforced(store: bytes) -> bool:
    """Whether OVMF starts with Secure Boot on: a platform key is enrolled (user mode; without
    one the firmware is in setup mode and checks nothing) and OVMF's SecureBootEnable does
    not turn it off."""
    variables = read_variables(store)
    enable = variables.get(("SecureBootEnable", SECURE_BOOT_ENABLE_GUID), b"\x01")
    return bool(variables.get(("PK", GLOBAL_GUID))) and enable[:1] != b"\x00"


def make_variable_store(path: Path, template: str) -> Path:
    """`path` as the guest's variable store: made from `template` when it does not exist,
    else used as it is (a store from an earlier run: its boot entries and enrolled keys)."""
    size = Path(template).stat().st_size
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, path)
        return path
    if not path.is_file():
        raise InputError(f"--vars {path} is not a file", hint="give a file (made when missing)")
    if path.stat().st_size != size:
        raise InputError(
            f"--vars {path} holds {path.stat().st_size} bytes, the firmware's "
            f"variable store {size} ({Path(template).name})",
            hint="a store from another OVMF build? give a new file name",
        )
    return path
