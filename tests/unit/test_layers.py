"""The package's floors: every import (at the top, inside a function or under TYPE_CHECKING)
goes to the same package or to one below it, no modules import each other round a cycle, no
pipeline imports another pipeline and no exporter imports another exporter.

The import graph is read from the sources with `ast`, so an import that only runs on some
path counts as much as one that always runs."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import kairos_build

PACKAGE = Path(kairos_build.__file__).resolve().parent

# Lowest first. A package imports its own modules and those of lower floors; packages on one
# floor know nothing of each other.
FLOORS: tuple[tuple[str, ...], ...] = (
    ("core",),  # errors, log, tools, cache, data, sandbox, binary readers: shared by all
    ("source", "disk", "check", "boot"),  # the base, the disk building blocks, static checks, QEMU
    ("agent",),  # runs on the node: shares disk's layout and source's safe unpack
    ("config",),  # the settings table and the frozen BuildConfig
    ("convert", "trusted"),  # the conversion and its cached stages; Trusted Boot building blocks
    ("exporters",),  # entry points over an ExportContext
    ("publish",),  # checksums, records, manifest, SBOM, artifact cache
    ("pipelines",),  # one per verb
    ("cli",),  # Typer verbs
)
FLOOR = {package: number for number, packages in enumerate(FLOORS) for package in packages}
# What every floor may import: the top-level package (its __version__).
ROOT = "kairos_build"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported(name: str, path: Path, known: dict[str, Path]) -> Iterator[str]:
    """The modules of ours that `name` imports, wherever in the file the import stands."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, *([base] if base else [])])
            # `from pkg import module` imports the module; `from module import name`, the module.
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names
            ]
        for target in targets:
            while target not in known and "." in target:
                target = target.rpartition(".")[0]
            if target in known and target != name and target.startswith(ROOT):
                yield target


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: set(imported(name, path, known)) for name, path in known.items()}


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def floor_problems(edges: dict[str, set[str]]) -> list[str]:
    problems = []
    for source, targets in sorted(edges.items()):
        mine = package_of(source)
        if mine is None or mine == "__main__":
            continue
        for target in sorted(targets):
            theirs = package_of(target)
            if theirs is None or theirs == mine:
                continue
            if theirs not in FLOOR or mine not in FLOOR:
                problems.append(f"{source} -> {target}: a package on no floor (add it to FLOORS)")
            elif FLOOR[theirs] >= FLOOR[mine]:
                problems.append(f"{source} -> {target}: {mine} may not import {theirs} (not below it)")
    return problems


def sibling_problems(edges: dict[str, set[str]]) -> list[str]:
    """Pipelines are tables of contents of one verb each; exporters are plugins side by side
    that share only the context (exporters.base)."""
    problems = []
    for package, shared in (("pipelines", ()), ("exporters", ("kairos_build.exporters.base",))):
        prefix = f"{ROOT}.{package}."
        for source, targets in sorted(edges.items()):
            if not source.startswith(prefix) or source in shared:
                continue
            problems += [
                f"{source} -> {target}: one {package[:-1]} imports another"
                for target in sorted(targets)
                if target.startswith(prefix) and target not in shared
            ]
    return problems


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected set of two or more modules (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_graph_is_read() -> None:
    """The walk sees the imports it judges (a reader that found nothing would pass anything)."""
    edges = graph()
    assert "kairos_build.core.errors" in edges["kairos_build.config.settings"]
    assert "kairos_build.exporters.base" in edges["kairos_build.exporters.iso"]
    # `from kairos_build.agent import bootstate` is an import of the module, not of the package.
    assert "kairos_build.agent.bootstate" in edges["kairos_build.agent.main"]
    # An import inside a function counts (the verbs import their pipelines lazily).
    assert "kairos_build.pipelines.rebuild" in edges["kairos_build.cli.app"]


def test_no_import_cycle() -> None:
    assert cycles(graph()) == []


def test_every_import_goes_down() -> None:
    assert floor_problems(graph()) == []


def test_no_pipeline_or_exporter_imports_a_sibling() -> None:
    assert sibling_problems(graph()) == []


def test_the_top_level_holds_only_packages() -> None:
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert loose == []
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert packages <= set(FLOOR), f"packages on no floor: {sorted(packages - set(FLOOR))}"


def test_the_checks_catch_what_they_forbid() -> None:
    """Each check on a graph that breaks it: a cycle under TYPE_CHECKING counts, an import up
    a floor, one pipeline importing another."""
    edges = {
        "kairos_build.disk.raw": {"kairos_build.exporters.base"},
        "kairos_build.exporters.base": {"kairos_build.disk.raw"},
        "kairos_build.pipelines.rebuild": {"kairos_build.pipelines.build"},
        "kairos_build.exporters.qcow2": {"kairos_build.exporters.iso", "kairos_build.exporters.base"},
    }
    assert cycles(edges) == [["kairos_build.disk.raw", "kairos_build.exporters.base"]]
    assert floor_problems(edges) == [
        "kairos_build.disk.raw -> kairos_build.exporters.base: disk may not import exporters (not below it)"
    ]
    assert sibling_problems(edges) == [
        "kairos_build.pipelines.rebuild -> kairos_build.pipelines.build: one pipeline imports another",
        "kairos_build.exporters.qcow2 -> kairos_build.exporters.iso: one exporter imports another",
    ]


def test_type_checking_imports_are_read(tmp_path: Path) -> None:
    source = tmp_path / "mod.py"
    source.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from kairos_build.exporters.base import X\n"
        "def f():\n    from kairos_build.core import errors\n"
    )
    known = {
        "kairos_build.exporters.base": source,
        "kairos_build.core.errors": source,
        "kairos_build.core": source,
    }
    assert set(imported("kairos_build.disk.mod", source, known)) == {
        "kairos_build.exporters.base",
        "kairos_build.core.errors",
    }
