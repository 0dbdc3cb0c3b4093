"""The no-communication floor as a leak detector: a society without messages, whose modules
each see one view of a binding task, cannot get below the analytic floor on answer tokens
(a leak from the other view would let it). ``add`` and ``pick`` are in it because they are
learnable (a leak would show); the slow control shows the same society seeing both fields does
get below the floor, so the check is able to fail."""

from __future__ import annotations

import math

import pytest

import brainnet
from brainnet.data.binding import FLOORS

DOMAINS = ["sum", "add", "agree", "pick"]


def answer_losses(tmp_path, views: bool, steps: int) -> dict[str, float]:
    sc = {
        "name": "floor",
        "seed": 0,
        "corpus": {"kind": "binding", "domains": DOMAINS, "block_size": 32,
                   "train_sequences": 2000, "val_sequences": 200},
        "modules": [{"type": "transformer", "count": 2, "n_layer": 1, "n_head": 2,
                     "d_model": 32, "message_dim": 8}],
        "society": {"topology": "ensemble", "clusters": 2},
        "train": {"steps": steps, "batch_size": 32, "lr": 3e-3, "min_lr": 3e-4,
                  "warmup_steps": 10, "eval_every": steps, "eval_batches": 4,
                  "answer_weight": 8},
        "log": {"every": 10},
    }  # fmt: skip
    if views:
        sc["views"] = {"per": "cluster", "fields": [[1], [2]]}
    sim = brainnet.Simulation(brainnet.load_scenario(sc), out_dir=tmp_path)
    sim.run()
    row = [r for r in sim.writer.rows if r.get("val_answer_loss") is not None][-1]
    return dict(zip(DOMAINS, row["val_domain_answer_loss"], strict=True))


def test_the_no_message_ensemble_with_views_stays_at_the_floor(tmp_path):
    assert FLOORS["sum"] == FLOORS["add"] == math.log(5)
    assert FLOORS["agree"] == FLOORS["pick"] == math.log(2)
    got = answer_losses(tmp_path, views=True, steps=60)
    for domain, loss in got.items():
        assert loss >= FLOORS[domain] - 0.05, f"a leak in {domain}: {loss:.3f} < floor - 0.05"


@pytest.mark.slow
def test_with_both_fields_the_same_society_beats_the_floor(tmp_path):
    got = answer_losses(tmp_path, views=False, steps=STEPS_CONTROL)
    assert got["add"] < FLOORS["add"] - 0.5, got


STEPS_CONTROL = 1000
