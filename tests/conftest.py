"""Shared fixtures. The integration tiers build one real Debian trixie ISO per session.

The bootstrapped and converted rootfs are kept in a cache directory between runs
(KAIROS_BUILD_TEST_CACHE, default ~/.cache/kairos-build-tests), so a second run rebuilds only
what changed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kairos_build.boot import retries
from kairos_build.core.cache import Cache, cache_key
from kairos_build.core.flavors import load_flavor


def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 1800,
) -> subprocess.CompletedProcess[str]:
    """Run the real command line, as a user would, and capture what it prints."""
    return subprocess.run(
        [sys.executable, "-m", "kairos_build", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


_TEST_CACHE: dict[str, Path] = {}

# The suite runs on two workers (pytest-xdist, `-n 2` in pyproject.toml): a TCG boot keeps
# about one core busy, so two at once finish in 1.3 times the time of one. Each group below
# runs whole on one worker, in this order: the first two start at once, one on each worker
# (the two long node flows: the Trusted Boot one, and bookworm's own bootstrap followed by the
# grub lifecycle), and each later group goes to the first worker that runs out of work, the
# longest first, so that both end together (with both flows on one worker, the other ended
# 20 minutes earlier). Every module not named is a group of its own, in collection order,
# after these. A group keeps the modules that share an expensive session fixture
# (built_disks) on one worker. The workers share the test cache: its entries are made and
# removed under their locks.
GROUPS: dict[str, tuple[str, ...]] = {
    "trusted": ("tests/boot/test_trusted_boot.py",),
    "lifecycle": ("tests/boot/test_boot_bookworm.py", "tests/boot/test_node_lifecycle.py"),
    "disks": (
        "tests/boot/test_boot_disk.py",
        "tests/boot/test_secureboot.py",
        "tests/integration/test_disk_images.py",
    ),
    # The next longest of a cold run, each alone.
    **{
        module: (module,)
        for module in (
            "tests/boot/test_boot_iso.py",  # 4 boots
            "tests/boot/test_boot_netboot.py",  # 3
            "tests/integration/test_staged_conversion.py",  # 1, and conversions
            "tests/integration/test_reproducible.py",
            "tests/integration/test_sandbox.py",
            "tests/integration/test_dockerfile.py",
            "tests/integration/test_convert_output.py",
            "tests/integration/test_cache_builds.py",
        )
    },
}
_GROUP_OF = {module: group for group, modules in GROUPS.items() for module in modules}


def work_group(nodeid: str) -> str:
    module = nodeid.split("::", 1)[0]
    return _GROUP_OF.get(module, module)


def group_order(nodeids: list[str]) -> list[str]:
    """The groups in the order they are handed out: GROUPS', then the others as collected."""
    order = list(GROUPS)
    for nodeid in nodeids:
        if (group := work_group(nodeid)) not in order:
            order.append(group)
    return order


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    order = {group: index for index, group in enumerate(group_order([item.nodeid for item in items]))}
    items.sort(key=lambda item: order[work_group(item.nodeid)])  # stable within a group


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """Each group goes whole to one worker (xdist's own --dist loadgroup names groups by
    rewriting node ids, which pytest 9 no longer lets it do)."""
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):  # type: ignore[misc]  # xdist is untyped
        def _split_scope(self, nodeid: str) -> str:
            return work_group(nodeid)

    return GroupScheduling(config, log)


# -- the end of a run: each module's time and every retry ----------------------------------
# A retry (a TCG kernel panic booted again, KVM given up for TCG, a hung firmware power-cycled,
# a test rerun) is never silent: each one is a line in KAIROS_BUILD_RETRY_LOG (see
# kairos_build/boot/retries.py; the workers and the `kairos-build boot` they run inherit the
# variable), printed at the end, and more than RETRY_BUDGET of them fail the run, so that
# flakiness cannot grow unseen.
RETRY_BUDGET = 3


@dataclass
class ModuleTime:
    """What the controller heard of one test module: the sum of its tests' setup, call and
    teardown durations (module fixtures included), its wall-clock span, who ran it."""

    seconds: float = 0.0
    start: float = float("inf")
    stop: float = 0.0
    tests: int = 0
    workers: set[str] = field(default_factory=set)

    def add(self, report: pytest.TestReport, worker: str) -> None:
        self.seconds += report.duration
        self.start = min(self.start, report.start)
        self.stop = max(self.stop, report.stop)
        self.tests += report.when == "call" or (report.when == "setup" and report.outcome != "passed")
        self.workers.add(worker)

    @property
    def span(self) -> float:
        return max(0.0, self.stop - self.start)


def read_retries(path: Path, offset: int = 0) -> list[dict[str, str]]:
    """The retry lines written since `offset`; a line that is not JSON is kept as its text."""
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            text = handle.read().decode(errors="replace")
    except FileNotFoundError:
        return []
    found = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            entry = None
        if not isinstance(entry, dict):
            entry = {"kind": "unreadable", "detail": line, "test": ""}
        found.append({key: str(entry.get(key, "")) for key in ("kind", "detail", "test")})
    return found


def module_table(times: dict[str, ModuleTime]) -> list[str]:
    """One line per module, longest first, then each worker's span (its wall time)."""
    lines = [f"{'seconds':>9} {'span s':>9}  {'worker':<6} {'tests':>5}  module"]
    for module, spent in sorted(times.items(), key=lambda item: (-item[1].seconds, item[0])):
        workers = ",".join(sorted(spent.workers))
        lines.append(f"{spent.seconds:9.1f} {spent.span:9.1f}  {workers:<6} {spent.tests:5d}  {module}")
    by_worker: dict[str, tuple[float, float, float]] = {}
    for spent in times.values():
        for worker in spent.workers:
            start, stop, total = by_worker.get(worker, (float("inf"), 0.0, 0.0))
            by_worker[worker] = (min(start, spent.start), max(stop, spent.stop), total + spent.seconds)
    for worker, (start, stop, total) in sorted(by_worker.items()):
        lines.append(
            f"worker {worker}: {stop - start:.1f} s from first start to last stop, {total:.1f} s in tests"
        )
    return lines


def retry_lines(found: list[dict[str, str]]) -> list[str]:
    return [f"{entry['kind']}: {entry['test'] or '(no test)'}: {entry['detail']}" for entry in found]


def over_budget(found: list[dict[str, str]], budget: int = RETRY_BUDGET) -> str | None:
    """Why the run fails for its retries, or None."""
    if len(found) <= budget:
        return None
    return f"{len(found)} retries in this run, more than {budget}: the run fails (flakiness grew; see above)"


def _worker_of(report: pytest.TestReport) -> str:
    node = getattr(report, "node", None)  # set by xdist's controller on a worker's report
    gateway = getattr(node, "gateway", None)
    return str(getattr(gateway, "id", "-"))


class RunReport:
    """The controller's plugin: hears every test report, reads the retry log at the end."""

    def __init__(self, retry_log: Path, offset: int) -> None:
        self.retry_log = retry_log
        self.offset = offset
        self.times: dict[str, ModuleTime] = {}
        self.reruns: list[dict[str, str]] = []
        self.verdict: str | None = None

    def retries(self) -> list[dict[str, str]]:
        return read_retries(self.retry_log, self.offset) + self.reruns

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        module = report.nodeid.split("::", 1)[0]
        self.times.setdefault(module, ModuleTime()).add(report, _worker_of(report))
        if str(report.outcome) == "rerun":  # pytest-rerunfailures' word (not installed today)
            self.reruns.append({"kind": "rerun", "detail": f"{report.when} rerun", "test": report.nodeid})

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self.verdict = over_budget(self.retries())
        if self.verdict and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        write = terminalreporter.write_line
        terminalreporter.write_sep("=", "time by test module (setup+call+teardown s; span: start to stop)")
        for line in module_table(self.times):
            write(line)
        found = self.retries()
        title = f"retries: {len(found)} (at most {RETRY_BUDGET} pass; log: {self.retry_log})"
        terminalreporter.write_sep("=", title)
        for line in retry_lines(found):
            write(line)
        if self.verdict:
            write(self.verdict, red=True, bold=True)


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):  # an xdist worker: the controller reports
        return
    path = os.environ.get(retries.ENV)
    if not path:
        handle, path = tempfile.mkstemp(prefix="kairos-build-retries-", suffix=".jsonl")
        os.close(handle)
        os.environ[retries.ENV] = path  # before the workers start: they inherit it
    retry_log = Path(path)
    offset = retry_log.stat().st_size if retry_log.exists() else 0
    config.pluginmanager.register(RunReport(retry_log, offset), "kairos-run-report")


@pytest.fixture(scope="module", autouse=True)
def unit_retries_stay_out(request: pytest.FixtureRequest) -> Iterator[None]:
    """Unit tests make the harness retry on purpose (fake guests): not the run's retries."""
    if "unit" not in request.path.parent.parts[-1:]:
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(retries.ENV, raising=False)
        yield


def drop_finished_artifacts(test_cache: Path) -> None:
    """Finished artifacts go from the test cache, each under its lock: a build on the other
    worker that is storing or copying one is never cut off."""
    Cache(test_cache).prune(None, kinds=("artifact",))


def read_until(proc: subprocess.Popen[str], word: str, limit: float = 300) -> str:
    """What a running build printed on stderr until a line with `word` (or its end)."""
    assert proc.stderr is not None
    seen = ""
    deadline = time.monotonic() + limit
    while word not in seen and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen += line
    return seen


@pytest.fixture(scope="session")
def test_cache() -> Path:
    path = Path(os.environ.get("KAIROS_BUILD_TEST_CACHE", Path.home() / ".cache" / "kairos-build-tests"))
    path.mkdir(parents=True, exist_ok=True)
    _TEST_CACHE["path"] = path
    return path


@pytest.fixture(scope="module", autouse=True)
def free_finished_artifacts() -> Iterator[None]:
    """After each test module, the test cache's finished artifacts go: no later module reuses
    one (each rebuilds what it checks), and CI's disk is shared and small. The cached rootfs,
    squashfs and ext4 stages, which later modules do reuse, stay."""
    yield
    if "path" in _TEST_CACHE:  # a test of this session asked for the test cache
        drop_finished_artifacts(_TEST_CACHE["path"])


@pytest.fixture(scope="session")
def built_iso(test_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """`kairos-build iso` on a real mmdebstrap'ed trixie: the ISO and the build's stderr.

    The ISO is really written (its steps are in the log): finished artifacts that earlier
    runs left in the test cache are dropped first; the conversion and squashfs are reused."""
    out = tmp_path_factory.mktemp("iso-out")
    drop_finished_artifacts(test_cache)
    result = run_cli(
        "iso",
        "--flavor",
        "debian",
        "--base",
        "bootstrap:debian/trixie",
        "--output",
        str(out),
        "--cache-dir",
        str(test_cache),
    )
    assert result.returncode == 0, result.stderr[-4000:]
    isos = list(out.glob("*.iso"))
    assert len(isos) == 1, list(out.iterdir())
    return isos[0], result.stderr


# A unit that proves what survives a reboot: it prints what the previous boot left under a
# persistent path (/usr/local), under an in-memory one (/etc) and whether / takes writes, then
# counts this boot in both. It is added to a derived image the way a user's Dockerfile would.
PROBE_SCRIPT = """#!/bin/sh
kept=$(cat /usr/local/probe-count 2>/dev/null || echo none)
volatile=$(cat /etc/probe-count 2>/dev/null || echo none)
if touch /probe-root 2>/dev/null; then root=writable; else root=read-only; fi
echo "KAIROS-PROBE usr_local=$kept etc=$volatile root=$root" > /dev/console
count=$(( ${kept#none} + 1 ))
echo "$count" > /usr/local/probe-count
echo "$count" > /etc/probe-count
# The harness stops the VM as soon as the boot report appears: no clean shutdown to flush.
sync
"""
PROBE_UNIT = """[Unit]
Description=kairos-build test probe (persistence across reboots)
After=local-fs.target
Before=kairos-boot-report.service

[Service]
Type=oneshot
ExecStart=/usr/lib/kairos-test/probe

[Install]
WantedBy=multi-user.target
"""
CLOUD_CONFIG = "#cloud-config\nhostname: kairos-disk-test\n"


@pytest.fixture(scope="session")
def trixie_base(test_cache: Path, built_iso: tuple[Path, str]) -> Path:
    """The bootstrapped trixie rootfs the session's ISO was built from."""
    recipe = load_flavor("debian").release("trixie").bootstrap
    path = Cache(test_cache).path("rootfs", cache_key("bootstrap", recipe=recipe))
    assert path.is_dir()
    return path


@pytest.fixture(scope="session")
def probe_tree(test_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The converted trixie as a directory (`kairos-build convert -o dir:`) plus the probe."""
    tree = tmp_path_factory.mktemp("probe") / "tree"
    result = run_cli(
        "convert", "bootstrap:debian/trixie", "--output", f"dir:{tree}", "--cache-dir", str(test_cache)
    )
    assert result.returncode == 0, result.stderr[-4000:]
    script = tree / "usr/lib/kairos-test/probe"
    script.parent.mkdir(parents=True)
    script.write_text(PROBE_SCRIPT)
    script.chmod(0o755)
    (tree / "etc/systemd/system/kairos-test-probe.service").write_text(PROBE_UNIT)
    wants = tree / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "kairos-test-probe.service").symlink_to("../kairos-test-probe.service")
    return tree


@pytest.fixture(scope="session")
def built_disks(
    probe_tree: Path, test_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Path], str]:
    """One `kairos-build build` of every disk format from the probe tree: paths by format."""
    out = tmp_path_factory.mktemp("disks-out")
    cloud_config = out.parent / "cloud-config.yaml"
    cloud_config.write_text(CLOUD_CONFIG)
    result = run_cli(
        "build",
        "--format",
        "raw,qcow2,vmdk,vhd,gce",
        "--base",
        f"dir:{probe_tree}",
        "--cloud-config",
        str(cloud_config),
        "--output",
        str(out),
        "--cache-dir",
        str(test_cache),
    )
    assert result.returncode == 0, result.stderr[-4000:]
    found = {"raw": ".raw", "qcow2": ".qcow2", "vmdk": ".vmdk", "vhd": ".vhd", "gce": ".tar.gz"}
    paths = {fmt: next(out.glob(f"*{suffix}")) for fmt, suffix in found.items()}
    return paths, result.stderr
