"""Distillation: KD loss against hand-computed numbers, alpha mix and DML peers, EMA teacher
against a per-parameter reference loop, momentum schedules, Warmup-Distill correction, config."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from distill_reference import gather_peers, peer_logits_from_clusters
from pydantic import ValidationError

from brainnet.learning import (
    DistillConfig,
    EMAConfig,
    EMATeacher,
    distill_loss,
    ema_momentum,
    kd_loss,
    mean_peer_kd,
    peer_weights,
    warmup_correct,
)
from brainnet.modules.bank import module_cross_entropy
from brainnet.modules.tiny_lm import TransformerBank, TransformerConfig

LN2 = math.log(2.0)


# --------------------------------------------------------------------------- kd_loss


def test_kd_loss_hand_computed():
    """Two positions, V = 3, T = 1, every number written out.

    position 0: student [0, 0, 0] -> q = (1/3, 1/3, 1/3)
                teacher [0, ln 2, 0] -> p = (1/4, 1/2, 1/4)
        KL(p‖q) = 2·(1/4)·ln((1/4)/(1/3)) + (1/2)·ln((1/2)/(1/3)) = ½ln(3/4) + ½ln(3/2) = ½ln(9/8)
    position 1: student [1, 0, 0] -> q = (e, 1, 1)/(e + 2); teacher [0, 0, 0] -> p uniform
        KL(p‖q) = Σ ⅓·ln((1/3)/q_i) = −ln 3 − ⅓(1 − 3·ln(e + 2)) = ln(e + 2) − ln 3 − ⅓
    batch-mean = the average of the two.
    """
    s = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]])  # [M=1, 2, V=3]
    t = torch.tensor([[[0.0, LN2, 0.0], [0.0, 0.0, 0.0]]])
    kl0 = 0.5 * math.log(9 / 8)  # 0.058891...
    kl1 = math.log(math.e + 2) - math.log(3) - 1 / 3  # 0.119499...
    assert kl0 == pytest.approx(0.0588915, abs=1e-6)
    assert kl1 == pytest.approx(0.1194991, abs=1e-6)
    got = kd_loss(s, t, temperature=1.0)
    assert got.shape == ()
    assert got.item() == pytest.approx((kl0 + kl1) / 2, abs=1e-6)

    # T = 2 at position 0: student still uniform; teacher [0, ln2/2, 0] -> p ∝ (1, √2, 1)
    # KL = Σ p_i ln(3 p_i); the loss is T² = 4 times that.
    z = 2 + math.sqrt(2)
    p = [1 / z, math.sqrt(2) / z, 1 / z]
    kl_soft = sum(pi * math.log(3 * pi) for pi in p)  # 0.014221...
    got2 = kd_loss(s[:, :1], t[:, :1], temperature=2.0)
    assert got2.item() == pytest.approx(4 * kl_soft, abs=1e-6)


def test_kd_loss_t_squared_scaling_and_zero():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(4, 3, 5, 7, generator=g)
    t = torch.randn(4, 3, 5, 7, generator=g)
    # T = 2: 4 × KL of the softened distributions (= kd at T=1 on logits / 2)
    assert torch.allclose(kd_loss(s, t, 2.0), 4 * kd_loss(s / 2, t / 2, 1.0), atol=1e-6)
    # equals F.kl_div with batch-mean over positions
    ref = F.kl_div(
        F.log_softmax(s / 3, -1), F.log_softmax(t / 3, -1), log_target=True, reduction="none"
    )
    assert torch.allclose(kd_loss(s, t, 3.0), 9 * ref.sum(-1).mean(), atol=1e-6)
    # zero when student == teacher; per-module shape
    assert kd_loss(s, s.clone(), 2.0).abs().item() < 1e-6
    pm = kd_loss(s, t, 2.0, per_module=True)
    assert pm.shape == (4,)
    assert torch.allclose(pm.mean(), kd_loss(s, t, 2.0), atol=1e-6)
    assert torch.allclose(pm[1], kd_loss(s[1:2], t[1:2], 2.0), atol=1e-6)


# --------------------------------------------------------------------------- distill_loss

M, P, B, T, V = 3, 2, 2, 4, 5


def _logits(seed: int, *shape: int, grad: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).requires_grad_(grad)


def test_distill_loss_alpha_mix_teacher_and_peers():
    s = _logits(0, M, B, T, V)
    tch = _logits(1, M, B, T, V)
    peers = _logits(2, M, P, B, T, V)
    y = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(3))
    ce = module_cross_entropy(s, y)
    kd_t = kd_loss(s, tch, 2.0, per_module=True)
    kd_p = torch.stack([kd_loss(s, peers[:, p], 2.0, per_module=True) for p in range(P)]).mean(0)

    out = distill_loss(s, y, tch, None, alpha=1.0, temperature=2.0)
    assert out.shape == (M,)
    assert torch.allclose(out, ce)
    assert torch.allclose(distill_loss(s, y, tch, None, alpha=0.0, temperature=2.0), kd_t)
    assert torch.allclose(distill_loss(s, y, None, peers, alpha=0.0, temperature=2.0), kd_p)
    both = distill_loss(s, y, tch, peers, alpha=0.0, temperature=2.0)
    assert torch.allclose(both, (kd_t + kd_p) / 2)
    mixed = distill_loss(s, y, tch, None, alpha=0.3, temperature=2.0)
    assert torch.allclose(mixed, 0.3 * ce + 0.7 * kd_t)
    # no teacher, no peers (or an empty peer axis) -> plain CE; [M, B, T] targets work
    assert torch.allclose(distill_loss(s, y, None, None, alpha=0.3), ce)
    assert torch.allclose(distill_loss(s, y, None, peers[:, :0], alpha=0.3), ce)
    ym = y.expand(M, B, T)
    assert torch.allclose(
        distill_loss(s, ym, tch, peers, 0.4, 2.0), distill_loss(s, y, tch, peers, 0.4, 2.0)
    )


def test_mean_peer_kd_equals_the_pairwise_kls():
    """The pooled form (one mixture matmul) equals the mean of the pairwise KD terms, value and
    gradient, for clusters of unequal size (a module without peers gets 0)."""
    Mp = 5
    s = _logits(10, Mp, B, T, V)
    pool = _logits(11, Mp, B, T, V, grad=False)
    index = torch.tensor([[1, 2], [0, 2], [0, 1], [4, 3], [3, 3]])
    mask = torch.tensor([[1, 1], [1, 1], [1, 1], [1, 0], [0, 0]], dtype=torch.bool)
    w = peer_weights(index, mask, Mp)
    assert w.shape == (Mp, Mp) and torch.allclose(w.sum(1), torch.tensor([1, 1, 1, 1, 0.0]))
    ref = torch.stack(
        [
            sum(
                (
                    kd_loss(s[m : m + 1], pool[index[m, p]][None], 2.0)
                    for p in range(2)
                    if mask[m, p]
                ),
                torch.zeros(()),
            )
            / max(int(mask[m].sum()), 1)
            for m in range(Mp)
        ]
    )
    got = mean_peer_kd(s, pool, w, 2.0)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    (g_ref,) = torch.autograd.grad(ref.sum(), s)
    (g_got,) = torch.autograd.grad(got.sum(), s)
    torch.testing.assert_close(g_got, g_ref, atol=1e-6, rtol=1e-5)
    # through distill_loss: the same as the explicit [M, P, B, T, V] form with a mask
    y = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(12))
    tch = _logits(13, Mp, B, T, V, grad=False)
    explicit = distill_loss(s, y, tch, pool[index], 0.3, 2.0, peer_mask=mask)
    pooled = distill_loss(s, y, tch, pool, 0.3, 2.0, peer_weights=w)
    torch.testing.assert_close(pooled, explicit, atol=1e-5, rtol=1e-5)
    peers_only = distill_loss(s, y, None, pool, 0.0, 2.0, peer_weights=w)
    torch.testing.assert_close(
        peers_only,
        distill_loss(s, y, None, pool[index], 0.0, 2.0, peer_mask=mask),
        atol=1e-5,
        rtol=1e-5,
    )
    assert peers_only[4] == 0  # closed loop, no peer: nothing to learn


def test_gradient_reaches_the_student_only():
    s = _logits(0, M, B, T, V)
    tch = _logits(1, M, B, T, V)
    peers = _logits(2, M, P, B, T, V)
    y = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(3))
    distill_loss(s, y, tch, peers, alpha=0.5, temperature=2.0).sum().backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert tch.grad is None
    assert peers.grad is None


def test_dml_peers_from_the_same_forward_are_detached():
    """Module 0's loss against its cluster mates moves module 0's logits only."""
    C, n = 2, 3
    logits = _logits(4, C, n, B, T, V)
    flat = logits.reshape(C * n, B, T, V)
    peers = peer_logits_from_clusters(logits)
    y = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(5))
    distill_loss(flat, y, None, peers, alpha=0.0, temperature=2.0)[0].backward()
    g = logits.grad.reshape(C * n, -1).abs().sum(1)
    assert g[0] > 0
    assert torch.all(g[1:] == 0)


def test_peer_logits_from_clusters_equals_loop():
    C, n = 3, 4
    logits = _logits(6, C, n, B, T, V, grad=False)
    got = peer_logits_from_clusters(logits)
    assert got.shape == (C * n, n - 1, B, T, V)
    for c in range(C):
        for i in range(n):
            ref = torch.stack([logits[c, j] for j in range(n) if j != i])
            assert torch.equal(got[c * n + i], ref)
    assert peer_logits_from_clusters(logits[:, :1]).shape == (C, 0, B, T, V)
    # router-selected peers: an arbitrary index
    flat = logits.reshape(C * n, B, T, V)
    index = torch.tensor([[1, 5], [0, 0], [11, 3]])
    got = gather_peers(flat, index)
    assert got.shape == (3, 2, B, T, V)
    for m in range(3):
        for p in range(2):
            assert torch.equal(got[m, p], flat[index[m, p]])


# --------------------------------------------------------------------------- EMA teacher

VOCAB, BLOCK = 11, 12
EPS32 = torch.finfo(torch.float32).eps


def _bank(count: int = 3, seed: int = 0, **kw) -> TransformerBank:
    torch.manual_seed(seed)
    cfg = TransformerConfig(count=count, n_layer=1, n_head=2, d_model=16, message_dim=8, **kw)
    return TransformerBank(cfg, VOCAB, BLOCK)


@torch.no_grad()
def _perturb(banks, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for bank in banks:
        for p in bank.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


def test_ema_update_equals_reference_loop():
    banks = [_bank(3, 0), _bank(2, 1, bias=False, tie_weights=False)]
    ema = EMATeacher(banks, EMAConfig(momentum=0.9))
    for step in range(3):
        _perturb(banks, 10 + step)
        before = [[p.clone() for p in t.parameters()] for t in ema.banks]
        m = ema.update(step)
        assert m == 0.9
        for bank, teacher, old in zip(banks, ema.banks, before, strict=True):
            for s, t, t0 in zip(bank.parameters(), teacher.parameters(), old, strict=True):
                ref = t0 + (1 - m) * (s.detach() - t0)
                # lerp may round differently: within one fp32 ulp of the reference
                assert torch.allclose(t, ref, rtol=EPS32, atol=1e-7)
    # the teacher is a separate copy that lags the student
    s0, t0 = next(banks[0].parameters()), next(ema.banks[0].parameters())
    assert s0.data_ptr() != t0.data_ptr() and not torch.equal(s0, t0)


def test_teacher_never_gets_gradients():
    bank = _bank()
    ema = EMATeacher([bank], EMAConfig(momentum=0.5))
    assert all(not p.requires_grad for p in ema.banks[0].parameters())
    assert not ema.banks[0].training
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, VOCAB, (3, 2, BLOCK), generator=g)
    y = torch.randint(0, VOCAB, (2, BLOCK), generator=g)
    t_logits = ema.logits(0, x)
    assert not t_logits.requires_grad
    loss = distill_loss(bank(x).logits, y, t_logits, None, 0.5, 2.0).sum()
    loss.backward()
    assert bank.wte.grad is not None and bank.wte.grad.abs().sum() > 0
    assert all(p.grad is None for p in ema.banks[0].parameters())
    ema.update(0)  # still no grads after an update
    assert all(p.grad is None for p in ema.banks[0].parameters())


def test_momentum_schedules():
    assert ema_momentum(0, EMAConfig(momentum=0.9)) == 0.9
    assert ema_momentum(10**6, EMAConfig(momentum=0.9)) == 0.9

    w = EMAConfig(momentum=0.99, schedule="warmup", warmup_gamma=1.0, warmup_power=0.75)
    assert ema_momentum(0, w) == 0.0  # 1 - 1^-p
    assert ema_momentum(10, w) == pytest.approx(1 - 11**-0.75)  # 0.8344...
    assert ema_momentum(10, w) == pytest.approx(0.834, abs=1e-3)
    assert ema_momentum(1000, w) == 0.99  # 1 - 1001^-0.75 = 0.9944 > 0.99: capped
    w2 = EMAConfig(momentum=0.999, schedule="warmup", warmup_gamma=10.0, warmup_power=2 / 3)
    assert ema_momentum(100, w2) == pytest.approx(1 - (1 + 100 / 10) ** (-2 / 3))

    c = EMAConfig(momentum=0.9, schedule="cosine", total_steps=100)
    assert ema_momentum(0, c) == pytest.approx(0.9)
    assert ema_momentum(50, c) == pytest.approx(1 - 0.1 * (math.cos(math.pi / 2) + 1) / 2)
    assert ema_momentum(50, c) == pytest.approx(0.95)
    assert ema_momentum(100, c) == 1.0  # exactly
    assert ema_momentum(250, c) == 1.0
    # total from the run when the config leaves it None; missing -> error
    c2 = EMAConfig(momentum=0.9, schedule="cosine")
    assert ema_momentum(100, c2, total_steps=100) == 1.0
    with pytest.raises(ValueError, match="total_steps"):
        ema_momentum(5, c2)
    ema = EMATeacher([_bank()], c2, total_steps=40)
    assert ema.momentum(20) == pytest.approx(0.95)
    # momentum 1 at the end: the teacher stops moving
    bank = _bank()
    ema = EMATeacher([bank], EMAConfig(momentum=0.9, schedule="cosine", total_steps=4))
    _perturb([bank], 3)
    before = [p.clone() for p in ema.banks[0].parameters()]
    assert ema.update(4) == 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, ema.banks[0].parameters(), strict=True))


def test_select_rows_and_state_dict():
    bank = _bank(3)
    ema = EMATeacher([bank])
    _perturb(ema.banks, 7)
    old = {n: p.clone() for n, p in ema.banks[0].named_parameters()}
    rows = torch.tensor([2, 0, 0])
    ema.select_rows(0, rows)
    for n, p in ema.banks[0].named_parameters():
        assert torch.equal(p, old[n][rows])
        assert not p.requires_grad
    state = ema.state_dict()
    fresh = EMATeacher([_bank(3, seed=5)])
    fresh.load_state_dict(state)
    for a, b in zip(fresh.banks[0].parameters(), ema.banks[0].parameters(), strict=True):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------- Warmup-Distill


def _student_samples(bank, tokens, prompt, temperature, seed):
    """Reference: the student's own autoregressive samples with the same generator stream."""
    g = torch.Generator().manual_seed(seed)
    seq = tokens.clone()
    Mm, Bb, Tt = tokens.shape
    with torch.no_grad():
        for t in range(prompt, Tt):
            logits = bank(seq[:, :, :t]).logits[:, :, -1]
            probs = F.softmax(logits / temperature, -1).reshape(Mm * Bb, -1)
            seq[:, :, t] = torch.multinomial(probs, 1, generator=g).view(Mm, Bb)
    return seq


def _correct(student, teacher, tokens, threshold, seed=0, prompt=4, temperature=1.0):
    g = torch.Generator().manual_seed(seed)
    return warmup_correct(student, teacher, tokens, prompt, threshold, temperature, g)


def test_warmup_correction():
    student = _bank(3, 0)
    teacher = _bank(3, 1)
    tokens = torch.randint(0, VOCAB, (3, 2, BLOCK), generator=torch.Generator().manual_seed(9))
    prompt = 4

    corrected, frac = _correct(student, teacher, tokens, 0.1, prompt=prompt)
    assert corrected.shape == (3, 2, BLOCK) and corrected.dtype == torch.long
    assert frac.shape == (3,)
    assert torch.equal(corrected[:, :, :prompt], tokens[:, :, :prompt])
    assert 0 < frac.mean() < 1
    # reproducible with the same seed
    again, frac2 = _correct(student, teacher, tokens, 0.1, prompt=prompt)
    assert torch.equal(corrected, again) and torch.equal(frac, frac2)

    # threshold 0: nothing replaced, the result is the student's own samples
    zero, f0 = _correct(student, teacher, tokens, 0.0, prompt=prompt)
    assert torch.equal(f0, torch.zeros(3))
    assert torch.equal(zero, _student_samples(student, tokens, prompt, 1.0, 0))
    # threshold 1: every generated token is replaced
    _, f1 = _correct(student, teacher, tokens, 1.0, prompt=prompt)
    assert torch.equal(f1, torch.ones(3))
    # same student samples under the same seed: replaced sets nest as the threshold grows
    _, fa = _correct(student, teacher, tokens, 0.05, prompt=prompt)
    _, fb = _correct(student, teacher, tokens, 0.2, prompt=prompt)
    assert torch.all(fa <= frac) and torch.all(frac <= fb)

    # training flags restored; prompt >= T leaves the tokens alone
    student.train()
    teacher.eval()
    _correct(student, teacher, tokens, 0.1, prompt=prompt)
    assert student.training and not teacher.training
    same, fz = _correct(student, teacher, tokens, 0.5, prompt=BLOCK)
    assert torch.equal(same, tokens) and torch.equal(fz, torch.zeros(3))


def test_warmup_correction_block_plus_one_and_subset():
    """T = block_size + 1 works (the last token is never fed); idx picks modules."""
    student = _bank(3, 0)
    ema = EMATeacher([student])
    tokens = torch.randint(0, VOCAB, (2, 2, BLOCK + 1), generator=torch.Generator().manual_seed(1))
    idx = torch.tensor([2, 0])
    g = torch.Generator().manual_seed(0)
    out, frac = warmup_correct(student, ema.banks[0], tokens, 3, 0.1, 1.0, g, idx=idx)
    assert out.shape == (2, 2, BLOCK + 1) and frac.shape == (2,)


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "data,field",
    [
        ({"temperature": 0}, "temperature"),
        ({"alpha": 1.5}, "alpha"),
        ({"every": 0}, "every"),
        ({"teacher": "oracle"}, "teacher"),
        ({"ema": {"momentum": 1.0}}, "momentum"),
        ({"ema": {"schedule": "linear"}}, "schedule"),
        ({"ema": {"total_steps": 0}}, "total_steps"),
        ({"ema": {"warmup_gamma": 0}}, "warmup_gamma"),
        ({"warmup_correction": {"threshold": 1.0}}, "threshold"),
        ({"warmup_correction": {"prompt": 0}}, "prompt"),
        ({"tempreature": 2.0}, "tempreature"),
    ],
)
def test_config_rejects_bad_values(data, field):
    with pytest.raises(ValidationError) as e:
        DistillConfig.model_validate(data)
    assert field in [str(p) for err in e.value.errors() for p in err["loc"]]


def test_config_model_level_check_names_field():
    with pytest.raises(ValidationError, match=r"warmup_correction\.enabled"):
        DistillConfig(teacher="peers", warmup_correction={"enabled": True})
    cfg = DistillConfig(enabled=True, every=3)
    assert [cfg.due(s) for s in range(4)] == [True, False, False, True]
    assert not DistillConfig().due(0)


def test_rows_leave_padding_sequences_out():
    """With rows [M, B] every term averages over the chosen sequences only: equal to the loss
    on those sequences alone; [M, P] peers cannot take rows."""
    s = _logits(20, M, B + 1, T, V)
    tch = _logits(21, M, B + 1, T, V, grad=False)
    y = torch.randint(0, V, (M, B + 1, T), generator=torch.Generator().manual_seed(22))
    rows = torch.ones(M, B + 1, dtype=torch.bool)
    rows[:, -1] = False  # the last sequence is padding for every module
    w = peer_weights(torch.tensor([[1, 2], [0, 2], [0, 1]]), None, M)
    got = distill_loss(s, y, tch, s.detach(), 0.4, 2.0, peer_weights=w, rows=rows)
    keep = slice(0, B)
    ref = distill_loss(s[:, keep], y[:, keep], tch[:, keep], s.detach()[:, keep], 0.4, 2.0,
                       peer_weights=w)  # fmt: skip
    torch.testing.assert_close(got, ref)
    with pytest.raises(ValueError, match="rows need pooled peers"):
        distill_loss(s, y, tch, s.detach()[:, None], 0.4, 2.0, rows=rows)
