"""Collapse diagnostics: entropy, top-1 mass, distinct-n, sampling, peer JS, ECE, the monitor."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from brainnet.learning.collapse import (
    CollapseConfig,
    CollapseMonitor,
    diagnose,
    distinct_n,
    expected_calibration_error,
    peer_disagreement,
    predictive_entropy,
    sample,
    top1_mass,
)
from brainnet.modules.tiny_lm import TransformerBank, TransformerConfig

# --------------------------------------------------------------------------- entropy, top-1


def test_entropy_and_top1_of_uniform_and_peaked():
    V = 17
    uniform = torch.zeros(3, 2, 5, V)
    assert predictive_entropy(uniform) == pytest.approx([math.log(V)] * 3, rel=1e-6)
    assert top1_mass(uniform) == pytest.approx([1 / V] * 3, rel=1e-6)

    peaked = torch.full((2, 2, 5, V), -1e4)
    peaked[..., 3] = 0.0  # one-hot-ish
    assert predictive_entropy(peaked).abs().max() < 1e-6
    assert top1_mass(peaked) == pytest.approx([1.0, 1.0])

    masked = torch.full((1, 1, 1, V), float("-inf"))  # -inf logits: 0 log 0 = 0, not NaN
    masked[..., :2] = 0.0
    assert predictive_entropy(masked) == pytest.approx([math.log(2)])


def test_entropy_matches_reference_per_module():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, 6, 11, generator=g) * 3
    p = logits.softmax(-1)
    ref = [float(-(p[m] * p[m].log()).sum(-1).mean()) for m in range(4)]
    assert predictive_entropy(logits).tolist() == pytest.approx(ref, rel=1e-5)
    assert top1_mass(logits).tolist() == pytest.approx(
        [float(p[m].max(-1).values.mean()) for m in range(4)], rel=1e-6
    )
    # bf16 logits are computed in fp32
    assert predictive_entropy(logits.bfloat16()).dtype == torch.float32


# --------------------------------------------------------------------------- distinct-n


def distinct_ref(samples: torch.Tensor, n: int) -> list[float]:
    out = []
    for mod in samples.tolist():
        grams = [tuple(s[i : i + n]) for s in mod for i in range(len(s) - n + 1)]
        out.append(len(set(grams)) / len(grams))
    return out


@pytest.mark.parametrize("n", [1, 2, 3])
def test_distinct_n_matches_python_reference(n):
    g = torch.Generator().manual_seed(n)
    samples = torch.randint(0, 5, (6, 4, 12), generator=g)  # small V: many repeats
    samples[1] = samples[1, :1]  # module 1: four copies of the same sample
    samples[2] = 3  # module 2: constant
    ref = distinct_ref(samples, n)
    assert distinct_n(samples, n).tolist() == pytest.approx(ref)
    assert distinct_n(samples, n, vocab_size=5).tolist() == pytest.approx(ref)


def test_distinct_n_constant_sample_and_all_distinct():
    L, n = 10, 2
    const = torch.full((1, 1, L), 7)
    assert distinct_n(const, n).item() == pytest.approx(1 / (L - n + 1))
    assert distinct_n(const.expand(1, 3, L), n).item() == pytest.approx(1 / (3 * (L - n + 1)))
    ramp = torch.arange(3 * L).view(1, 3, L)  # every bigram different
    assert distinct_n(ramp, n).item() == 1.0
    # bigrams of the end of one sample and the start of the next are not counted
    two = torch.tensor([[[1, 2, 3], [4, 5, 6]]])
    assert distinct_n(two, 2).item() == 1.0
    with pytest.raises(ValueError, match="length"):
        distinct_n(torch.zeros(1, 1, 2, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="overflow"):
        distinct_n(torch.zeros(1, 1, 9, dtype=torch.long), 8, vocab_size=1 << 20)


# --------------------------------------------------------------------------- sampling


@pytest.fixture(scope="module")
def bank() -> TransformerBank:
    torch.manual_seed(0)
    cfg = TransformerConfig(type="transformer", count=3, n_layer=1, n_head=2, d_model=16)
    b = TransformerBank(cfg, vocab_size=13, block_size=8)
    with torch.no_grad():  # a bigger init: distributions far from uniform, clear argmaxes
        b.wte.mul_(40)
    return b


def test_sample_shapes_prompt_reproducible(bank):
    prompt = torch.randint(0, 13, (3, 4, 3), generator=torch.Generator().manual_seed(1))
    out = sample(bank, prompt, 9, 1.0, torch.Generator().manual_seed(5))  # 12 > block_size 8
    assert out.shape == (3, 4, 12) and out.dtype == torch.long
    assert torch.equal(out[:, :, :3], prompt)
    assert int(out.min()) >= 0 and int(out.max()) < 13
    again = sample(bank, prompt, 9, 1.0, torch.Generator().manual_seed(5))
    assert torch.equal(out, again)
    other = sample(bank, prompt, 9, 1.0, torch.Generator().manual_seed(6))
    assert not torch.equal(out, other)
    assert bank.training  # mode restored


def test_sample_tiny_temperature_is_greedy(bank):
    prompt = torch.randint(0, 13, (3, 2, 2), generator=torch.Generator().manual_seed(2))
    length = 8  # crosses block_size: the context is cropped
    greedy = prompt.clone()
    with torch.no_grad():
        for _ in range(length):
            logits = bank(greedy[:, :, -8:]).logits[:, :, -1]
            greedy = torch.cat([greedy, logits.argmax(-1, keepdim=True)], 2)
    cold = sample(bank, prompt, length, 1e-6, torch.Generator().manual_seed(0))
    assert torch.equal(cold, greedy)
    assert torch.equal(sample(bank, prompt, length, 0.0), greedy)
    # a subset of modules through idx
    idx = torch.tensor([2, 0])
    assert torch.equal(sample(bank, prompt[[2, 0]], length, 0.0, idx=idx), greedy[[2, 0]])


# --------------------------------------------------------------------------- peers


def js(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    def h(x):
        return -(x * x.log()).sum(-1)

    return h((p + q) / 2) - (h(p) + h(q)) / 2


def test_peer_disagreement_matches_loop_reference():
    g = torch.Generator().manual_seed(3)
    C, n, B, T, V = 2, 4, 3, 5, 7
    probs = (torch.randn(C, n, B, T, V, generator=g) * 2).softmax(-1)
    got = peer_disagreement(probs)
    assert got.shape == (C, n)
    for c in range(C):
        for i in range(n):
            ref = sum(js(probs[c, i], probs[c, j]).mean() for j in range(n) if j != i) / (n - 1)
            assert got[c, i].item() == pytest.approx(float(ref), rel=1e-4, abs=1e-6)
    assert float(got.max()) <= math.log(2)


def test_peer_disagreement_identical_disjoint_and_single():
    p = torch.randn(1, 1, 2, 3, 9).softmax(-1)
    same = p.expand(3, 4, 2, 3, 9)
    assert peer_disagreement(same).abs().max() < 1e-6
    # two mates with disjoint supports: JS = log 2 exactly
    a = torch.tensor([0.5, 0.5, 0.0, 0.0])
    b = torch.tensor([0.0, 0.0, 0.5, 0.5])
    pair = torch.stack([a, b]).view(1, 2, 1, 1, 4)
    assert peer_disagreement(pair)[0].tolist() == pytest.approx([math.log(2)] * 2)
    assert peer_disagreement(p).tolist() == [[0.0]]  # no mates


# --------------------------------------------------------------------------- calibration


def ece_ref(logits: torch.Tensor, targets: torch.Tensor, bins: int) -> list[float]:
    out = []
    for m in range(logits.shape[0]):
        p = logits[m].softmax(-1).reshape(-1, logits.shape[-1])
        t = targets.expand(logits.shape[:-1])[m].reshape(-1)
        conf, pred = p.max(-1)
        total = 0.0
        for k in range(bins):
            lo, hi = k / bins, (k + 1) / bins
            sel = [
                i
                for i in range(len(conf))
                if lo <= conf[i] < hi or (k == bins - 1 and conf[i] >= 1)
            ]
            if sel:
                acc = sum(float(pred[i] == t[i]) for i in sel) / len(sel)
                c = sum(float(conf[i]) for i in sel) / len(sel)
                total += len(sel) / len(conf) * abs(acc - c)
        out.append(total)
    return out


@pytest.mark.parametrize("shared", [True, False])
def test_ece_matches_loop_reference(shared):
    g = torch.Generator().manual_seed(4)
    M, B, T, V = 3, 4, 6, 5
    logits = torch.randn(M, B, T, V, generator=g) * 2
    targets = torch.randint(0, V, (B, T) if shared else (M, B, T), generator=g)
    got = expected_calibration_error(logits, targets, bins=7)
    assert got.tolist() == pytest.approx(ece_ref(logits, targets, 7), abs=1e-6)


def test_ece_zero_when_perfectly_calibrated_and_one_when_confidently_wrong():
    # confidence 0.75 on class 0 everywhere; 3 of 4 targets are class 0 -> calibrated
    lg = torch.log(torch.tensor([0.75, 0.25]))
    logits = lg.expand(1, 1, 4, 2)
    targets = torch.tensor([[0, 0, 0, 1]])
    assert expected_calibration_error(logits, targets, 10).item() == pytest.approx(0, abs=1e-6)
    wrong = torch.tensor([[-1e4, 0.0]]).expand(1, 1, 4, 2)  # confidence 1, always wrong
    assert expected_calibration_error(wrong, torch.zeros(1, 4, dtype=torch.long)).item() == (
        pytest.approx(1.0)
    )


def test_diagnose_bundle():
    cfg = CollapseConfig(n=2, ece_bins=5)
    logits = torch.randn(2, 3, 4, 6)
    targets = torch.randint(0, 6, (3, 4))
    samples = torch.randint(0, 6, (2, 4, 8))
    d = diagnose(logits, targets, samples, cfg)
    assert set(d) == {"entropy", "top1", "ece", "distinct"}
    assert all(v.shape == (2,) for v in d.values())
    assert "distinct" not in diagnose(logits, targets, None, cfg)


# --------------------------------------------------------------------------- monitor


def test_monitor_fires_once_per_crossing():
    cfg = CollapseConfig(entropy_floor=0.5, distinct_floor=0.2)
    mon = CollapseMonitor(cfg, 3)
    assert mon.check(torch.tensor([2.0, 2.0, 2.0]), torch.tensor([0.9, 0.9, 0.9])) == []
    ev = mon.check(torch.tensor([0.31, 2.0, 2.0]), torch.tensor([0.9, 0.1, 0.9]))
    assert [e["module"] for e in ev] == [0, 1]
    assert ev[0]["entropy"] == pytest.approx(0.31) and ev[0]["cause"] == "entropy 0.31 < floor 0.5"
    assert ev[1]["cause"] == "distinct-2 0.1 < floor 0.2"
    # still collapsed: no new event (module 0 now collapsed by both causes)
    assert mon.check([0.2, 0.3, 2.0], [0.1, 0.1, 0.9]) == []
    # module 0 recovers, then collapses again -> fires again
    assert mon.check([1.0, 0.3, 2.0], [0.9, 0.1, 0.9]) == []
    ev = mon.check([0.1, 0.3, 2.0], [0.05, 0.1, 0.9])
    assert [e["module"] for e in ev] == [0]
    assert "entropy 0.1 < floor 0.5; distinct-2 0.05 < floor 0.2" == ev[0]["cause"]
    # entropy only (no samples)
    assert [e["module"] for e in mon.check([2.0, 2.0, 0.4])] == [2]


def test_monitor_reorganisation_and_state():
    mon = CollapseMonitor(CollapseConfig(), 3)
    mon.check([0.1, 2.0, 2.0], [0.9, 0.9, 0.9])
    mon.select_rows(torch.tensor([0, -1, 2, 0]))
    assert mon.collapsed == [True, False, False, True]
    other = CollapseMonitor(CollapseConfig(), 4)
    other.load_state_dict(mon.state_dict())
    assert other.collapsed == mon.collapsed
    with pytest.raises(ValueError, match="modules"):
        CollapseMonitor(CollapseConfig(), 2).load_state_dict(mon.state_dict())
    with pytest.raises(ValueError, match="modules"):
        mon.check([1.0, 2.0])


def test_config_is_strict():
    with pytest.raises(ValidationError):
        CollapseConfig(every=0)
    with pytest.raises(ValidationError):
        CollapseConfig(evry=3)
