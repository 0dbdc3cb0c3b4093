"""Reorganisation actions: the decisions (learning/actions.py), their application to banks,
optimiser, EMA teacher, router and topology (Relayout.apply), and the society with
clusters of different sizes."""

import shutil

import pytest
import torch

import brainnet
from brainnet.config import ReorganizeConfig, ScenarioError
from brainnet.learning.actions import ACTIONS, Evidence, Limits
from brainnet.learning.layout import New, bank_plans
from brainnet.society.cluster import cluster_log_probs
from brainnet.society.topology import build_topology

SMALL = {"train.steps": 6, "train.batch_size": 4, "train.eval_every": 6, "train.eval_batches": 1,
         "log.every": 2, "corpus.block_size": 16}  # fmt: skip


def evidence(phi, loss=None, heard=None):
    phi = torch.as_tensor(phi, dtype=torch.float)
    loss = torch.zeros(len(phi)) if loss is None else torch.as_tensor(loss, dtype=torch.float)
    return Evidence(phi, loss, None if heard is None else torch.as_tensor(heard, dtype=torch.float))


def limits(C=2, N=8, **kw):
    cfg = ReorganizeConfig(**kw)
    return cfg, Limits.of(cfg, n_clusters=C, n_modules=N)


# --------------------------------------------------------------------------- decisions


def test_split_takes_the_most_spread_cluster_along_its_principal_axis():
    topo = build_topology("brain", 2, [8])  # clusters [0..3], [4..7]
    phi = [
        [0, 0],
        [0, 0.1],
        [0, 0.2],
        [0, 0.3],  # cluster 0: tight
        [5, 0],
        [-5, 0],
        [5.1, 0],
        [-5.1, 0],
    ]  # cluster 1: two groups on the x axis
    cfg, lim = limits()
    out = ACTIONS["split"](topo, evidence(phi), cfg, lim)
    assert out.clusters == [[0, 1, 2, 3], [4, 6], [5, 7]]  # the half holding 4 keeps index 1
    assert out.detail["cluster"] == 1 and out.detail["into"] == [1, 2]
    assert out.router.source == [0, 1, -1] and out.router.parent[2] == 1  # a copy of row 1
    assert out.adjacency[0] is not None and out.adjacency[1] is None  # unchanged / rewired
    cfg, lim = limits(max_clusters=2)
    assert "max_clusters" in ACTIONS["split"](topo, evidence(phi), cfg, lim)
    cfg, lim = limits(min_cluster_size=3)
    assert "2 · min_cluster_size" in ACTIONS["split"](topo, evidence(phi), cfg, lim)


def test_merge_joins_the_closest_clusters_and_drops_a_router_row():
    topo = build_topology("routing", 3, [6])  # [0,1], [2,3], [4,5]
    phi = [[0, 0], [0, 1], [9, 9], [9, 8], [0.2, 0.5], [0.1, 0.4]]
    cfg, lim = limits()
    out = ACTIONS["merge"](topo, evidence(phi), cfg, lim)
    assert out.clusters == [[0, 1, 4, 5], [2, 3]]
    assert out.router.source == [0, 1] and out.detail["clusters"] == [0, 2]
    cfg, lim = limits(max_cluster_size=3)
    assert "max_cluster_size" in ACTIONS["merge"](topo, evidence(phi), cfg, lim)
    two = build_topology("routing", 2, [4])
    assert "at least 2" in ACTIONS["merge"](two, evidence(phi[:4]), cfg, lim)


def test_spawn_copies_the_best_module_of_the_worst_cluster():
    topo = build_topology("brain", 2, [8])
    loss = [1, 1, 1, 1, 3, 2.5, 2, 4]  # cluster 1 is worse; its best module is 6
    cfg, lim = limits()
    out = ACTIONS["spawn"](topo, evidence(torch.zeros(8, 2), loss), cfg, lim)
    assert out.clusters[1] == [4, 5, 6, 7, New(6)] and out.clusters[0] == [0, 1, 2, 3]
    assert out.router is None and out.detail["parent"] == 6
    cfg, lim = limits(max_modules=8)
    assert "max_modules" in ACTIONS["spawn"](topo, evidence(torch.zeros(8, 2), loss), cfg, lim)


def test_prune_removes_the_least_heard_module_and_keeps_the_rest_wired():
    topo = build_topology("brain", 2, [6], intra="ring")  # [0,1,2], [3,4,5]
    heard = [5, 5, 5, 5, 0, 5]
    cfg, lim = limits()
    out = ACTIONS["prune"](topo, evidence(torch.zeros(6, 2), [0, 0, 0, 0, 1, 0], heard), cfg, lim)
    assert out.clusters == [[0, 1, 2], [3, 5]] and out.detail["module"] == 4
    a = topo.adjacency[1, :3, :3]
    torch.testing.assert_close(out.adjacency[1], a[[0, 2]][:, [0, 2]])  # induced subgraph
    # no board: the highest probe loss goes
    out = ACTIONS["prune"](topo, evidence(torch.zeros(6, 2), [0, 7, 0, 0, 1, 0]), cfg, lim)
    assert out.detail["module"] == 1
    cfg, lim = limits(min_cluster_size=3)
    assert "min_cluster_size" in ACTIONS["prune"](topo, evidence(torch.zeros(6, 2)), cfg, lim)


def test_rewire_keeps_the_nearest_mates_in_phi():
    topo = build_topology("brain", 1, [5])
    phi = [[0.0], [1.0], [2.5], [10.0], [11.0]]
    cfg, lim = limits(rewire_degree=1)
    out = ACTIONS["rewire"](topo, evidence(phi), cfg, lim)
    reads = out.adjacency[0].argmax(1).tolist()  # each module reads exactly one mate
    assert reads == [1, 0, 1, 4, 3] and out.adjacency[0].sum() == 5
    assert out.detail["edges_before"] == 20 and out.detail["edges_after"] == 5


def test_replace_works_per_cluster_and_bank():
    topo = build_topology("brain", 2, [4, 2])  # bank 0: rows 0..3, bank 1: ids 4, 5
    out = ACTIONS["replace"](topo, evidence(torch.zeros(6, 1), [1, 2, 3, 0, 9, 9]), *limits())
    # cluster 0 = ids [0, 1, 4], cluster 1 = [2, 3, 5]: one module of bank 1 each -> untouched
    assert out.clusters == [[0, New(0), 4], [New(3), 3, 5]]


def test_bank_plans_lay_every_bank_out_cluster_major():
    topo = build_topology("brain", 2, [4, 2])  # ids: bank 0 -> 0..3, bank 1 -> 4, 5
    offsets = [0, 4]
    clusters = [[4, 0, New(1)], [2, 3, 5, 1, New(5)]]
    sizes, plans, perms, rows = bank_plans(topo.bank_of, offsets, clusters)
    assert sizes == [[2, 1], [3, 2]]
    assert plans[0].source == [0, -1, 2, 3, 1] and plans[0].parent[1] == 1
    assert plans[1].source == [0, 1, -1] and plans[1].parent[2] == 1
    assert perms[0] == [1, 2, 0]  # bank 0's modules first, in listed order
    assert rows.tolist() == [0, -1, 2, 3, 1, 4, 5, -1]


# --------------------------------------------------------------------------- application


def sim_with(tmp_path, actions, **extra):
    sc = brainnet.load_scenario("quickstart", {
        **SMALL, "emergence": {"every": 2, "threshold": "fixed", "theta": 1e9},
        "reorganize": {"actions": actions, "noise": 0.0},
        "distill": {"enabled": True, "teacher": "ema"}, **extra})  # fmt: skip
    s = brainnet.Simulation(sc, out_dir=tmp_path)
    s.run(steps=2)  # optimiser, EMA and φ have state
    return s


@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_each_action_keeps_the_survivors_exactly(tmp_path, action):
    s = sim_with(tmp_path, [action])
    bank, opt = s.banks[0], s.optimizer
    before = {n: p.detach().clone() for n, p in bank.named_parameters()}
    moments = {
        n: opt.state[p]["exp_avg"].clone()
        for n, p in bank.named_parameters()
        if "exp_avg" in opt.state[p]  # (a parameter no gradient reached yet has no state)
    }
    assert len(moments) >= len(before) - 2
    teacher = {n: p.clone() for n, p in s.teacher.banks[0].named_parameters()}
    gate = s.society.router.gate.weight.detach().clone()
    out_before = s.standalone_logits(s.probe)[0]  # [N, B, T, V]
    N0, C0 = s.n_modules, s.society.topology.n_clusters
    # the Δφ of a big jump: every action has a candidate
    phi = torch.arange(N0 * 2, dtype=torch.float).view(N0, 2) ** 2
    ev = evidence(phi, torch.arange(float(N0)), torch.ones(N0))
    layout = ACTIONS[action](s.society.topology, ev, *limits(C0, N0))
    assert not isinstance(layout, str), layout
    rows, parents = s.relayout.apply(layout)
    kept = (rows >= 0).nonzero().flatten()
    old = rows[kept]
    out_after = s.standalone_logits(s.probe)[0]
    assert torch.equal(out_after[kept], out_before[old])  # survivors' outputs bit-identical
    for n, p in bank.named_parameters():
        assert torch.equal(p[kept], before[n][old]), n
        if n in moments:
            assert torch.equal(opt.state[p]["exp_avg"][kept], moments[n][old]), n
            assert not opt.state[p]["exp_avg"][rows < 0].any(), n  # new modules start fresh
        assert torch.equal(s.teacher.banks[0].get_parameter(n)[kept], teacher[n][old]), n
    assert s.n_modules == len(rows) == s.society.topology.n_modules
    C = s.society.topology.n_clusters
    g = s.society.router.gate.weight
    assert g.shape[0] == C and s.arousal.n_clusters == C
    if action == "merge":
        assert C == C0 - 1 and torch.equal(g, gate[layout.router.source])
    elif action == "split":
        assert C == C0 + 1 and torch.equal(g[:C0], gate)
        assert torch.equal(g[C0], gate[layout.router.parent[-1]])  # noise 0: a copy
    s.run()  # the reorganised society trains on (unequal clusters included)
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in s.writer.rows[1:])


def test_padded_path_equals_the_equal_cluster_path(tmp_path):
    sc = brainnet.load_scenario("quickstart", SMALL)
    s = brainnet.Simulation(sc, out_dir=tmp_path)
    batch = s.corpus.batch("train", 4, torch.Generator().manual_seed(0))
    soc = s.society
    soc.eval()
    ref = soc(batch, s.knobs)
    soc.uniform = False  # the same layout through the gather / scatter path
    soc._plans.clear()
    out = soc(batch, s.knobs)
    torch.testing.assert_close(out.logits, ref.logits, rtol=0, atol=0)
    torch.testing.assert_close(out.task_loss, ref.task_loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.module_loss, ref.module_loss, rtol=1e-6, atol=1e-6)


def test_unequal_clusters_average_their_own_members_only(tmp_path):
    s = sim_with(tmp_path, ["spawn"])
    layout = ACTIONS["spawn"](s.society.topology, evidence(torch.zeros(16, 1),
                              torch.arange(16.0)), *limits(4, 16))  # fmt: skip
    s.relayout.apply(layout)
    soc = s.society
    assert not soc.uniform and soc.topology.cluster_sizes == [4, 4, 4, 5]
    soc.eval()
    batch = s.corpus.batch("train", 4, torch.Generator().manual_seed(0))
    out = soc(batch, s.knobs)  # logits [C, n, cap, T, V]
    lp = out.logits.float().log_softmax(-1)
    got = cluster_log_probs(lp, soc.member)
    for c, n_c in enumerate(soc.topology.cluster_sizes):  # reference: mean over real members
        assert not out.logits[c, n_c:].any()  # empty slots stay empty
        ref = lp[c, :n_c].exp().mean(0).log()
        torch.testing.assert_close(got[c], ref, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(out.module_loss[~torch.isnan(out.module_loss)]).all()
    assert out.module_loss.shape == (17,)


def test_resume_after_a_reorganisation_is_exact(tmp_path):
    sc = brainnet.load_scenario("quickstart", {
        **SMALL, "train.steps": 8, "log.checkpoint_every": 4,
        "emergence": {"every": 2, "threshold": "fixed", "theta": 1e-9, "cooldown": 0},
        "reorganize": {"actions": ["split", "spawn"]}})  # fmt: skip
    full = brainnet.Simulation(sc, out_dir=tmp_path / "a")
    full.run(steps=4)
    assert full.society.topology.n_clusters == 5 and full.n_modules == 17
    saved = tmp_path / "at4.pt"
    shutil.copy(full.run_dir / "checkpoint.pt", saved)
    full.run()
    resumed = brainnet.Simulation.resume(saved, out_dir=tmp_path / "b")
    resumed.run()
    a = [r["train_loss"] for r in full.writer.rows if r["step"] > 4]
    b = [r["train_loss"] for r in resumed.writer.rows if r["step"] > 4]
    assert a == b and len(a) == 2
    assert resumed.society.topology.sizes == full.society.topology.sizes


def test_events_carry_the_topology_before_and_after(tmp_path):
    sc = brainnet.load_scenario("quickstart", {
        **SMALL, "emergence": {"every": 2, "threshold": "fixed", "theta": 1e-9, "cooldown": 0},
        "reorganize": {"actions": ["split", "merge"], "max_clusters": 5}})  # fmt: skip
    s = brainnet.Simulation(sc, out_dir=tmp_path)
    s.run()
    run = brainnet.open_run(s.run_dir)
    events = [e for e in run.events if e["kind"] == "reorganize"]
    first = events[0]
    assert first["action"] == "split" and first["cause"].startswith("Δφ")
    assert len(first["before"]["clusters"]) == 4 and len(first["after"]["clusters"]) == 5
    assert (s.run_dir / first["graph"]).exists()
    assert {"step", "delta_phi", "theta"} <= set(first)
    merged = events[1]
    assert merged["action"] == "merge" and len(merged["after"]["clusters"]) == 4
    assert merged["before"] == first["after"]
    graphs = sorted(p.name for p in s.run_dir.glob("topology*.json"))
    assert graphs[0] == "topology.json" and len(graphs) == 1 + len(events)


def test_structural_actions_need_a_routed_society():
    with pytest.raises(ScenarioError, match="reorganize.actions.*split.*routed"):
        brainnet.load_scenario("pipeline", {"emergence": {"every": 10},
                                            "reorganize": {"actions": ["split"]}})  # fmt: skip
    with pytest.raises(ScenarioError, match="reorganize.actions.*prune.*society"):
        brainnet.load_scenario("nanogpt_baby", {"emergence": {"every": 50},
                                                "reorganize": {"actions": ["prune"]}})  # fmt: skip


def test_independent_modules_replace_their_worst(tmp_path):
    sc = brainnet.load_scenario("nanogpt_baby", {
        "modules.0.count": 3, "modules.0.n_layer": 1, "modules.0.d_model": 32, "train.steps": 4,
        "log.every": 2, "train.eval_every": 4, "train.eval_batches": 1, "train.batch_size": 4,
        "corpus.block_size": 16, "reorganize": {"actions": ["replace"], "noise": 0.0},
        "emergence": {"every": 2, "threshold": "fixed", "theta": 1e-9, "cooldown": 0}})  # fmt: skip
    s = brainnet.Simulation(sc, out_dir=tmp_path)
    s.run()
    (event,) = [e for e in brainnet.open_run(s.run_dir).events if e["kind"] == "reorganize"]
    (r,) = event["replaced"]  # one cluster of 3 independent modules: one replaced
    assert event["step"] == 4 and r["module"] != r["copy_of"] and event["graph"] is None
    w = s.banks[0].wte  # noise 0: an exact copy at the event (the run ended right after)
    assert torch.equal(w[r["module"]], w[r["copy_of"]])
