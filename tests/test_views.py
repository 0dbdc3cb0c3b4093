"""Sensory views: a module's input is its view only; other fields reach it through messages only."""

from __future__ import annotations

import math

import pytest
import torch

import brainnet
from brainnet.data import Batch, build_corpus
from brainnet.data.binding import FIELDS, FLOORS, LAYOUTS, SUM_MOD, BindingCorpus, lookup_floor
from brainnet.society import Knobs, Society

T, B = 24, 8


def society(topology: str, per: str = "cluster", clusters: int = 2, **soc) -> tuple[Society, Batch]:
    """A small society with views: left field to even clusters / modules, right to odd."""
    torch.manual_seed(0)
    sc = brainnet.load_scenario(
        {
            "corpus": {"kind": "binding", "block_size": T, "train_sequences": 64,
                       "val_sequences": 16},
            "modules": [{"type": "transformer", "count": 4, "n_layer": 1, "n_head": 2,
                         "d_model": 16, "message_dim": 8}],
            "society": {"topology": topology, "clusters": clusters, **soc},
            "views": {"per": per, "fields": [[1], [2]]},
        }
    )  # fmt: skip
    corpus = build_corpus(sc.corpus, 0)
    soc_ = Society(sc, 256, T, len(corpus.domains), corpus.n_fields, corpus.blank_token).eval()
    return soc_, corpus.batch("train", B, torch.Generator().manual_seed(0))


def change_right_field(b: Batch) -> Batch:
    """The same batch with every right-field token replaced by another digit / letter."""
    x = torch.where(b.field == 2, (b.x - 48 + 3) % 10 + 48, b.x)  # digits stay digits
    return Batch(x, b.y, b.domain, b.field, b.answer)


def left_modules(soc: Society) -> list[int]:
    return [m for m in range(soc.n_modules) if int(soc.views.view_of[m]) == 0]


def test_a_view_blanks_every_field_it_does_not_receive():
    soc, b = society("ensemble")
    xv = soc.views.tokens(b.x, b.field)  # [V, B+1, T]
    assert xv.shape == (2, B + 1, T)
    left, right = xv[0, :B], xv[1, :B]
    assert torch.equal(left[b.field != 2], b.x[b.field != 2])
    assert (left[b.field == 2] == 0).all() and (right[b.field == 1] == 0).all()
    assert torch.equal(right[b.field != 1], b.x[b.field != 1])
    # clusters 0 and 1: modules 0,1 see left, 2,3 right (per cluster)
    assert soc.views.view_of.tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize("topology", ["ensemble", "independent"])
def test_without_messages_outputs_ignore_tokens_outside_the_view(topology):
    alone = topology == "independent"  # one cluster: views go to modules one by one
    soc, b = society(topology, per="module" if alone else "cluster", clusters=1 if alone else 2)
    knobs = Knobs(1, 1, 1.0, 0.5)
    with torch.no_grad():
        before, after = soc(b, knobs), soc(change_right_field(b), knobs)
    if topology == "independent":
        z0, z1 = torch.cat(before.first_logits), torch.cat(after.first_logits)  # [N, B, T, V]
        left = [m for m in range(4) if int(soc.views.view_of[m]) == 0]
        right = [m for m in range(4) if m not in left]
    else:
        z0, z1 = before.logits.flatten(0, 1), after.logits.flatten(0, 1)  # [C*n, B, T, V]
        left, right = [0, 1], [2, 3]
    assert torch.equal(z0[left], z1[left])  # bit-identical
    assert not torch.equal(z0[right], z1[right])


def test_with_messages_other_views_arrive_through_the_message_path_only():
    """all_to_all with per-module views: left modules' memory-free first pass is
    bit-identical when the right field changes; their final prediction (after reading mates'
    messages) changes; and with the message path cut (rounds = 0) it is identical again."""
    soc, b = society("all_to_all", per="module", clusters=1)
    left = left_modules(soc)
    assert left == [0, 2]
    with torch.no_grad():
        one, one_c = (
            soc(b, Knobs(1, 1, 1.0, 0.5)),
            soc(change_right_field(b), Knobs(1, 1, 1.0, 0.5)),
        )
        zero, zero_c = (
            soc(b, Knobs(1, 0, 1.0, 0.5)),
            soc(change_right_field(b), Knobs(1, 0, 1.0, 0.5)),
        )
    first, first_c = one.first_logits[0], one_c.first_logits[0]  # [n, B, T, V]
    assert torch.equal(first[left], first_c[left])
    final, final_c = one.logits[0], one_c.logits[0]
    assert not torch.equal(final[left], final_c[left])
    # causal: the change reaches a left module at a position only after the first changed token
    changed = (change_right_field(b).x != b.x).any(0)  # [T]
    t0 = int(changed.nonzero()[0])
    assert torch.equal(final[left][:, :, :t0], final_c[left][:, :, :t0])
    assert torch.equal(zero.logits[0][left], zero_c.logits[0][left])


def test_the_router_reads_the_shared_field_only():
    soc, b = society("routing", clusters=2, router={"top_k": 1, "context": T})
    with torch.no_grad():
        r0 = soc.router(soc.views.shared(b.x, b.field), 1, 1.0)
        c = change_right_field(b)
        r1 = soc.router(soc.views.shared(c.x, c.field), 1, 1.0)
    assert torch.equal(r0.logits, r1.logits)


def test_views_need_a_corpus_with_fields_and_a_fixed_layout():
    base = {"modules": [{"type": "transformer", "count": 4}],
            "society": {"topology": "ensemble", "clusters": 2},
            "views": {"fields": [[1], [2]]}}  # fmt: skip
    with pytest.raises(brainnet.ScenarioError, match="corpus 'tasks' has no fields"):
        brainnet.load_scenario(base)
    with pytest.raises(brainnet.ScenarioError, match=r"views.fields.1.0 = 3: .*fields 1..2"):
        brainnet.load_scenario({**base, "corpus": {"kind": "binding"},
                                "views": {"fields": [[1], [3]]}})  # fmt: skip


# --------------------------------------------------------------------------- the corpus


def test_binding_instances_have_fixed_layouts_and_right_answers():
    c = BindingCorpus(BindingCorpus.Config(kind="binding", block_size=63, train_sequences=30,
                                           val_sequences=9), seed=3)  # fmt: skip
    for d, name in enumerate(c.domains):
        rows = (c.seq_domains["train"] == d).nonzero().flatten()
        text = c.decode(c.seqs["train"][rows[0]])
        inst = text.split(";")[0] + ";"
        assert len(inst) == len(LAYOUTS[name])
        fields = c.fields["train"][rows[0], : len(inst)].tolist()
        assert fields == [int(ch) for ch in LAYOUTS[name]]
        for inst in text.split(";")[:-1]:
            prompt, ans = inst.split("=")
            if name == "sum":
                assert int(ans) == (int(prompt[2]) + int(prompt[4])) % SUM_MOD
            elif name == "add":
                assert int(ans) == int(prompt[2]) + int(prompt[4]) and len(ans) == 1
            elif name == "lookup":
                pairs, q = prompt[2:].split("?")
                assert ans == dict(zip(pairs[::2], pairs[1::2], strict=True))[q]
            elif name == "pick":
                digits, which = prompt[2:].split("|")
                assert digits[0] != digits[1] and ans == digits[int(which)]
            else:
                noun, verb = prompt[2:].split("|")
                assert ans == ("y" if (noun[-1] == "s") == (verb[-1] == ".") else "n")
    assert FIELDS == ("shared", "left", "right")
    assert c.domains == ["sum", "lookup", "agree", "add", "pick"]


def test_the_floors_are_the_best_single_view_predictors():
    """ln 5 and ln 2 by symmetry; lookup's floor against a direct sum, and against the
    empirical loss of the left view's Bayes predictor (value shares among the 4 keys)."""
    assert FLOORS["sum"] == pytest.approx(math.log(SUM_MOD)) and SUM_MOD == 5
    assert FLOORS["add"] == pytest.approx(math.log(5))  # a + b given a: b's 5 values
    assert FLOORS["agree"] == pytest.approx(math.log(2))
    assert FLOORS["pick"] == pytest.approx(math.log(2))  # one of two different digits
    direct = 0.729 * math.log(4) + 0.243 * math.log(2) + 0.027 * math.log(4 / 3)
    assert lookup_floor() == pytest.approx(direct, abs=1e-12)
    import random

    from brainnet.data.binding import gen_lookup

    rng, losses = random.Random(0), []
    for _ in range(20000):
        inst = gen_lookup(rng)
        pairs, ans = inst[2:10], inst[-2]
        losses.append(-math.log(pairs[1::2].count(ans) / 4))
    assert sum(losses) / len(losses) == pytest.approx(lookup_floor(), abs=0.02)


def test_answer_tokens_are_the_targets_after_the_equals_sign():
    c = BindingCorpus(BindingCorpus.Config(kind="binding", block_size=32), seed=0)
    b = c.batch("val", 4, torch.Generator().manual_seed(1))
    assert (b.x[b.answer] == ord("=")).all()  # the input before an answer is '='
    # every '=' whose answer is inside the block is marked
    assert b.answer.sum() == (b.x == ord("=")).sum()
