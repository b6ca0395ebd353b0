"""The node agent the conversion puts into every image: complete and standard-library only."""

from __future__ import annotations

import subprocess
from pathlib import Path

import kairos_build
from kairos_build.agent import IMAGE_DIR, MODULES, agent_files

PACKAGE = Path(kairos_build.__file__).parent


def test_every_agent_module_is_shipped() -> None:
    shipped = set(MODULES)
    for module in (PACKAGE / "agent").glob("*.py"):
        assert f"agent/{module.name}" in shipped, f"{module.name} is not in agent.MODULES"


def test_the_shipped_files_import_on_a_bare_python(tmp_path: Path) -> None:
    """Only the listed files, no site-packages (-S: no yaml, tqdm, zstandard): every module
    of the agent imports, and its command line answers."""
    for rel, source in agent_files().items():
        target = tmp_path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
    root = tmp_path / IMAGE_DIR
    modules = [
        f"kairos_build.agent.{path.stem}"
        for path in (root / "kairos_build/agent").glob("*.py")
        if path.stem != "__init__"
    ]
    code = "import importlib, sys\nfor name in sys.argv[1:]: importlib.import_module(name)\n"
    result = subprocess.run(
        ["python3", "-S", "-I", "-c", f"import sys; sys.path.insert(0, {str(root)!r})\n" + code, *modules],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    launcher = PACKAGE.parent / "overlays/common/usr/bin/kairos-agent"
    text = launcher.read_text().replace("/usr/lib/kairos/python", str(root))
    result = subprocess.run(
        ["python3", "-S", "-I", "-c", text.split("\n", 1)[1], "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "upgrade" in result.stdout and "reset" in result.stdout
