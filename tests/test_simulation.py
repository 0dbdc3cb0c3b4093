"""The training loop: losses go down, same seed -> same numbers, checkpoints resume exactly."""

from __future__ import annotations

import math
import shutil

import pyarrow.parquet as pq
import pytest
import torch
import yaml

from brainnet.config import load_scenario
from brainnet.engine import CheckpointError, Simulation, load_checkpoint
from brainnet.engine.optim import clip_per_module, lr_at
from brainnet.metrics import open_run
from brainnet.modules.tiny_lm import TransformerBank, TransformerConfig

TINY = {
    "name": "tiny",
    "seed": 3,
    "device": "cpu",
    "corpus": {"kind": "tasks", "block_size": 32, "train_sequences": 400, "val_sequences": 64},
    "modules": [
        {
            "type": "transformer",
            "count": 3,
            "n_layer": 1,
            "n_head": 2,
            "d_model": 32,
            "dropout": 0.1,
        }
    ],
    "train": {
        "steps": 40,
        "batch_size": 8,
        "lr": 3e-3,
        "min_lr": 3e-4,
        "warmup_steps": 5,
        "eval_every": 20,
        "eval_batches": 2,
    },
    "log": {"every": 5},
}
TIMING = {"tokens_per_s", "module_tokens_per_s"}


def tiny(**overrides):
    return load_scenario(TINY, overrides)


def numbers(run_dir) -> tuple[list[dict], list[dict]]:
    rows = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    mods = pq.read_table(run_dir / "module_metrics.parquet").to_pylist()
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows], mods


def test_training_lowers_loss_and_writes_a_run_directory(tmp_path):
    sim = Simulation(tiny(), out_dir=tmp_path)
    summary = sim.run()
    d = sim.run_dir
    assert summary["steps"] == 40 and d.parent == tmp_path and d.name.startswith("tiny-")
    assert summary["initial_val_loss"] == pytest.approx(math.log(256), abs=0.05)  # uniform bytes
    assert summary["final_val_loss"] < 0.75 * summary["initial_val_loss"]
    for f in (
        "config.yaml",
        "vocab.json",
        "metrics.parquet",
        "module_metrics.parquet",
        "events.jsonl",
        "checkpoint.pt",
    ):
        assert (d / f).is_file(), f
    run = open_run(d)
    assert load_scenario(run.config) == sim.scenario
    assert run.metrics.column("step").to_pylist() == [0, 5, 10, 15, 20, 25, 30, 35, 40]
    assert run.module_metrics.num_rows == 9 * 3
    assert [e["kind"] for e in run.events] == [
        "run_start",
        "eval",
        "eval",
        "eval",
        "checkpoint",
        "run_end",
    ]
    assert run.events[0]["n_modules"] == 3
    state = torch.load(d / "checkpoint.pt", weights_only=True)
    assert state["step"] == 40 and state["model"]["banks.0.wte"].shape == (3, 256, 32)


def test_same_seed_same_numbers_different_seed_different(tmp_path):
    a = Simulation(tiny(), out_dir=tmp_path / "a")
    a.run(steps=15)
    b = Simulation(tiny(), out_dir=tmp_path / "b")
    b.run(steps=15)
    assert numbers(a.run_dir) == numbers(b.run_dir)
    c = Simulation(tiny(seed=4), out_dir=tmp_path / "c")
    c.run(steps=15)
    assert numbers(a.run_dir)[1] != numbers(c.run_dir)[1]


def test_resume_from_checkpoint_continues_exactly(tmp_path):
    full = Simulation(tiny(), out_dir=tmp_path / "full")
    full.run(steps=10)
    saved = tmp_path / "at10.pt"
    shutil.copy(full.run_dir / "checkpoint.pt", saved)
    full.run()
    resumed = Simulation.resume(saved, out_dir=tmp_path / "resumed")
    assert resumed.step == 10
    resumed.run()
    for p, q in zip(full.banks.parameters(), resumed.banks.parameters(), strict=True):
        assert torch.equal(p, q)
    tail = [r for r in numbers(full.run_dir)[0] if r["step"] > 10]
    assert numbers(resumed.run_dir)[0] == tail


def test_bad_checkpoints_give_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint") as e:
        load_checkpoint(junk)
    assert "\n" not in str(e.value)
    torch.save({"weights": torch.zeros(2)}, junk)
    with pytest.raises(
        CheckpointError, match="format = None: not a checkpoint this brainnet reads"
    ):
        load_checkpoint(junk)


def test_per_module_gradient_clip_equals_reference():
    torch.manual_seed(0)
    bank = TransformerBank(TransformerConfig(count=4, n_layer=1, d_model=16), 11, 8)
    for p in bank.parameters():
        p.grad = torch.randn_like(p) * torch.tensor([0.001, 0.1, 1.0, 10.0]).view(
            4, *[1] * (p.dim() - 1)
        )
    ref = [[p.grad[m].clone() for p in bank.parameters()] for m in range(4)]
    # torch's own clip, one module at a time (clips the ref grads in place)
    ref_norms = [torch.nn.utils.clip_grad_norm_(_with_grads(gs), 1.0) for gs in ref]
    norms = clip_per_module(bank, 1.0)
    torch.testing.assert_close(norms, torch.stack(ref_norms))
    for m in range(4):
        for p, g in zip(bank.parameters(), ref[m], strict=True):
            torch.testing.assert_close(p.grad[m], g)
    assert norms[0] < 1 and norms[3] > 1  # one module unclipped, one clipped


def _with_grads(grads):
    params = []
    for g in grads:
        p = torch.nn.Parameter(torch.zeros_like(g))
        p.grad = g
        params.append(p)
    return params


def test_lr_schedule_warmup_then_cosine():
    cfg = tiny().train  # lr 3e-3, min 3e-4, warmup 5, steps 40
    assert lr_at(0, cfg) == pytest.approx(3e-3 / 6)
    assert lr_at(4, cfg) == pytest.approx(3e-3 * 5 / 6)
    assert lr_at(5, cfg) == pytest.approx(3e-3)
    mid = 5 + 35 / 2
    assert lr_at(int(mid), cfg) == pytest.approx(
        3e-4 + 0.5 * (1 + math.cos(math.pi * 17 / 35)) * 2.7e-3
    )
    assert lr_at(40, cfg) == pytest.approx(3e-4)
    assert lr_at(100, cfg) == pytest.approx(3e-4)


def test_resolved_config_in_run_dir_reproduces_the_run(tmp_path):
    a = Simulation(tiny(), out_dir=tmp_path / "a")
    a.run(steps=5)
    cfg = yaml.safe_load((a.run_dir / "config.yaml").read_text())
    b = Simulation(load_scenario(cfg), out_dir=tmp_path / "b")
    b.run(steps=5)
    assert numbers(a.run_dir) == numbers(b.run_dir)
