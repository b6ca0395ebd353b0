"""The node's Kairos cloud-config: files read and merged as Kairos does, its install, upgrade
and reset settings, and what stays for cloud-init.

Kairos's config is yip's, not cloud-init's: `users[].passwd` is a plain password, `stages` run
`commands`, `files`, `users`, `hostname` at named moments of the boot. The agent applies those
keys itself and hands cloud-init the rest; a key neither serves is named in one log line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kairos_build.agent.system import NodeError

# Where the initramfs copies the boot's config sources (the live medium's /config.yaml, every
# *.yaml on COS_OEM), in the order it found them.
BOOT_CONFIG_DIR = Path("/run/kairos/cloud-config")
# Configs a node keeps on COS_PERSISTENT (Kairos reads them too), after the boot's.
PERSISTENT_CONFIG_DIR = Path("/usr/local/cloud-config")
MiB = 1 << 20

# Keys the agent applies (cloud-init does not see them).
AGENT_KEYS = ("users", "hostname", "stages", "install", "upgrade", "reset")
# Kairos keys this agent does not implement yet (and cloud-init has no meaning for).
KAIROS_ONLY_KEYS = (
    "k3s",
    "k3s-agent",
    "k0s",
    "k0s-worker",
    "p2p",
    "kairos",
    "bundles",
    "vpn",
    "options",
    "fail_on_bundles_errors",
    "strict",
    "debug",
    "config_url",
    "cluster",
    "kubevip",
    "auroraboot",
)
STAGES = ("rootfs", "initramfs", "boot", "network")
# Stages the agent runs outside the boot, around its own verbs.
HOOK_STAGES = ("before-install", "after-install", "after-upgrade", "after-reset")
STEP_KEYS = ("name", "if", "commands", "files", "directories", "users", "hostname")
INSTALL_KEYS = (
    "auto",
    "device",
    "reboot",
    "poweroff",
    "partitions",
    "grub_options",
    "bind_mounts",
    "ephemeral_mounts",
)
PARTITION_NAMES = {
    "oem": "oem",
    "recovery": "recovery",
    "state": "state",
    "persistent": "persistent",
    "efi": "efi",
}
USER_KEYS = ("name", "passwd", "groups", "ssh_authorized_keys", "homedir", "shell", "uid", "lock_passwd")
_CRYPT = re.compile(r"^\$(1|2[abxy]?|5|6|y|gy|7|sha1|md5)\$")


def load_yaml(text: str, where: str) -> dict[str, Any]:
    try:
        import yaml  # the image's PyYAML (cloud-init's dependency); imported only when needed
    except ImportError as exc:
        raise NodeError(
            "python3's yaml module is missing on this node", hint="the image needs python3-yaml (PyYAML)"
        ) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise NodeError(f"{where} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise NodeError(f"{where} is not a YAML mapping", hint="a cloud-config is keys like users:")
    return data


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Later files win on plain values; mappings merge key by key; lists (users, a stage's
    steps) are appended to, so every file's users and steps are kept."""
    merged = dict(base)
    for key, value in extra.items():
        old = merged.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            merged[key] = merge(old, value)
        elif isinstance(old, list) and isinstance(value, list):
            merged[key] = old + value
        else:
            merged[key] = value
    return merged


def read_configs(paths: list[Path]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for path in paths:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise NodeError(f"cannot read the config {path}: {exc}") from exc
        config = merge(config, load_yaml(text, str(path)))
    return config


def boot_config_paths() -> list[Path]:
    """The boot's config files, then the node's own, each folder in name order."""
    return [
        path
        for folder in (BOOT_CONFIG_DIR, PERSISTENT_CONFIG_DIR)
        if folder.is_dir()
        for path in sorted(folder.glob("*.yaml"))
    ]


def unsupported(config: dict[str, Any]) -> list[str]:
    """Every key of `config` no one on this node applies: Kairos-only top keys, unknown stages
    and step keys, install and user keys we do not implement."""
    found = [key for key in KAIROS_ONLY_KEYS if key in config]
    for stage, steps in (config.get("stages") or {}).items():
        if _stage_base(stage) not in STAGES and stage not in HOOK_STAGES:
            found.append(f"stages.{stage}")
            continue
        for step in steps if isinstance(steps, list) else []:
            if isinstance(step, dict):
                found += [f"stages.{stage}.{key}" for key in step if key not in STEP_KEYS]
    found += [f"install.{key}" for key in (config.get("install") or {}) if key not in INSTALL_KEYS]
    for user in config.get("users") or []:
        if isinstance(user, dict):
            found += [f"users.{key}" for key in user if key not in USER_KEYS]
    return sorted(set(found))


def _stage_base(stage: str) -> str:
    """`boot.before` and `boot.after` belong to `boot`."""
    name, _, when = stage.partition(".")
    return name if when in ("", "before", "after") else stage


def cloud_init_view(config: dict[str, Any]) -> dict[str, Any]:
    """What cloud-init gets: the config without the keys the agent applies. `users: []` where the
    agent took the users, or cloud-init would add its distro default user."""
    view = {
        key: value for key, value in config.items() if key not in AGENT_KEYS and key not in KAIROS_ONLY_KEYS
    }
    if "users" in config:
        view["users"] = []
    return view


def is_password_hash(passwd: str) -> bool:
    """A crypt(3) string (`$6$salt$...`, `$y$...`) is set as is; anything else is a password."""
    return bool(_CRYPT.match(passwd))


@dataclass(frozen=True)
class User:
    name: str
    passwd: str | None = None
    groups: tuple[str, ...] = ()
    ssh_authorized_keys: tuple[str, ...] = ()
    homedir: str | None = None
    shell: str | None = None
    uid: int | None = None


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, list) and all(isinstance(item, (str, int)) for item in value):
        return tuple(str(item) for item in value)
    raise NodeError(f"{what} must be a list of strings")


def parse_user(data: Any, name: str | None = None) -> User:
    """A user from the top-level list (`- name: x`) or a stage's map (`x: {...}`)."""
    if not isinstance(data, dict):
        raise NodeError(f"a user entry must be a mapping, not {data!r}")
    name = name or data.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[a-z_][a-z0-9_.-]*\$?", name):
        raise NodeError(f"user name {name!r} is not valid")
    passwd = data.get("passwd")
    if passwd is not None and not isinstance(passwd, (str, int)):
        raise NodeError(f"passwd of {name} must be a string")
    uid = data.get("uid")
    return User(
        name=name,
        passwd=None if passwd is None else str(passwd),
        groups=_strings(data.get("groups"), f"groups of {name}"),
        ssh_authorized_keys=_strings(data.get("ssh_authorized_keys"), f"ssh_authorized_keys of {name}"),
        homedir=data.get("homedir"),
        shell=data.get("shell"),
        uid=int(uid) if isinstance(uid, (int, str)) and str(uid).isdigit() else None,
    )


def top_level_users(config: dict[str, Any]) -> list[User]:
    users = config.get("users") or []
    if not isinstance(users, list):
        raise NodeError("users: must be a list of users")
    return [parse_user(user) for user in users if user != "default"]


def _flag(section: dict[str, Any], key: str, default: bool = False) -> bool:
    value = section.get(key, default)
    if isinstance(value, str):
        return value.strip().lower() in ("true", "yes", "1", "on")
    return bool(value)


@dataclass(frozen=True)
class InstallSpec:
    auto: bool = False
    device: str = "auto"
    reboot: bool = False
    poweroff: bool = False
    sizes: tuple[tuple[str, int], ...] = ()  # (partition, bytes); persistent 0 = the rest
    extra_cmdline: str = ""
    bind_mounts: tuple[str, ...] = ()
    ephemeral_mounts: tuple[str, ...] = ()


def install_spec(config: dict[str, Any]) -> InstallSpec:
    section = config.get("install") or {}
    if not isinstance(section, dict):
        raise NodeError("install: must be a mapping")
    sizes = []
    for name, part in (section.get("partitions") or {}).items():
        if name not in PARTITION_NAMES:
            raise NodeError(
                f"install.partitions.{name} is not a partition this layout has",
                hint=f"use {', '.join(PARTITION_NAMES)}",
            )
        size = part.get("size") if isinstance(part, dict) else None
        if size is None:
            continue
        if not isinstance(size, int) or size < 0:
            raise NodeError(f"install.partitions.{name}.size must be a number of MiB")
        if size:  # 0: the default (the rest of the disk for persistent)
            sizes.append((PARTITION_NAMES[name], size * MiB))
    grub = section.get("grub_options") or {}
    extra = grub.get("extra_cmdline", "") if isinstance(grub, dict) else ""
    device = str(section.get("device") or "auto")
    return InstallSpec(
        auto=_flag(section, "auto"),
        device=device,
        reboot=_flag(section, "reboot"),
        poweroff=_flag(section, "poweroff"),
        sizes=tuple(sizes),
        extra_cmdline=str(extra or ""),
        bind_mounts=_strings(section.get("bind_mounts"), "install.bind_mounts"),
        ephemeral_mounts=_strings(section.get("ephemeral_mounts"), "install.ephemeral_mounts"),
    )


@dataclass(frozen=True)
class UpgradeSpec:
    source: str | None = None
    recovery: bool = False
    reboot: bool = False
    poweroff: bool = False


def upgrade_spec(config: dict[str, Any]) -> UpgradeSpec:
    section = config.get("upgrade") or {}
    system = section.get("system") or {}
    recovery_system = section.get("recovery-system") or {}
    source = system.get("uri") or system.get("source") or recovery_system.get("uri")
    return UpgradeSpec(
        source=str(source) if source else None,
        recovery=_flag(section, "recovery"),
        reboot=_flag(section, "reboot"),
        poweroff=_flag(section, "poweroff"),
    )


@dataclass(frozen=True)
class ResetSpec:
    reset_persistent: bool = True
    reset_oem: bool = False
    reboot: bool = True
    poweroff: bool = False


def reset_spec(config: dict[str, Any]) -> ResetSpec:
    section = config.get("reset") or {}
    return ResetSpec(
        reset_persistent=_flag(section, "reset-persistent", True),
        reset_oem=_flag(section, "reset-oem"),
        reboot=_flag(section, "reboot", True),
        poweroff=_flag(section, "poweroff"),
    )


@dataclass(frozen=True)
class Step:
    stage: str
    name: str
    condition: str | None = None
    commands: tuple[str, ...] = ()
    files: tuple[dict[str, Any], ...] = ()
    directories: tuple[dict[str, Any], ...] = ()
    users: tuple[User, ...] = ()
    hostname: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def stage_steps(config: dict[str, Any], stage: str) -> list[Step]:
    """The steps of `stage` in order: `STAGE.before`, `STAGE`, `STAGE.after`."""
    stages = config.get("stages") or {}
    if not isinstance(stages, dict):
        raise NodeError("stages: must be a mapping of stage names to lists of steps")
    steps = []
    for name in (f"{stage}.before", stage, f"{stage}.after"):
        for index, data in enumerate(stages.get(name) or []):
            if not isinstance(data, dict):
                raise NodeError(f"step {index} of stage {name} must be a mapping")
            users = data.get("users") or {}
            if not isinstance(users, dict):
                raise NodeError(f"users of step {index} of stage {name} must map names to users")
            steps.append(
                Step(
                    stage=name,
                    name=str(data.get("name") or f"{name}[{index}]"),
                    condition=data.get("if"),
                    commands=_strings(data.get("commands"), f"commands of {name}[{index}]")
                    if not isinstance(data.get("commands"), str)
                    else (data["commands"],),
                    files=tuple(data.get("files") or ()),
                    directories=tuple(data.get("directories") or ()),
                    users=tuple(parse_user(user, user_name) for user_name, user in users.items()),
                    hostname=data.get("hostname"),
                    extra={k: v for k, v in data.items() if k not in STEP_KEYS},
                )
            )
    return steps
