"""Apply what a Kairos config asks of the running system: users, the hostname, and the steps
of a stage (commands, files, directories, users, hostname, each under its `if`)."""

from __future__ import annotations

import base64
import contextlib
import grp
import os
import pwd
import re
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kairos_build.agent.config import Step, User, is_password_hash, stage_steps
from kairos_build.agent.system import NodeError, run, say


def known(lookup: Callable[[str], object], name: str) -> bool:
    """Whether the account database has `name` (`lookup` is pwd.getpwnam or grp.getgrnam)."""
    try:
        lookup(name)
    except KeyError:
        return False
    return True


def apply_user(user: User) -> None:
    """Create the user (or change an existing one such as root): password, groups, keys."""
    if not known(pwd.getpwnam, user.name):
        argv = ["useradd", "--create-home"]
        if user.homedir:
            argv += ["--home-dir", user.homedir]
        shell = user.shell or next((s for s in ("/bin/bash", "/bin/sh") if os.path.exists(s)), None)
        if shell:
            argv += ["--shell", shell]
        if user.uid is not None:
            argv += ["--uid", str(user.uid)]
        run([*argv, user.name])
    for group in user.groups:
        if not known(grp.getgrnam, group):
            run(["groupadd", group])
    if user.groups:
        run(["usermod", "--append", "--groups", ",".join(user.groups), user.name])
    if user.passwd is not None:
        if is_password_hash(user.passwd):
            run(["usermod", "--password", user.passwd, user.name])
        else:  # Kairos: a plain password, hashed here the way the system hashes them
            run(["chpasswd"], input_text=f"{user.name}:{user.passwd}\n")
        if _locked(user.name):
            run(["usermod", "--unlock", user.name])
    if user.ssh_authorized_keys:
        add_ssh_keys(user.name, user.ssh_authorized_keys)


def _locked(name: str) -> bool:
    with contextlib.suppress(NodeError):
        return run(["passwd", "--status", name], capture=True).split()[1:2] == ["L"]
    return False


def add_ssh_keys(name: str, keys: tuple[str, ...]) -> None:
    entry = pwd.getpwnam(name)
    folder = Path(entry.pw_dir) / ".ssh"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    authorized = folder / "authorized_keys"
    known = authorized.read_text().splitlines() if authorized.exists() else []
    for key in keys:
        if key.startswith(("github:", "gitlab:")):
            say(f"not supported yet: ssh key {key} (keys fetched from a forge); give the key itself")
            continue
        if key not in known:
            known.append(key)
    authorized.write_text("".join(f"{line}\n" for line in known))
    authorized.chmod(0o600)
    for path in (folder, authorized):
        os.chown(path, entry.pw_uid, entry.pw_gid)


_MACHINE_ID = re.compile(r"\{\{\s*trunc\s+(\d+)\s+\.MachineID\s*\}\}")


def expand_hostname(name: str, machine_id: str) -> str | None:
    """Kairos's `metal-{{ trunc 4 .MachineID }}`: the machine id's first N characters; None
    for any other template."""
    expanded = _MACHINE_ID.sub(lambda found: machine_id[: int(found.group(1))], name)
    return None if "{{" in expanded else expanded


def apply_hostname(template: str) -> None:
    machine_id = Path("/etc/machine-id").read_text().strip() if Path("/etc/machine-id").exists() else ""
    name = expand_hostname(template, machine_id)
    if name is None:
        say(f"not supported yet: the hostname template {template!r}; hostname left as it is")
        return
    Path("/etc/hostname").write_text(f"{name}\n")
    with contextlib.suppress(OSError):
        socket.sethostname(name)


def _owner(value: Any) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, str):
        return pwd.getpwnam(value).pw_uid
    return 0


def write_file(spec: dict[str, Any]) -> None:
    path = Path(str(spec.get("path") or ""))
    if not path.is_absolute():
        raise NodeError(f"a file's path must be absolute, not {spec.get('path')!r}")
    content = str(spec.get("content") or "")
    data = base64.b64decode(content) if spec.get("encoding") in ("b64", "base64") else content.encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.kairos-new")
    temporary.write_bytes(data)
    temporary.chmod(int(spec.get("permissions") or 0o644))
    os.chown(temporary, _owner(spec.get("owner")), _owner(spec.get("group")))
    os.replace(temporary, path)


def make_directory(spec: dict[str, Any]) -> None:
    path = Path(str(spec.get("path") or ""))
    if not path.is_absolute():
        raise NodeError(f"a directory's path must be absolute, not {spec.get('path')!r}")
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(int(spec.get("permissions") or 0o755))
    os.chown(path, _owner(spec.get("owner")), _owner(spec.get("group")))


def shell(command: str) -> int:
    """A config's command line, run by /bin/sh as Kairos runs it; its output goes to the log."""
    return subprocess.run(["/bin/sh", "-c", command], check=False).returncode


def run_step(step: Step) -> bool:
    """Apply one step; False when one of its parts failed (the others still ran)."""
    if step.condition and shell(step.condition) != 0:
        say(f"{step.stage}: skipping {step.name!r} (its `if` is false)")
        return True
    if step.extra:
        say(f"not supported yet: {', '.join(sorted(step.extra))} in step {step.name!r}")
    ok = True
    try:
        if step.hostname:
            apply_hostname(step.hostname)
        for directory in step.directories:
            make_directory(directory)
        for spec in step.files:
            write_file(spec)
        for user in step.users:
            apply_user(user)
    except (NodeError, OSError, ValueError, KeyError) as exc:
        say(f"{step.stage}: step {step.name!r} failed: {exc}")
        ok = False
    for command in step.commands:
        status = shell(command)
        if status != 0:
            say(f"{step.stage}: step {step.name!r}: `{command}` exited {status}")
            ok = False
    return ok


def run_stage(config: dict[str, Any], stage: str) -> bool:
    """Every step of `stage` (and its .before/.after); False when any failed."""
    steps = stage_steps(config, stage)
    results = [run_step(step) for step in steps]
    if steps:
        say(f"stage {stage}: {len(steps)} step(s), {results.count(False)} failed")
    return all(results)
