"""Collapse diagnostics and the emergence probe, wired into a run: logged, evented, felt."""

from __future__ import annotations

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
    assert sim.delta_phi_drive == rows[-1]["delta_phi"] / 1e-9  # E_norm reaches arousal
    per_module = [m["delta_phi"] for m in r.module_metrics.to_pylist() if m["step"] == 6]
    assert len(per_module) == 16 and all(d > 0 for d in per_module)
