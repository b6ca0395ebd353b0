"""Run host programs. A missing program stops the build with the package that provides it."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from kairos_build.core.errors import BuildError, MissingToolError
from kairos_build.core.log import log

# Program -> Debian/Ubuntu package that ships it. `install-deps` installs the union.
TOOL_PACKAGES: dict[str, str] = {
    "mmdebstrap": "mmdebstrap",
    "mksquashfs": "squashfs-tools",
    "unsquashfs": "squashfs-tools",
    "mkfs.vfat": "dosfstools",
    "fsck.vfat": "dosfstools",
    "mmd": "mtools",
    "mcopy": "mtools",
    "sfdisk": "fdisk",
    "sgdisk": "gdisk",
    "mkfs.ext4": "e2fsprogs",
    "e2fsck": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "dumpe2fs": "e2fsprogs",
    "qemu-img": "qemu-utils",
    "qemu-system-x86_64": "qemu-system-x86",
    "swtpm": "swtpm",  # the guest's TPM (`boot --tpm`)
    "grub-mkimage": "grub-common",
    "xorriso": "xorriso",
    "unshare": "util-linux",
    "setpriv": "util-linux",
    "bwrap": "bubblewrap",
    "gzip": "gzip",
    "cp": "coreutils",
    "tar": "tar",
    "zstd": "zstd",
    # Trusted Boot: the verity hash tree of the root image, the UKIs' signatures.
    "veritysetup": "cryptsetup-bin",
    "sbsign": "sbsigntool",
    "sbverify": "sbsigntool",
    # genkey: the Secure Boot and PCR policy keys.
    "openssl": "openssl",
}

# Files (not programs) we need from host packages.
FILE_PACKAGES: dict[str, str] = {
    "/usr/lib/grub/i386-pc/cdboot.img": "grub-pc-bin",
    "/usr/lib/grub/i386-pc/boot.img": "grub-pc-bin",
    "/usr/lib/grub/x86_64-efi/linux.mod": "grub-efi-amd64-bin",
    "/usr/share/OVMF/OVMF_CODE_4M.fd": "ovmf",
}

# Everything `install-deps` installs on an apt host: the programs above plus what is only a file
# or a library (libmagic for python-magic, OVMF firmware, grub platform modules, CA certificates
# for the bootstrap's https mirrors) and swtpm-tools (swtpm_setup, which manufactures a TPM
# state with endorsement-key certificates, for guests that ask for them; `boot` lets swtpm
# make a bare state itself).
APT_HOST_PACKAGES: tuple[str, ...] = tuple(
    sorted(
        set(TOOL_PACKAGES.values())
        | set(FILE_PACKAGES.values())
        | {"grub-common", "libmagic1", "ca-certificates", "debian-archive-keyring", "ovmf", "swtpm-tools"}
    )
)


def require_tool(name: str) -> str:
    """Return the path of host program `name`, or stop with the package to install."""
    path = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if path is None:
        package = TOOL_PACKAGES.get(name, name)
        raise MissingToolError(
            f"missing host tool '{name}' (package {package})",
            hint=f"run 'kairos-build install-deps' or 'apt-get install {package}'",
        )
    return path


def require_file(path: str) -> Path:
    """Return `path` if the host has it, else stop naming the package that ships it."""
    if not Path(path).exists():
        package = FILE_PACKAGES.get(path, "?")
        raise MissingToolError(
            f"missing host file {path} (package {package})",
            hint=f"run 'kairos-build install-deps' or 'apt-get install {package}'",
        )
    return Path(path)


def dies_with_us(argv: list[str]) -> list[str]:
    """`argv` behind `setpriv --pdeathsig KILL`: the program is killed when we are, even by
    SIGKILL, instead of writing on into a half-made artifact (util-linux's setpriv is on every
    host we support; without it the program runs as it is)."""
    setpriv = shutil.which("setpriv", path=os.environ.get("PATH", "") + ":/usr/bin:/bin")
    return [setpriv, "--pdeathsig", "KILL", "--", *argv] if setpriv else argv


def run(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    input_bytes: bytes | None = None,
    capture: bool = False,
    timeout: float | None = None,
    name: str | None = None,
    unset: Sequence[str] = (),
) -> str:
    """Run a program (never through a shell). Return its stdout when `capture`.

    Output is collected and only shown when the program fails, as the last lines of it, so
    the user sees why without scrolling through a package manager's whole log. `name` is the
    program the messages speak of when argv[0] only wraps it; `unset` names variables of our
    environment the program must not see.
    """
    argv = [os.fspath(c) for c in cmd]
    argv[0] = require_tool(argv[0]) if "/" not in argv[0] else argv[0]
    log.debug("$ %s", " ".join(argv))
    full_env = None
    if env or unset:
        full_env = {k: v for k, v in {**os.environ, **(env or {})}.items() if k not in unset}
    try:
        proc = subprocess.run(
            dies_with_us(argv),
            env=full_env,
            cwd=cwd,
            input=input_bytes,
            stdin=None if input_bytes is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if capture else subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BuildError(f"{name or Path(argv[0]).name} did not finish within {timeout:.0f} s") from exc
    out = proc.stdout.decode(errors="replace")
    err = proc.stderr.decode(errors="replace") if capture and proc.stderr else ""
    if proc.returncode != 0:
        tail = "\n".join((out + err).strip().splitlines()[-25:])
        raise BuildError(
            f"{name or Path(argv[0]).name} failed with exit code {proc.returncode}:\n{tail}",
        )
    if not capture and out.strip():
        log.debug("%s", out.rstrip())
    return out
