"""The boot report's fields and the harness's pass/fail decision on them: a boot passes only
when systemd is `running` with no failed unit, on the expected firmware, Secure Boot state and
entry; a firmware that refuses the image ends the wait at once. The console text comes from
`printf` in place of QEMU (the real boots are in tests/boot)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from kairos_build.boot import harness as boot_module
from kairos_build.boot.harness import (
    check_health,
    check_platform,
    check_root,
    comes_from,
    firmware_gave_up,
    parse_report,
    refusal_message,
)
from kairos_build.core.errors import BuildError, InputError

HEALTHY = (
    "KAIROS-BOOT-REPORT flavor=debian version=v0.1.0 root=overlay root_mode=rw image=none "
    "etc=none persistent=no live=squashfs machine_id=0123 ssh_host_keys=3 hostname=localhost "
    "entry=live firmware=bios secureboot=unsupported lockdown=none uptime=41.20 "
    "state=running failed=none"
)
DEGRADED = HEALTHY.replace(
    "state=running failed=none", "state=degraded failed=cloud-config.service,cloud-final.service"
)
STARTING = HEALTHY.replace(
    "state=running failed=none",
    "state=starting failed=none jobs=systemd-networkd-wait-online.service:start,network-online.target:start",
)


def test_the_report_line_parses_into_one_word_values() -> None:
    fields = parse_report(b"noise\r\n" + DEGRADED.encode() + b"\r\nlogin: ")
    assert fields is not None
    assert fields["state"] == "degraded"
    assert fields["failed"] == "cloud-config.service,cloud-final.service"
    assert fields["entry"] == "live" and fields["secureboot"] == "unsupported"
    assert parse_report(b"KAIROS-BOOT-REPORT state=running") is not None  # the line ends there
    assert parse_report(b"no report here\n") is None


def test_healthy_means_running_with_no_failed_unit() -> None:
    assert check_health(parse_report(HEALTHY.encode()) or {}) is None


def test_degraded_fails_naming_every_failed_unit() -> None:
    problem = check_health(parse_report(DEGRADED.encode()) or {})
    assert problem == "the system is degraded; failed units: cloud-config.service, cloud-final.service"


def test_a_boot_that_never_settled_fails_naming_the_waiting_jobs() -> None:
    problem = check_health(parse_report(STARTING.encode()) or {}) or ""
    assert problem.startswith("the system is starting; it never settled")
    assert "systemd-networkd-wait-online.service:start, network-online.target:start" in problem


def test_running_with_a_failed_unit_is_not_healthy() -> None:
    # systemd says degraded as soon as a unit failed, but the harness does not rely on it.
    assert "failed units: x.service" in (check_health({"state": "running", "failed": "x.service"}) or "")


def test_a_report_without_state_is_not_taken_for_healthy() -> None:
    old = "KAIROS-BOOT-REPORT flavor=debian root=overlay live=squashfs state=starting"
    assert "says nothing of systemd's state" in (check_health(parse_report(old.encode()) or {}) or "")


def test_firmware_secure_boot_and_entry_expectations() -> None:
    bios = parse_report(HEALTHY.encode()) or {}
    assert check_platform(bios, "bios") is None
    assert check_platform(bios, "bios", expect_entry="live") is None
    assert (
        check_platform(bios, "bios", expect_entry="live-config")
        == "expected boot entry live-config, the system reports entry=live"
    )
    assert check_platform(bios, "uefi") == "expected a uefi boot, the system reports firmware=bios"
    uefi = {**bios, "firmware": "uefi", "secureboot": "disabled"}
    assert check_platform(uefi, "uefi") is None
    assert (
        check_platform(uefi, "uefi-secureboot")
        == "expected secureboot=enabled, the system reports secureboot=disabled"
    )
    assert check_platform(uefi, "uefi-secureboot", expect_secureboot="any") is None
    assert check_platform({**uefi, "secureboot": "enabled"}, "uefi-secureboot") is None


OVMF_REFUSAL = (
    b'BdsDxe: loading Boot0002 "UEFI Misc Device" from PciRoot(0x0)/Pci(0x2,0x0)\r\n'
    b'BdsDxe: failed to load Boot0002 "UEFI Misc Device" from PciRoot(0x0)/Pci(0x2,0x0): '
    b"Access Denied\r\n"
)


def test_firmware_refusal_is_read_only_before_the_kernel() -> None:
    assert firmware_gave_up(OVMF_REFUSAL) == b": Access Denied"
    assert firmware_gave_up(b"BdsDxe: No bootable option or device was found.\r\n") is not None
    assert firmware_gave_up(b"[ 0.0] Linux version 6.12\r\n... Access Denied\r\n") is None
    refused = refusal_message(b": Access Denied", "uefi-secureboot", False, OVMF_REFUSAL)
    assert refused.startswith(
        'Secure Boot refused the image (console: "BdsDxe: failed to load '
        'Boot0002 "UEFI Misc Device" from PciRoot(0x0)/Pci(0x2,0x0): Access Denied")'
    )
    ipxe = b"vmlinuz... ok\r\nCould not boot image: Exec format error (http://ipxe.org/2e008081)\r\n"
    assert firmware_gave_up(ipxe) == b"Could not boot image"
    assert "Secure Boot refused the network boot" in refusal_message(
        b"Could not boot image", "uefi-secureboot", True, ipxe
    )
    assert "iPXE could not boot the kernel" in refusal_message(b"Could not boot image", "uefi", True, ipxe)
    assert "found nothing to boot" in refusal_message(
        b"No bootable option or device was found", "uefi", False
    )


def console(text: str, linger: float = 0) -> Callable[[list[str]], subprocess.Popen[bytes]]:
    """Stands in for QEMU: prints `text` on the "console", then stays up `linger` seconds."""

    def spawn(argv: list[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            ["sh", "-c", 'printf "%s\\n" "$1"; exec sleep "$2"', "sh", text, str(linger)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    return spawn


def test_boot_passes_on_a_healthy_report_with_its_fields(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    iso = tmp_path / "a.iso"
    iso.write_bytes(b"\0" * 512)
    monkeypatch.setattr(boot_module, "_spawn", console(HEALTHY))
    result = boot_module.boot(boot_module.BootSpec(iso, "bios", timeout=20, accel="tcg", expect_entry="live"))
    assert (result.state, result.failed, result.secureboot, result.entry) == (
        "running",
        (),
        "unsupported",
        "live",
    )


@pytest.mark.parametrize(
    ("report", "expected"),
    [
        (
            DEGRADED,
            "not healthy: the system is degraded; failed units: cloud-config.service, cloud-final.service",
        ),
        (STARTING, "never settled; jobs still waiting: systemd-networkd-wait-online.service:start"),
    ],
)
def test_boot_fails_on_an_unhealthy_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, report: str, expected: str
) -> None:
    iso = tmp_path / "a.iso"
    iso.write_bytes(b"\0" * 512)
    monkeypatch.setattr(boot_module, "_spawn", console(report))
    with pytest.raises(BuildError, match=expected):
        boot_module.boot(boot_module.BootSpec(iso, "bios", timeout=20, accel="tcg"))


def test_a_refused_image_is_not_waited_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = tmp_path / "a.raw"
    disk.write_bytes(b"\0" * 512)
    monkeypatch.setattr(boot_module, "_spawn", console(OVMF_REFUSAL.decode(), linger=120))
    began = time.monotonic()
    with pytest.raises(BuildError, match="Secure Boot refused the image"):
        boot_module.boot(boot_module.BootSpec(disk, "uefi-secureboot", timeout=90, accel="tcg"))
    assert time.monotonic() - began < 20


def test_unknown_firmware_and_nic_are_refused_before_any_work(tmp_path: Path) -> None:
    disk = tmp_path / "a.raw"
    disk.write_bytes(b"\0" * 512)
    with pytest.raises(InputError, match="bios|uefi|uefi-secureboot"):
        boot_module.boot(boot_module.BootSpec(disk, "coreboot", accel="tcg"))
    with pytest.raises(InputError, match="none|user"):
        boot_module.boot(boot_module.BootSpec(disk, "bios", accel="tcg", nic="tap"))
    with pytest.raises(InputError, match="enabled|disabled"):
        boot_module.boot(boot_module.BootSpec(disk, "bios", accel="tcg", expect_secureboot="maybe"))


def test_secure_boot_firmware_options(tmp_path: Path) -> None:
    argv = boot_module.qemu_command(
        tmp_path / "a.raw", "uefi-secureboot", "tcg", tmp_path / "vars.fd", 2048, nic="user"
    )
    joined = " ".join(argv)
    assert "q35,smm=on" in argv
    assert "driver=cfi.pflash01,property=secure,value=on" in argv
    assert f"file={boot_module.OVMF_SECBOOT_CODE}" in joined
    assert "user,model=virtio-net-pci,restrict=on" in argv
    plain = boot_module.qemu_command(tmp_path / "a.raw", "uefi", "tcg", tmp_path / "vars.fd", 2048)
    assert "q35" in plain and "q35,smm=on" not in plain and "-global" not in plain
    assert plain[plain.index("-nic") + 1] == "none"


# What Debian 12's signed grub printed when its menu entry could not open the system image
# (seen in a real boot before templates/grub-disk.cfg.j2 unloaded its TPM verifier).
GRUB_GAVE_UP = (
    "Booting `Kairos Debian'\r\nerror: out of memory.\r\nerror: no server is specified.\r\n"
    "error: you need to load the kernel first.\r\n\r\n"
    "  Failed to boot both default and fallback entries.\r\n\r\nPress any key to continue..."
)


def test_a_grub_that_gave_up_is_not_waited_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = tmp_path / "a.raw"
    disk.write_bytes(b"\0" * 512)
    monkeypatch.setattr(boot_module, "_spawn", console(GRUB_GAVE_UP, linger=120))
    began = time.monotonic()
    with pytest.raises(BuildError, match="grub could not start the system") as raised:
        boot_module.boot(boot_module.BootSpec(disk, "uefi", timeout=90, accel="tcg"))
    assert time.monotonic() - began < 20
    assert (
        "error: out of memory.; error: no server is specified.; error: you need to load the kernel first."
    ) in str(raised.value)


IMMUTABLE = {
    "root": "ext4",
    "root_mode": "ro",
    "image": "/cOS/active.img",
    "root_image": "/run/kairos/state/cOS/active.img",
    "verity": "none",
    "etc": "overlay",
}
# The Trusted Boot disk: / is dm-verity over a squashfs image, its data and hash devices the
# same loop device (or two: the image and its hash file).
VERITY = {
    **IMMUTABLE,
    "root": "squashfs",
    "verity": "verity",
    "root_image": "/run/kairos/state/cOS/active.img,/run/kairos/state/cOS/active.img.verity",
}


def test_an_immutable_root_must_come_from_the_image_on_the_command_line() -> None:
    assert check_root(IMMUTABLE, "immutable") is None
    assert check_root(VERITY, "immutable") is None
    assert check_root(VERITY, "immutable", expect_verity="verity") is None
    assert (
        check_root(IMMUTABLE, "immutable", expect_verity="verity")
        == "expected verity=verity, the system reports verity=none"
    )
    assert (
        check_root(VERITY, "immutable", expect_verity="none")
        == "expected verity=none, the system reports verity=verity"
    )
    # / from another file than the one named (the passive image, a look-alike name), or from
    # no loop device at all (root=LABEL=... mounted the partition itself): not the image.
    for found in ("/run/kairos/state/cOS/passive.img", "/run/kairos/state/cOS/notactive.img", "none"):
        assert check_root({**IMMUTABLE, "root_image": found}, "immutable") == (
            f"expected / from /cOS/active.img (the image on the command line), the system "
            f"reports root_image={found}"
        )
    assert "an image built before that field" in (
        check_root({k: v for k, v in IMMUTABLE.items() if k != "root_image"}, "immutable") or ""
    )
    assert "read-only" in (check_root({**VERITY, "root_mode": "rw"}, "immutable") or "")
    assert check_root({**IMMUTABLE, "root_image": "none"}, "any") is None
    assert comes_from("cOS/active.img", "/run/kairos/state/cOS/active.img")


def test_a_live_root_is_the_live_squashfs_or_a_verified_image_on_the_live_entry() -> None:
    """The grub ISO runs dmsquash-live's squashfs; the Trusted Boot ISO its verified image
    read-only, on the live entry."""
    assert check_root({"live": "squashfs", "root": "overlay"}, "live") is None
    assert check_root({**VERITY, "live": "none", "entry": "live"}, "live") is None
    assert "entry=active" in (check_root({**VERITY, "live": "none", "entry": "active"}, "live") or "")
    assert "verity=none" in (check_root({**IMMUTABLE, "live": "none", "entry": "live"}, "live") or "")
    # On the live entry the verified image is judged as an immutable root: from its own file.
    assert "expected / from" in (
        check_root({**VERITY, "live": "none", "entry": "live", "root_image": "none"}, "live") or ""
    )
    assert not comes_from("none", "none")


def test_tpm_expectations_and_result_fields(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bios = {**(parse_report(HEALTHY.encode()) or {}), "tpm": "2.0"}
    assert check_platform(bios, "bios", expect_tpm="2.0") is None
    assert check_platform(bios, "bios", expect_tpm="any") is None
    assert (
        check_platform({**bios, "tpm": "none"}, "bios", expect_tpm="2.0")
        == "expected tpm=2.0, the system reports tpm=none"
    )
    assert (
        check_platform({k: v for k, v in bios.items() if k != "tpm"}, "bios", expect_tpm="none")
        == "expected tpm=none, the system reports tpm=None"
    )
    iso = tmp_path / "a.iso"
    iso.write_bytes(b"\0" * 512)
    monkeypatch.setattr(boot_module, "_spawn", console(HEALTHY + " tpm=none verity=none"))
    result = boot_module.boot(
        boot_module.BootSpec(iso, "bios", timeout=20, accel="tcg", expect_tpm="none", expect_verity="none")
    )
    assert (result.tpm, result.verity) == ("none", "none")
