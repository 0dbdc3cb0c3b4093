"""The no-communication floor as a leak detector: a society without messages, whose modules
each see one view of a binding task, cannot get below the analytic floor on answer tokens
(a leak from the other view would let it). The tasks are ``add`` and ``pick``, which a short run
learns (on the parity-like ``sum`` and ``agree`` nothing is learnt in a few hundred steps, so no
leak could show); the control, the same society and budget seeing both fields, gets far below
the floor on ``add``, so the check is able to fail."""

from __future__ import annotations

import math

import brainnet
from brainnet.data.binding import FLOORS

DOMAINS = ["add", "pick"]
#: the best an equal-weight mixture of a left-view and a right-view predictor can do (the
#: ensemble's merge of its 2 clusters), at least the floor: add ln 5; pick -ln(1/2 * 1/2 +
#: 1/2 * 1/10) (the left view's two digits, the right view's uniform guess); a numerical
#: optimisation of both tables gives the same (1.6095, 1.204)
NO_LEAK = {"add": math.log(5), "pick": -math.log(0.3)}
STEPS = 250  # both fields: add 0.50 (floor 1.61); views: add 1.78, pick 1.75 (seed 0)


def answer_losses(tmp_path, views: bool, steps: int = STEPS) -> dict[str, float]:
    sc = {
        "name": "floor",
        "seed": 0,
        "corpus": {"kind": "binding", "domains": DOMAINS, "block_size": 32,
                   "train_sequences": 2000, "val_sequences": 200},
        "modules": [{"type": "transformer", "count": 2, "n_layer": 1, "n_head": 2,
                     "d_model": 32, "message_dim": 8}],
        "society": {"topology": "ensemble", "clusters": 2},
        "train": {"steps": steps, "batch_size": 32, "lr": 1e-2, "min_lr": 1e-3,
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
    assert FLOORS["add"] == math.log(5) and FLOORS["pick"] == math.log(2)
    got = answer_losses(tmp_path, views=True)
    for domain, loss in got.items():
        assert NO_LEAK[domain] >= FLOORS[domain]
        assert loss >= NO_LEAK[domain] - 0.05, f"a leak in {domain}: {loss:.3f}"


def test_with_both_fields_the_same_society_beats_the_floor(tmp_path):
    """(pick is not learnt below its floor in this budget: 1.16 with both fields)"""
    got = answer_losses(tmp_path, views=False)
    assert got["add"] < FLOORS["add"] - 0.5, got
