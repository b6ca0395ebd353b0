"""The boot harness answers grub's menu with Enter (what its timeout would do, seconds
sooner), once per boot, on QEMU's stdin: a fake QEMU that shows the menu and boots only on a
key."""

from __future__ import annotations

import time

from kairos_build.boot import harness

# Shows the menu, then waits for one key; prints which one and the report.
GUEST = ('printf "GNU GRUB\\n      Press enter to boot the selected OS, then\\n"; '
         'key=$(head -c 1 | od -An -c | tr -d " "); '
         'printf "Booting with [%s]\\nLinux version 6.12\\nKAIROS-BOOT-REPORT state=running\\n" "$key"; '
         'exec sleep 60')


def test_the_menu_gets_enter_and_the_guest_boots_at_once() -> None:
    proc = harness._spawn(["sh", "-c", GUEST])
    try:
        began = time.monotonic()
        console = harness._read_until(proc, harness.MARKER, began + 30, answer_menu=True)
    finally:
        harness._stop(proc)
    assert console.match is not None
    assert b"Booting with [\\r]" in console.seen  # Enter on a serial line is a carriage return
    assert time.monotonic() - began < 10


def test_without_answer_menu_the_menu_waits() -> None:
    proc = harness._spawn(["sh", "-c", GUEST])
    try:
        console = harness._read_until(proc, harness.MARKER, time.monotonic() + 3)
    finally:
        harness._stop(proc)
    assert console.match is None and b"Booting with" not in console.seen
