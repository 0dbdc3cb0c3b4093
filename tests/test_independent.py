"""Independent modules are a society too: the degenerate topology `independent` (what
`society: null` means) returns the same StepOut as every topology, equals per-module
references, and topologies are registry entries a plugin can add."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import brainnet
from brainnet.learning.objective import objective
from brainnet.registry import TOPOLOGIES
from brainnet.society import Kind, independent_step

TINY = {"train.steps": 4, "log.every": 2, "train.eval_every": 4, "train.batch_size": 4,
        "corpus.block_size": 16}  # fmt: skip


def scenario(**extra):
    return brainnet.load_scenario("ema_hard_loop", overrides={**TINY, **extra})


def test_independent_step_equals_each_module_alone():
    torch.manual_seed(0)
    sim = brainnet.Simulation(scenario(**{"distill.enabled": False}), out_dir="/tmp/unused")
    b = sim.corpus.batch("train", 4, torch.Generator().manual_seed(0))
    out = independent_step(sim.banks, b)
    bank = sim.banks[0]
    ref = torch.stack([
        F.cross_entropy(bank.export(m)(b.x)[0].reshape(-1, sim.corpus.vocab_size), b.y.flatten())
        for m in range(bank.n_modules)
    ])  # fmt: skip
    assert not out.merged and out.aux_loss is None and out.stats == {}
    torch.testing.assert_close(out.module_loss, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.task_loss, ref.mean(), atol=1e-5, rtol=1e-5)
    # the objective sums the module CEs: each module's gradient is that of its own loss
    torch.testing.assert_close(objective(out, 0.1), ref.sum(), atol=1e-4, rtol=1e-5)
    assert sim.society(b, sim.knobs).module_loss.shape == (bank.n_modules,)


def test_topology_independent_is_society_null(tmp_path):
    runs = []
    for name, soc in (("null", None), ("named", {"topology": "independent", "clusters": 1})):
        sim = brainnet.Simulation(scenario(society=soc), out_dir=tmp_path / name)
        sim.run()
        assert sim.arousal is None and sim.society.topology.kind == "independent"
        runs.append(sim.writer.rows)
    for a, b in zip(*runs, strict=True):
        assert a.keys() == b.keys()
        for k in ("train_loss", "val_loss", "grad_norm", "distill_loss"):
            assert a.get(k) == b.get(k), k


def test_a_plugin_topology_trains(tmp_path):
    TOPOLOGIES.add("chain_mix", Kind("a chain; the prediction mixes all clusters", chain=True))
    try:
        sc = brainnet.load_scenario("pipeline", overrides={
            **TINY, "society.topology": "chain_mix", "modules.0.count": 4, "society.clusters": 2,
            "modules.0.n_layer": 1, "modules.0.d_model": 16, "modules.0.n_head": 2})  # fmt: skip
        sim = brainnet.Simulation(sc, out_dir=tmp_path)
        topo = sim.society.topology
        assert topo.inputs == [[], [0]] and topo.merge == [0, 1]
        summary = sim.run()
        assert summary["final_val_loss"] < summary["initial_val_loss"]
    finally:
        TOPOLOGIES.remove("chain_mix")
    with pytest.raises(brainnet.ScenarioError, match="society.topology = 'chain_mix'"):
        brainnet.load_scenario("pipeline", overrides={"society.topology": "chain_mix"})


def test_a_kind_refuses_wiring_the_step_cannot_do():
    with pytest.raises(ValueError, match="routed"):
        Kind("x", attend=True, routed=True)
    with pytest.raises(ValueError, match="merge"):
        Kind("x", merge="first")
