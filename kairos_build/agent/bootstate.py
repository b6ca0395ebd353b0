"""How this node booted, and the boot assessment kept in COS_OEM's grubenv.

grub reads `grubenv` on COS_OEM before its menu (templates/grub-disk.cfg.j2) and writes back
one variable: after an upgrade the agent sets `kairos_assessment=pending`; grub turns that into
`tentative` as it boots the new active; a healthy boot clears it here; a boot that never gets
there leaves it `tentative`, and the next boot grub marks it `failed` and starts passive
(kairos.upgrade_failure on the command line) until the next upgrade.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from kairos_build.agent import trusted
from kairos_build.agent.system import NodeError, cmdline, cmdline_value, label_device, mounted

GRUBENV = "grubenv"
GRUBENV_SIZE = 1024
_HEADER = b"# GRUB Environment Block\n"
ASSESSMENT = "kairos_assessment"

# kairos.entry= of our menus -> what `kairos-agent state get boot` says (Kairos's names).
BOOT_STATES = {
    "active": "active_boot",
    "passive": "passive_boot",
    "recovery": "recovery_boot",
    "statereset": "recovery_boot",
}


def boot_entry(words: list[str] | None = None, efivars: Path = trusted.EFIVARS) -> str:
    """The menu entry this boot came from: kairos.entry= of grub's menu, else the entry
    systemd-boot says it started (a Trusted Boot system UKI is the same file whether it is
    active or passive, so its command line cannot say)."""
    words = cmdline() if words is None else words
    values = dict(word.partition("=")[::2] for word in words)
    entry = values.get("kairos.entry", "")
    selected = trusted.selected_entry(efivars)
    if selected in BOOT_STATES and (not entry or entry == "recovery"):
        return selected  # the reset entry starts the recovery UKI
    return entry


def boot_state(words: list[str] | None = None, efivars: Path = trusted.EFIVARS) -> str:
    """active_boot, passive_boot, recovery_boot, livecd_boot or unknown."""
    words = cmdline() if words is None else words
    values = dict(word.partition("=")[::2] for word in words)
    entry = boot_entry(words, efivars)
    if entry in BOOT_STATES:
        return BOOT_STATES[entry]
    if values.get("root", "").startswith("live:") or entry.startswith("live"):
        return "livecd_boot"
    image = values.get("cos-img/filename", "")
    for name, state in (
        ("active", "active_boot"),
        ("passive", "passive_boot"),
        ("recovery", "recovery_boot"),
    ):
        if Path(image).name.startswith(name):
            return state
    return "unknown"


def parse_grubenv(data: bytes) -> dict[str, str]:
    if not data.startswith(_HEADER):
        raise NodeError("grubenv has no GRUB environment header")
    values = {}
    for line in data[len(_HEADER) :].decode(errors="replace").split("\n"):
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key] = value.replace("\\\\", "\\")
    return values


def render_grubenv(values: dict[str, str]) -> bytes:
    """The 1 KiB block grub reads and rewrites in place (save_env needs the file's size kept)."""
    body = "".join(f"{key}={value}\n" for key, value in sorted(values.items()) if value != "")
    data = _HEADER + body.encode()
    if len(data) > GRUBENV_SIZE:
        raise NodeError("the grub environment is full (1 KiB)")
    return data + b"#" * (GRUBENV_SIZE - len(data))


def write_grubenv(path: Path, values: dict[str, str]) -> None:
    """Rewrite the block in place when it exists (grub keeps writing to the same sectors),
    create it otherwise."""
    data = render_grubenv(values)
    flags = os.O_WRONLY | os.O_CREAT
    fd = os.open(path, flags, 0o644)
    try:
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, GRUBENV_SIZE)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_grubenv(path: Path) -> dict[str, str]:
    try:
        return parse_grubenv(path.read_bytes())
    except FileNotFoundError:
        return {}


def update_grubenv(changes: dict[str, str], oem: Path | None = None) -> dict[str, str]:
    """Set (or with "" clear) grubenv variables on COS_OEM, mounted for the change when `oem`
    (an already mounted COS_OEM) is not given. Returns the new values."""
    if oem is not None:
        values = {**read_grubenv(oem / GRUBENV), **changes}
        write_grubenv(oem / GRUBENV, values)
        return values
    device = label_device("COS_OEM")
    if device is None:
        raise NodeError("this node has no COS_OEM partition (where grub's environment lives)")
    with mounted(device, "rw") as mountpoint:
        return update_grubenv(changes, mountpoint)


def assessment() -> str:
    device = label_device("COS_OEM")
    if device is None:
        return ""
    with contextlib.suppress(NodeError), mounted(device, "ro") as mountpoint:
        return read_grubenv(mountpoint / GRUBENV).get(ASSESSMENT, "")
    return ""


def upgrade_failed_boot() -> bool:
    return cmdline_value("kairos.upgrade_failure") is not None
