"""The install story: import roots, dependency boundaries, and the README's runnable example."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run_outside_repo(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)


def test_envs_and_algos_are_subpackages_not_top_level_modules(tmp_path):
    code = (
        "import importlib.util, treegrpo.envs, treegrpo.algos\n"
        "assert importlib.util.find_spec('envs') is None, 'a top-level envs module is installed'\n"
        "assert importlib.util.find_spec('algos') is None, 'a top-level algos module is installed'\n"
    )
    result = _run_outside_repo(code, tmp_path)
    assert result.returncode == 0, result.stderr


def test_treeadv_imports_only_torch_and_tensordict(tmp_path):
    code = (
        "import sys, treeadv\n"
        "heavy = sorted(m for m in ('torchrl', 'treegrpo', 'hypothesis', 'diffusers') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = _run_outside_repo(code, tmp_path)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("module", ["treeadv", "treeadv.testing", "treeadv.interop", "treegrpo.envs", "treegrpo.algos",
                                    "treegrpo.embedded", "treegrpo.rewards", "treegrpo.families.pipelines",
                                    "treegrpo.families.prompts", "treegrpo.problems.text_to_image", "treegrpo.algos.distributed"])
def test_every_public_name_has_a_docstring(module):
    package = importlib.import_module(module)
    missing = [name for name in package.__all__ if not (getattr(package, name).__doc__ or "").strip()]
    assert not missing


def test_readme_example_runs(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / "tree_advantages.py")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "logprob_softmax, per depth:" in result.stdout
    assert "52 nodes, 36 leaves, 16 nodes trained" in result.stdout


def test_ci_runs_exactly_the_readme_commands():
    readme = (REPO / "README.md").read_text()
    blocks = readme.split("```bash\n")[1:3]
    commands = [block.split("\n```")[0].strip() for block in blocks]
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    for command in commands:
        assert command in ci, f"{command!r} is not a line of .ci/run"


def _readme_snippets() -> list[str]:
    readme = (REPO / "README.md").read_text()
    return [block.split("\n```")[0] for block in readme.split("```python\n")[1:]]


@pytest.mark.parametrize("index", range(len(_readme_snippets())))
def test_readme_python_snippets_run(index, tmp_path):
    snippet = _readme_snippets()[index]
    calls = [line[4:].split("(")[0] + "()" for line in snippet.splitlines() if line.startswith("def test_")]
    result = _run_outside_repo(snippet + "\n" + "\n".join(calls) + "\nprint('ok')\n", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_the_wheel_ships_the_embedded_weights(tmp_path):
    """A non-editable install gets the weights and their manifest, not only the editable checkout."""
    import json
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
                    str(REPO)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("treegrpo-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    manifest = json.loads((REPO / "embedded" / "weights" / "MANIFEST.json").read_text())
    for name in ["MANIFEST.json", *manifest["sha256"]]:
        assert f"treegrpo/embedded/weights/{name}" in names, name


def test_the_tests_mirror_the_packages() -> None:
    """Each folder of tests/ is named after the source folder it tests (examples/ tests the examples)."""
    repo = Path(__file__).resolve().parents[1]
    sources = {"treeadv", "treegrpo", "envs", "algos", "embedded", "rewards", "benchmarks", "examples"}
    stray = []
    for folder in sorted(p for p in (repo / "tests").rglob("*") if p.is_dir() and "__pycache__" not in p.parts):
        relative = folder.relative_to(repo / "tests")
        if not any(folder.glob("*.py")):
            continue
        if relative.parts[0] not in sources or not (repo / relative).is_dir():
            stray.append(str(relative))
    assert not stray, f"tests/ folders that match no source folder: {stray}"
