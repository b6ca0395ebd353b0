"""Serve a netboot directory to a QEMU guest, reachable from nothing but that guest.

The guest gets QEMU's user-mode network with restrict=on, so it reaches no host port and no
outside address; its only way out is one forwarded address, GUEST_ADDRESS:80. For each
connection the guest opens there, QEMU runs this file as a relay (guestfwd ...-cmd:, the
connection on stdin/stdout) which connects to the HTTP server (a thread of the harness) on
127.0.0.1: the host side only ever connects to 127.0.0.1. The NIC's option ROM is iPXE, and
the user-mode DHCP server hands it boot.ipxe's URL as its boot file.

Standard library only: QEMU runs this file by path, outside any virtualenv's import setup.
"""

from __future__ import annotations

import contextlib
import functools
import shlex
import socket
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

GUEST_ADDRESS = "10.0.2.100"  # in user-mode's 10.0.2.0/24, unused by its gateway, DNS, DHCP
SCRIPT = "boot.ipxe"


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, directory: Path, access_log: Path) -> None:
        self.access_log = access_log
        super().__init__(("127.0.0.1", 0), functools.partial(_Handler, directory=str(directory)))


class _Handler(SimpleHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        with self.server.access_log.open("a") as sink:
            sink.write(f"{self.log_date_time_string()} {format % args}\n")


@contextlib.contextmanager
def serve(directory: Path, access_log: Path) -> Iterator[int]:
    """Serve `directory` over HTTP on 127.0.0.1 (a free port, yielded) while in the block;
    requests are logged to `access_log`."""
    access_log.write_text("")
    server = _Server(directory, access_log)
    threading.Thread(target=server.serve_forever, name="netboot-http", daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def qemu_network(port: int) -> list[str]:
    """QEMU options: a virtio NIC (iPXE ROM) that network-boots GUEST_ADDRESS/boot.ipxe."""
    relay = shlex.join([sys.executable, "-I", str(Path(__file__).resolve()), str(port)])
    options = [
        "user",
        "model=virtio-net-pci",
        "restrict=on",
        f"guestfwd=tcp:{GUEST_ADDRESS}:80-cmd:{relay}",
        f"bootfile=http://{GUEST_ADDRESS}/{SCRIPT}",
    ]
    # QEMU option values escape a comma by doubling it.
    return ["-nic", ",".join(option.replace(",", ",,") for option in options), "-boot", "n"]


def relay(port: int) -> None:
    """Copy one guest connection (stdin/stdout, a socket from QEMU) to 127.0.0.1:port and back."""
    guest = socket.socket(fileno=sys.stdin.fileno())
    with guest, socket.create_connection(("127.0.0.1", port)) as server:

        def to_server() -> None:
            while data := guest.recv(1 << 16):
                server.sendall(data)
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_WR)

        threading.Thread(target=to_server, daemon=True).start()
        while data := server.recv(1 << 16):
            guest.sendall(data)
        with contextlib.suppress(OSError):
            guest.shutdown(socket.SHUT_WR)


if __name__ == "__main__":
    relay(int(sys.argv[1]))
