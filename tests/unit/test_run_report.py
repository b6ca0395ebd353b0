"""The suite's end-of-run report (tests/conftest.py): each module's time, every retry written
to KAIROS_BUILD_RETRY_LOG (kairos_build/boot/retries.py), and a run with more than three
retries fails."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kairos_build.boot import retries
from kairos_build.boot.retries import note_retry
from tests.conftest import ModuleTime, module_table, over_budget, read_retries, retry_lines

pytest_plugins = ["pytester"]


def test_a_retry_is_a_json_line_naming_the_test(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "retries.jsonl"
    monkeypatch.setenv(retries.ENV, str(log))
    monkeypatch.setenv("PYTEST_CURRENT_TEST", "tests/boot/test_x.py::test_y (call)")
    note_retry("tcg-panic", "node.raw (bios): the guest kernel panicked")
    note_retry("firmware-power-cycle", "node.log: silent")
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert lines == [
        {
            "kind": "tcg-panic",
            "detail": "node.raw (bios): the guest kernel panicked",
            "test": "tests/boot/test_x.py::test_y (call)",
        },
        {
            "kind": "firmware-power-cycle",
            "detail": "node.log: silent",
            "test": "tests/boot/test_x.py::test_y (call)",
        },
    ]


def test_without_the_variable_nothing_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(retries.ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    note_retry("tcg-panic", "x")
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_log_does_not_stop_the_boot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(retries.ENV, str(tmp_path / "no-such-dir" / "retries.jsonl"))
    note_retry("tcg-panic", "x")  # logged, not raised


def test_the_log_is_read_from_where_the_run_started(tmp_path: Path) -> None:
    log = tmp_path / "retries.jsonl"
    earlier = json.dumps({"kind": "tcg-panic", "detail": "an earlier run", "test": ""}) + "\n"
    log.write_text(
        earlier + json.dumps({"kind": "kvm-to-tcg", "detail": "d", "test": "t"}) + "\n" + "garbage\n"
    )
    assert read_retries(log, len(earlier)) == [
        {"kind": "kvm-to-tcg", "detail": "d", "test": "t"},
        {"kind": "unreadable", "detail": "garbage", "test": ""},
    ]
    assert read_retries(tmp_path / "missing.jsonl") == []


def test_the_budget_is_three_retries() -> None:
    entry = {"kind": "tcg-panic", "detail": "d", "test": "t"}
    assert over_budget([entry] * 3) is None
    verdict = over_budget([entry] * 4)
    assert verdict is not None and "4 retries" in verdict and "more than 3" in verdict
    assert retry_lines([entry]) == ["tcg-panic: t: d"]


def test_the_module_table_is_longest_first_with_each_workers_span() -> None:
    short, long = ModuleTime(10.0, 100.0, 110.0, 2, {"gw1"}), ModuleTime(50.0, 105.0, 160.0, 1, {"gw0"})
    later = ModuleTime(5.0, 110.0, 200.0, 1, {"gw1"})
    lines = module_table({"tests/a.py": short, "tests/b.py": long, "tests/c.py": later})
    assert [line.split()[-1] for line in lines[1:4]] == ["tests/b.py", "tests/a.py", "tests/c.py"]
    assert lines[1].split()[:4] == ["50.0", "55.0", "gw0", "1"]
    assert lines[4:] == [
        "worker gw0: 55.0 s from first start to last stop, 50.0 s in tests",
        "worker gw1: 100.0 s from first start to last stop, 15.0 s in tests",
    ]


INNER = """
import time
from kairos_build.boot.retries import note_retry

def test_slow():
    time.sleep(0.3)

def test_retrying():
    for _ in range({count}):
        note_retry("tcg-panic", "a fake panic")
"""


def run_inner(pytester: pytest.Pytester, count: int) -> pytest.RunResult:
    pytester.makeconftest("from tests.conftest import pytest_configure  # noqa: F401\n")
    pytester.makepyfile(test_inner=INNER.format(count=count))
    pytester.makepyfile(test_other="def test_fast():\n    pass\n")
    return pytester.runpytest_subprocess("-p", "no:cacheprovider")


@pytest.fixture
def inner_env(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """The inner run finds tests.conftest, and makes its own retry log."""
    root = str(Path(__file__).resolve().parents[2])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    monkeypatch.delenv(retries.ENV, raising=False)
    monkeypatch.setenv("TMPDIR", str(pytester.path))  # its fresh retry log goes with it


@pytest.mark.usefixtures("inner_env")
def test_a_run_prints_module_times_and_its_retries(pytester: pytest.Pytester) -> None:
    result = run_inner(pytester, 2)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        [
            "*time by test module*",
            "*seconds*span s*worker*tests*module",
            "*test_inner.py",
            "*test_other.py",
            "*retries: 2 (at most 3 pass; log: *kairos-build-retries-*.jsonl)*",
            "tcg-panic: test_inner.py::test_retrying (call): a fake panic",
            "tcg-panic: test_inner.py::test_retrying (call): a fake panic",
        ]
    )
    assert "the run fails" not in result.stdout.str()


@pytest.mark.usefixtures("inner_env")
def test_a_run_with_more_than_three_retries_fails(pytester: pytest.Pytester) -> None:
    result = run_inner(pytester, 4)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*retries: 4*", "4 retries in this run, more than 3: the run fails*"])
    result.stdout.fnmatch_lines(["*3 passed*"])


@pytest.mark.usefixtures("inner_env")
def test_under_xdist_the_workers_retries_reach_the_controller(pytester: pytest.Pytester) -> None:
    result = run_inner(pytester, 4)  # a plain run first: the same files, no workers
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*test_inner.py", "*retries: 4*", "*more than 3: the run fails*"])
    assert any(word in result.stdout.str() for word in (" gw0 ", " gw1 "))


def test_the_harness_records_its_panic_retry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kairos_build.boot import harness
    from tests.unit.test_boot_retry import MARKER, fake_guest

    log = tmp_path / "retries.jsonl"
    monkeypatch.setenv(retries.ENV, str(log))
    disk = tmp_path / "node.raw"
    disk.write_bytes(b"\0" * 512)
    starts, spawn = fake_guest(["Kernel panic - not syncing: Fatal exception", MARKER])
    monkeypatch.setattr(harness, "_spawn", spawn)
    harness.boot(harness.BootSpec(disk, "bios", timeout=20, accel="tcg"))
    [entry] = read_retries(log)
    assert entry["kind"] == "tcg-panic" and "node.raw (bios)" in entry["detail"], entry
    assert entry["test"].endswith("test_the_harness_records_its_panic_retry (call)")


def test_the_node_records_its_firmware_power_cycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import contextlib
    import subprocess

    from tests.boot.node import Node

    log = tmp_path / "retries.jsonl"
    monkeypatch.setenv(retries.ENV, str(log))

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(["sleep", "60"], start_new_session=True)

    node = Node.__new__(Node)  # no QEMU: only the power cycle's bookkeeping
    node.log_path, node.seen, node.power_cycles = tmp_path / "node.log", b"", 0
    node._stack, node._tpm_state, node.proc = contextlib.ExitStack(), None, start()
    monkeypatch.setattr(node, "_start_qemu", start)
    node.power_cycle("no output for 240 s after the guest restarted")
    node.kill()
    [entry] = read_retries(log)
    assert entry == {
        "kind": "firmware-power-cycle",
        "detail": "node.log: no output for 240 s after the guest restarted",
        "test": os.environ["PYTEST_CURRENT_TEST"],
    }
    assert b"KAIROS-TEST: no output for 240 s" in node.log_path.read_bytes()
