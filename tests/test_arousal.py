"""Arousal: surprise raises it, calm settles it at sigmoid(bias), novelty, maps, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from brainnet.society.arousal import Arousal, ArousalConfig


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def uniform(B: int = 8, C: int = 4) -> torch.Tensor:
    return torch.full((B, C), 1 / C)


def test_initial_state():
    a = Arousal(ArousalConfig(bias=-1.0), 4)
    assert a.arousal.item() == pytest.approx(sigmoid(-1.0))
    assert a.read() == pytest.approx((sigmoid(-1.0), 0.5))


def test_steady_loss_settles_at_sigmoid_bias_and_spike_raises():
    cfg = ArousalConfig(bias=-1.0, rate=0.2, warmup=3)
    a = Arousal(cfg, 4)
    a.force(0.9)
    for _ in range(60):  # a steady loss: arousal decays from 0.9 to sigmoid(bias)
        a.update(torch.tensor(2.0), uniform())
    calm = a.arousal.item()
    assert calm == pytest.approx(sigmoid(-1.0), abs=1e-4)
    a.update(torch.tensor(3.0), uniform())  # a loss spike: z clamps at 5
    spiked = a.arousal.item()
    # one step of the EMA towards sigmoid(2 * 5 - 1)
    assert spiked > calm + 0.1
    assert spiked == pytest.approx(0.8 * calm + 0.2 * sigmoid(2 * 5 - 1), abs=1e-5)
    a.update(torch.tensor(1.0), uniform())  # a sudden drop is good news: drive below calm
    assert a.arousal.item() < 0.8 * spiked + 0.2 * sigmoid(-1.0)


def test_spike_after_noisy_stream_exceeds_everything_seen():
    a = Arousal(ArousalConfig(rate=0.2), 4)
    g = torch.Generator().manual_seed(0)
    seen = []
    for _ in range(100):  # noise of std 0.01 around 2.0
        a.update(torch.tensor(2.0) + 0.01 * torch.randn((), generator=g), uniform())
        seen.append(a.arousal.item())
    calm = sum(seen[20:]) / 80
    a.update(torch.tensor(2.5), uniform())
    assert a.arousal.item() > calm + 0.05  # one surprising step
    for _ in range(2):  # a shift that lasts: the running stats adapt, surprise stays positive
        a.update(torch.tensor(2.5), uniform())
    assert a.arousal.item() > max(seen[20:])


def test_exactly_constant_loss_gives_zero_surprise():
    a = Arousal(ArousalConfig(bias=0.5, rate=0.5, warmup=1), 3)
    for _ in range(40):
        a.update(torch.tensor(1.5), None)
    assert a.arousal.item() == pytest.approx(sigmoid(0.5), abs=1e-6)
    assert a.focus.item() == 0.5  # no routing information


def test_first_call_only_initialises():
    a = Arousal(ArousalConfig(bias=0.0, rate=1.0, warmup=1), 2)
    a.update(torch.tensor(7.0), torch.tensor([[1.0, 0.0]]))
    assert a.arousal.item() == pytest.approx(0.5)  # surprise 0 and novelty 0 on the first call
    assert a.loss_mean.item() == 7.0 and a.loss_var.item() == 0.0
    assert a.route_mean.tolist() == [1.0, 0.0]


def test_novelty_when_routing_changes():
    cfg = ArousalConfig(bias=0.0, rate=0.1, surprise_weight=0.0, novelty_weight=1.0)
    a = Arousal(cfg, 4)
    skew = torch.tensor([[0.7, 0.1, 0.1, 0.1]]).expand(8, 4)
    for _ in range(30):
        a.update(torch.tensor(1.0), skew)
    before = a.arousal.item()
    assert before == pytest.approx(0.5, abs=1e-4)  # same routing every step: novelty ~0
    other = torch.tensor([[0.1, 0.1, 0.1, 0.7]]).expand(8, 4)
    q = a.route_mean.clone()
    p = other.mean(0)
    kl = (p * (p / q).log()).sum().item()
    assert kl > 0.5
    a.update(torch.tensor(1.0), other)
    assert a.arousal.item() == pytest.approx(0.9 * before + 0.1 * sigmoid(kl), abs=1e-5)
    assert a.arousal.item() > before


def test_delta_phi_raises_arousal():
    cfg = ArousalConfig(bias=-1.0, rate=0.5, surprise_weight=0.0, delta_phi_weight=2.0)
    a, b = Arousal(cfg, 2), Arousal(cfg, 2)
    a.update(torch.tensor(1.0), None, delta_phi=torch.tensor(1.5))
    b.update(torch.tensor(1.0), None, delta_phi=1.5)
    c = Arousal(cfg, 2)
    c.update(torch.tensor(1.0), None)
    assert a.arousal.item() == pytest.approx(0.5 * sigmoid(-1) + 0.5 * sigmoid(2.0))
    assert a.arousal.item() == pytest.approx(b.arousal.item())
    assert a.arousal.item() > c.arousal.item()


def test_focus():
    a = Arousal(ArousalConfig(), 4)
    a.update(torch.tensor(1.0), torch.eye(4)[[2, 2, 2]])  # every sequence to cluster 2
    assert a.focus.item() == pytest.approx(1.0)
    a.update(torch.tensor(1.0), uniform())
    assert a.focus.item() == pytest.approx(0.0, abs=1e-6)
    a.update(torch.tensor(1.0), torch.tensor([[0.5, 0.5, 0.0, 0.0]]))
    assert a.focus.item() == pytest.approx(0.5)  # log 2 / log 4


def test_maps_and_force():
    """The maps read the excitation: low ends at calm (and below), high ends at arousal 1."""
    cfg = ArousalConfig(
        k_range=(1, 4),
        rounds_range=(1, 3),
        temperature_range=(2.0, 0.5),
        threshold_range=(0.3, 0.7),
    )
    a = Arousal(cfg, 4)
    a.force(1.0)
    hi = a.read()[0]
    assert (a.k(hi), a.rounds(hi), a.temperature(hi), a.threshold(hi)) == (4, 3, 0.5, 0.7)
    for lo in (a.calm, 0.0):  # calm, and anything below it, is the low end
        assert (a.k(lo), a.rounds(lo), a.temperature(lo), a.threshold(lo)) == (1, 1, 2.0, 0.3)
    mid = a.calm + 0.5 * (1 - a.calm)  # excitation 0.5
    assert a.k(mid) == 3  # 2.5 rounds half up
    assert a.rounds(mid) == 2 and a.temperature(mid) == pytest.approx(1.25)
    grid = [i / 100 for i in range(101)]
    for f, sign in ((a.k, 1), (a.rounds, 1), (a.temperature, -1), (a.threshold, 1)):
        vals = [f(x) for x in grid]
        assert all(sign * (v1 - v0) >= 0 for v0, v1 in zip(vals[:-1], vals[1:], strict=True))
    assert a.k(1.5) == 4 and a.rounds(-1.0) == 1  # clamped to [0, 1]
    with pytest.raises(ValueError, match="k_range"):  # None derives from the society
        Arousal(ArousalConfig(), 4).k(1.0)


def test_disabled_is_a_no_op():
    a = Arousal(ArousalConfig(enabled=False), 3)
    before = a.state_dict()
    a.update(torch.tensor(9.0), uniform(2, 3))
    assert all(torch.equal(before[k], v) for k, v in a.state_dict().items())


def test_state_dict_round_trip():
    cfg = ArousalConfig(rate=0.3, warmup=2)
    a = Arousal(cfg, 4)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        a.update(torch.rand((), generator=g), torch.rand(6, 4, generator=g).softmax(-1))
    b = Arousal(cfg, 4)
    b.load_state_dict(a.state_dict())
    for k, v in a.state_dict().items():
        assert torch.equal(b.state_dict()[k], v)
    loss, probs = torch.tensor(0.3), torch.rand(6, 4, generator=g).softmax(-1)
    a.update(loss, probs)
    b.update(loss, probs)
    assert torch.equal(a.arousal, b.arousal) and torch.equal(a.route_mean, b.route_mean)
    with pytest.raises(ValueError, match="route_mean"):
        Arousal(cfg, 5).load_state_dict(a.state_dict())
    a.resize(5)
    a.update(loss, torch.rand(6, 5, generator=g).softmax(-1))  # routing stats restart
    assert a.route_mean.shape == (5,)


def test_config_validation():
    ArousalConfig(k_range=(1, 1), rounds_range=(0, 2), temperature_range=(2.0, 0.5))
    bad = [
        {"k_range": (3, 2)},
        {"k_range": (0, 2)},
        {"rounds_range": (2, 1)},
        {"rounds_range": (-1, 1)},
        {"temperature_range": (0.0, 1.0)},
        {"threshold_range": (0.2, 1.2)},
        {"rate": 0.0},
        {"rate": 1.5},
        {"surprise_weight": -1.0},
        {"warmup": 0},
    ]
    for kw in bad:
        with pytest.raises(ValidationError, match=next(iter(kw))):
            ArousalConfig(**kw)


# --------------------------------------------------------------------------- what arousal sets


def test_k_max_caps_what_arousal_asks_for():
    """``society.router.k_max`` is the router's ceiling: with k_range [2, 3] and k_max = 2, even
    full arousal keeps k = 2 (before the fix arousal set k = 3). Without k_max, k_range rules."""
    from brainnet.config import SocietyConfig

    soc = SocietyConfig(topology="brain", clusters=4, router={"top_k": 2, "k_max": 2},
                        arousal={"enabled": True, "k_range": (2, 3)})  # fmt: skip
    a = Arousal(soc.arousal, 4)
    assert a.knobs(1.0, soc).k == 2
    assert a.knobs(1.0, soc.model_copy(update={"router": soc.router.model_copy(
        update={"k_max": None})})).k == 3  # fmt: skip
    assert a.knobs(0.0, soc).k == 2


def test_a_row_charges_the_simulated_time_of_the_knobs_it_ran_with(tmp_path):
    """Arousal retunes k and rounds at log rows. Each row's sim_time_ms must be the makespan of
    the plan the interval actually ran (its logged k and rounds), not the next interval's
    (before the fix, a row after arousal rose logged the new plan's time)."""
    import brainnet
    from brainnet.society import Knobs

    sc = brainnet.load_scenario("quickstart", overrides={
        "train.steps": 8, "log.every": 2, "train.eval_every": 8, "train.batch_size": 8,
        "modules.0.n_layer": 1, "modules.0.d_model": 16, "modules.0.n_head": 2,
        "corpus.block_size": 16, "emergence": None, "collapse": None, "reorganize": None,
        "society.arousal.rounds_range": [0, 3], "society.arousal.k_range": [1, 3]})  # fmt: skip
    sim = brainnet.Simulation(sc, out_dir=tmp_path)
    sim.run(steps=2)
    sim.arousal.force(1.0)  # the next row reads high arousal: more rounds, larger k
    sim.run(steps=4)
    rows = [r for r in sim.writer.rows if r.get("sim_time_ms") is not None]
    assert len({(r["k"], r["rounds"]) for r in rows}) > 1  # the knobs did change between rows
    soc, B = sim.society, sc.train.batch_size
    for r in rows:
        knobs = Knobs(r["k"], r["rounds"], r["temperature"], r["threshold"])
        plan, _ = soc.plan(r["rounds"], soc.capacity(knobs, B))
        assert r["sim_time_ms"] == pytest.approx(plan.makespan)
