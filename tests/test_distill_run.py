"""Distillation inside a run: the EMA teacher follows, the closed loop ignores labels, resume."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

import brainnet
from brainnet.engine import Simulation
from brainnet.learning import distill_loss
from brainnet.modules.bank import module_cross_entropy

BASE = {
    "train.steps": 6, "train.eval_every": 6, "train.eval_batches": 1, "train.batch_size": 8,
    "log.every": 2, "corpus.block_size": 32, "corpus.train_sequences": 300,
    "corpus.val_sequences": 50, "modules.0.d_model": 16, "modules.0.n_layer": 1,
    "modules.0.count": 3, "device": "cpu",
}  # fmt: skip


def consolidate(s: Simulation, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The consolidation of ``batch`` as a training step would run it (no optimiser step)."""
    return s.consolidation.losses(batch, s.forward(batch), s.step)


def sim(tmp_path, name="ema_hard_loop", **extra) -> Simulation:
    return Simulation(brainnet.load_scenario(name, {**BASE, **extra}), out_dir=tmp_path)


def test_ema_teacher_follows_the_student_by_lerp_and_gets_no_gradient(tmp_path):
    s = sim(tmp_path)
    teacher = [p.clone() for p in s.teacher.banks[0].parameters()]
    s.train_step()
    m = s.scenario.distill.ema.momentum
    for t_old, t_new, p in zip(teacher, s.teacher.banks[0].parameters(),
                               s.banks[0].parameters(), strict=True):  # fmt: skip
        torch.testing.assert_close(t_new, t_old + (1 - m) * (p.detach() - t_old))
        assert t_new.grad is None and not t_new.requires_grad
    assert "distill_loss" in s.train_step()


def test_closed_loop_learns_nothing_from_labels(tmp_path):
    s = sim(tmp_path, "self_distill_closed")
    batch = s.corpus.batch("train", 8, torch.Generator().manual_seed(0))
    kd, _ = consolidate(s, batch)
    shuffled = brainnet.data.Batch(batch.x, batch.y.roll(1, dims=1), batch.domain)
    kd2, ce2 = consolidate(s, shuffled)
    torch.testing.assert_close(kd, kd2)  # the labels do not enter the loss
    assert not torch.allclose(ce2, consolidate(s, batch)[1])  # (but the logged CE sees them)


def test_peers_are_cluster_mates(tmp_path):
    s = sim(tmp_path, "quickstart", **{"distill": {"enabled": True, "teacher": "peers"},
                                       "modules.0.count": 16})  # fmt: skip
    w = s.consolidation.mates(0)  # [16, 16]: 1/3 on each of the 3 mates in a cluster of 4
    assert w.shape == (16, 16)
    third = 1 / 3
    assert w[0].tolist() == pytest.approx([0, third, third, third] + [0] * 12)
    assert w[5].tolist() == pytest.approx([0] * 4 + [third, 0, third, third] + [0] * 8)
    out = s.train_step()
    assert torch.isfinite(out["distill_loss"]).all()


def test_resume_with_a_teacher_is_exact(tmp_path):
    full = sim(tmp_path / "a")
    full.run(steps=3)
    saved = tmp_path / "at3.pt"
    shutil.copy(full.run_dir / "checkpoint.pt", saved)
    full.run()
    resumed = Simulation.resume(saved, out_dir=tmp_path / "b")
    resumed.run()
    for p, q in zip(full.teacher.banks[0].parameters(), resumed.teacher.banks[0].parameters(),
                    strict=True):  # fmt: skip
        assert torch.equal(p, q)


def test_warmup_correction_distils_on_teacher_corrected_samples(tmp_path):
    wc = {"enabled": True, "prompt": 4, "threshold": 0.2, "temperature": 1.0}
    s = sim(tmp_path, **{"distill.warmup_correction": wc, "corpus.block_size": 12})
    s.run(steps=2)  # the EMA teacher has moved away from the student
    batch = s.corpus.batch("train", 4, torch.Generator().manual_seed(5))
    kd, ce = consolidate(s, batch)
    replaced = s.consolidation.replaced()["warmup_replaced"]
    # reference: the same correction by hand, then α·CE(real batch) + (1−α)·T²·KL(corrected)
    cfg = s.scenario.distill
    bank, teacher = s.banks[0], s.teacher.banks[0]
    tokens = torch.cat([batch.x, batch.y[:, -1:]], 1).expand(3, -1, -1).contiguous()
    gen = torch.Generator().manual_seed(s.scenario.seed + 11 * s.step)
    seq, frac = brainnet.learning.warmup_correct(bank, teacher, tokens, 4, 0.2, 1.0, gen)
    with torch.no_grad():
        t = teacher(seq[:, :, :-1]).logits
    ref_kd = brainnet.learning.kd_loss(bank(seq[:, :, :-1]).logits, t, cfg.temperature, True)
    ref = cfg.alpha * ce + (1 - cfg.alpha) * ref_kd
    torch.testing.assert_close(kd, ref)
    torch.testing.assert_close(replaced, frac)
    assert (seq[:, :, :4] == tokens[:, :, :4]).all() and 0 <= float(frac.min()) <= 1  # prompt kept
    out = s.train_step()
    assert out["warmup_replaced"].shape == (3,) and torch.isfinite(out["distill_loss"]).all()


def test_society_consolidation_reuses_the_first_pass_on_routed_rows(tmp_path):
    """In a routed society the first wave is every module alone: the consolidation distils those
    logits on each module's routed sequences (padding rows left out), and equals distill_loss on
    the standalone modules run on exactly those sequences, with the EMA teacher's logits on them
    and the cluster mates as peers. (The brain's serial links make its first wave one cluster:
    it distils on a pass of its own.)"""
    s = sim(tmp_path, "brain", **{"modules.0.count": 12, "society.clusters": 4,
                                   "society.topology": "routing",
                                   "distill": {"enabled": True, "teacher": "both", "alpha": 0.3},
                                   "society.arousal.enabled": False})  # fmt: skip
    s.teacher.update(0)  # the teacher drifts from the student a little: a non-zero KL
    with torch.no_grad():
        for p in s.teacher.banks[0].parameters():
            p.add_(0.01 * torch.randn_like(p))
    batch = s.corpus.batch("train", 8, torch.Generator().manual_seed(0))
    out = s.forward(batch)
    alone = s.society.alone(out, batch, 0)
    assert alone is not None and alone.rows is not None  # the first wave: every module alone
    logits, seq_index = out.first_logits, out.seq_index
    kd, ce = s.consolidation.losses(batch, out, s.step)
    cfg, bank, B = s.scenario.distill, s.banks[0], batch.x.shape[0]
    clusters = s.society.topology.clusters()
    for c, members in enumerate(clusters):
        rows = seq_index[c][seq_index[c] < B]  # the sequences routed to cluster c
        if rows.numel() == 0:
            assert torch.all(kd[members] == 0)
            continue
        x, y = batch.x[rows], batch.y[rows]
        alone = {m: bank.export(m).eval()(x)[0] for m in members}  # standalone TinyLMs
        for i, m in enumerate(members):  # the first pass is each module alone
            real = seq_index[c] < B
            torch.testing.assert_close(logits[c, i][real], alone[m], atol=1e-4, rtol=1e-4)
        with torch.no_grad():
            teacher = s.teacher.logits(0, x.expand(bank.n_modules, -1, -1))
        for m in members:
            peers = torch.stack([alone[j] for j in members if j != m])[None]
            ref = distill_loss(alone[m][None], y, teacher[m][None], peers, 0.3, cfg.temperature)
            torch.testing.assert_close(kd[m], ref[0], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(ce[m], module_cross_entropy(alone[m][None], y)[0],
                                       atol=1e-4, rtol=1e-4)  # fmt: skip


def test_a_chain_consolidates_in_its_own_pass(tmp_path):
    """In a pipeline the later clusters first fire with their inputs' messages: no module's
    first prediction is its own alone, so consolidation runs its own pass (and training runs)."""
    s = sim(
        tmp_path,
        "pipeline",
        **{"modules.0.count": 8, "distill": {"enabled": True, "teacher": "both"}},
    )
    batch = s.corpus.batch("train", 8, torch.Generator().manual_seed(0))
    out = s.forward(batch)
    assert out.first_logits is None and s.society.alone(out, batch, 0) is None
    assert torch.isfinite(s.train_step()["train_loss"])


def test_compiled_society_trains_like_eager(tmp_path):
    """compile: true on the CPU for the whole society step (router, blackboard, the memory
    attention's autograd function, the consolidation that reuses the first wave): it trains,
    and its losses follow the eager run's (inductor's rounding may flip a near-tied routing
    choice, hence the loose tolerance)."""
    over = {"modules.0.count": 4, "society.clusters": 2, "society.arousal.enabled": False,
            "society.arousal.k_range": None,
            "distill": {"enabled": True, "teacher": "both", "every": 2}}  # fmt: skip
    losses = []
    for compiled in (False, True):
        s = sim(tmp_path / str(compiled), "brain", **over, compile=compiled)
        losses.append([float(s.train_step()["train_loss"]) for _ in range(2)])  # plain, distil
    assert all(math.isfinite(x) for x in losses[1])
    assert losses[1] == pytest.approx(losses[0], abs=1e-2)
