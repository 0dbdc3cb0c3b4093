"""The society: who talks to whom, what it costs, and batched ops equal per-cluster loops."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import brainnet
from brainnet.data import build_corpus
from brainnet.learning.objective import objective
from brainnet.society import Knobs, Society, build_topology
from brainnet.society.clock import plan_step
from brainnet.society.cluster import (
    aggregate_mates,
    cluster_log_probs,
    merge_routed,
    merge_uniform,
    take,
)
from brainnet.society.links import inputs_by_sequence

T, B = 16, 8


def society(topology: str, n_modules: int = 16, clusters: int = 4, **soc) -> Society:
    torch.manual_seed(0)
    sc = brainnet.load_scenario(
        {
            "corpus": {"block_size": T, "train_sequences": 200, "val_sequences": 50},
            "modules": [
                {
                    "type": "transformer",
                    "count": n_modules,
                    "n_layer": 1,
                    "n_head": 2,
                    "d_model": 16,
                    "message_dim": 8,
                }
            ],
            "society": {"topology": topology, "clusters": clusters, **soc},
        }
    )
    corpus = build_corpus(sc.corpus, 0)
    return Society(sc, corpus.vocab_size, corpus.block_size, len(corpus.domains))


def traced(soc: Society, b, knobs: Knobs):
    """One step of ``soc`` with a host-side record of its deliveries, from a wave hook:
    (kind, sender, receiver) for mates' messages, inter-cluster inputs, board reads and
    writes (the tests' view; the step itself records nothing)."""
    trace = []

    def hook(wave, writes):
        topo = soc.topology
        members = topo.clusters()
        for i, c in enumerate(wave.clusters.tolist()):
            if soc.has_mates and wave.mates[i]:
                for r, s in topo.adjacency[c].nonzero().tolist():
                    trace.append(("mate", members[c][s], members[c][r]))
            for src, ok in zip(wave.inputs[i].tolist(), wave.input_ok[i].tolist(), strict=True):
                if ok:
                    trace.extend(("input", s, r) for s in members[src] for r in members[c])
            if wave.board:
                trace.extend(("read", "blackboard", m) for m in members[c])
        trace.extend(("write", m, "blackboard") for m in (writes > 0).nonzero().flatten().tolist())

    soc.wave_hooks.append(hook)
    try:
        out = soc(b, knobs)
    finally:
        soc.wave_hooks.remove(hook)
    return out, trace


def batch(seed: int = 0, size: int = B):
    sc = brainnet.load_scenario(
        {"modules": [{"type": "transformer"}], "corpus": {"block_size": T, "train_sequences": 200}}
    )
    return build_corpus(sc.corpus, 0).batch("train", size, torch.Generator().manual_seed(seed))


KNOBS = Knobs(k=2, rounds=1, temperature=1.0, threshold=0.5)


# --------------------------------------------------------------------------- isolation


@pytest.mark.parametrize("topology", ["routing", "brain"])
def test_modules_hear_outside_their_cluster_only_through_the_wiring(topology):
    """routing: mates and the router only. brain: also the blackboard, serial links from
    cluster c-1 and top-down links from c+1, and nothing else."""
    soc = society(topology)
    topo = soc.topology
    allowed = {"mate": 0} if topology == "routing" else {"mate": 0, "bottom_up": -1, "top_down": 1}
    for u, v, kind in topo.graph.edges(data="kind"):  # from the graph
        if isinstance(u, int) and isinstance(v, int):
            assert kind in allowed, (u, v, kind)
            assert topo.cluster_of(u) - topo.cluster_of(v) == allowed[kind], (u, v, kind)
        else:
            assert {u, v} & {"router", "blackboard"}, (u, v)
    assert ("blackboard" in topo.graph) == (topology == "brain")
    # from the messages actually delivered in a step
    out, trace = traced(soc, batch(), KNOBS)
    kinds = {k for k, _, _ in trace}
    assert "mate" in kinds and ("input" in kinds) == (topology == "brain")
    for kind, src, dst in trace:
        if kind == "mate":
            assert topo.cluster_of(src) == topo.cluster_of(dst)
        elif kind == "input":  # serial (c-1) or top-down (c+1)
            assert abs(topo.cluster_of(src) - topo.cluster_of(dst)) == 1
        else:
            assert topology == "brain" and "blackboard" in (src, dst)
    assert (topology == "brain") == ("read" in kinds and "write" in kinds)
    if topology == "brain":  # serial and top-down messages were delivered (by sequence)
        assert out.stats["messages_bottom_up"] > 0 and out.stats["messages_top_down"] > 0


def test_routing_clusters_are_isolated_in_behaviour():
    """Without a blackboard, changing cluster 0's weights changes no other cluster's output."""
    soc = society("routing").eval()
    b = batch()
    before = soc(b, KNOBS)
    with torch.no_grad():
        for p in soc.banks[0].parameters():
            p[0:4].add_(0.5)  # cluster 0 = rows 0..3
    after = soc(b, KNOBS)
    assert not torch.allclose(before.logits[0], after.logits[0])
    torch.testing.assert_close(before.logits[1:], after.logits[1:], rtol=0, atol=0)


def test_exactly_k_clusters_per_sequence_in_routing():
    for k in (1, 2, 3):
        soc = society("routing", router={"top_k": 3, "capacity_factor": 4.0})
        out = soc(batch(size=16), Knobs(k, 0, 1.0, 0.5))
        chosen = out.route.chosen
        assert chosen.shape == (16, k)
        assert all(len(set(row)) == k for row in chosen.tolist())
        assert out.route.dispatch.kept.all()
        # and from the buffers: every sequence sits in exactly k clusters' buffers
        counts = torch.bincount(out.seq_index.flatten(), minlength=17)[:16]
        assert counts.tolist() == [k] * 16


# --------------------------------------------------------------------------- cost


def messages_per_step(topology: str, n: int) -> float:
    C = n // 4
    soc = society(
        topology,
        n_modules=n,
        clusters=C,
        router={"top_k": max(1, C // 4), "k_max": C, "capacity_factor": float(C)},
    )
    out = soc(batch(), Knobs(max(1, C // 4), 1, 1.0, 0.5))
    s = out.stats
    return float(sum(s[k] for k in s if k.startswith("messages_")))


def test_routing_sends_far_fewer_messages_than_all_to_all_and_scales_linearly():
    sizes = [16, 32, 64]
    routing = [messages_per_step("routing", n) for n in sizes]
    dense = [messages_per_step("all_to_all", n) for n in sizes]
    assert routing[-1] <= dense[-1] / 4
    # routing (k grows with C, clusters of 4): doubling N doubles the messages
    assert [r / routing[0] for r in routing] == pytest.approx([1, 2, 4])
    # all_to_all: N(N-1) per sequence and round
    assert dense == [n * (n - 1) * B for n in sizes]
    assert dense[2] / dense[1] == pytest.approx(4, rel=0.05)


def test_message_counts_match_the_graph():
    soc = society("routing", router={"capacity_factor": 4.0})
    out = soc(batch(), Knobs(2, 1, 1.0, 0.5))
    # round 1 only (round 0 has no memory): k*B sequences, each read by 4 modules from 3 mates
    assert out.stats["messages_mate"].item() == 2 * B * 4 * 3
    soc = society("pipeline")
    out = soc(batch(), Knobs(1, 1, 1.0, 0.5))
    # mates in round 1 (4 clusters x B x 12 edges); inputs: clusters 1..3 in rounds 0 and 1
    assert out.stats["messages_mate"].item() == 4 * B * 12
    assert out.stats["messages_bottom_up"].item() == 3 * 2 * B * 4
    assert out.stats["messages_top_down"].item() == 0
    soc = society("feedback")
    out = soc(batch(), Knobs(1, 1, 1.0, 0.5))
    # top-down: clusters 0..2 read c+1 in round 1 only (round 0: c+1 has not fired yet)
    assert out.stats["messages_top_down"].item() == 3 * B * 4
    soc = society("attention")
    out = soc(batch(), Knobs(1, 1, 1.0, 0.5))
    # round 1: each of 16 modules reads the 12 modules of the other clusters, per sequence
    assert out.stats["messages_attend"].item() == 16 * 12 * B
    assert out.stats["messages_mate"].item() == 4 * B * 12


# --------------------------------------------------------------------------- the clock


def test_clock_plans_waves_of_simultaneous_firings():
    topo = build_topology("attention", 4, [16])
    plan = plan_step(topo.firings(2), compute_time=1.0, link_time=0.5)
    assert [len(f) for _, f in plan.waves] == [4, 4, 4]  # all clusters fire together each round
    assert [t for t, _ in plan.waves] == [0.0, 1.5, 3.0]
    assert plan.makespan == 4.0  # 3 computes + 2 hops
    brain = build_topology("brain", 4, [16])
    plan = plan_step(brain.firings(1), compute_time=1.0, link_time=0.5)
    # serial links make each round a wavefront; the blackboard makes a round wait for the last
    waves = [sorted((f.cluster, f.round) for f in fs) for _, fs in plan.waves]
    assert waves == [[(c, r)] for r in range(2) for c in range(4)]
    assert plan.makespan == 8 * 1.0 + 7 * 0.5
    pipe = build_topology("pipeline", 4, [16])
    plan = plan_step(pipe.firings(1), compute_time=1.0, link_time=0.5)
    # a wavefront: (c, r) fires at wave c + r
    waves = [sorted((f.cluster, f.round) for f in fs) for _, fs in plan.waves]
    assert waves[0] == [(0, 0)] and waves[1] == [(0, 1), (1, 0)] and len(waves) == 5
    assert plan.makespan == 5 * 1.0 + 4 * 0.5


def test_every_topology_runs_and_learns_a_little():
    for topology in ("pipeline", "ensemble", "feedback", "routing", "brain", "all_to_all"):
        soc = society(topology)
        opt = torch.optim.AdamW(soc.parameters(), lr=3e-3)
        b = batch()
        first = None
        for _ in range(8):
            out = soc(b, KNOBS)
            opt.zero_grad()
            objective(out, soc.cfg.module_loss_weight).backward()
            assert all(torch.isfinite(p.grad).all() for p in soc.parameters() if p.grad is not None)
            opt.step()
            first = first if first is not None else out.task_loss.item()
        assert out.task_loss.item() < first, topology


# --------------------------------------------------------------------------- batched == loops


def test_aggregate_mates_equals_loop():
    g = torch.Generator().manual_seed(0)
    C, n = 3, 4
    msgs = torch.randn(C, n, 2, 5, 6, generator=g)
    adj = (torch.rand(C, n, n, generator=g) > 0.5).float()
    adj[0] = 0  # a cluster without edges
    out = aggregate_mates(msgs, adj)
    for c in range(C):
        for i in range(n):
            nbrs = [j for j in range(n) if adj[c, i, j]]
            ref = sum(msgs[c, j] for j in nbrs) / len(nbrs) if nbrs else torch.zeros(2, 5, 6)
            torch.testing.assert_close(out[c, i], ref)


def test_merges_equal_loops():
    g = torch.Generator().manual_seed(1)
    C, n, cap, V = 3, 2, 4, 5
    logits = torch.randn(C, n, cap, T, V, generator=g)
    lp = cluster_log_probs(logits.log_softmax(-1))
    for c in range(C):
        ref = torch.stack([logits[c, j].softmax(-1) for j in range(n)]).mean(0).log()
        torch.testing.assert_close(lp[c], ref)
    torch.testing.assert_close(merge_uniform(lp), lp.exp().mean(0).log())
    chosen = torch.tensor([[0, 1], [2, 0], [1, 2]])
    slot = torch.tensor([[0, 3], [1, -1], [-1, -1]])
    kept = slot >= 0
    gates = torch.tensor([[0.7, 0.3], [0.6, 0.4], [0.5, 0.5]])
    out = merge_routed(lp, slot, chosen, kept, gates)
    torch.testing.assert_close(out[0], (0.7 * lp[0, 0].exp() + 0.3 * lp[1, 3].exp()).log())
    torch.testing.assert_close(out[1], lp[2, 1])  # second choice dropped: renormalised
    torch.testing.assert_close(out[2], torch.full((T, V), -math.log(V)))  # all dropped
    # gradients stay finite when choices are dropped
    lp2 = lp.clone().requires_grad_()
    g2 = gates.clone().requires_grad_()
    merge_routed(lp2, slot, chosen, kept, g2).sum().backward()
    assert torch.isfinite(lp2.grad).all() and torch.isfinite(g2.grad).all()


def test_routing_society_equals_a_per_module_reference_loop():
    """The wave executor (dispatch, memory of mates, one bank call, merge) equals running
    every module of every cluster one by one with TinyLM copies."""
    soc = society("routing", router={"capacity_factor": 4.0}).eval()
    b = batch()
    out = soc(b, Knobs(2, 1, 1.0, 0.5))
    topo, bank = soc.topology, soc.banks[0]
    route = out.route
    lms = [bank.export(m) for m in range(16)]
    n = topo.cluster_size
    probs = torch.zeros(B, T, soc.vocab_size)
    for s in range(B):
        for i in range(2):
            c = route.chosen[s, i].item()
            x = b.x[s : s + 1]
            first = [lms[c * n + j](x) for j in range(n)]  # round 0, no memory
            cluster_p = 0
            for j in range(n):  # round 1: the mean of the 3 mates' round-0 messages
                mates = torch.stack([first[m][1] for m in range(n) if m != j]).mean(0)
                logits, _, _ = lms[c * n + j](x, mates[:, :, None, :])
                cluster_p = cluster_p + logits.softmax(-1)[0] / n
                ref_ce = F.cross_entropy(logits[0], b.y[s])
                row = (out.seq_index[c] == s).nonzero().item()
                got = F.cross_entropy(out.logits[c, j, row], b.y[s])
                torch.testing.assert_close(got, ref_ce, atol=1e-5, rtol=1e-5)
            probs[s] += route.gates[s, i] * cluster_p
    ref = F.nll_loss(probs.log().reshape(-1, soc.vocab_size), b.y.reshape(-1))
    torch.testing.assert_close(out.task_loss, ref, atol=1e-5, rtol=1e-5)


def test_blackboard_proposals_come_from_the_modules_that_read_the_sequence():
    soc = society(
        "brain",
        blackboard={"slots": 2, "threshold": 0.0, "decay": 0.5},
        router={"capacity_factor": 4.0},
    ).eval()
    out, trace = traced(soc, batch(), Knobs(2, 1, 1.0, 0.0))
    writers = {m for kind, m, _ in trace if kind == "write"}
    chosen = out.route.chosen
    allowed = {soc.topology.module_id(c, j) for c in chosen.flatten().tolist() for j in range(4)}
    assert writers and writers <= allowed
    assert out.stats["board_occupancy"].item() == 1.0  # threshold 0: every slot is filled


def test_arousal_forced_high_engages_more_clusters_and_rounds(tmp_path):
    sc = brainnet.load_scenario(
        "quickstart",
        {
            "corpus.block_size": T, "corpus.train_sequences": 200, "corpus.val_sequences": 50,
            "modules.0.d_model": 16, "modules.0.n_layer": 1, "train.batch_size": 8,
            "train.eval_every": 100, "train.eval_batches": 1, "log.every": 1, "device": "cpu",
            "society.router.capacity_factor": 4.0,
            "society.arousal": {"enabled": True, "rate": 0.01, "k_range": [1, 3],
                                "rounds_range": [0, 2], "threshold_range": [0.9, 0.1]},
        },
    )  # fmt: skip
    sim = brainnet.Simulation(sc, out_dir=tmp_path)
    sim.arousal.force(1.0)
    sim.run(steps=2)  # step 1 uses the initial knobs; the log after it reads arousal ~1
    sim.arousal.force(0.0)
    sim.run(steps=2)
    rows = {r["step"]: r for r in sim.writer.rows}
    high, low = rows[2], rows[4]
    assert (high["k"], high["rounds"]) == (3, 2) and (low["k"], low["rounds"]) == (1, 0)
    assert high["threshold"] == pytest.approx(0.1, abs=0.02)
    assert low["threshold"] == pytest.approx(0.9, abs=0.02)
    assert high["messages"] > low["messages"] and high["sim_time_ms"] > low["sim_time_ms"]
    assert low["messages_mate"] == 0  # one pass: nobody has heard anyone yet


def test_pipeline_equals_a_per_cluster_reference_loop():
    """Inter-cluster input memory: in one pass cluster c reads the mean message of cluster
    c-1's modules; the prediction is the last cluster's ensemble."""
    soc = society("pipeline").eval()
    b = batch()
    out = soc(b, Knobs(1, 0, 1.0, 0.5))
    bank, n = soc.banks[0], soc.topology.cluster_size
    lms = [bank.export(m) for m in range(16)]
    prev = None  # [B, T, Dm] mean message of the previous cluster
    for c in range(4):
        mem = None if prev is None else prev[:, :, None, :]
        outs = [lms[c * n + j](b.x, mem) for j in range(n)]
        for j in range(n):
            torch.testing.assert_close(out.logits[c, j], outs[j][0], atol=1e-5, rtol=1e-5)
        prev = torch.stack([o[1] for o in outs]).mean(0)
    probs = torch.stack([o[0].softmax(-1) for o in outs]).mean(0)  # the last cluster
    ref = F.nll_loss(probs.log().reshape(-1, soc.vocab_size), b.y.reshape(-1))
    torch.testing.assert_close(out.task_loss, ref, atol=1e-5, rtol=1e-5)


def test_take_equals_advanced_indexing():
    """``take`` (index_select) equals x[index] for a 2-D index, forward and gradient."""
    x = torch.randn(6, 3, 2, requires_grad=True)
    index = torch.tensor([[0, 5], [5, 2], [1, 1]])
    torch.testing.assert_close(take(x, index), x[index])
    proj = torch.randn(3, 2, 3, 2)
    (g_take,) = torch.autograd.grad((take(x, index) * proj).sum(), x)
    (g_ref,) = torch.autograd.grad((x[index] * proj).sum(), x)
    torch.testing.assert_close(g_take, g_ref)


# --------------------------------------------------------------------------- the full brain mix


def test_routed_serial_and_top_down_inputs_match_by_sequence_like_a_loop():
    """brain: cluster c reads the mean message of c-1 (and c+1) for the SAME sequence, found
    wherever the router put it in the source's buffer; equals a per-(cluster, row) loop."""
    soc = society("brain", router={"capacity_factor": 1.0})
    C, n, Dm = 4, 4, soc.message_dim
    out = soc(batch(), KNOBS)
    seq_index = out.seq_index  # [C, cap]
    cap = seq_index.shape[1]
    torch.manual_seed(1)
    msgs = torch.randn(C, n, cap, T, Dm)
    plan, waves = soc.plan(1, cap)
    for wave in waves:
        sidx = seq_index[wave.clusters]
        agg, here = inputs_by_sequence(msgs.mean(1), seq_index, B, wave.inputs, wave.input_ok,
                                       sidx)  # fmt: skip
        has = here.any(1)
        for i in range(len(wave.clusters)):
            for r in range(cap):
                s = int(sidx[i, r])
                found = []
                for src, ok in zip(wave.inputs[i].tolist(), wave.input_ok[i].tolist(), strict=True):
                    rows = (seq_index[src] == s).nonzero().flatten().tolist()
                    if ok and s < B and rows:
                        found.append(msgs[src, :, rows[0]].mean(0))  # [T, Dm]
                assert bool(has[i, r]) == bool(found)
                if found:
                    torch.testing.assert_close(agg[i, r], torch.stack(found).mean(0))


def test_attention_reads_every_module_of_the_other_clusters_like_a_loop():
    soc = society("attention")
    assert soc.n_memory == 1 + 3 * 4  # mates' mean + 12 modules of the other clusters
    C, n, Dm = 4, 4, soc.message_dim
    torch.manual_seed(2)
    msgs = torch.randn(C, n, B, T, Dm)
    _, waves = soc.plan(1, B)
    wave = waves[1]  # round 1: everybody has spoken
    seq_index = torch.arange(B).expand(C, B)
    count = {k: torch.zeros(()) for k in ("mate", "bottom_up", "top_down", "attend", "board_read")}
    memory, mask = soc._memory(wave, seq_index, seq_index, B, msgs, None, count,
                               torch.full((C,), float(B)))  # fmt: skip
    assert memory.shape == (C, n, B, T, 13, Dm) and mask[..., 1:].all()
    for c in range(C):
        others = [msgs[c2, j] for c2 in range(C) if c2 != c for j in range(n)]  # [B, T, Dm]
        for i in range(n):
            torch.testing.assert_close(memory[c, i, :, :, 1:], torch.stack(others, 2))
    assert count["attend"] == C * n * (C - 1) * n * B
    m0, k0 = soc._memory(waves[0], seq_index, seq_index, B, None, None, count,
                         torch.full((C,), float(B)))  # fmt: skip
    assert not k0[..., 1:].any()  # round 0: nothing to read yet
