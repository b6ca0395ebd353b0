#!/usr/bin/env python3
"""Trusted Boot with a verified root against the OS in the initrd (Kairos's way): UKI size,
ESP footprint and RAM, on the same converted image.

    sudo python3 benchmarks/trusted_bench.py [--base REF] [--cache-dir DIR] [--boot] [--json OUT]

Ours: `kairos-build uki --boot-mode trusted` (kernel + initramfs in the UKI, the OS a dm-verity
image on disk whose root hash the signed command line carries). The reference, made in the
same run from the same rootfs with the same ukify and stub: a UKI whose initrd also carries the
whole OS as a zstd cpio, as Kairos packs it. Both are signed the same way.

RAM: with --boot, the Trusted Boot disk and the grub (Secure Boot) disk of the same image are
booted (`kairos-build boot`, TCG) and their boot reports' `mem_used` compared; an OS run from
its initrd holds at least its whole unpacked tree in RAM (initramfs cannot be paged out), so
that is its lower bound (it also holds the compressed initrd while unpacking).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kairos_build.core.sandbox import run_in_root  # noqa: E402
from kairos_build.trusted.uki import STUB  # noqa: E402

MiB = 1 << 20


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "kairos_build", *args], capture_output=True, text=True, check=False, cwd=REPO
    )
    if result.returncode != 0:
        sys.exit(f"kairos-build {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result


def os_in_initrd_uki(tree: Path, work: Path) -> Path:
    """The reference UKI: the image's dracut initrd, then the whole OS as a zstd cpio."""
    inside = "/tmp/bench"
    # The image's own cpio and zstd, over its read-only tree: every file of the OS.
    run_in_root(
        tree,
        [
            "sh",
            "-c",
            "cd / && find . -xdev -path ./proc -prune -o -path ./sys "
            "-prune -o -path ./dev -prune -o -path ./tmp -prune -o -path ./run -prune "
            f"-o -print | cpio -o -H newc --quiet | zstd -q -T0 -3 > {inside}/os.cpio.zst",
        ],
        binds=[(work, inside)],
        read_only=True,
    )
    (work / "cmdline").write_text("console=ttyS0,115200\n")
    run_in_root(
        tree,
        [
            "ukify",
            "build",
            "--linux=/boot/vmlinuz",
            "--initrd=/boot/initrd",
            f"--initrd={inside}/os.cpio.zst",
            f"--cmdline=@{inside}/cmdline",
            "--os-release=@/etc/os-release",
            f"--stub=/{STUB}",
            f"--output={inside}/os-in-initrd.efi",
        ],
        env={"PYTHONDONTWRITEBYTECODE": "1"},
        binds=[(work, inside)],
        read_only=True,
    )
    return work / "os-in-initrd.efi"


def tree_bytes(tree: Path) -> int:
    out = subprocess.run(
        ["du", "-sb", "--exclude=./proc", "--exclude=./sys", str(tree)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(out.split()[0])


def boot_memory(disk: Path, firmware: str, extra: list[str]) -> int:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kairos_build",
            "boot",
            str(disk),
            "--machine-firmware",
            firmware,
            "--timeout",
            "900",
            "--json",
            *extra,
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    report = json.loads(result.stdout or "{}").get("fields", {})
    if result.returncode != 0 or "mem_used" not in report:
        sys.exit(f"booting {disk} failed:\n{result.stderr[-2000:]}")
    return int(report["mem_used"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="bootstrap:debian/trixie")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache/kairos-build-bench")
    parser.add_argument("--boot", action="store_true", help="also boot both disks for RAM")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kb-trusted-bench-"))
    try:
        keys = work / "keys"
        cli("genkey", str(keys))
        common = ["--base", args.base, "--cache-dir", str(args.cache_dir)]
        cli("uki", *common, "--boot-mode", "trusted", "--keys", str(keys), "--output", str(work / "uki"))
        folder = next((work / "uki").glob("*-uki"))
        ours = next((folder / "EFI/kairos").glob("system-*.efi"))
        image = next((folder / "cOS").glob("system-*.img"))
        tree = work / "tree"
        cli("convert", args.base, "--output", f"dir:{tree}", "--cache-dir", str(args.cache_dir))
        reference = os_in_initrd_uki(tree, work)
        subprocess.run(
            [
                "sbsign",
                "--key",
                str(keys / "db.key"),
                "--cert",
                str(keys / "db.pem"),
                "--output",
                str(reference),
                str(reference),
            ],
            check=True,
            capture_output=True,
        )
        results: dict[str, float] = {
            "uki_ours_mib": ours.stat().st_size / MiB,
            "uki_os_in_initrd_mib": reference.stat().st_size / MiB,
            "root_image_mib": image.stat().st_size / MiB,
            "os_tree_mib": tree_bytes(tree) / MiB,
        }
        # The ESP of a node between upgrades: ours holds a system UKI per image (active,
        # passive) and a recovery UKI; Kairos four OS-in-initrd UKIs (active, passive,
        # recovery, statereset).
        results["esp_ours_mib"] = 3 * results["uki_ours_mib"]
        results["esp_os_in_initrd_mib"] = 4 * results["uki_os_in_initrd_mib"]
        results["ram_os_in_initrd_min_mib"] = results["os_tree_mib"]
        if args.boot:
            disks = work / "disks"
            cli(
                "qcow2",
                *common,
                "--boot-mode",
                "trusted",
                "--keys",
                str(keys),
                "--output",
                str(disks / "trusted"),
            )
            cli("qcow2", *common, "--output", str(disks / "grub"))
            results["ram_ours_mib"] = boot_memory(
                next((disks / "trusted").glob("*.qcow2")), "uefi-secureboot-setup", ["--tpm", "--writable"]
            )
            results["ram_grub_mib"] = boot_memory(next((disks / "grub").glob("*.qcow2")), "uefi", [])
        print("| measure | ours (verity root) | OS in the initrd | ratio |")
        print("|---|---:|---:|---:|")
        print(
            f"| one UKI | {results['uki_ours_mib']:.0f} MiB | "
            f"{results['uki_os_in_initrd_mib']:.0f} MiB | "
            f"{results['uki_ours_mib'] / results['uki_os_in_initrd_mib']:.2f} |"
        )
        print(
            f"| ESP between upgrades | {results['esp_ours_mib']:.0f} MiB | "
            f"{results['esp_os_in_initrd_mib']:.0f} MiB | "
            f"{results['esp_ours_mib'] / results['esp_os_in_initrd_mib']:.2f} |"
        )
        if "ram_ours_mib" in results:
            print(
                f"| RAM in use after boot | {results['ram_ours_mib']:.0f} MiB (grub boot of the "
                f"same image: {results['ram_grub_mib']:.0f} MiB) | >= "
                f"{results['ram_os_in_initrd_min_mib']:.0f} MiB (the unpacked OS) | "
                f"{results['ram_ours_mib'] / results['ram_os_in_initrd_min_mib']:.2f} |"
            )
        print(f"(root image on disk: {results['root_image_mib']:.0f} MiB, squashfs + verity tree)")
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
