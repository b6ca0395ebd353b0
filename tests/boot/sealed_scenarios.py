"""The initramfs's sealing of COS_PERSISTENT and COS_OEM (kairos-sealed.sh) through the boots a
node goes through, and through seals stopped at each step (what a power cut leaves on the
disk), on two loop devices with the real cryptsetup, blkid and mkfs.ext4. Only the TPM is
stood in for: "enrolling" adds a fixed key file and "attaching" opens with it (a real TPM
seals and unseals in test_trusted_boot.py's boots).

Standard library only: test_trusted_boot.py runs this file with the image's own python3 in a
booted Trusted Boot node (the same cryptsetup, blkid, mkfs and dash as its initramfs; this
host's kernel has no device-mapper), and prints `SEALED-SCENARIOS passed=N failed=M`.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

CONFIG = "#cloud-config\nhostname: sealed\n"
NAMES = ("test-sealed-persistent", "test-sealed-oem")  # not the node's own mappings
OPENED = (f"/dev/mapper/{NAMES[0]}", f"/dev/mapper/{NAMES[1]}")
# One boot's part of kairos-immutable-setup: COS_PERSISTENT opened and mounted, then COS_OEM.
BOOT = r"""
run=$WORK/run
persistent_label=COS_PERSISTENT
mkdir -p "$run"
say() { echo "kairos-immutable: $*"; }
wait_for() { [ -b "$1" ]; }
. "$SEALED"
seal_persistent_name=test-sealed-persistent
seal_oem_name=test-sealed-oem
# The TPM's stand-in: the key file systemd-cryptenroll's stand-in added.
attach_sealed() {
    cryptsetup open --key-file "$TPM_KEY" "$2" "$1" || { say "the TPM did not unlock $3"; return 1; }
}
mount_point=""
if [ "$WITH_PERSISTENT" = yes ] && persistent=$(open_sealed_persistent "$PERSISTENT" 3>&1 1>&2); then
    mkdir -p "$run/persistent" && mount "$persistent" "$run/persistent" && mount_point=$run/persistent
else
    persistent=none
fi
oem=$(open_sealed_oem "$OEM" "$mount_point" 3>&1 1>&2) || oem=none
echo "RESULT $persistent $oem"
"""
# Stand-ins on PATH ahead of the real tools: each fails at the step named by $STOP_AT when
# one of its arguments is $STOP_ON, as a power cut there would leave the disk.
STOP = 'if [ "$STOP_AT" = "{step}" ]; then for arg; do [ "$arg" = "$STOP_ON" ] && exit 1; done; fi\n'
ENROLL = """#!/bin/sh
{stop}for arg; do
    case "$arg" in --unlock-key-file=*) old=${{arg#--unlock-key-file=}} ;; esac
    device=$arg
done
exec cryptsetup luksAddKey --batch-mode --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \\
    --key-file "$old" "$device" "$TPM_KEY"
"""


def run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


class Disk:
    """A blank COS_PERSISTENT and a plain COS_OEM holding a config (mode 0600), as the build
    and the installer leave them, on loop devices."""

    def __init__(self, work: Path, sealed: Path) -> None:
        self.work, self.sealed = work, sealed
        self.bin = work / "bin"
        self.bin.mkdir()
        stand_ins = {
            "systemd-cryptenroll": ENROLL.format(stop=STOP.format(step="enroll")),
            "cryptsetup": f'#!/bin/sh\n{STOP.format(step="$1")}exec {shutil.which("cryptsetup")} "$@"\n',
            "mkfs.ext4": f'#!/bin/sh\n{STOP.format(step="mkfs")}exec {shutil.which("mkfs.ext4")} "$@"\n',
        }
        for name, text in stand_ins.items():
            (self.bin / name).write_text(text)
            (self.bin / name).chmod(0o755)
        (work / "tpm.key").write_bytes(os.urandom(64))
        tree = work / "oem-tree"
        tree.mkdir()
        (tree / "90_custom.yaml").write_text(CONFIG)
        (tree / "90_custom.yaml").chmod(0o600)
        (tree / "immutable.conf").write_text("persist /srv\n")
        self.loops: list[str] = []
        for name in ("persistent", "oem"):
            image = work / f"{name}.img"
            with image.open("wb") as handle:
                handle.truncate(64 << 20)
            self.loops.append(run("losetup", "--find", "--show", str(image)))
        self.persistent, self.oem = self.loops
        run("mkfs.ext4", "-q", "-L", "COS_OEM", "-d", str(tree), self.oem)

    def boot(self, stop_at: str = "", stop_on: str = "", persistent: bool = True) -> tuple[str, str, str]:
        """One boot: (COS_PERSISTENT's device, COS_OEM's device, what it said); "none" when
        a device was not opened."""
        env = {
            **os.environ,
            "WORK": str(self.work),
            "SEALED": str(self.sealed),
            "TPM_KEY": str(self.work / "tpm.key"),
            "PERSISTENT": self.persistent,
            "OEM": self.oem,
            "WITH_PERSISTENT": "yes" if persistent else "no",
            "STOP_AT": stop_at,
            "STOP_ON": stop_on,
            "PATH": f"{self.bin}:{os.environ['PATH']}",
        }
        result = subprocess.run(["sh", "-c", BOOT], env=env, capture_output=True, text=True, check=True)
        said = result.stdout + result.stderr
        line = next(row for row in result.stdout.splitlines() if row.startswith("RESULT "))
        _word, persistent_device, oem_device = line.split()
        return persistent_device, oem_device, said

    def shut_down(self) -> None:
        subprocess.run(["umount", str(self.work / "run/persistent")], capture_output=True)
        for name in NAMES:
            if Path(f"/dev/mapper/{name}").exists():
                run("cryptsetup", "close", name)

    def remove(self) -> None:
        self.shut_down()
        for loop in self.loops:
            subprocess.run(["losetup", "-d", loop], capture_output=True)

    def probe(self, device: str) -> dict[str, str]:
        result = subprocess.run(["blkid", "-p", "-o", "export", device], capture_output=True, text=True)
        return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)

    def oem_files(self, device: str) -> dict[str, tuple[str, int]]:
        """COS_OEM's files: name -> (text, mode)."""
        where = self.work / "look"
        where.mkdir(exist_ok=True)
        run("mount", "-o", "ro", device, str(where))
        try:
            return {
                path.name: (path.read_text(), stat.S_IMODE(path.stat().st_mode))
                for path in where.iterdir()
                if path.is_file()
            }
        finally:
            run("umount", str(where))

    def stash(self) -> Path:
        return self.work / "run/persistent/.kairos-oem-seal"


def assert_sealed_whole(disk: Disk) -> None:
    for device in (disk.persistent, disk.oem):
        found = disk.probe(device)
        assert (found["TYPE"], found["SUBSYSTEM"]) == ("crypto_LUKS", "kairos"), found
        # One key slot: the "TPM"'s. The random key that made the volume is gone.
        assert run("cryptsetup", "luksDump", device).count(": luks2") == 1


def assert_config_kept(disk: Disk, oem_device: str) -> None:
    files = disk.oem_files(oem_device)
    assert files["90_custom.yaml"] == (CONFIG, 0o600), files
    assert files["immutable.conf"][0] == "persist /srv\n", files


def first_boot_seals_both_and_the_config_stays(disk: Disk) -> None:
    persistent, oem, said = disk.boot()
    assert (persistent, oem) == OPENED, said
    assert "sealing COS_PERSISTENT" in said and "sealing COS_OEM" in said, said
    assert_sealed_whole(disk)
    assert disk.probe(oem)["LABEL"] == "COS_OEM"  # what the agent looks for, in the volume
    assert_config_kept(disk, oem)
    assert not disk.stash().exists()
    disk.shut_down()
    # The next boot opens both as they are.
    persistent, oem, said = disk.boot()
    assert (persistent, oem) == OPENED, said
    assert "sealing" not in said, said
    assert_config_kept(disk, oem)


def seal_stopped_at(stop_at: str, stop_on: str, oem_left: str) -> Callable[[Disk], None]:
    """A seal stopped at one step (the disk as a power cut there leaves it) is redone whole by
    the next boot, COS_OEM's files kept."""

    def scenario(disk: Disk) -> None:
        target = {"OEM": disk.oem, "PERSISTENT": disk.persistent}.get(stop_on, stop_on)
        _persistent, oem, said = disk.boot(stop_at, target)
        assert oem in ("none", disk.oem), said  # nothing half-made is handed on
        assert disk.probe(disk.oem)["TYPE"] == oem_left, said
        if oem_left == "crypto_LUKS":  # marked unfinished; the files wait on COS_PERSISTENT
            assert disk.probe(disk.oem)["SUBSYSTEM"] == "kairos-sealing"
            assert (disk.stash() / "90_custom.yaml").read_text() == CONFIG
        disk.shut_down()
        persistent, oem, said = disk.boot()
        assert (persistent, oem) == OPENED, said
        assert_sealed_whole(disk)
        assert_config_kept(disk, oem)
        assert not disk.stash().exists()

    scenario.__name__ = f"seal_stopped_at_{stop_at}_on_{stop_on}"
    return scenario


def seal_torn_inside_luks_format(disk: Disk) -> None:
    """A cut while luksFormat writes its header: COS_OEM is neither its old filesystem nor a
    LUKS volume (here: blank), and its files wait on COS_PERSISTENT. The next boot seals it
    from that copy."""
    _persistent, oem, said = disk.boot("luksFormat", "COS_OEM_LUKS")
    assert (disk.stash() / "90_custom.yaml").read_text() == CONFIG, said
    disk.shut_down()
    run("wipefs", "--all", "--quiet", disk.oem)  # the torn header
    persistent, oem, said = disk.boot()
    assert (persistent, oem) == OPENED and "cut off" in said, said
    assert_sealed_whole(disk)
    assert_config_kept(disk, oem)
    assert not disk.stash().exists()


def plain_oem_waits_for_a_sealed_persistent(disk: Disk) -> None:
    """Without COS_PERSISTENT open (recovery, or a TPM that refused it) there is nowhere safe
    to keep COS_OEM's files while it is sealed: it is read as it is."""
    persistent, oem, said = disk.boot(persistent=False)
    assert (persistent, oem) == ("none", disk.oem), said
    assert disk.probe(disk.oem)["TYPE"] == "ext4"
    assert_config_kept(disk, oem)


def what_is_not_ours_is_left_alone(disk: Disk) -> None:
    """A COS_PERSISTENT that holds a filesystem is not formatted; a COS_OEM whose seal was cut
    off is not redone without its files' copy."""
    run("mkfs.ext4", "-q", "-L", "SOMETHING", disk.persistent)
    persistent, oem, said = disk.boot()
    assert persistent == "none" and "neither LUKS nor blank: left alone" in said, said
    assert oem == disk.oem and disk.probe(disk.oem)["TYPE"] == "ext4", said  # read, not sealed
    assert disk.probe(disk.persistent)["LABEL"] == "SOMETHING"
    disk.shut_down()
    run("wipefs", "--all", "--quiet", disk.persistent)
    disk.boot("mkfs", "COS_OEM")  # COS_OEM's seal stops before its filesystem
    disk.shut_down()
    persistent, oem, said = disk.boot(persistent=False)
    assert oem == "none" and "cut off" in said, said
    assert disk.probe(disk.oem)["SUBSYSTEM"] == "kairos-sealing"


SCENARIOS: list[Callable[[Disk], None]] = [
    first_boot_seals_both_and_the_config_stays,
    seal_stopped_at("luksFormat", "COS_OEM_LUKS", "ext4"),  # files copied, COS_OEM untouched
    seal_stopped_at("enroll", "OEM", "crypto_LUKS"),  # a volume no TPM slot opens yet
    seal_stopped_at("mkfs", "COS_OEM", "crypto_LUKS"),  # enrolled, no filesystem yet
    seal_stopped_at("enroll", "PERSISTENT", "ext4"),  # COS_PERSISTENT's own
    seal_torn_inside_luks_format,
    plain_oem_waits_for_a_sealed_persistent,
    what_is_not_ours_is_left_alone,
]


def run_scenario(scenario: Callable[[Disk], None], sealed: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="sealed-") as folder:
        disk = Disk(Path(folder), sealed)
        try:
            scenario(disk)
        finally:
            disk.remove()


def main(sealed: str) -> int:
    failed = 0
    for scenario in SCENARIOS:
        try:
            run_scenario(scenario, Path(sealed))
            print(f"SEALED-OK {scenario.__name__}", flush=True)
        except Exception:  # each scenario on its own disk: report all of them
            failed += 1
            print(f"SEALED-FAIL {scenario.__name__}\n{traceback.format_exc()}", flush=True)
    print(f"SEALED-SCENARIOS passed={len(SCENARIOS) - failed} failed={failed}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
