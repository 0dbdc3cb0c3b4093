"""Resume in place: a run stopped (or killed, even while writing a checkpoint) and resumed with
`brainnet run --resume RUN_DIR` ends with the same numbers, in the same directory, as one that
was never interrupted."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

import brainnet
from brainnet.cli import app

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("compare_runs", ROOT / "tools" / "compare_runs.py")
compare_runs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_runs)

SMALL = {"train.steps": 12, "log.every": 2, "train.eval_every": 4, "train.batch_size": 4,
         "train.eval_batches": 1, "log.checkpoint_every": 4, "modules.0.n_layer": 1,
         "modules.0.d_model": 16, "modules.0.n_head": 2, "modules.0.count": 8,
         "society.arousal.k_range": [1, 2],
         "society.clusters": 2, "corpus.block_size": 16, "emergence.every": 4,
         "collapse.every": 4, "reorganize": None, "distill.enabled": True,
         "distill.teacher": "ema", "distill.every": 3}  # fmt: skip


def straight(tmp_path: Path) -> Path:
    sim = brainnet.Simulation(brainnet.load_scenario("quickstart", SMALL), out_dir=tmp_path / "a")
    sim.run()
    return sim.run_dir


def resume(run_dir: Path, *args: str) -> None:
    res = CliRunner().invoke(app, ["run", "--resume", str(run_dir), "--quiet", "--no-report",
                                   *args])  # fmt: skip
    assert res.exit_code == 0, res.output


def steps(run_dir: Path) -> list[int]:
    return brainnet.open_run(run_dir).metrics.column("step").to_pylist()


def test_stop_and_resume_equals_the_straight_run_in_one_directory(tmp_path):
    ref = straight(tmp_path)
    sim = brainnet.Simulation(brainnet.load_scenario("quickstart", SMALL), out_dir=tmp_path / "b")
    sim.run(steps=6)  # stops at 6; the checkpoint there holds step 6
    resume(sim.run_dir)
    assert steps(sim.run_dir) == steps(ref) == [0, 2, 4, 6, 8, 10, 12]
    assert compare_runs.compare(ref, sim.run_dir) == []  # every column but the wall clock
    events = brainnet.open_run(sim.run_dir).events
    resumed = [e for e in events if e["kind"] == "resume"]
    assert (
        len(resumed) == 1
        and resumed[0]["step"] == 6
        and resumed[0]["checkpoint"] == "checkpoint.pt"
    )


KILL = """
import os, signal, sys
import brainnet, brainnet.checkpoint as ck
sc = brainnet.load_scenario("quickstart", {small})
mode, when = sys.argv[1], int(sys.argv[2])
if mode == "after":  # SIGKILL at the first row after the checkpoint of step `when`
    def cb(sim, row):
        if row["step"] == when + 2:
            sim.writer.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    callbacks = [cb]
else:  # SIGKILL while the checkpoint of step `when` is being written (temp file, no rename)
    real, callbacks = ck.os.replace, []
    def replace(src, dst):
        if str(dst).endswith("checkpoint.pt") and sim.step == when:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(src, dst)
    ck.os.replace = replace
sim = brainnet.Simulation(sc, out_dir=sys.argv[3])
sim.run(callbacks=callbacks)
"""


@pytest.mark.parametrize("mode", ["after", "during"])
def test_sigkill_then_resume_ends_like_the_uninterrupted_run(tmp_path, mode):
    ref = straight(tmp_path)
    script = tmp_path / "kill.py"
    script.write_text(textwrap.dedent(KILL.format(small=repr(SMALL))))
    out = tmp_path / "killed"
    res = subprocess.run([sys.executable, str(script), mode, "8", str(out)], capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert res.returncode == -9, res.stderr[-2000:]
    (run_dir,) = out.iterdir()
    resume(run_dir)
    assert steps(run_dir) == steps(ref)
    assert compare_runs.compare(ref, run_dir) == []
    events = brainnet.open_run(run_dir).events
    resumed = [e for e in events if e["kind"] == "resume"]
    assert resumed[0]["step"] == (8 if mode == "after" else 4)  # during: the older one is intact
    evals = [e["step"] for e in events if e["kind"] == "eval"]
    assert evals == sorted(set(evals))  # what the killed run logged after its checkpoint: once
    assert not list(run_dir.glob(".checkpoint.pt.*.tmp")) or mode == "during"


def test_resume_refuses_a_changed_scenario_and_extends_with_steps(tmp_path):
    ref = straight(tmp_path)
    for extra in (["--set", "train.lr=0.1"], ["--seed", "0"], ["quickstart"]):
        res = CliRunner().invoke(app, ["run", *extra, "--resume", str(ref), "--quiet"])
        assert res.exit_code == 2 and "not allowed: a resumed run keeps its own scenario" in (
            res.output
        ), res.output
    assert len(res.output.strip().splitlines()) == 1
    resume(ref, "--steps", "16")
    assert steps(ref)[-1] == 16
    assert "steps: 16" in (ref / "config.yaml").read_text()
    res = CliRunner().invoke(app, ["run", "--resume", str(ref), "--steps", "3", "--quiet"])
    assert res.exit_code == 2 and "at step 16" in res.output


def test_keep_checkpoints_keeps_the_newest(tmp_path):
    sc = brainnet.load_scenario("quickstart", {**SMALL, "log.keep_checkpoints": 2})
    sim = brainnet.Simulation(sc, out_dir=tmp_path)
    sim.run()
    names = sorted(p.name for p in sim.run_dir.glob("checkpoint*.pt"))
    assert names == ["checkpoint-00000008.pt", "checkpoint.pt"]
    meta = [json.loads(line) for line in (sim.run_dir / "events.jsonl").read_text().splitlines()]
    assert [e["step"] for e in meta if e["kind"] == "checkpoint"] == [4, 8, 12]


def test_a_damaged_newest_checkpoint_is_skipped_and_kept_out_of_the_rotation(tmp_path):
    sc = brainnet.load_scenario("quickstart", {**SMALL, "log.keep_checkpoints": 2})
    ref = straight(tmp_path)
    sim = brainnet.Simulation(sc, out_dir=tmp_path / "b")
    sim.run(steps=8)  # checkpoint.pt holds 8, checkpoint-00000004.pt holds 4
    latest = sim.run_dir / "checkpoint.pt"
    data = bytearray(latest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    latest.write_bytes(bytes(data))
    resume(sim.run_dir)
    events = brainnet.open_run(sim.run_dir).events
    (r,) = [e for e in events if e["kind"] == "resume"]
    assert r["step"] == 4 and r["checkpoint"] == "checkpoint-00000004.pt" and r["skipped"]
    assert len(list(sim.run_dir.glob("checkpoint.damaged-*.pt"))) == 1
    from brainnet.checkpoint import kept, load_checkpoint

    assert all(load_checkpoint(p) for p in kept(sim.run_dir))  # every kept one is intact
    assert compare_runs.compare(ref, sim.run_dir) == []
