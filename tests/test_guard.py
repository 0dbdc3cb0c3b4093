"""The non-finite guard: a module poisoned with NaN mid-run is quarantined and restored, the
rest of the society never sees a non-finite value, and the run goes on learning."""

from __future__ import annotations

import math

import pytest
import torch

import brainnet
from brainnet.engine.guard import NonFiniteError
from brainnet.modules import build_bank
from brainnet.modules.resize import reset_rows

SMALL = {"train.steps": 24, "log.every": 4, "train.eval_every": 4, "train.batch_size": 8,
         "train.eval_batches": 2, "modules.0.n_layer": 1, "modules.0.d_model": 16,
         "modules.0.n_head": 2, "corpus.block_size": 16, "emergence": None, "collapse": None,
         "reorganize": None,
         "distill": {"enabled": True, "teacher": "ema", "every": 1}}  # fmt: skip
BAD = 5  # the poisoned module


def poison_at(step: int):
    def cb(sim, row):
        if row["step"] == step:
            with torch.no_grad():
                sim.banks[0].wte[BAD].fill_(float("nan"))  # the module's token embedding

    return cb


def all_finite(tensors) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


@pytest.mark.parametrize("mode", ["ema", "reinit"])
def test_a_poisoned_module_is_quarantined_and_the_society_goes_on(tmp_path, mode):
    sc = brainnet.load_scenario("quickstart", {**SMALL, "reliability.on_nonfinite": mode})
    sim = brainnet.Simulation(sc, out_dir=tmp_path)
    sim.run(callbacks=[poison_at(8)])
    events = [e for e in brainnet.open_run(sim.run_dir).events if e["kind"] == "quarantine"]
    assert len(events) == 1 and events[0]["modules"] == [BAD] and events[0]["step"] == 8
    assert events[0]["cause"] == "non-finite parameters"
    assert ("EMA teacher" if mode == "ema" else "re-initialised") in events[0]["action"]
    bank, opt = sim.banks[0], sim.optimizer
    assert all_finite(bank.parameters())
    assert all_finite(v for p in bank.parameters() for v in opt.state[p].values())
    assert all_finite(sim.teacher.banks[0].parameters())
    vals = [r["val_loss"] for r in sim.writer.rows if r["val_loss"] is not None]
    after = vals[2:]  # from the row of the poisoned step on (step 8)
    assert all(math.isfinite(v) for v in vals)
    assert after[-1] < after[0]  # validation keeps falling after the event


def test_the_other_modules_are_untouched_by_the_poisoned_step(tmp_path):
    sc = brainnet.load_scenario("quickstart", SMALL)
    sim = brainnet.Simulation(sc, out_dir=tmp_path)
    sim.run(steps=4)
    with torch.no_grad():
        sim.banks[0].wte[BAD].fill_(float("nan"))
    before = {n: p.detach().clone() for n, p in sim.banks[0].named_parameters()}
    moments = {n: sim.optimizer.state[p]["exp_avg"].clone()
               for n, p in sim.banks[0].named_parameters()
               if "exp_avg" in sim.optimizer.state[p]}  # fmt: skip
    assert len(moments) >= 4
    sim.train_step()  # the poisoned step: dropped, BAD restored
    for n, p in sim.banks[0].named_parameters():
        keep = torch.ones(p.shape[0], dtype=torch.bool)
        keep[BAD] = False
        assert torch.equal(p[keep], before[n][keep]), n  # no update reached anyone else
        assert torch.isfinite(p[BAD]).all()
        if n in moments:
            m = sim.optimizer.state[p]["exp_avg"]
            assert torch.equal(m[keep], moments[n][keep]) and not m[BAD].any(), n


def test_a_module_that_keeps_failing_stops_the_run_with_one_line(tmp_path):
    sc = brainnet.load_scenario("quickstart", {**SMALL, "reliability.max_strikes": 2})
    sim = brainnet.Simulation(sc, out_dir=tmp_path)

    def always(sim, row):
        if row["step"] > 0:
            with torch.no_grad():
                sim.banks[0].wte[BAD].fill_(float("inf"))

    with pytest.raises(NonFiniteError) as e:
        sim.run(callbacks=[always])
    assert "module 5 went non-finite 3 times" in str(e.value) and "\n" not in str(e.value)


def test_reset_rows_copies_only_those_rows_and_zeroes_their_moments():
    torch.manual_seed(0)
    cfg = brainnet.load_scenario("quickstart").modules[0].model_copy(
        update={"count": 4, "n_layer": 1, "d_model": 16, "n_head": 2})  # fmt: skip
    bank, src = build_bank(cfg, 11, 8), build_bank(cfg, 11, 8)
    opt = torch.optim.AdamW(bank.parameters())
    for p in bank.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    old = {n: p.detach().clone() for n, p in bank.named_parameters()}
    reset_rows(bank, torch.tensor([1, 3]), src, opt)
    for (n, p), q in zip(bank.named_parameters(), src.parameters(), strict=True):
        assert torch.equal(p[[1, 3]], q[[1, 3]]) and torch.equal(p[[0, 2]], old[n][[0, 2]])
        st = opt.state[p]
        assert not st["exp_avg"][[1, 3]].any() and st["exp_avg"][[0, 2]].all()
