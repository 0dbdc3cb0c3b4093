"""The floors hold: import-linter's contracts (pyproject.toml) pass on the tree, and an upward
import added on purpose breaks them; viz/ reads run directories only."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))

pytestmark = pytest.mark.skipif(not Path(LINT).exists(), reason="import-linter not installed")


def lint(tree: Path) -> subprocess.CompletedProcess:
    """lint-imports over the ``brainnet`` package found in ``tree`` (its pyproject's contracts)."""
    return subprocess.run(
        [LINT, "--config", str(tree / "pyproject.toml")],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_contracts_hold():
    res = lint(ROOT)
    assert res.returncode == 0, res.stdout[-2000:]
    assert "3 kept, 0 broken" in res.stdout


def test_an_upward_import_breaks_the_floors(tmp_path):
    shutil.copytree(ROOT / "brainnet", tmp_path / "brainnet",
                    ignore=shutil.ignore_patterns("__pycache__", "*.txt"))  # fmt: skip
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    society = tmp_path / "brainnet" / "society" / "router.py"
    society.write_text(society.read_text() + "\nfrom brainnet.engine import Simulation  # up\n")
    res = lint(tmp_path)
    assert res.returncode != 0
    assert "floors: imports go down only BROKEN" in res.stdout
    assert "brainnet.society.router -> brainnet.engine" in res.stdout


def test_viz_reads_run_directories_only():
    """viz/ ships as brainnet.viz (outside the linted tree): it may import the run-directory
    reader (brainnet.metrics), the sweep statistics (brainnet.stats) and itself, nothing else
    of brainnet."""
    for path in (ROOT / "viz").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            allowed = ("brainnet.metrics", "brainnet.stats", "brainnet.viz")
            for name in names:
                if name.startswith("brainnet"):
                    assert name in allowed or name.startswith("brainnet.viz."), (
                        f"{path.name} imports {name}"
                    )
