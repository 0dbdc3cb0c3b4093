"""train.answer_weight: answer targets weigh more in the training loss (prompts are noise)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

import brainnet
from brainnet.data import build_corpus
from brainnet.modules.bank import module_cross_entropy
from brainnet.society import Knobs, Society

T, B = 24, 8


def binding(topology: str | None, **train) -> brainnet.Scenario:
    sc = {
        "corpus": {"kind": "binding", "block_size": T, "train_sequences": 64, "val_sequences": 16},
        "modules": [{"type": "transformer", "count": 4, "n_layer": 1, "n_head": 2, "d_model": 16,
                     "message_dim": 8}],
        "train": {"steps": 4, "batch_size": B, "eval_every": 4, "eval_batches": 1,
                  "warmup_steps": 1, **train},
        "log": {"every": 2},
    }  # fmt: skip
    if topology is not None:
        sc["society"] = {"topology": topology, "clusters": 2}
    return brainnet.load_scenario(sc)


def batch_of(sc: brainnet.Scenario):
    corpus = build_corpus(sc.corpus, 0)
    return corpus, corpus.batch("train", B, torch.Generator().manual_seed(0))


def test_weights_have_mean_one_and_the_asked_ratio():
    _, b = batch_of(binding("all_to_all"))
    w = b.weighted(5.0).weight  # [B, T]
    assert w.shape == (B, T) and w.mean().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(w[b.answer] / w[~b.answer].mean(), torch.tensor(5.0))
    assert b.weighted(1.0) is b and b.weighted(1.0).weight is None


def test_weighted_module_cross_entropy_is_the_weighted_mean():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(3, B, T, 11, generator=g), torch.randint(11, (B, T), generator=g)
    w = torch.rand(B, T, generator=g) + 0.5
    got = module_cross_entropy(logits, y, weight=w)  # [3]
    for m in range(3):
        ce = F.cross_entropy(logits[m].flatten(0, 1), y.flatten(), reduction="none")
        assert got[m].item() == pytest.approx((ce * w.flatten()).mean().item(), rel=1e-5)


@pytest.mark.parametrize("topology", ["all_to_all", "routing", "brain"])
def test_society_loss_on_answer_only_weights_is_its_answer_loss(topology):
    """Weights that sit on the answer targets alone make the society's task loss its mean
    answer-token loss (what answer_stats sums); all-ones weights change nothing."""
    sc = binding(topology)
    corpus, b = batch_of(sc)
    torch.manual_seed(0)
    soc = Society(sc, 256, T, len(corpus.domains), corpus.n_fields, corpus.blank_token).eval()
    knobs = Knobs.fixed(sc.society)
    with torch.no_grad():
        plain = soc(b, knobs)
        ones = soc(dataclasses.replace(b, weight=torch.ones(B, T)), knobs)
        a = b.answer.float()
        only = soc(dataclasses.replace(b, weight=a / a.mean()), knobs)
    assert ones.task_loss.item() == pytest.approx(plain.task_loss.item(), rel=1e-6)
    answer_mean = plain.stats["answer_loss_sum"].sum() / plain.stats["answer_count"].sum()
    assert only.task_loss.item() == pytest.approx(answer_mean.item(), rel=1e-5)
    assert abs(only.task_loss.item() - plain.task_loss.item()) > 1e-3  # (near ln 256 at init)


def test_independent_modules_use_the_weights():
    sc = binding(None)
    corpus, b = batch_of(sc)
    soc = Society(sc, 256, T, len(corpus.domains), corpus.n_fields, corpus.blank_token).eval()
    with torch.no_grad():
        plain = soc(b, Knobs.fixed(soc.cfg))
        heavy = soc(b.weighted(9.0), Knobs.fixed(soc.cfg))
    z = plain.first_logits[0]  # [M, B, T, V]
    want = module_cross_entropy(z, b.y, weight=b.weighted(9.0).weight)
    assert torch.allclose(heavy.module_terms, want, rtol=1e-5)
    assert not torch.allclose(heavy.module_terms, plain.module_terms, rtol=1e-5)


def test_the_weight_changes_training_and_leaves_validation_plain(tmp_path):
    """Same seed, w = 1 and w = 8: the validation of the untrained society is the same
    (validation is never weighted) and the first train loss differs (the objective)."""
    sims = [brainnet.Simulation(binding("brain", answer_weight=w), out_dir=tmp_path / str(w))
            for w in (1.0, 8.0)]  # fmt: skip
    vals = [s.evaluate()[0].item() for s in sims]
    assert vals[0] == vals[1]
    losses = [float(s.train_step()["train_loss"]) for s in sims]
    assert losses[0] != losses[1]


def test_a_corpus_without_answers_refuses_the_weight():
    with pytest.raises(brainnet.ScenarioError) as e:
        brainnet.load_scenario("nanogpt_baby", {"train.answer_weight": 4})
    msg = str(e.value)
    assert "train.answer_weight = 4.0" in msg and "'text' has no answer tokens" in msg
    assert "allowed: 1, or a corpus with answers (binding, tasks)" in msg
    with pytest.raises(brainnet.ScenarioError, match="train.answer_weight"):
        brainnet.load_scenario("binding", {"train.answer_weight": 0.5})  # ge 1
    with pytest.raises(brainnet.ScenarioError, match="train.answer_weight"):
        brainnet.load_scenario("binding", {"train.answer_weight": float("inf")})
    with pytest.raises(brainnet.ScenarioError) as e:
        brainnet.load_scenario("binding", {"distill.enabled": True})  # binding.yaml weighs 8
    assert "cannot go with distill.enabled" in str(e.value)
