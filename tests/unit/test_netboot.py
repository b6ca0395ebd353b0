"""Netboot without QEMU: the iPXE script, the directory artifact's atomic publication, the
HTTP server and the relay QEMU runs for each guest connection."""

from __future__ import annotations

import hashlib
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from kairos_build.boot import netboot_server
from kairos_build.boot.harness import default_expectation, netboot_directory, qemu_command
from kairos_build.config.buildconfig import config_of
from kairos_build.core.cache import Cache
from kairos_build.exporters.base import ExportContext, get_exporter
from kairos_build.exporters.netboot import render_script
from kairos_build.pipelines.build import export_artifact

# What the script may run: iPXE commands, nothing else (a typo would stop the boot at a prompt).
IPXE_COMMANDS = {"isset", "set", "echo", "kernel", "initrd", "boot"}


def script_commands(script: str) -> list[str]:
    return [line for line in script.splitlines() if line and not line.startswith("#")]


def test_the_ipxe_script_boots_relative_to_itself_with_livenet() -> None:
    script = render_script("Kairos Debian", ("quiet",))
    assert script.startswith("#!ipxe\n")
    commands = script_commands(script)
    assert {line.split()[0] for line in commands} <= IPXE_COMMANDS
    assert [c.split()[0] for c in commands[-3:]] == ["kernel", "initrd", "boot"]
    kernel = commands[-3].split()
    # Files relative to the script (iPXE resolves them against its URL), the EFI stub's initrd
    # by the name iPXE gives it, no host baked in anywhere.
    assert kernel[:3] == ["kernel", "vmlinuz", "initrd=initrd"]
    assert commands[-2] == "initrd initrd"
    assert "http://" not in " ".join(commands)
    assert "root=live:${kairos-dir}/rootfs.squashfs" in kernel
    assert {"ip=dhcp", "rd.neednet=1", "rd.live.overlay.overlayfs=1"} <= set(kernel)
    # ttyS0 is the last console (it becomes /dev/console), the user's arguments come after.
    assert kernel[-3:] == ["console=tty1", "console=ttyS0,115200", "quiet"]
    # The directory is the script's own URL (or the DHCP boot file's) plus "/..".
    assert "isset ${cwuri} && set kairos-script ${cwuri} || set kairos-script ${filename}" in commands
    assert "set kairos-dir ${kairos-script}/.." in commands
    assert "config_url" not in script


def test_a_cloud_config_is_passed_by_url_next_to_the_script() -> None:
    script = render_script("Kairos Debian", (), "${kairos-dir}/config.yaml")
    assert "config_url=${kairos-dir}/config.yaml" in script_commands(script)[-3].split()


class _DirectoryExporter:
    """A stand-in exporter writing a directory artifact, optionally failing half-way."""

    name = "fake"
    extension = "fake"
    boot_mode = "secureboot"
    tools: tuple[str, ...] = ()
    files: tuple[str, ...] = ()

    def __init__(self, fail: bool = False, content: bytes = b"kernel") -> None:
        self.fail = fail
        self.content = content

    def export(self, context: ExportContext, output: Path) -> None:
        output.mkdir()
        (output / "vmlinuz").write_bytes(self.content)
        (output / "sub").mkdir()
        (output / "sub" / "boot.ipxe").write_text("#!ipxe\n")
        if self.fail:
            raise RuntimeError("disk full")


@pytest.fixture
def context(tmp_path: Path) -> ExportContext:
    config = config_of({"flavor": "debian", "output": tmp_path / "out", "cache-dir": tmp_path / "cache"})
    return ExportContext(config, tmp_path / "rootfs", "0" * 64, Cache(tmp_path / "cache"), tmp_path)


def test_a_directory_artifact_is_published_whole_with_its_sha256sums(context: ExportContext) -> None:
    out = context.config.output_dir
    out.mkdir()
    artifact, _key = export_artifact(_DirectoryExporter(), context, out)
    assert artifact.path == out / f"{context.config.artifact_name}-fake"
    assert [p.name for p in out.iterdir()] == [artifact.path.name]  # no .sha256, no leftovers
    sums = (artifact.path / "SHA256SUMS").read_text()
    script, kernel = hashlib.sha256(b"#!ipxe\n").hexdigest(), hashlib.sha256(b"kernel").hexdigest()
    assert sums == f"{script}  sub/boot.ipxe\n{kernel}  vmlinuz\n"
    assert artifact.sha256 == hashlib.sha256(sums.encode()).hexdigest()
    assert artifact.size == len(b"kernel") + len(b"#!ipxe\n") + len(sums)

    # A second build replaces the first one; nothing of either is left aside.
    again, _key = export_artifact(_DirectoryExporter(content=b"newer"), context, out)
    assert (again.path / "vmlinuz").read_bytes() == b"newer"
    assert [p.name for p in out.iterdir()] == [artifact.path.name]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failing_directory_export_leaves_no_directory(
    context: ExportContext, error: type[BaseException], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = context.config.output_dir
    out.mkdir()
    exporter = _DirectoryExporter(fail=True)
    if error is KeyboardInterrupt:  # Ctrl-C while the checksums are computed
        exporter.fail = False
        monkeypatch.setattr(
            "kairos_build.publish.files.sha256_file", lambda path: (_ for _ in ()).throw(error())
        )
    with pytest.raises(error):
        export_artifact(exporter, context, out)
    assert list(out.iterdir()) == []


def test_a_failing_export_keeps_the_previous_directory(context: ExportContext) -> None:
    out = context.config.output_dir
    out.mkdir()
    first, _key = export_artifact(_DirectoryExporter(), context, out)
    with pytest.raises(RuntimeError):
        export_artifact(_DirectoryExporter(fail=True, content=b"broken"), context, out)
    assert [p.name for p in out.iterdir()] == [first.path.name]
    assert (first.path / "vmlinuz").read_bytes() == b"kernel"


def test_the_netboot_exporter_is_registered() -> None:
    exporter = get_exporter("netboot")
    assert exporter.name == "netboot" and exporter.boot_mode == "secureboot"
    assert exporter.tools == ("mksquashfs",)


def test_a_netboot_directory_or_its_script_boots_from_the_network(tmp_path: Path) -> None:
    directory = tmp_path / "kairos-netboot"
    directory.mkdir()
    assert netboot_directory(directory) is None  # no boot.ipxe: not a netboot directory
    (directory / "boot.ipxe").write_text("#!ipxe\n")
    assert netboot_directory(directory) == directory
    assert netboot_directory(directory / "boot.ipxe") == directory
    assert netboot_directory(tmp_path / "a.iso") is None
    assert default_expectation(directory) == "live"

    argv = qemu_command(
        directory, "bios", "tcg", tmp_path / "vars", 2048, network=netboot_server.qemu_network(8080)
    )
    nic = argv[argv.index("-nic") + 1]
    # The guest reaches nothing but the forwarded address; the relay goes to 127.0.0.1.
    assert nic.startswith("user,model=virtio-net-pci,restrict=on,")
    assert re.search(r"guestfwd=tcp:10\.0\.2\.100:80-cmd:\S+ -I \S+netboot_server\.py 8080,", nic)
    assert nic.endswith(",bootfile=http://10.0.2.100/boot.ipxe")
    assert argv.count("-nic") == 1 and "-drive" not in argv


def test_the_relay_carries_a_guest_connection_to_the_server(tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    payload = bytes(range(256)) * 4096  # 1 MiB: several reads each way
    (served / "rootfs.squashfs").write_bytes(payload)
    access_log = tmp_path / "http.log"
    with netboot_server.serve(served, access_log) as port:
        guest, qemu_end = socket.socketpair()
        # As QEMU's guestfwd cmd: does: the connection on stdin and stdout.
        relay = subprocess.Popen(
            [sys.executable, "-I", netboot_server.__file__, str(port)],
            stdin=qemu_end.fileno(),
            stdout=qemu_end.fileno(),
        )
        qemu_end.close()
        with guest:
            guest.sendall(b"GET /rootfs.squashfs HTTP/1.1\r\nHost: 10.0.2.100\r\n\r\n")
            response = b""
            while chunk := guest.recv(1 << 16):
                response += chunk
        assert relay.wait(timeout=30) == 0
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") and body == payload
    assert '"GET /rootfs.squashfs HTTP/1.1" 200' in access_log.read_text()
