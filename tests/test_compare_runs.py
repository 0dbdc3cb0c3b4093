"""tools/compare_runs.py, the "same numbers" check of a refactor: equal runs compare equal,
a changed number is found and named, wall-clock columns are skipped."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

import brainnet

spec = importlib.util.spec_from_file_location(
    "compare_runs", Path(__file__).resolve().parents[1] / "tools" / "compare_runs.py"
)
compare_runs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_runs)

TINY = {"train.steps": 4, "log.every": 2, "train.eval_every": 4, "train.batch_size": 4,
        "modules.0.n_layer": 1, "modules.0.d_model": 16, "modules.0.n_head": 2,
        "corpus.block_size": 16,
        "emergence": None, "collapse": None, "reorganize": None}  # fmt: skip


def run(tmp_path: Path, name: str, **extra) -> Path:
    sc = brainnet.load_scenario("quickstart", overrides={**TINY, **extra})
    sim = brainnet.Simulation(sc, out_dir=tmp_path / name)
    sim.run()
    return sim.run_dir


def test_same_config_and_seed_compare_equal_and_a_change_is_named(tmp_path):
    a, b = run(tmp_path, "a"), run(tmp_path, "b")
    assert compare_runs.compare(a, b) == []  # tokens/s differ, and are skipped
    assert compare_runs.main([str(a), str(b)]) == 0
    c = run(tmp_path, "c", seed=1)
    problems = compare_runs.compare(a, c)
    assert any("'train_loss'" in p for p in problems)
    assert compare_runs.main([str(a), str(c)]) == 1


def test_a_relative_change_beyond_rtol_is_found(tmp_path):
    a = run(tmp_path, "a")
    b = tmp_path / "copy"
    b.mkdir()
    for name in compare_runs.TABLES:
        rows = pq.read_table(a / name).to_pylist()
        if name == "metrics.parquet":
            rows[-1]["val_loss"] *= 1 + 1e-5  # beyond 1e-6 relative
        pq.write_table(pa.Table.from_pylist(rows), b / name)
    problems = compare_runs.compare(a, b)
    assert len(problems) == 1 and "'val_loss' differs in 1 of" in problems[0]
    assert compare_runs.compare(a, b, rtol=1e-4) == []
    assert compare_runs.compare(a, b, ignore=("val_loss",)) == []
