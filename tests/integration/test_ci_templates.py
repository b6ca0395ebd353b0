"""The CI templates run for real: the GitLab template under gitlab-ci-local's shell executor,
the GitHub composite action's steps under the small runner below; each builds a trixie ISO
with the test cache as its cache. The action, the example workflow and the GitLab template
validate against their published schemas (check-jsonschema's bundled copies: no network).

gitlab-ci-local and check-jsonschema come with `bash ci/setup.sh --dev`; a missing one fails
the test, naming that command."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
GITLAB_TEMPLATE = ROOT / "ci/gitlab/kairos-build.yml"
ACTION = ROOT / "ci/github/action.yml"
EXAMPLE_WORKFLOW = ROOT / "ci/github/example-workflow.yml"
GITLAB_CI_LOCAL = ROOT / ".ci-tools/node_modules/.bin/gitlab-ci-local"
VENV_BIN = Path(sys.executable).parent  # where the suite's kairos-build is

BASE = "bootstrap:debian/trixie"
# The version tests/boot/test_node_lifecycle.py builds: its conversion is in the test cache.
VERSION = "v1.0.0"
CLOUD_CONFIG = "#cloud-config\nhostname: kairos-ci\n"
# Values a shell would expand, split or glob if a template evaluated them.
HOSTILE = "$(touch PWNED) `touch PWNED` *"
# The files each listed artifact names, checked beside it.
LISTED_FILES = ("checksum", "sbom", "manifest")

FAKE_KAIROS_BUILD = """#!/usr/bin/env python3
import json, sys
if "fail" in sys.argv:
    sys.exit(3)
print(json.dumps({"argv": sys.argv[1:], "artifacts": []}))
"""


def setup_tool(path: Path | None, name: str) -> Path:
    if path is None or not os.access(path, os.X_OK):
        pytest.fail(
            f"{name} is not installed (expected at {path or 'the virtualenv or PATH'}): "
            "run bash ci/setup.sh --dev",
            pytrace=False,
        )
    return path


def check_jsonschema() -> Path:
    found = shutil.which("check-jsonschema", path=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}")
    return setup_tool(Path(found) if found else None, "check-jsonschema")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_listed_artifacts(
    artifacts: list[dict[str, Any]], base: Path, keys: tuple[str, ...] = ("checksum", "sbom", "manifest")
) -> list[Path]:
    """Each artifact of a `--json` listing (paths relative to `base`, where the build ran) is a
    file with the listed sha256, and every file named under `keys` ("checksum", "sbom",
    "manifest") is there beside it; the checksum file is `sha256sum -c`'s. Returns the files."""
    files = []
    for artifact in artifacts:
        path = base / artifact["path"]
        assert path.is_file(), f"{path} is listed but missing"
        assert sha256(path) == artifact["sha256"], path
        for key in keys:
            listed = artifact.get(key)
            assert listed is not None, f"the listing of {path.name} has no {key!r}"
            assert (base / listed).is_file(), f"{key} of {path.name}: {base / listed} is missing"
        checksum = base / artifact["checksum"]
        assert checksum.read_text() == f"{artifact['sha256']}  {path.name}\n"
        files.append(path)
    return files


# -- GitLab: the template in a project of its own, run by gitlab-ci-local ---------------------


def gitlab_project(root: Path, variables: Mapping[str, str]) -> Path:
    """A git project whose .gitlab-ci.yml includes a copy of the template and sets `variables`."""
    project = root / "project"
    (project / "ci").mkdir(parents=True)
    shutil.copy(GITLAB_TEMPLATE, project / "ci/kairos-build.yml")
    (project / "cloud-config.yaml").write_text(CLOUD_CONFIG)
    (project / ".gitlab-ci.yml").write_text(
        yaml.safe_dump({"include": [{"local": "ci/kairos-build.yml"}], "variables": dict(variables)})
    )
    git = ["git", "-C", str(project), "-c", "user.name=kairos-test", "-c", "user.email=test@example.com"]
    for args in (
        ["init", "-q"],
        ["remote", "add", "origin", "https://gitlab.example.com/kairos/ci-test.git"],
        ["add", "-A"],
        ["commit", "-q", "-m", "a project that includes the template"],
    ):
        subprocess.run([*git, *args], check=True, capture_output=True)
    return project


def run_gitlab_job(project: Path, path: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    """gitlab-ci-local's shell executor on the template's job (its image is for docker runners)."""
    tool = setup_tool(GITLAB_CI_LOCAL, "gitlab-ci-local")
    return subprocess.run(
        [str(tool), "--force-shell-executor", "kairos-build"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "PATH": f"{path}{os.pathsep}{os.environ['PATH']}", "FORCE_COLOR": "0"},
    )


def job_artifacts(project: Path) -> Path:
    """Where gitlab-ci-local keeps the job's artifacts (their paths below it as in the job)."""
    return project / ".gitlab-ci-local/artifacts/kairos-build"


@pytest.fixture
def fake_kairos_build(tmp_path: Path) -> Path:
    """A folder whose kairos-build prints the arguments it got as JSON (and fails on `fail`)."""
    folder = tmp_path / "fake-bin"
    folder.mkdir()
    (folder / "kairos-build").write_text(FAKE_KAIROS_BUILD)
    (folder / "kairos-build").chmod(0o755)
    return folder


def test_the_gitlab_template_passes_every_variable_as_one_argument(
    tmp_path: Path, fake_kairos_build: Path
) -> None:
    project = gitlab_project(
        tmp_path,
        {
            "KAIROS_BASE": "dir:my base",
            "KAIROS_FORMATS": "iso,qcow2",
            "KAIROS_CLOUD_CONFIG": HOSTILE,
            "KAIROS_VERSION": "",
            "KAIROS_EXTRA_ARGS": "--kernel-arg quiet  --compression *",
        },
    )
    result = run_gitlab_job(project, str(fake_kairos_build))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    printed = json.loads((job_artifacts(project) / "build/artifacts.json").read_text())
    assert printed["argv"] == [
        "build",
        "--format",
        "iso,qcow2",
        "--flavor",
        "debian",
        "--output",
        "build",
        "--base",
        "dir:my base",
        "--cloud-config",
        HOSTILE,
        "--cache-dir",
        ".kairos-cache",
        "--kernel-arg",
        "quiet",
        "--compression",
        "*",
        "--json",
    ]
    assert not list(project.rglob("PWNED"))


def test_a_failing_build_fails_the_gitlab_job(tmp_path: Path, fake_kairos_build: Path) -> None:
    project = gitlab_project(tmp_path, {"KAIROS_EXTRA_ARGS": "fail"})
    result = run_gitlab_job(project, str(fake_kairos_build))
    assert result.returncode != 0, result.stdout[-4000:]
    assert "FAIL  kairos-build" in result.stdout, result.stdout[-4000:]


def test_the_gitlab_template_builds_an_iso(test_cache: Path, tmp_path: Path) -> None:
    project = gitlab_project(
        tmp_path,
        {
            "KAIROS_FLAVOR": "debian",
            "KAIROS_BASE": BASE,
            "KAIROS_FORMATS": "iso",
            "KAIROS_CLOUD_CONFIG": "cloud-config.yaml",
            "KAIROS_VERSION": VERSION,
            "KAIROS_CACHE_DIR": str(test_cache),
        },
    )
    result = run_gitlab_job(project, str(VENV_BIN))
    log = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.returncode == 0, log
    assert "PASS  kairos-build" in result.stdout, log

    kept = job_artifacts(project)
    listing = json.loads((kept / "build/artifacts.json").read_text())
    assert listing["settings"]["version"] == VERSION
    files = check_listed_artifacts(listing["artifacts"], kept, keys=LISTED_FILES)
    assert [f.name for f in files] == [f"kairos-debian-13-core-amd64-generic-{VERSION}.iso"]


# -- GitHub: schemas, and the composite action's steps run by a small runner ----------------


def test_the_templates_match_their_published_schemas() -> None:
    tool = check_jsonschema()
    for schema, path in (
        ("vendor.github-actions", ACTION),
        ("vendor.github-workflows", EXAMPLE_WORKFLOW),
        ("vendor.gitlab-ci", GITLAB_TEMPLATE),
    ):
        result = subprocess.run(
            [str(tool), "--builtin-schema", schema, str(path)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr


EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
CONDITION = re.compile(r"^(inputs\.[\w-]+)\s*(==|!=)\s*'([^']*)'$")


def lookup(name: str, context: Mapping[str, Any]) -> str:
    """A value of the contexts this runner offers: inputs.X, github.action_path,
    steps.ID.outputs.X (a missing output is '', as on GitHub). Any other is refused."""
    parts = name.split(".")
    if parts[0] not in context:
        raise AssertionError(f"the runner offers no context {parts[0]!r} (in {name!r})")
    value: Any = context
    for part in parts:
        if not isinstance(value, Mapping):
            raise AssertionError(f"{name!r} is not a value")
        value = value.get(part, "")
    return str(value)


def render(text: str, context: Mapping[str, Any]) -> str:
    return EXPRESSION.sub(lambda m: lookup(m.group(1), context), text)


def condition_holds(condition: str, context: Mapping[str, Any]) -> bool:
    """`inputs.X == 'v'` or `!=`, bare or in ${{ }}: GitHub compares strings ignoring case."""
    bare = EXPRESSION.fullmatch(condition.strip())
    match = CONDITION.match(bare.group(1) if bare else condition.strip())
    assert match, f"the runner cannot evaluate if: {condition!r}"
    name, operator, value = match.groups()
    equal = lookup(name, context).lower() == value.lower()
    return equal if operator == "==" else not equal


def read_outputs(path: Path) -> dict[str, str]:
    """$GITHUB_OUTPUT: NAME=VALUE lines and NAME<<DELIMITER ... DELIMITER blocks."""
    outputs: dict[str, str] = {}
    lines = iter(path.read_text().splitlines())
    for line in lines:
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delimiter = line.split("<<", 1)
            body = []
            for inner in lines:
                if inner == delimiter:
                    break
                body.append(inner)
            else:
                raise AssertionError(f"no closing {delimiter} for output {name}")
            outputs[name] = "\n".join(body)
        elif line:
            name, _, value = line.partition("=")
            outputs[name] = value
    return outputs


def run_composite_action(
    action: Path, inputs: Mapping[str, str], workspace: Path, path: str
) -> dict[str, str]:
    """Run the composite action's `run:` steps as GitHub's runner does (bash --noprofile --norc
    -eo pipefail, $GITHUB_OUTPUT and $GITHUB_PATH files per step, the step's env: rendered),
    in `workspace`; return the action's outputs. Scripts must hold no expression: inputs
    reach them through env: only."""
    spec = yaml.safe_load(action.read_text())
    assert spec["runs"]["using"] == "composite"
    assert not set(inputs) - set(spec["inputs"]), "inputs the action does not declare"
    given = {name: inputs.get(name, str(meta.get("default", ""))) for name, meta in spec["inputs"].items()}
    context: dict[str, Any] = {"inputs": given, "github": {"action_path": str(action.parent)}, "steps": {}}
    runner = workspace.parent / "runner"
    runner.mkdir()
    search_path = [path, os.environ["PATH"]]
    # As on a runner, the suite's own Python settings stay out of the steps.
    runner_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    for number, step in enumerate(spec["runs"]["steps"]):
        assert "run" in step and step.get("shell") == "bash", step
        assert "${{" not in step["run"], f"an expression in the script of step {number}"
        if "if" in step and not condition_holds(str(step["if"]), context):
            continue
        script, output, added_path = (runner / f"{number}.{kind}" for kind in ("sh", "output", "path"))
        script.write_text(step["run"])
        output.touch()
        added_path.touch()
        env = {
            **runner_env,
            **{k: render(str(v), context) for k, v in step.get("env", {}).items()},
            "PATH": os.pathsep.join(search_path),
            "GITHUB_OUTPUT": str(output),
            "GITHUB_PATH": str(added_path),
            "GITHUB_ACTION_PATH": str(action.parent),
            "GITHUB_WORKSPACE": str(workspace),
            "RUNNER_TEMP": str(runner),
        }
        result = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
            cwd=workspace,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        assert result.returncode == 0, f"step {number} failed: {result.stderr[-4000:]}"
        search_path[:0] = reversed(added_path.read_text().splitlines())
        if "id" in step:
            context["steps"][step["id"]] = {"outputs": read_outputs(output)}
    return {name: render(str(meta["value"]), context) for name, meta in spec["outputs"].items()}


def test_the_action_passes_every_input_as_one_argument(tmp_path: Path, fake_kairos_build: Path) -> None:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    outputs = run_composite_action(
        ACTION,
        {
            "install": "false",
            "base": "dir:my base",
            "cloud-config": HOSTILE,
            "version": "",
            "output": "out dir",
            "extra-args": "--kernel-arg quiet  --compression *",
        },
        workspace,
        str(fake_kairos_build),
    )
    printed = json.loads((workspace / "out dir/artifacts.json").read_text())
    assert printed["argv"] == [
        "build",
        "--format",
        "iso",
        "--flavor",
        "debian",
        "--output",
        "out dir",
        "--base",
        "dir:my base",
        "--cloud-config",
        HOSTILE,
        "--kernel-arg",
        "quiet",
        "--compression",
        "*",
        "--json",
    ]
    assert outputs == {"artifacts": "[]", "output-dir": "out dir"}
    assert not list(tmp_path.rglob("PWNED"))


def test_the_action_installs_kairos_build_and_builds_an_iso(test_cache: Path, tmp_path: Path) -> None:
    """install: true pip-installs this repository into a virtualenv of its own (and runs
    install-deps, which finds the suite's host packages installed); the build uses that one."""
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "cloud-config.yaml").write_text(CLOUD_CONFIG)
    outputs = run_composite_action(
        ACTION,
        {
            "install": "true",
            "flavor": "debian",
            "base": BASE,
            "formats": "iso",
            "cloud-config": "cloud-config.yaml",
            "version": VERSION,
            "output": "build",
            "cache-dir": str(test_cache),
        },
        workspace,
        "/nonexistent",
    )
    assert (tmp_path / "runner/kairos-build-venv/bin/kairos-build").is_file()

    assert outputs["output-dir"] == "build"
    assert "\n" not in outputs["artifacts"]
    artifacts = json.loads(outputs["artifacts"])
    files = check_listed_artifacts(artifacts, workspace, keys=LISTED_FILES)
    assert [(a["format"], f.name) for a, f in zip(artifacts, files, strict=True)] == [
        ("iso", f"kairos-debian-13-core-amd64-generic-{VERSION}.iso")
    ]
    assert json.loads((workspace / "build/artifacts.json").read_text())["artifacts"] == artifacts
