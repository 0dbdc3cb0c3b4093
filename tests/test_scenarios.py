"""Every built-in scenario and the README's examples run; the headline numbers hold."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import brainnet
from brainnet.config import builtin_scenarios, load_scenario

ROOT = Path(__file__).resolve().parents[1]


def test_every_yaml_in_scenarios_is_a_builtin():
    files = {p.stem for p in (ROOT / "scenarios").glob("*.yaml")}
    assert files == set(builtin_scenarios())


@pytest.mark.parametrize("name", sorted(builtin_scenarios()))
def test_every_scenario_runs_a_few_steps(name, tmp_path):
    sc = load_scenario(
        name, {"train.steps": 3, "train.eval_every": 3, "train.eval_batches": 1, "device": "cpu"}
    )
    summary = brainnet.Simulation(sc, out_dir=tmp_path).run()
    assert summary["steps"] == 3
    assert summary["final_val_loss"] < summary["initial_val_loss"] + 0.5


def test_readme_python_example_runs(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    run = scope["run"]
    assert run.metrics.column("step").to_pylist()[-1] == 20
    assert (tmp_path / "runs").is_dir()
    summary = scope["summary"]  # the quickstart's society learns from the first steps on
    assert summary["final_val_loss"] <= 0.9 * summary["initial_val_loss"], summary


@pytest.mark.slow  # the whole main job (about 2 minutes); `brainnet run quickstart` in CI terms
def test_quickstart_val_loss_falls_by_30_percent(tmp_path):
    """The README's main job, as shipped: validation loss falls by >= 30 % from step 0."""
    summary = brainnet.Simulation(load_scenario("quickstart"), out_dir=tmp_path).run()
    assert summary["final_val_loss"] <= 0.7 * summary["initial_val_loss"], summary


@pytest.mark.slow
def test_nanogpt_baby_reaches_nanogpt_reference(tmp_path):
    """nanoGPT's 'baby' shakespeare-char shape: val <= 1.95 (nanoGPT reports ~1.88)."""
    summary = brainnet.Simulation(load_scenario("nanogpt_baby"), out_dir=tmp_path).run()
    assert summary["final_val_loss"] <= 1.95, summary
