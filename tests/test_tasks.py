"""The seeded byte-level multi-domain task corpus (corpus kind "tasks")."""

from __future__ import annotations

import re
from collections import Counter

import pydantic
import pytest
import torch

from brainnet.config import ScenarioError, load_scenario
from brainnet.data.tasks import (
    ALL_DOMAINS,
    ARITH_MOD,
    GRAMMAR_WORDS,
    TAGS,
    TaskCorpus,
    split_of,
)

SEVEN = ["copy", "reverse", "sort", "arith", "brackets", "recall", "grammar"]


@pytest.fixture(scope="module")
def corpus() -> TaskCorpus:
    return TaskCorpus.build(TaskCorpus.Config(), seed=0)


def instances(c: TaskCorpus, split: str) -> list[tuple[str, str]]:
    """(domain, complete instance text incl. ';') for every sequence of a pool.

    Sequences start at an instance boundary, so only the last (cut) piece is dropped.
    """
    out = []
    for row, d in zip(c.seqs[split], c.seq_domains[split].tolist(), strict=True):
        parts = c.decode(row).split(";")[:-1]
        out.extend((c.domains[d], p + ";") for p in parts)
    return out


# --------------------------------------------------------------------------- shapes and batches


def test_defaults_and_vocab(corpus: TaskCorpus) -> None:
    assert ALL_DOMAINS == SEVEN
    assert corpus.domains == SEVEN
    assert corpus.vocab_size == 256 and corpus.block_size == 64
    assert corpus.vocab() == {"kind": "byte", "vocab_size": 256, "domains": SEVEN}
    assert corpus.seqs["train"].shape == (20000, 65) and corpus.seqs["train"].dtype == torch.uint8
    assert corpus.seqs["val"].shape == (1000, 65) and corpus.seqs["val"].dtype == torch.uint8
    assert corpus.seq_domains["train"].dtype == torch.long
    assert corpus.decode([104, 105, 200]) == "hi\ufffd"
    assert corpus.decode(torch.tensor([99, 58])) == "c:"


@pytest.mark.parametrize("split", ["train", "val"])
def test_batch(corpus: TaskCorpus, split: str) -> None:
    b = corpus.batch(split, 512, torch.Generator().manual_seed(0))
    assert b.x.shape == b.y.shape == (512, 64)
    assert b.x.dtype == b.y.dtype == b.domain.dtype == torch.long
    assert b.domain.shape == (512,)
    assert torch.equal(b.y[:, :-1], b.x[:, 1:])
    assert 0 <= b.x.min() and b.x.max() < 128  # ASCII
    assert 0 <= b.domain.min() and b.domain.max() < len(SEVEN)
    assert set(b.domain.tolist()) == set(range(len(SEVEN)))
    # a seeded generator gives the same batch again
    b2 = corpus.batch(split, 512, torch.Generator().manual_seed(0))
    assert torch.equal(b.x, b2.x) and torch.equal(b.domain, b2.domain)
    # each row starts with the tag of its domain
    for row, d in zip(b.x[:64], b.domain[:64].tolist(), strict=True):
        assert corpus.decode(row[:2]) == TAGS[SEVEN[d]]


def test_domains_balanced(corpus: TaskCorpus) -> None:
    for split in ("train", "val"):
        counts = Counter(corpus.seq_domains[split].tolist())
        assert set(counts) == set(range(7))
        assert max(counts.values()) - min(counts.values()) <= 1


def test_instances_carry_their_domain_tag(corpus: TaskCorpus) -> None:
    for split in ("train", "val"):
        for row, d in zip(corpus.seqs[split], corpus.seq_domains[split].tolist(), strict=True):
            text = corpus.decode(row)
            tag = TAGS[corpus.domains[d]]
            assert text.startswith(tag)
            first = text.split(";")[0]
            assert first.count(":") == 1  # the first instance is complete, of one domain
            # every instance in the row (also the cut last one) is of that domain
            assert all(p.startswith(tag) or tag.startswith(p) for p in text.split(";") if p)


def test_domain_subset_order_and_small_block() -> None:
    cfg = TaskCorpus.Config(
        domains=["grammar", "arith"], block_size=8, train_sequences=40, val_sequences=10
    )
    c = TaskCorpus.build(cfg, seed=3)
    assert c.domains == ["grammar", "arith"]
    assert c.seqs["train"].shape == (40, 9) and c.seqs["val"].shape == (10, 9)
    for row, d in zip(c.seqs["train"], c.seq_domains["train"].tolist(), strict=True):
        assert c.decode(row).startswith("g:" if d == 0 else "a:")
    b = c.batch("train", 16, torch.Generator().manual_seed(1))
    assert b.x.shape == (16, 8)


# --------------------------------------------------------------------------- seeds and splits


def test_determinism() -> None:
    cfg = TaskCorpus.Config(train_sequences=700, val_sequences=70)
    a, b, other = (TaskCorpus.build(cfg, s) for s in (5, 5, 6))
    for split in ("train", "val"):
        assert torch.equal(a.seqs[split], b.seqs[split])
        assert torch.equal(a.seq_domains[split], b.seq_domains[split])
        assert not torch.equal(a.seqs[split], other.seqs[split])


def test_global_rng_untouched() -> None:
    import random

    state = random.getstate()
    torch_state = torch.random.get_rng_state()
    TaskCorpus.build(TaskCorpus.Config(train_sequences=70, val_sequences=7), seed=1)
    assert random.getstate() == state
    assert torch.equal(torch.random.get_rng_state(), torch_state)


def test_train_val_disjoint(corpus: TaskCorpus) -> None:
    train = {t for _, t in instances(corpus, "train")}
    val = {t for _, t in instances(corpus, "val")}
    assert len(train) > 10000 and len(val) > 1000
    assert train.isdisjoint(val)
    assert all(split_of(t) == "train" for t in train)
    assert all(split_of(t) == "val" for t in val)
    # each domain is present in both splits
    for split in ("train", "val"):
        assert {d for d, _ in instances(corpus, split)} == set(SEVEN)


# --------------------------------------------------------------------------- answers


def _balanced(s: str) -> bool:
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for ch in s:
        if ch in "([{":
            stack.append(ch)
        elif not stack or stack.pop() != pairs[ch]:
            return False
    return not stack


def _check_grammar(body: str) -> None:
    assert body.endswith(".")
    words = body[:-1].split(" ")
    w = GRAMMAR_WORDS

    def noun_phrase(i: int) -> tuple[int, bool]:
        det = words[i]
        assert det in w["det_sg"] + w["det_pl"], body
        i += 1
        if words[i] in w["adj"]:
            i += 1
        noun = words[i]
        plural = noun.endswith("s")
        assert (noun[:-1] if plural else noun) in w["noun"], body
        if det != "the":  # "the" fits both numbers; the others agree with the noun
            assert (det in w["det_pl"]) == plural, body
        return i + 1, plural

    i, subj_pl = noun_phrase(0)
    verb = words[i]
    if subj_pl:
        assert verb in w["verb"], body
    else:
        assert verb.endswith("s") and verb[:-1] in w["verb"], body
    i, _ = noun_phrase(i + 1)
    if i < len(words):
        assert words[i] in w["prep"] and words[i + 1] == "the" and words[i + 2] in w["place"]
        i += 3
    assert i == len(words), body


def check_instance(domain: str, inst: str) -> None:
    """Assert that ``inst`` is a well-formed, correctly answered instance of ``domain``."""
    tag = TAGS[domain]
    assert inst.startswith(tag) and inst.endswith(";") and inst.count(";") == 1, inst
    body = inst[len(tag) : -1]
    if domain == "grammar":
        _check_grammar(body)
        return
    prompt, answer = body.split("=")
    if domain in ("copy", "reverse", "sort"):
        assert 3 <= len(prompt) <= 8 and prompt.isalpha() and prompt.islower(), inst
        want = {"copy": prompt, "reverse": prompt[::-1], "sort": "".join(sorted(prompt))}
        assert answer == want[domain], inst
    elif domain == "arith":
        a, b = prompt.split("+")
        assert len(a) == len(b) == len(answer) == 2, inst
        assert int(answer) == (int(a) + int(b)) % ARITH_MOD, inst
    elif domain == "brackets":
        assert prompt and set(prompt) <= set("()[]{}") and set(answer) <= set(")]}"), inst
        assert answer and _balanced(prompt + answer), inst
    elif domain == "recall":
        pairs, key = prompt.split("?")
        keys, values = pairs[0::2], pairs[1::2]
        assert 3 <= len(keys) <= 5 and len(set(keys)) == len(keys), inst
        assert keys.isalpha() and values.isdigit() and len(key) == 1, inst
        assert answer == values[keys.index(key)], inst
    else:
        raise AssertionError(domain)


def test_answers_are_correct(corpus: TaskCorpus) -> None:
    seen = Counter()
    for split in ("train", "val"):
        for domain, inst in instances(corpus, split)[::5]:
            check_instance(domain, inst)
            seen[domain] += 1
    assert set(seen) == set(SEVEN)


def test_checker_catches_wrong_answers() -> None:
    for domain, bad in [
        ("reverse", "r:abc=abc;"),
        ("sort", "s:cab=cab;"),
        ("arith", "a:17+25=43;"),
        ("brackets", "b:([=)];"),
        ("recall", "k:a3b7c1?b=3;"),
        ("grammar", "g:the cats sees a dog.;"),
    ]:
        with pytest.raises(AssertionError):
            check_instance(domain, bad)
    check_instance("grammar", "g:two red cats see a dog near the tree.;")
    check_instance("brackets", "b:([]{(=)});")


# --------------------------------------------------------------------------- config validation


@pytest.mark.parametrize(
    ("domains", "words"),
    [
        (["copy", "nope"], ["unknown domain 'nope'", "allowed: arith, brackets, copy"]),
        (["copy", "sort", "copy"], ["duplicate domain 'copy'", "allowed:"]),
        ([], ["at least one domain", "allowed:"]),
    ],
)
def test_config_errors(domains: list[str], words: list[str]) -> None:
    with pytest.raises(pydantic.ValidationError) as e:
        TaskCorpus.Config.model_validate({"kind": "tasks", "domains": domains})
    for word in words:
        assert word in str(e.value)

    from brainnet.config import ScenarioError, load_scenario

    scenario = {
        "modules": [{"type": "transformer"}],
        "corpus": {"kind": "tasks", "domains": domains},
    }
    with pytest.raises(ScenarioError) as se:
        load_scenario(scenario)
    # if the transformer module type is not registered (yet), that is a separate problem line
    lines = [p for p in se.value.problems if "corpus.domains" in p]
    assert len(lines) == 1, se.value.problems
    for word in words:
        assert word in lines[0]


def test_config_other_fields() -> None:
    with pytest.raises(pydantic.ValidationError):
        TaskCorpus.Config.model_validate({"train_sequences": 0})
    with pytest.raises(pydantic.ValidationError):
        TaskCorpus.Config.model_validate({"val_sequences": 0})
    with pytest.raises(pydantic.ValidationError):
        TaskCorpus.Config.model_validate({"domain": ["copy"]})
    cfg = TaskCorpus.Config.model_validate({"domains": ["recall"], "block_size": 32})
    assert cfg.kind == "tasks" and cfg.domains == ["recall"] and cfg.train_sequences == 20000
    assert TaskCorpus.Config().domains == SEVEN


def test_registered_as_default_corpus() -> None:
    from brainnet.data import build_corpus
    from brainnet.registry import CORPORA

    assert CORPORA.get("tasks") is TaskCorpus
    c = build_corpus(TaskCorpus.Config(train_sequences=14, val_sequences=7), seed=0)
    assert isinstance(c, TaskCorpus)


def test_domain_shift_draws_new_domains_only_after_the_shift_step() -> None:
    cfg = TaskCorpus.Config(shift_step=10, shift_domains=3, train_sequences=700)
    corpus = TaskCorpus.build(cfg, seed=0)
    g = torch.Generator().manual_seed(0)
    corpus.at_step(9)
    assert set(corpus.batch("train", 300, g).domain.tolist()) == {0, 1, 2}
    assert set(corpus.batch("val", 300, g).domain.tolist()) == set(range(7))  # val: all
    corpus.at_step(10)
    assert set(corpus.batch("train", 300, g).domain.tolist()) == set(range(7))


@pytest.mark.parametrize(
    "shift, message",
    [
        ({"shift_step": 10}, "shift_step and shift_domains go together"),
        ({"shift_step": 10, "shift_domains": 7}, "must be < the number of domains (7)"),
    ],
)
def test_domain_shift_config_errors(shift, message) -> None:
    with pytest.raises(ScenarioError, match=re.escape(message)):
        load_scenario({"modules": [{"type": "transformer"}], "corpus": shift})


def test_answer_mask_marks_the_answer_bytes_only():
    from brainnet.data.tasks import answer_mask

    rows = [list(b"a:67+45=12;a:01+02=03;"), list(b"g:the cat sees.;g:a dog.;xx")[:22]]
    seqs = torch.tensor(rows, dtype=torch.uint8)
    mask = answer_mask(seqs)
    first = bytes(seqs[0][mask[0]].tolist())
    assert first == b"1203"  # the two answers, without '=' and ';'
    assert not mask[1].any()  # grammar has no answers


def test_without_tags_instances_start_with_their_content_and_splits_stay_disjoint() -> None:
    cfg = TaskCorpus.Config(kind="tasks", block_size=64, train_sequences=140, val_sequences=35,
                            tags=False)  # fmt: skip
    c = TaskCorpus(cfg, seed=0)
    insts: dict[str, set[str]] = {"train": set(), "val": set()}
    for split in insts:
        for row, d in zip(c.seqs[split], c.seq_domains[split].tolist(), strict=True):
            text = c.decode(row)
            assert ":" not in text  # a colon occurs in tags only
            whole = text.split(";")[:-1]  # the complete instances
            for inst in whole:
                check_instance(c.domains[d], TAGS[c.domains[d]] + inst + ";")  # tag given back
            insts[split] |= set(whole)
        assert c.answers[split].any()  # '=' ... ';' still marks the answers
    assert insts["train"] and not insts["train"] & insts["val"]
