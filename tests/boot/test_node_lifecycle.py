"""A Kairos node's whole life in QEMU, from our own artifacts (TCG): installed from the live
ISO by its config, upgraded from an OCI archive of a second conversion, a power cut in the
middle of an upgrade's write, an upgrade that cannot boot abandoned by the boot loader on its
own, and a reset from recovery. One disk goes through every step (the tests run in order and
each starts from where the previous one left it): booting is what costs here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kairos_build.boot.retries import note_retry
from tests.boot.node import GuestError, Node
from tests.conftest import run_cli

BASE = "bootstrap:debian/trixie"
PASSWORD = "kairos-plain"  # Kairos: users[].passwd is a plain password
PERSISTENT_MARK = "/var/lib/kairos-test/mark"
INSTALL_CONFIG = f"""#cloud-config
hostname: kairos-node
users:
  - name: kairos
    passwd: {PASSWORD}
    groups: [admin]
  - name: root
    passwd: {PASSWORD}
install:
  auto: true
  device: auto
  poweroff: true
  bind_mounts: [/var/lib/kairos-test]
  grub_options:
    extra_cmdline: kairos.test=installed
stages:
  boot:
    - name: say the boot stage ran
      commands:
        - echo "KAIROS-STAGE boot ran as $(id -un)" > /dev/console
k3s:
  enabled: true
"""
pytestmark = pytest.mark.boot
LAYOUT = ("COS_GRUB", "COS_OEM", "COS_RECOVERY", "COS_STATE", "COS_PERSISTENT")


class Flow:
    """What the steps share: the node's disk, the upgrade drive, step times."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.disk = folder / "node.qcow2"
        self.iso = folder / "iso" / "none.iso"  # set once built
        self.upgrades = folder / "upgrades.img"
        self.times: dict[str, float] = {}
        self.failed: str | None = None

    def node(self, name: str, **options: object) -> Node:
        return Node(self.folder / f"{name}.log", [self.disk], extra_drives=[self.upgrades], **options)  # type: ignore[arg-type]

    def step(self) -> None:
        if self.failed:
            pytest.fail(f"the node is not in the state this step starts from: {self.failed}")


@pytest.fixture(scope="module")
def flow(test_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flow]:
    """The ISO with the install config, the upgrade drive (v2 as an OCI archive, a broken
    system as a folder, whole and cut down) and an empty 16 GiB disk (sparse)."""
    state = Flow(tmp_path_factory.mktemp("lifecycle"))
    config = state.folder / "install.yaml"
    config.write_text(INSTALL_CONFIG)
    common = ("--flavor", "debian", "--cache-dir", str(test_cache))
    result = run_cli(
        "iso",
        "--base",
        BASE,
        "--cloud-config",
        str(config),
        "--version",
        "v1.0.0",
        "--output",
        str(state.folder / "iso"),
        *common,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    state.iso = next((state.folder / "iso").glob("*.iso"))
    drive = state.folder / "drive"
    result = run_cli(
        "convert", BASE, "--version", "v2.0.0", "--output", f"oci-archive:{drive / 'v2.tar'}", *common
    )
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_cli("convert", BASE, "--version", "v3.0.0", "--output", f"dir:{drive / 'bad'}", *common)
    assert result.returncode == 0, result.stderr[-3000:]
    # An upgrade that cannot boot: its initramfs is garbage, the kernel panics.
    initrd = (drive / "bad/boot/initrd").resolve()
    initrd.unlink()  # never written into: it may share its inode with the cache
    initrd.write_bytes(b"not an initramfs" * 256)
    # The same broken system for the upgrade that completes, cut down to what grub and the
    # agent read (its kernel, that initramfs, kairos-release): the node writes a few MiB
    # instead of the whole tree, whose write is the power cut's.
    small = drive / "bad-small"
    for name in ("boot/vmlinuz", "boot/initrd", "etc/kairos-release"):
        (small / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile((drive / "bad" / name).resolve(), small / name)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-L", "UPGRADES", "-d", str(drive), str(state.upgrades), "3G"], check=True
    )
    shutil.rmtree(drive)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(state.disk), "16G"], check=True)
    yield state
    shutil.rmtree(state.folder, ignore_errors=True)


def login_and_mount(node: Node) -> None:
    node.login("root", PASSWORD)
    status, output = node.run("mkdir -p /mnt/up && mount -o ro LABEL=UPGRADES /mnt/up")
    assert status == 0, output


def shell(node: Node, command: str, timeout: float = 120) -> str:
    status, output = node.run(command, timeout)
    assert status == 0, f"`{command}` exited {status}:\n{output[-3000:]}"
    return output


def state_images(node: Node) -> list[str]:
    """Name, size and change time of each image on COS_STATE."""
    output = shell(node, "stat -c '%n %s %Z' /run/kairos/state/cOS/*")
    return sorted(line.strip() for line in output.splitlines() if line.startswith("/run/kairos"))


def timed(flow: Flow, name: str, started: float) -> None:
    flow.times[name] = time.monotonic() - started
    print(f"{name}: {flow.times[name]:.0f} s")


def boot_live(flow: Flow) -> tuple[Node, dict[str, str]]:
    """The ISO as a CD with the empty disk, up to its boot report. Plain OVMF:
    test_boot_iso.py boots the ISO under SeaBIOS and Secure Boot. A guest kernel panic under
    TCG before the report (rare, see harness.boot) is given one more boot, as the harness does."""
    for attempt in (1, 2):
        node = Node(flow.folder / f"install{attempt}.log", [flow.disk], cdrom=flow.iso, firmware="uefi")
        try:
            return node, node.report(900)
        except GuestError:
            node.close()
            if attempt == 2 or b"Kernel panic" not in node.seen:
                raise
            note_retry("tcg-panic", f"{node.log_path.name}: the live boot's kernel panicked, no report")
    raise AssertionError("unreachable")


def test_the_live_iso_installs_itself_by_its_config(flow: Flow) -> None:
    started = time.monotonic()
    try:
        node, live = boot_live(flow)
        with node:
            assert live["entry"] == "live-config" and live["boot"] == "livecd_boot", live
            assert (live["firmware"], live["secureboot"]) == ("uefi", "disabled")
            # The install may start before the report (both follow multi-user): its log lines
            # are checked below, once the guest has powered off by itself (install.poweroff).
            assert node.wait_exit(1500) == 0
    except BaseException as exc:
        flow.failed = f"install: {exc}"
        raise
    log = node.log_path.read_text(errors="replace")
    assert "not supported yet, not applied: k3s" in log
    assert "KAIROS-STAGE boot ran as root" in log
    layout = re.search(r"installing to /dev/vda: ([^\r\n]*)", log)
    assert layout is not None
    print("layout:", layout.group(1))
    timed(flow, "install", started)


def test_the_installed_disk_boots_read_only_and_upgrades_from_an_oci_archive(flow: Flow) -> None:
    flow.step()
    started = time.monotonic()
    try:
        with flow.node("upgrade", firmware="uefi-secureboot") as node:
            first = node.report(900)
            assert (first["entry"], first["boot"], first["version"]) == ("active", "active_boot", "v1.0.0")
            assert (first["root"], first["root_mode"], first["image"]) == ("ext4", "ro", "/cOS/active.img")
            assert first["secureboot"] == "enabled" and first["hostname"] == "kairos-node"
            # The config's user logs in with its plain password.
            node.login("kairos", PASSWORD)
            assert "(admin)" in shell(node, "id")
            assert "kairos.test=installed" in shell(node, "cat /proc/cmdline")
            labels = shell(node, "lsblk -n -o LABEL /dev/vda")
            assert all(label in labels for label in LAYOUT), labels
            node.type("exit\n")
            login_and_mount(node)
            shell(node, f"echo kept > {PERSISTENT_MARK}")
            # Refusals: one message, a non-zero exit, the node unchanged.
            before = state_images(node)
            for command, message in (
                (
                    "kairos-agent upgrade --source oci-archive:/mnt/up/missing.tar",
                    "the upgrade source /mnt/up/missing.tar does not exist",
                ),
                ("kairos-agent upgrade --source docker.io/library/x", "is not one this node reads"),
                ("kairos-agent install", "install runs from the live system"),
            ):
                status, output = node.run(f"{command} 2>&1")
                assert status != 0 and message in output, output
                assert "Traceback" not in output
            assert state_images(node) == before
            upgrading = time.monotonic()
            output = shell(node, "kairos-agent upgrade --source oci-archive:/mnt/up/v2.tar", 1500)
            assert "upgraded to v2.0.0" in output
            timed(flow, "upgrade write", upgrading)
            node.type("reboot\n")
            second = node.report(900)
            assert (second["entry"], second["boot"], second["version"]) == ("active", "active_boot", "v2.0.0")
            login_and_mount(node)
            assert shell(node, f"cat {PERSISTENT_MARK}").strip().endswith("kept")
            # passive holds the version that was active; the boot on probation was confirmed.
            passive = shell(
                node,
                "mkdir -p /mnt/p && mount -o ro,loop /run/kairos/state/cOS/passive.img "
                "/mnt/p && grep KAIROS_VERSION= /mnt/p/etc/kairos-release",
            )
            assert 'KAIROS_VERSION="v1.0.0"' in passive
            assert shell(node, "kairos-agent state get assessment").strip().endswith("none")
            # Power cut while the next upgrade writes its image.
            node.type("kairos-agent upgrade --source dir:/mnt/up/bad\n")
            node.wait_for(b"writing the new system image", 600)
            time.sleep(3)
            node.kill()
    except BaseException as exc:
        flow.failed = f"upgrade: {exc}"
        raise
    timed(flow, "upgrade", started)


def test_a_power_cut_in_an_upgrade_leaves_the_old_system_and_a_bad_one_is_abandoned(flow: Flow) -> None:
    flow.step()
    started = time.monotonic()
    try:
        with flow.node("fallback") as node:
            after_cut = node.report(900)
            assert (after_cut["entry"], after_cut["version"]) == ("active", "v2.0.0")
            login_and_mount(node)
            shell(node, "kairos-agent upgrade --source dir:/mnt/up/bad-small", 1500)
            node.type("reboot\n")
            node.wait_for(b"Kernel panic", 600)  # the new active cannot start...
            fallback = node.report(900)  # ...and grub starts passive on the next boot
            assert (fallback["entry"], fallback["boot"], fallback["version"]) == (
                "passive",
                "passive_boot",
                "v2.0.0",
            )
            login_and_mount(node)
            assert "kairos.upgrade_failure" in shell(node, "cat /proc/cmdline")
            assert shell(node, "kairos-agent state get assessment").strip().endswith("failed")
            # The reset entry next.
            node.type("kairos-agent reset --reboot-to-recovery\n")
            resetting = node.report(900)
            assert (resetting["entry"], resetting["boot"], resetting["version"]) == (
                "statereset",
                "recovery_boot",
                "v1.0.0",
            )
            assert resetting["persistent"] == "no"
            node.wait_for(b"reset done", 900)
            after = node.report(900)
            assert (after["entry"], after["boot"], after["version"]) == ("active", "active_boot", "v1.0.0")
            login_and_mount(node)
            assert "kept" not in shell(node, f"cat {PERSISTENT_MARK} 2>&1 || true")
            images = shell(node, "ls /run/kairos/state/cOS")
            assert "passive.img" in images and "transition.img" not in images
    except BaseException as exc:
        flow.failed = f"fallback or reset: {exc}"
        raise
    timed(flow, "bad upgrade, fallback, reset", started)
