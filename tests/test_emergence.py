"""Semantic state φ, Δφ, the emergence tracker (θ_t, events, cool-down, E_pot), reorganisation."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from brainnet.data.tasks import TaskCorpus
from brainnet.learning.emergence import (
    EmergenceConfig,
    EmergenceTracker,
    SemanticGrid,
    delta_phi,
    probe_batch,
)

# --------------------------------------------------------------------------- grid and φ


def test_grid_is_seeded_fixed_unit_norm():
    a, b, c = (
        SemanticGrid(11, 3, 4, seed=0),
        SemanticGrid(11, 3, 4, seed=0),
        SemanticGrid(11, 3, 4, 1),
    )
    assert a.e.shape == (11, 3, 4)
    assert torch.equal(a.e, b.e)
    assert not torch.allclose(a.e, c.e)
    assert a.e.flatten(1).norm(dim=1).tolist() == pytest.approx([1.0] * 11)
    assert list(a.parameters()) == [] and "e" not in a.state_dict()  # never trained / saved


def test_phi_equals_loop_reference():
    V, S, C = 7, 2, 3
    grid = SemanticGrid(V, S, C, seed=3)
    logits = torch.randn(4, 2, 5, V, generator=torch.Generator().manual_seed(0))
    phi = grid.phi(logits)
    assert phi.shape == (4, S, C)
    p = logits.softmax(-1)
    for m in range(4):
        ref = torch.zeros(S, C)
        for b in range(2):
            for t in range(5):
                for v in range(V):
                    ref += p[m, b, t, v] * grid.e[v]
        torch.testing.assert_close(phi[m], ref / 10, rtol=1e-5, atol=1e-6)
    # a one-hot prediction reads out exactly that token's pattern
    onehot = torch.full((1, 1, 1, V), -1e4)
    onehot[..., 5] = 0
    torch.testing.assert_close(grid.phi(onehot)[0], grid.e[5])


def test_delta_phi_norms_by_hand():
    old = torch.zeros(2, 2, 2)
    new = torch.tensor([[[3.0, 0.0], [0.0, 4.0]], [[1.0, -1.0], [0.0, 0.0]]])
    per, glob = delta_phi(new, old, "fro")
    assert per.tolist() == pytest.approx([5.0, math.sqrt(2)])
    assert glob.item() == pytest.approx(math.sqrt(27))
    per, glob = delta_phi(new, old, "l1")
    assert per.tolist() == pytest.approx([7.0, 2.0])
    assert glob.item() == pytest.approx(9.0)
    old[1] = math.nan  # a new module: NaN, left out of the global value
    per, glob = delta_phi(new, old, "fro")
    assert per[0].item() == pytest.approx(5.0) and math.isnan(per[1].item())
    assert glob.item() == pytest.approx(5.0)
    with pytest.raises(ValueError, match="norm"):
        delta_phi(new, old, "l2")


# --------------------------------------------------------------------------- tracker


def tracker(**kw) -> EmergenceTracker:
    cfg = EmergenceConfig(grid=(1, 2), **kw)
    return EmergenceTracker(cfg, vocab_size=5, seed=0)


def at(x: float, M: int = 1) -> torch.Tensor:
    """φ with every module at (x, 0): Δφ between two of them is |x - x'| per module."""
    phi = torch.zeros(M, 1, 2)
    phi[:, 0, 0] = x
    return phi


def test_constant_phi_gives_zero_and_no_event():
    tr = tracker(warmup=2, kappa=2.0)
    first = tr.observe(at(1.0, 3))
    assert first["delta_phi"] == 0.0 and not first["event"] and first["n_delta"] == 0
    assert all(math.isnan(x) for x in first["delta_phi_module"])
    for _ in range(6):
        r = tr.observe(at(1.0, 3))
        assert r["delta_phi"] == 0.0 and r["delta_phi_module"] == [0.0] * 3
        assert not r["event"] and r["theta"] == pytest.approx(1e-6)  # std 0: the floor
    assert r["warm"] and r["v_t"] == 0.0 and r["nci"] == 0.0


def test_jump_after_warmup_fires_with_hand_theta_and_cooldown():
    tr = tracker(warmup=3, kappa=2.0, cooldown=2, window=8, alphas=(1.0, 0.5, 2.0, 3.0))
    xs = [0.0, 0.1, 0.3, 0.4]  # Δφ = 0.1, 0.2, 0.1 (no event: not warm yet)
    for x in xs:
        r = tr.observe(at(x))
        assert not r["event"] and r["e_norm"] == 0.0
    assert not r["warm"] and tr.warm()  # warm from the next probe on
    hist = [0.1, 0.2, 0.1]
    mu = sum(hist) / 3
    sd = math.sqrt(sum((h - mu) ** 2 for h in hist) / 3)
    theta = mu + 2.0 * sd
    r = tr.observe(at(1.4))  # Δφ = 1.0 > θ
    assert r["warm"] and r["event"]
    assert r["delta_phi"] == pytest.approx(1.0)
    assert r["theta"] == pytest.approx(theta)
    assert r["e_norm"] == pytest.approx(1.0 / theta)
    nci = 1.0 / 0.4  # Δφ_m / ‖φ_m(previous)‖
    assert r["nci"] == pytest.approx(nci, rel=1e-6)
    hist.append(1.0)
    mu4 = sum(hist) / 4
    v_t = sum((h - mu4) ** 2 for h in hist) / 4
    assert r["v_t"] == pytest.approx(v_t)
    assert r["e_pot"] == pytest.approx(1.0 / theta + 0.5 * theta + 2.0 * nci + 3.0 * v_t, rel=1e-6)
    assert tr.arousal_input == pytest.approx(1.0 / theta)
    # the next two probes are in cool-down even with huge jumps; the third fires again
    big = [11.4, 111.4, 1111.4]
    r1, r2, r3 = (tr.observe(at(x)) for x in big)
    assert r1["delta_phi"] > r1["theta"] and not r1["event"]
    assert r2["delta_phi"] > r2["theta"] and not r2["event"]
    assert r3["delta_phi"] > r3["theta"] and r3["event"]


def test_fixed_threshold_fires_without_warmup():
    tr = tracker(threshold="fixed", theta=0.5, cooldown=0)
    tr.observe(at(0.0))
    r = tr.observe(at(0.6))
    assert r["event"] and r["theta"] == 0.5 and r["e_norm"] == pytest.approx(1.2)
    r = tr.observe(at(0.7))
    assert not r["event"] and r["e_norm"] == pytest.approx(0.2)
    assert tr.observe(at(1.3))["event"]  # cooldown 0: back to back


def test_window_bounds_history():
    tr = tracker(window=2, warmup=1, kappa=0.0)
    for x in [0.0, 5.0, 5.1, 5.3]:  # Δφ = 5, 0.1, 0.2: the 5 leaves the window
        tr.observe(at(x))
    assert tr.history == pytest.approx([0.1, 0.2], rel=1e-5)
    assert tr.theta_t() == pytest.approx(0.15, rel=1e-5)


def test_l1_tracker_per_module_and_nci():
    tr = tracker(norm="l1", threshold="fixed", theta=1.0)
    old = torch.tensor([[[1.0, -1.0]], [[2.0, 0.0]]])
    new = torch.tensor([[[1.5, -1.0]], [[2.0, 1.0]]])
    tr.observe(old)
    r = tr.observe(new)
    assert r["delta_phi_module"] == pytest.approx([0.5, 1.0])
    assert r["delta_phi"] == pytest.approx(1.5)
    assert r["nci"] == pytest.approx((0.5 / 2 + 1.0 / 2) / 2, rel=1e-6)


def test_select_rows_keeps_history_of_survivors():
    tr = tracker(threshold="fixed", theta=10.0)
    phi = torch.tensor([[[1.0, 0.0]], [[2.0, 0.0]], [[3.0, 0.0]]])
    tr.observe(phi)
    tr.select_rows(torch.tensor([2, -1, 0]))  # old 2 and old 0 survive, one new module
    assert torch.equal(tr.prev[0], phi[2]) and torch.equal(tr.prev[2], phi[0])
    assert tr.prev[1].isnan().all()
    new = torch.tensor([[[3.5, 0.0]], [[9.0, 0.0]], [[1.0, 0.0]]])
    r = tr.observe(new)
    assert r["delta_phi_module"][0] == pytest.approx(0.5) and r["delta_phi_module"][2] == 0.0
    assert math.isnan(r["delta_phi_module"][1])
    assert r["delta_phi"] == pytest.approx(0.5)  # the new module is left out
    assert r["nci"] == pytest.approx((0.5 / 3 + 0.0) / 2, rel=1e-6)
    r = tr.observe(new)  # now the new module has a history too
    assert r["delta_phi_module"] == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="select_rows"):
        tr.observe(torch.zeros(2, 1, 2))
    # all modules new: like a first probe, no Δφ recorded
    tr.select_rows(torch.tensor([-1, -1]))
    n = tr.n_delta
    r = tr.observe(torch.zeros(2, 1, 2))
    assert r["delta_phi"] == 0.0 and tr.n_delta == n and not r["event"]


def test_state_dict_round_trip(tmp_path):
    tr = tracker(warmup=2, cooldown=3)
    for x in [0.0, 0.1, 0.2, 0.25, 3.0]:
        tr.observe(at(x, 2))
    assert tr.cooldown_left == 3
    path = tmp_path / "em.pt"
    torch.save(tr.state_dict(), path)
    state = torch.load(path, weights_only=True)
    twin = tracker(warmup=2, cooldown=3)
    twin.load_state_dict(state)
    for name in ("history", "n_probes", "n_delta", "cooldown_left", "arousal_input"):
        assert getattr(twin, name) == getattr(tr, name)
    assert torch.equal(twin.prev, tr.prev)
    for x in [3.5, 9.0]:
        assert twin.observe(at(x, 2)) == tr.observe(at(x, 2))
    fresh = tracker()
    fresh.load_state_dict(tracker().state_dict())  # before any probe: prev None
    assert fresh.prev is None
    with pytest.raises(ValueError, match="seed"):
        EmergenceTracker(EmergenceConfig(grid=(1, 2)), 5, seed=1).load_state_dict(tr.state_dict())


def test_tracker_phi_and_probe_batch():
    cfg = TaskCorpus.Config(block_size=16, train_sequences=50, val_sequences=50)
    corpus = TaskCorpus(cfg, seed=0)
    a, b = probe_batch(corpus, 4, seed=7), probe_batch(corpus, 4, seed=7)
    assert a.x.shape == (4, 16) and torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, probe_batch(corpus, 4, seed=8).x)
    tr = EmergenceTracker(EmergenceConfig(grid=(2, 2)), corpus.vocab_size, seed=0)
    logits = torch.randn(3, 4, 16, corpus.vocab_size)
    torch.testing.assert_close(tr.phi(logits), tr.grid.phi(logits))


def test_config_is_strict():
    with pytest.raises(ValidationError):
        EmergenceConfig(grid=(0, 8))
    with pytest.raises(ValidationError):
        EmergenceConfig(norm="l2")
    with pytest.raises(ValidationError):
        EmergenceConfig(kapa=1.0)
    assert EmergenceConfig(alphas=[1, 2, 3, 4]).alphas == (1.0, 2.0, 3.0, 4.0)
