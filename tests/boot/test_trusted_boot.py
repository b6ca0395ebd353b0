"""A Trusted Boot node's life in QEMU (TCG), OVMF's Secure Boot build from empty variables and
swtpm. `kairos-build boot` starts the built disk in setup mode: systemd-boot enrolls our keys,
the machine resets and boots enforced, its root verified by dm-verity, COS_PERSISTENT and
COS_OEM (which holds the build's cloud-config) sealed to the TPM. With those keys enrolled,
the firmware refuses a UKI with one changed byte; the live ISO boots from a USB stick (a disk)
and as a CD, and installs a node (manual-install), which seals its own data and runs
sealed_scenarios.py (seals stopped at each step); it upgrades to signed UKIs of a second build
from its OCI image (the seal holds: the policy is signed, not a fixed PCR value), refuses a
root image with one changed byte and falls back to passive after systemd-boot's tries, resets
from recovery, and a UKI signed with another PCR key boots without the data. One variable
store and one TPM go through every step, in order; logs are kept when a step fails.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kairos_build.boot import harness
from kairos_build.boot.ovmf_vars import secure_boot_enforced
from kairos_build.disk.fat import make_fat_in_disk
from kairos_build.disk.gpt import write_partition_table
from tests.boot.node import Node
from tests.boot.sealed_scenarios import SCENARIOS
from tests.conftest import run_cli

BASE = "bootstrap:debian/trixie"
PASSWORD = "kairos-trusted"
MARK = "/usr/local/kairos-test-mark"  # a persistent path: on the sealed COS_PERSISTENT
HOSTNAME = "kairos-trusted"  # from the cloud-config on COS_OEM: read through its seal
CONFIG = f"""#cloud-config
hostname: {HOSTNAME}
users:
  - name: root
    passwd: {PASSWORD}
"""
# systemd-boot naming the UKI the firmware refused to load (EFI_SECURITY_VIOLATION; the
# firmware's own "Security Violation" for its unsigned shell does not count).
VIOLATION = re.compile(rb"(?i)tampered\.efi[^\n]{0,120}(security violation|access denied)")
pytestmark = pytest.mark.boot


class Flow:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.built = folder / "built.qcow2"  # the qcow2 artifact
        self.disk = folder / "node.qcow2"  # the node the ISO installs
        self.vars = folder / "OVMF_VARS.fd"
        self.tpm = folder / "tpm"
        self.upgrades = folder / "upgrades.img"
        self.iso = folder / "live.iso"
        self.tampered = folder / "tampered.img"
        self.failed: str | None = None

    def node(self, name: str) -> Node:
        return Node(
            self.folder / f"{name}.log",
            [self.disk],
            firmware="uefi-secureboot-setup",
            vars_file=self.vars,
            tpm_state=self.tpm,
            extra_drives=[self.upgrades],
        )

    def step(self) -> None:
        if self.failed:
            pytest.fail(f"the node is not in the state this step starts from: {self.failed}")


def flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x40]))


@pytest.fixture(scope="module")
def flow(test_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flow]:
    """Keys; the v1 disk; v2's uki-image (an OCI archive); v3's uki folder with one byte of
    its image changed; a v1 UKI with one byte changed; v1's UKI signed with another PCR key:
    all but the disk on one read-only drive."""
    state = Flow(tmp_path_factory.mktemp("trusted"))
    keys, other = state.folder / "keys", state.folder / "other-keys"
    assert run_cli("genkey", str(keys)).returncode == 0
    # The same db key (the firmware starts it), another PCR policy key (the TPM refuses it).
    shutil.copytree(keys, other)
    (other / "tpm2-pcr-private.pem").unlink()
    subprocess.run(
        [
            "openssl",
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            str(other / "tpm2-pcr-private.pem"),
        ],
        check=True,
        capture_output=True,
    )
    (other / "tpm2-pcr-private.pem").chmod(0o600)
    (other / "tpm2-pcr-public.pem").unlink()
    config = state.folder / "config.yaml"
    config.write_text(CONFIG)
    common = ("--base", BASE, "--cache-dir", str(test_cache), "--boot-mode", "trusted")
    result = run_cli(
        "qcow2",
        *common,
        "--keys",
        str(keys),
        "--version",
        "v1.0.0",
        "--cloud-config",
        str(config),
        "--output",
        str(state.folder / "v1"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    next((state.folder / "v1").glob("*.qcow2")).rename(state.built)
    # No auto-install: the stick boots on its own, and the node is installed by hand from a
    # login (auto-install is the grub lifecycle's, test_node_lifecycle.py; the same code).
    result = run_cli(
        "iso",
        *common,
        "--keys",
        str(keys),
        "--version",
        "v1.0.0",
        "--cloud-config",
        str(config),
        "--output",
        str(state.folder / "iso"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    next((state.folder / "iso").glob("*.iso")).rename(state.iso)
    drive = state.folder / "drive"
    # v2 as an OCI image (what a registry would serve), the others as `uki` folders.
    for version, key_dir, name, kind, built in (
        ("v2.0.0", keys, "v2.uki.tar", "uki-image", "*.uki.tar"),
        ("v3.0.0", keys, "v3", "uki", "*-uki"),
        ("v1.0.0", other, "other", "uki", "*-uki"),
    ):
        out = state.folder / f"out-{name}"
        result = run_cli(kind, *common, "--keys", str(key_dir), "--version", version, "--output", str(out))
        assert result.returncode == 0, result.stderr[-3000:]
        drive.mkdir(exist_ok=True)
        next(out.glob(built)).rename(drive / name)
        shutil.rmtree(out)
    # v3's image with one byte changed in its first block (the squashfs superblock's mkfs
    # time: squashfs itself would not notice; verity does).
    flip_byte(next((drive / "v3/cOS").glob("system-*.img")), 8)
    shutil.copyfile(Path(__file__).parent / "sealed_scenarios.py", drive / "sealed_scenarios.py")
    # A v1 system UKI with one byte of its kernel changed: its signature no longer matches.
    tampered = state.folder / "tampered.efi"
    shutil.copyfile(next((drive / "other/EFI/kairos").glob("system-*.efi")), tampered)
    flip_byte(tampered, tampered.stat().st_size // 2)
    write_tampered_esp(state.tampered, drive / "other/EFI/BOOT/BOOTX64.EFI", tampered)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-L", "UPGRADES", "-d", str(drive), str(state.upgrades), "2G"], check=True
    )
    shutil.rmtree(drive)
    shutil.copyfile(harness.FIRMWARE_FILES["uefi-secureboot-setup"][1], state.vars)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(state.disk), "8G"], check=True)
    yield state
    if state.failed:  # the consoles stay for a look; the disks go (GBs)
        for path in state.folder.rglob("*"):
            if path.suffix in (".qcow2", ".img", ".iso", ".raw"):
                path.unlink()
    else:
        shutil.rmtree(state.folder, ignore_errors=True)


def write_tampered_esp(disk: Path, systemd_boot: Path, uki: Path) -> None:
    """A disk of one ESP: our signed systemd-boot with one entry, `uki`."""
    conf = disk.parent / "tampered.conf"
    conf.write_text("title tampered\nefi /EFI/kairos/tampered.efi\n")
    loader = disk.parent / "loader.conf"
    loader.write_text("timeout 0\n")
    with disk.open("wb") as handle:
        handle.truncate(256 << 20)
    write_partition_table(
        disk, "label: gpt\nstart=2048, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\n", wipe="always"
    )
    make_fat_in_disk(
        disk,
        1 << 20,
        254 << 20,
        {
            "EFI/BOOT/BOOTX64.EFI": systemd_boot,
            "EFI/kairos/tampered.efi": uki,
            "loader/loader.conf": loader,
            "loader/entries/tampered.conf": conf,
        },
        "ESP",
        "4b415453",
    )


def shell(node: Node, command: str, timeout: float = 300) -> str:
    status, output = node.run(command, timeout)
    assert status == 0, f"`{command}` exited {status}:\n{output[-3000:]}"
    return output


def login_and_mount(node: Node) -> None:
    node.login("root", PASSWORD)
    shell(node, "mkdir -p /mnt/up && mount -o ro LABEL=UPGRADES /mnt/up")


def esp_entries(node: Node) -> list[str]:
    # efi.mount has the ESP at /efi on a node systemd-boot started (systemd-bless-boot uses it).
    output = shell(node, "findmnt -n -o FSTYPE /efi && ls /efi/loader/entries")
    assert "vfat" in output, output
    return sorted(w for w in output.split() if w.endswith(".conf"))


def assert_trusted(report: dict[str, str], entry: str, version: str, persistent: str) -> None:
    assert (report["entry"], report["version"], report["hostname"]) == (entry, version, HOSTNAME)
    assert (report["firmware"], report["secureboot"], report["tpm"]) == ("uefi", "enabled", "2.0")
    assert (report["root"], report["root_mode"], report["verity"]) == ("squashfs", "ro", "verity")
    assert report["persistent"] == persistent, report


@contextlib.contextmanager
def guarded(flow: Flow, name: str) -> Iterator[None]:
    """A step that fails leaves the node in a state the next steps do not start from."""
    flow.step()
    try:
        yield
    except BaseException as exc:
        flow.failed = f"{name}: {exc}"
        raise


def test_kairos_build_boot_enrolls_and_boots_the_disk_enforced(flow: Flow) -> None:
    """The user's way: `kairos-build boot` under OVMF's Secure Boot build from empty variables
    (setup mode) with a TPM. systemd-boot enrolls the keys and resets the machine; the boot
    that follows runs enforced, its root verified, COS_PERSISTENT sealed (the disk itself
    stays untouched: a snapshot). The variable store it leaves is enrolled; the node below
    goes on with it."""
    with guarded(flow, "kairos-build boot"):
        result = run_cli(
            "boot",
            str(flow.built),
            "--machine-firmware",
            "uefi-secureboot-setup",
            "--vars",
            str(flow.vars),
            "--tpm",
            "--expect-secureboot",
            "enabled",
            "--expect-verity",
            "verity",
            "--expect-tpm",
            "2.0",
            "--timeout",
            "900",
            "--json",
        )
        assert result.returncode == 0, result.stderr[-3000:]
        output = json.loads(result.stdout)
        report = output["fields"]
        assert (report["entry"], report["verity"], report["tpm"]) == ("active", "verity", "2.0")
        assert (report["secureboot"], report["persistent"]) == ("enabled", "yes")
        log = Path(output["log_path"]).read_text(errors="replace")
        assert "Custom Secure Boot keys successfully enrolled" in log
        assert "sealing COS_PERSISTENT to this machine's TPM" in log
        # The build's plain COS_OEM, sealed with its files kept: the config still applies.
        assert "sealing COS_OEM to this machine's TPM" in log
        assert report["hostname"] == HOSTNAME
        assert secure_boot_enforced(flow.vars.read_bytes())


def test_the_enrolled_firmware_refuses_a_uki_with_one_changed_byte(flow: Flow) -> None:
    """v1's UKI with one changed byte, the only entry of our signed systemd-boot on an ESP of
    its own, under a copy of the enrolled store: the firmware's image check fails
    (EFI_SECURITY_VIOLATION) and systemd-boot names the file. No kernel runs, so this costs a
    minute where a node's boot costs three; the node's store is not touched."""
    flow.step()
    store = flow.folder / "tampered-vars.fd"
    shutil.copyfile(flow.vars, store)
    with Node(
        flow.folder / "tampered.log", [flow.tampered], firmware="uefi-secureboot-setup", vars_file=store
    ) as node:
        node.wait_for(VIOLATION, 600)
        assert b"Linux version" not in node.seen


def test_the_live_iso_boots_from_a_usb_stick(flow: Flow) -> None:
    """The ISO as written to a USB stick (dd), under a copy of the enrolled store: the firmware
    starts our systemd-boot from the GPT's appended ESP (no El Torito on a disk), and the live
    system finds its verified image on the stick."""
    flow.step()
    table = json.loads(
        subprocess.run(["sfdisk", "--json", str(flow.iso)], check=True, capture_output=True, text=True).stdout
    )["partitiontable"]
    assert [part["type"] for part in table["partitions"]][-1] == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", table
    store = flow.folder / "usb-vars.fd"
    shutil.copyfile(flow.vars, store)
    result = run_cli(
        "boot",
        str(flow.iso),
        "--as-disk",
        "--machine-firmware",
        "uefi-secureboot-setup",
        "--vars",
        str(store),
        "--expect-secureboot",
        "enabled",
        "--expect-verity",
        "verity",
        "--expect-entry",
        "live",
        "--timeout",
        "900",
        "--json",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)["fields"]
    assert (report["boot"], report["root"], report["persistent"]) == ("livecd_boot", "squashfs", "no"), report
    store.unlink()


def test_the_live_iso_installs_the_node(flow: Flow) -> None:
    """The live ISO as a CD under the enrolled firmware (Secure Boot enforced): its verified
    image boots, and `kairos-agent manual-install` puts it on the empty disk with the medium's
    config."""
    with (
        guarded(flow, "install"),
        Node(
            flow.folder / "live.log",
            [flow.disk],
            cdrom=flow.iso,
            firmware="uefi-secureboot-setup",
            vars_file=flow.vars,
            tpm_state=flow.tpm,
        ) as node,
    ):
        live = node.report(900)
        assert (live["entry"], live["boot"], live["version"]) == ("live", "livecd_boot", "v1.0.0")
        assert (live["secureboot"], live["verity"], live["root"]) == ("enabled", "verity", "squashfs")
        assert (live["persistent"], live["hostname"]) == ("no", HOSTNAME)
        node.login("root", PASSWORD)
        output = shell(
            node, "kairos-agent manual-install --device /dev/vda /run/kairos/state/config.yaml 2>&1", 1200
        )
        assert "installed to /dev/vda" in output, output[-3000:]
        node.type("poweroff\n")
        assert node.wait_exit(300) == 0


def test_first_boot_upgrade_fallback_reset_and_another_pcr_key(flow: Flow) -> None:
    """The installed node, in one run of the machine: its first boot seals COS_PERSISTENT; an
    upgrade to v2 keeps the data (the seal holds); v3's changed image fails verity and
    systemd-boot falls back to passive; the reset entry resets by itself and reboots into the
    recovery system as active, COS_PERSISTENT sealed anew; v1's UKI signed with another PCR
    key boots, and the TPM keeps the data closed."""
    with guarded(flow, "first boot"), flow.node("node") as node:
        started = time.monotonic()
        report = node.report(900)
        assert_trusted(report, "active", "v1.0.0", "yes")
        assert report["boot"] == "active_boot"
        first_log = node.seen.decode(errors="replace")
        assert "sealing COS_PERSISTENT to this machine's TPM" in first_log
        assert "sealing COS_OEM to this machine's TPM" in first_log
        login_and_mount(node)
        for part in ("persistent", "oem"):  # LUKS2, and marked whole (kairos-sealed.sh)
            found = shell(node, f"blkid -p -o export /dev/disk/by-partlabel/{part}").split()
            assert {"TYPE=crypto_LUKS", "SUBSYSTEM=kairos"} <= set(found), found
        # The agent finds COS_OEM by its label, in the volume; the files that waited on
        # COS_PERSISTENT during the seal are gone from there.
        assert shell(node, "readlink -f /dev/disk/by-label/COS_OEM").split()[-1].startswith("/dev/dm-")
        shell(node, "test ! -e /run/kairos/persistent/.kairos-oem-seal")
        # Each step of a seal stopped as a power cut would stop it, then the next boot: on loop
        # devices in the node, with its cryptsetup, blkid, mkfs and the initramfs's own script
        # (this host's kernel has no device-mapper). Kernel lines off the console meanwhile.
        output = shell(
            node,
            "read level _ < /proc/sys/kernel/printk; dmesg -n 1; "
            "python3 /mnt/up/sealed_scenarios.py /usr/lib/dracut/modules.d/"
            "90kairos-immutable/kairos-sealed.sh; dmesg -n $level",
            900,
        )
        assert f"SEALED-SCENARIOS passed={len(SCENARIOS)} failed=0" in output, output[-6000:]
        shell(node, f"echo sealed > {MARK} && sync")
        # Upgrade to v2 from its OCI image: a new UKI and image beside the old, active+3
        # pointing at them.
        output = shell(node, "kairos-agent upgrade --source oci-archive:/mnt/up/v2.uki.tar 2>&1", 900)
        assert "the next boot starts it with 3 tries" in output
        assert esp_entries(node) == ["active+3.conf", "passive.conf", "recovery.conf", "statereset.conf"]
        node.type("reboot\n")
        second = node.report(900)
        assert_trusted(second, "active", "v2.0.0", "yes")
        login_and_mount(node)
        # The seal held across the upgrade: the new UKI's PCR 11 is signed by the same key.
        assert "sealed" in shell(node, f"cat {MARK}")
        shell(node, "systemctl is-active systemd-bless-boot.service")
        assert "active.conf" in esp_entries(node)  # blessed: the counter is gone
        shell(node, "kairos-agent upgrade --source dir:/mnt/up/v3 2>&1", 900)
        # One try instead of the agent's three: systemd-boot counts them the same way, and
        # each failing boot costs about 90 s under TCG.
        shell(node, "mv /efi/loader/entries/active+3.conf /efi/loader/entries/active+1.conf && sync")
        node.type("reboot\n")
        # v3's root fails verity; with its tries spent, systemd-boot starts passive (v2).
        node.wait_for(b"is corrupted", 600)
        fallback = node.report(1200)
        assert_trusted(fallback, "passive", "v2.0.0", "yes")
        assert fallback["boot"] == "passive_boot"
        print(f"first boot, upgrade, fallback: {time.monotonic() - started:.0f} s")

        # Reset: the statereset entry once; it resets unattended and reboots as active v1.
        login_and_mount(node)
        node.type("kairos-agent reset --reboot-to-recovery\n")  # it reboots by itself
        recovery = node.report(900)
        assert (recovery["entry"], recovery["boot"]) == ("statereset", "recovery_boot")
        assert recovery["persistent"] == "no"
        node.wait_for(b"reset done", 600)
        final = node.report(900)
        assert_trusted(final, "active", "v1.0.0", "yes")
        final_log = node.seen[node.seen.rfind(b"Linux version") :].decode(errors="replace")
        assert "sealing COS_PERSISTENT" in final_log
        assert "sealing COS_OEM" not in final_log  # still sealed, still holding the config
        login_and_mount(node)
        status, _output = node.run(f"test -e {MARK}")
        assert status != 0, "the reset left COS_PERSISTENT's data"
        assert esp_entries(node) == ["active.conf", "passive.conf", "recovery.conf", "statereset.conf"]

        # v1's UKI signed by our db key but with another PCR key, once.
        other = shell(node, "ls /mnt/up/other/EFI/kairos/ | grep system-").split()[-1]
        shell(
            node,
            f"cp /mnt/up/other/EFI/kairos/{other} /efi/EFI/kairos/other.efi && "
            "printf 'title other\\nefi /EFI/kairos/other.efi\\n' "
            "> /efi/loader/entries/other.conf && sync",
        )
        shell(
            node,
            "printf '\\007\\000\\000\\000o\\000t\\000h\\000e\\000r"
            "\\000.\\000c\\000o\\000n\\000f\\000\\000\\000' > /sys/firmware/efi/efivars/"
            "LoaderEntryOneShot-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f",
        )
        node.type("reboot\n")
        foreign = node.report(900, healthy=False)
        # Booted (the db key signed it), verified, but the TPM kept the data closed.
        assert (foreign["secureboot"], foreign["verity"]) == ("enabled", "verity")
        assert foreign["persistent"] == "no", foreign
        assert b"the TPM did not unlock COS_PERSISTENT" in node.seen
        assert b"the TPM did not unlock COS_OEM" in node.seen
        assert foreign["hostname"] != HOSTNAME  # its config stayed sealed
