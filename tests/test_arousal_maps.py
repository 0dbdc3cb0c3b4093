"""What arousal sets, against hand-computed values: excitation, the maps and their derived
default ranges, the k_max cap, the lr multiplier, the focus prior and the router under it."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

import brainnet
from brainnet.config import ArousalConfig, SocietyConfig
from brainnet.engine.optim import lr_at
from brainnet.society import Arousal, Knobs
from brainnet.society.router import Router, RouterConfig

CALM = 1 / (1 + math.e)  # sigmoid(-1) = 0.26894142...


def society(**kw) -> SocietyConfig:
    """The quickstart's settings (top_k 2, clusters 4, rounds 1, temperature 1, threshold 0.5)
    with arousal on at its defaults (every range None), plus ``kw``."""
    return SocietyConfig(**{"clusters": 4, "arousal": {"enabled": True}, **kw})


def test_excitation():
    a = Arousal(ArousalConfig(bias=-1.0), 4)
    assert a.calm == pytest.approx(0.2689414213699951)
    assert a.excitation(a.calm) == 0.0
    assert a.excitation(0.1) == 0.0  # below calm: clamped
    assert a.excitation(1.0) == 1.0
    # (0.6 - 0.268941) / (1 - 0.268941) = 0.331059 / 0.731059 = 0.452848
    assert a.excitation(0.6) == pytest.approx(0.45284822353142307)
    b = Arousal(ArousalConfig(bias=0.0), 4)  # calm 0.5
    assert b.excitation(0.75) == 0.5 and b.excitation(0.6) == pytest.approx(0.2)


def test_maps_at_given_ranges():
    cfg = ArousalConfig(bias=0.0, k_range=(1, 4), rounds_range=(0, 3),
                        temperature_range=(2.0, 0.5), threshold_range=(0.3, 0.7),
                        lr_range=(0.5, 2.0))  # fmt: skip
    a = Arousal(cfg, 4)
    # a = 0.6: e = 0.2 -> k 1 + 0.6 = 1.6 -> 2; rounds 0.6 -> 1; temperature 2 - 0.3 = 1.7;
    # threshold 0.3 + 0.08 = 0.38; lr x 0.5 + 0.3 = 0.8
    assert (a.k(0.6), a.rounds(0.6)) == (2, 1)
    assert a.temperature(0.6) == pytest.approx(1.7)
    assert a.threshold(0.6) == pytest.approx(0.38)
    assert a.lr_scale(0.6) == pytest.approx(0.8)
    # a = 0.9: e = 0.8 -> k 3.4 -> 3; rounds 2.4 -> 2; temperature 0.8; threshold 0.62; lr 1.7
    assert (a.k(0.9), a.rounds(0.9)) == (3, 2)
    assert a.temperature(0.9) == pytest.approx(0.8)
    assert a.threshold(0.9) == pytest.approx(0.62)
    assert a.lr_scale(0.9) == pytest.approx(1.7)
    assert a.lr_scale(0.5) == 0.5 and a.lr_scale(1.0) == 2.0  # the ends
    assert Arousal(ArousalConfig(), 4).lr_scale(1.0) == 1.0  # lr_range None: off


def test_rounding_half_up_at_the_boundary():
    a = Arousal(ArousalConfig(bias=0.0, k_range=(1, 2), rounds_range=(0, 1)), 4)
    assert (a.k(0.75), a.rounds(0.75)) == (2, 1)  # e = 0.5 exactly: 1.5 -> 2, 0.5 -> 1
    assert (a.k(0.7499), a.rounds(0.7499)) == (1, 0)  # e = 0.4998


def test_default_ranges_derive_from_the_society():
    soc = society()
    a = Arousal(soc.arousal, 4)
    r = a.ranges(soc)
    assert (r.k, r.rounds, r.temperature, r.threshold, r.lr) == (
        (2, 3), (1, 2), (1.0, 2.0), (0.5, 0.25), (1.0, 1.0))  # fmt: skip
    assert a.knobs(a.calm, soc) == Knobs(2, 1, 1.0, 0.5, 1.0)
    assert a.knobs(1.0, soc) == Knobs(3, 2, 2.0, 0.25, 1.0)
    # the worked example of docs/arousal.md: a = 0.6, e = 0.452848
    kn = a.knobs(0.6, soc)
    assert (kn.k, kn.rounds) == (2, 1)  # 2.4528 -> 2, 1.4528 -> 1
    assert kn.temperature == pytest.approx(1.452848, abs=1e-6)
    assert kn.threshold == pytest.approx(0.386788, abs=1e-6)  # 0.5 - 0.25 * 0.452848
    assert kn.lr_scale == 1.0 and kn.prior is None

    other = society(rounds=0, router={"temperature": 0.5}, blackboard={"threshold": 0.8})
    r = Arousal(other.arousal, 4).ranges(other)
    assert (r.rounds, r.temperature, r.threshold) == ((0, 1), (0.5, 1.0), (0.8, 0.4))
    assert Arousal(soc.arousal, 4).ranges(society(router={"k_max": 4})).k == (2, 4)
    two = SocietyConfig(clusters=2, arousal={"enabled": True})
    assert Arousal(two.arousal, 2).ranges(two).k == (2, 2)  # top_k + 1 > clusters


def test_k_max_caps_k():
    soc = society(router={"top_k": 1, "k_max": 3}, arousal={"enabled": True, "k_range": (1, 4)})
    a = Arousal(soc.arousal, 4)
    assert a.k(1.0) == 4 and a.k(1.0, soc) == 3 and a.knobs(1.0, soc).k == 3
    # k_max 4, default range (2, 4): a = 0.6 -> 2 + 2 * 0.452848 = 2.906 -> 3
    wide = society(router={"k_max": 4})
    assert Arousal(wide.arousal, 4).knobs(0.6, wide).k == 3


def test_config_accepts_defaults_and_checks_ranges():
    for c in (1, 2, 3, 4):
        SocietyConfig(clusters=c, router={"top_k": min(2, c)}, arousal={"enabled": True})
    with pytest.raises(ValidationError, match="top_k"):
        SocietyConfig(clusters=4, arousal={"enabled": True, "k_range": (2, 5)})
    for kw in ({"lr_range": (0.0, 1.0)}, {"lr_range": (1.0, -2.0)}, {"focus_gain": -1.0}):
        with pytest.raises(ValidationError, match=next(iter(kw))):
            ArousalConfig(**kw)
    ArousalConfig(lr_range=(2.0, 0.5), focus_gain=3.0)


def test_focus_prior_by_hand():
    a = Arousal(ArousalConfig(focus_gain=2.0), 4)
    a.route_mean.copy_(torch.tensor([0.4, 0.3, 0.2, 0.1]))
    a.focus.fill_(0.5)
    kn = a.knobs(a.calm, society())
    # 2 * 0.5 * 4 * ([0.4, 0.3, 0.2, 0.1] - 0.25) = [0.6, 0.2, -0.2, -0.6]
    assert torch.allclose(kn.prior, torch.tensor([0.6, 0.2, -0.2, -0.6]))
    a.route_mean.fill_(0.25)  # a snapshot: later updates do not reach the knobs
    assert torch.allclose(kn.prior, torch.tensor([0.6, 0.2, -0.2, -0.6]))
    row = kn.row()
    assert row["focus_prior_max"] == pytest.approx(0.6)
    assert all(isinstance(v, (int, float)) for v in row.values())
    assert set(row) == {"k", "rounds", "temperature", "threshold", "lr_scale", "focus_prior_max"}
    assert Arousal(ArousalConfig(), 4).knobs(0.9, society()).prior is None  # gain 0
    off = Arousal(ArousalConfig(enabled=False, focus_gain=2.0), 4).knobs(0.9, society())
    assert off == Knobs.fixed(society()) and off.prior is None and off.lr_scale == 1.0
    assert "focus_prior_max" not in Knobs(2, 1, 1.0, 0.5).row()


def _router(C: int = 4) -> Router:
    torch.manual_seed(0)
    return Router(RouterConfig(noise=1.0), 11, C)


def test_router_follows_a_prior():
    r = _router()
    x = torch.randint(0, 11, (32, 6), generator=torch.Generator().manual_seed(1))
    big = torch.tensor([0.0, 0.0, 50.0, 0.0])
    for train in (False, True):
        r.train(train)
        route = r(x, 1, 1.0, big, generator=torch.Generator().manual_seed(2))
        assert route.chosen.view(-1).tolist() == [2] * 32
        route = r(x, 2, 1.0, big)
        assert route.chosen[:, 0].tolist() == [2] * 32
    with pytest.raises(ValueError, match="prior"):
        r(x, 1, 1.0, torch.zeros(3))


def _leaves(route) -> list[torch.Tensor]:
    return [route.logits, route.probs, route.chosen, route.gates, *route.dispatch,
            route.balance_loss, route.z_loss]  # fmt: skip


def test_zero_prior_is_no_prior_bit_for_bit():
    r = _router().train()
    x = torch.randint(0, 11, (16, 6), generator=torch.Generator().manual_seed(1))
    plain = r(x, 2, 0.7, None, torch.Generator().manual_seed(3))
    zero = r(x, 2, 0.7, torch.zeros(4), torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(_leaves(plain), _leaves(zero), strict=True))


def _tiny(tmp_path, **arousal):
    sc = brainnet.load_scenario("quickstart", overrides={
        "train.steps": 6, "train.warmup_steps": 2, "log.every": 2, "train.eval_every": 6,
        "train.batch_size": 8, "train.eval_batches": 1, "modules.0.n_layer": 1,
        "modules.0.d_model": 16, "modules.0.n_head": 2, "corpus.block_size": 16,
        "device": "cpu", "emergence": None, "collapse": None, "reorganize": None,
        "distill.enabled": False, "society.arousal": {"enabled": True, **arousal}})  # fmt: skip
    return brainnet.Simulation(sc, out_dir=tmp_path)


def test_logged_lr_is_the_scaled_lr_the_interval_ran_with(tmp_path):
    sim = _tiny(tmp_path / "on", lr_range=[0.5, 2.0], focus_gain=1.0)
    cfg = sim.scenario.train
    sim.run(steps=2)  # ran at calm: x 0.5
    sim.arousal.force(1.0)  # the next row reads full arousal: x 2 from then on
    sim.run(steps=4)
    rows = [r for r in sim.writer.rows if r["step"] > 0]
    scale = [r["lr_scale"] for r in rows]  # arousal drifts a little between the rows
    assert scale[0] == pytest.approx(0.5, abs=1e-6) and scale[1] < 0.7 and scale[2] > 1.5
    for r in rows:
        assert r["lr"] == lr_at(r["step"] - 1, cfg) * r["lr_scale"]
        assert isinstance(r["focus_prior_max"], float)
    assert sim.optimizer.param_groups[0]["lr"] == rows[-1]["lr"]  # what the last step used
    sim.writer.flush()  # no tensor in the rows: the parquet table writes

    off = _tiny(tmp_path / "off")  # lr_range None: the schedule exactly, as before
    off.run(steps=4)
    for r in off.writer.rows[1:]:
        assert r["lr"] == lr_at(r["step"] - 1, cfg) and r["lr_scale"] == 1.0
        assert "focus_prior_max" not in r
