"""How tests/conftest.py shares the suite out between its two workers."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import GROUPS, group_order, work_group

ROOT = Path(__file__).resolve().parents[2]


def test_every_module_named_in_a_group_exists_once() -> None:
    named = [module for modules in GROUPS.values() for module in modules]
    assert len(named) == len(set(named))
    assert [module for module in named if not (ROOT / module).is_file()] == []


def test_the_two_node_flows_start_first_on_different_workers() -> None:
    first, second = list(GROUPS)[:2]
    assert GROUPS[first] == ("tests/boot/test_trusted_boot.py",)
    assert "tests/boot/test_node_lifecycle.py" in GROUPS[second]


def test_an_unnamed_module_is_a_group_of_its_own_after_the_named_ones() -> None:
    nodeids = [
        "tests/unit/test_a.py::test_x",
        "tests/boot/test_node_lifecycle.py::test_y",
        "tests/unit/test_a.py::test_z",
        "tests/boot/test_secureboot.py::test_w",
    ]
    assert work_group(nodeids[0]) == "tests/unit/test_a.py"
    assert work_group(nodeids[3]) == "disks"
    assert group_order(nodeids) == [*GROUPS, "tests/unit/test_a.py"]
