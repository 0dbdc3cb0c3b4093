"""Collapse diagnostics and the emergence probe, wired into a run: logged, evented, felt."""

from __future__ import annotations

import torch

import brainnet

SMALL = {
    "train.steps": 6, "train.eval_every": 6, "train.eval_batches": 1, "train.batch_size": 8,
    "log.every": 2, "corpus.block_size": 32, "corpus.train_sequences": 300,
    "corpus.val_sequences": 60, "modules.0.d_model": 16, "modules.0.n_layer": 1, "device": "cpu",
}  # fmt: skip


def run(tmp_path, **extra):
    sim = brainnet.Simulation(brainnet.load_scenario("quickstart", {**SMALL, **extra}),
                              out_dir=tmp_path)  # fmt: skip
    sim.run()
    return sim, brainnet.open_run(sim.run_dir)


def test_collapse_diagnostics_are_logged_per_module_and_raise_events(tmp_path):
    # a floor above log(256): every module counts as collapsed at the first check, once
    sim, r = run(tmp_path, collapse={"every": 2, "entropy_floor": 6.0, "samples": 4,
                                     "sample_length": 8})  # fmt: skip
    rows = [m for m in r.module_metrics.to_pylist() if m["step"] == 2]
    assert len(rows) == 16
    for m in rows:
        assert 0 < m["entropy"] < 5.6 and 0 < m["top1_mass"] < 1
        assert 0 < m["distinct_n"] <= 1 and 0 <= m["ece"] <= 1
        assert 0 <= m["disagreement"] <= 0.7  # JS is at most log 2
    events = [e for e in r.events if e["kind"] == "collapse"]
    assert sorted(e["module"] for e in events) == list(range(16))  # each fires once
    assert all(e["step"] == 2 and "entropy" in e["cause"] for e in events)
    assert r.metrics.to_pylist()[-1]["collapsed_modules"] == 16


def test_emergence_probe_logs_delta_phi_and_feeds_arousal(tmp_path):
    sim, r = run(tmp_path, emergence={"every": 2, "threshold": "fixed", "theta": 1e-9,
                                      "cooldown": 0})  # fmt: skip
    rows = [x for x in r.metrics.to_pylist() if x["step"] > 0]
    assert [x["delta_phi"] > 0 for x in rows] == [False, True, True]  # first probe: no Δ
    assert all(x["theta"] == 1e-9 for x in rows)
    events = [e for e in r.events if e["kind"] == "emergence"]
    assert [e["step"] for e in events] == [4, 6] and "Δφ" in events[0]["cause"]
    assert sim.probes.arousal_input == rows[-1]["delta_phi"] / 1e-9  # E_norm reaches arousal
    per_module = [m["delta_phi"] for m in r.module_metrics.to_pylist() if m["step"] == 6]
    assert len(per_module) == 16 and all(d > 0 for d in per_module)


def test_emergence_event_reorganises_keeping_the_other_modules_exactly(tmp_path):
    sc = brainnet.load_scenario("quickstart", {
        **SMALL, "emergence": {"every": 2, "threshold": "fixed", "theta": 1e-9, "cooldown": 0},
        "reorganize": {"actions": ["replace"], "noise": 0.0},
        "distill": {"enabled": True, "teacher": "ema"}})  # fmt: skip
    sim = brainnet.Simulation(sc, out_dir=tmp_path)
    sim.run(steps=2)  # optimizer and EMA have state; the first probe stored φ
    bank, opt = sim.banks[0], sim.optimizer
    before = {n: p.detach().clone() for n, p in bank.named_parameters()}
    moments = {n: opt.state[p]["exp_avg"].clone() for n, p in bank.named_parameters()
               if "exp_avg" in opt.state[p]}  # fmt: skip
    assert len(moments) >= len(before) - 2
    teacher = {n: p.clone() for n, p in sim.teacher.banks[0].named_parameters()}
    logits = sim.standalone_logits(sim.probe)
    sim.open_run()
    sim.reorganize(2, logits, "test", {"delta_phi": 1.0, "theta": 0.5})
    event = [e for e in open_events(sim) if e["kind"] == "reorganize"][-1]
    new = {r["module"]: r["copy_of"] for r in event["replaced"]}
    assert len(new) == 4 and all(m // 4 == p // 4 for m, p in new.items())  # one per cluster
    kept = [m for m in range(16) if m not in new]
    for n, p in bank.named_parameters():
        assert torch.equal(p[kept], before[n][kept]), n
        assert torch.equal(sim.teacher.banks[0].get_parameter(n)[kept], teacher[n][kept]), n
        for m, parent in new.items():  # noise 0: an exact copy
            assert torch.equal(p[m], before[n][parent]), n
        if n in moments:  # survivors keep their moments, new modules start fresh
            assert torch.equal(opt.state[p]["exp_avg"][kept], moments[n][kept]), n
            assert not opt.state[p]["exp_avg"][list(new)].any(), n
    sim.run()  # training goes on with the new modules; events keep firing
    assert all(r["train_loss"] < 10 for r in sim.writer.rows[1:])
    assert sum(e["kind"] == "reorganize" for e in open_events(sim)) >= 2


def open_events(sim):
    return brainnet.open_run(sim.run_dir).events
