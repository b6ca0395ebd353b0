"""kairos-agent's command line: Kairos's verbs and flags where they overlap, plus the hooks the
framework's units call at boot."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kairos_build.agent import bootstate, config, install, reset, stages, upgrade
from kairos_build.agent.system import NodeError, say
from kairos_build.core.errors import KairosError

SEED = Path("/var/lib/cloud/seed/nocloud/user-data")


def _bool(text: str) -> bool:
    if text.lower() in ("true", "yes", "1", "on"):
        return True
    if text.lower() in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def node_config(extra: list[str] | None = None) -> dict[str, Any]:
    return config.read_configs([*config.boot_config_paths(), *(Path(p) for p in extra or [])])


def report_unsupported(cfg: dict[str, Any]) -> None:
    if keys := config.unsupported(cfg):
        say(f"not supported yet, not applied: {', '.join(keys)}")


def cmd_early(_args: argparse.Namespace) -> int:
    """Before cloud-init: users, hostname, the rootfs and initramfs stages; cloud-init's seed
    rewritten without the keys applied here."""
    cfg = node_config()
    if not cfg:
        return 0
    report_unsupported(cfg)
    ok = True
    if isinstance(cfg.get("hostname"), str):
        stages.apply_hostname(cfg["hostname"])
    for user in config.top_level_users(cfg):
        try:
            stages.apply_user(user)
        except NodeError as exc:
            say(f"user {user.name}: {exc}")
            ok = False
    for stage in ("rootfs", "initramfs"):
        ok = stages.run_stage(cfg, stage) and ok
    if SEED.exists():
        import yaml

        view = config.cloud_init_view(cfg)
        SEED.write_text("#cloud-config\n" + yaml.safe_dump(view, sort_keys=False))
    if config.stage_steps(cfg, "network"):
        subprocess.run(["systemctl", "start", "--no-block", "kairos-agent-network.service"], check=False)
    return 0 if ok else 1


def cmd_run_stage(args: argparse.Namespace) -> int:
    return 0 if stages.run_stage(node_config(), args.stage) else 1


def cmd_auto(_args: argparse.Namespace) -> int:
    """After multi-user: install when a live boot's config says `install: {auto: true}`; reset
    on the reset entry; the boot assessment on an installed system."""
    state = bootstate.boot_state()
    if state == "livecd_boot":
        cfg = node_config()
        spec = config.install_spec(cfg)
        if not spec.auto:
            return 0
        return _install(cfg, spec, None)
    if bootstate.boot_entry() == "statereset":
        spec_reset = config.reset_spec(node_config())
        reset.reset(spec_reset)
        install.finish(reboot=True, poweroff=spec_reset.poweroff)
        return 0
    if state == "active_boot":
        return assess()
    return 0


def assess() -> int:
    """A boot on probation (`tentative`) that reached a healthy system clears the mark; one that
    did not reboots, and grub then starts passive."""
    if bootstate.assessment() != "tentative":
        return 0
    result = subprocess.run(
        ["systemctl", "is-system-running", "--wait"], capture_output=True, text=True, timeout=900, check=False
    )
    health = result.stdout.strip()
    if health == "running":
        bootstate.update_grubenv({bootstate.ASSESSMENT: ""})
        say("boot assessment: the upgraded system is healthy; it stays active")
        return 0
    say(
        f"boot assessment: the upgraded system is {health or 'not running'}; "
        "rebooting to fall back to passive"
    )
    subprocess.run(["systemctl", "reboot"], check=False)
    return 1


def _install(
    cfg: dict[str, Any], spec: config.InstallSpec, device: str | None, text: str | None = None
) -> int:
    report_unsupported(cfg)
    stages.run_stage(cfg, "before-install")
    if text is None:
        import yaml

        text = "#cloud-config\n" + yaml.safe_dump(cfg, sort_keys=False)
    install.install(spec, text, device)
    stages.run_stage(cfg, "after-install")
    install.finish(spec.reboot, spec.poweroff)
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    cfg = node_config(args.config)
    spec = config.install_spec(cfg)
    return _install(cfg, spec, args.device, None)


def cmd_manual_install(args: argparse.Namespace) -> int:
    path = Path(args.config)
    try:
        text = path.read_text()
    except OSError as exc:
        raise NodeError(f"cannot read the config {path}: {exc}") from exc
    cfg = config.merge(node_config(), config.load_yaml(text, str(path)))
    spec = config.install_spec(cfg)
    return _install(cfg, spec, args.device, text)


def cmd_upgrade(args: argparse.Namespace) -> int:
    cfg = node_config()
    spec = config.upgrade_spec(cfg)
    source = args.source or spec.source
    if not source:
        raise NodeError(
            "no upgrade source",
            hint="give --source oci-archive:FILE (or dir:, oci:, "
            "docker://) or upgrade.system.uri in the config",
        )
    upgrade.upgrade(source, recovery=args.recovery or spec.recovery, insecure=args.insecure)
    stages.run_stage(cfg, "after-upgrade")
    install.finish(args.reboot or spec.reboot, args.poweroff or spec.poweroff)
    return 0


def cmd_reset(args: argparse.Namespace) -> int:
    cfg = node_config()
    spec = config.reset_spec(cfg)
    if args.reboot_to_recovery:
        reset.reboot_to_recovery()
        install.finish(reboot=True, poweroff=False)
        return 0
    if not args.unattended:
        if not sys.stdin.isatty():
            raise NodeError(
                "reset erases this node's data; without a terminal to confirm it needs --unattended"
            )
        answer = input("Reset this node (type yes)? ")
        if answer.strip().lower() != "yes":
            say("reset cancelled")
            return 1
    spec = config.ResetSpec(
        reset_persistent=spec.reset_persistent if args.reset_persistent is None else args.reset_persistent,
        reset_oem=args.reset_oem or spec.reset_oem,
        reboot=args.reboot or spec.reboot,
        poweroff=args.poweroff or spec.poweroff,
    )
    reset.reset(spec)
    stages.run_stage(cfg, "after-reset")
    install.finish(spec.reboot, spec.poweroff)
    return 0


def cmd_state(args: argparse.Namespace) -> int:
    def assessment() -> str:
        return bootstate.assessment() or "none"

    fields: dict[str, Callable[[], str]] = {"boot": bootstate.boot_state, "assessment": assessment}
    if args.field:
        print(fields[args.field]())
    else:
        print(json.dumps({name: read() for name, read in fields.items()}))
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="kairos-agent", description="Install, upgrade and reset this Kairos node."
    )
    verbs = top.add_subparsers(dest="verb", required=True)
    verb = verbs.add_parser("install", help="install the live system to a disk")
    verb.add_argument("--device", help="the disk (default: install.device, else auto)")
    verb.add_argument("--config", action="append", help="a cloud-config file (repeatable)")
    verb.set_defaults(run=cmd_install)
    verb = verbs.add_parser("manual-install", help="install with this config")
    verb.add_argument("--device", required=True)
    verb.add_argument("config")
    verb.set_defaults(run=cmd_manual_install)
    verb = verbs.add_parser("upgrade", help="put a new system image in place")
    verb.add_argument(
        "--source", help="dir:PATH, oci:DIR[:TAG], oci-archive:FILE or docker://[REGISTRY/]IMAGE[:TAG]"
    )
    verb.add_argument("--insecure", action="store_true", help="the source's registry speaks plain HTTP")
    verb.add_argument("--recovery", action="store_true", help="upgrade the recovery system")
    verb.add_argument("--reboot", action="store_true")
    verb.add_argument("--poweroff", action="store_true")
    verb.set_defaults(run=cmd_upgrade)
    verb = verbs.add_parser("reset", help="make the system again from recovery")
    verb.add_argument("--unattended", action="store_true")
    verb.add_argument("--reset-oem", action="store_true")
    verb.add_argument("--reset-persistent", type=_bool, nargs="?", const=True, default=None)
    verb.add_argument("--reboot", action="store_true")
    verb.add_argument("--poweroff", action="store_true")
    verb.add_argument(
        "--reboot-to-recovery",
        action="store_true",
        help="from the installed system: reboot into the reset entry",
    )
    verb.set_defaults(run=cmd_reset)
    verb = verbs.add_parser("state", help="how this node booted")
    what = verb.add_subparsers(dest="what", required=True)
    get = what.add_parser("get")
    get.add_argument("field", nargs="?", choices=("boot", "assessment"))
    verb.set_defaults(run=cmd_state)
    for name, function in (("early", cmd_early), ("auto", cmd_auto)):
        verbs.add_parser(name, help=argparse.SUPPRESS).set_defaults(run=function)
    verb = verbs.add_parser("run-stage", help="run a stage of the config")
    verb.add_argument("stage")
    verb.set_defaults(run=cmd_run_stage)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.run(args))
    except KairosError as exc:
        say(f"error: {exc}")
        return exc.exit_code
    except PermissionError as exc:
        say(f"error: {exc.strerror}: {exc.filename} (kairos-agent {args.verb} needs root)")
        return 1
    except OSError as exc:
        say(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        say("interrupted")
        return 130
