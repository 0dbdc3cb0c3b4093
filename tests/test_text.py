"""The character-level text corpus (corpus kind "text")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from brainnet.config import ScenarioError, load_scenario
from brainnet.data import build_corpus
from brainnet.data.text import TextCorpus, resolve_text_path
from brainnet.engine import Simulation

# nanoGPT's data/shakespeare_char/prepare.py prints these for the same file.
SHAKESPEARE_CHARS = 1_115_394
SHAKESPEARE_VOCAB = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
SHAKESPEARE_TRAIN = 1_003_854
SHAKESPEARE_VAL = 111_540


@pytest.fixture(scope="module")
def text() -> str:
    return resolve_text_path("tinyshakespeare").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def corpus() -> TextCorpus:
    return TextCorpus.build(TextCorpus.Config(), seed=0)


def encode(c: TextCorpus, s: str) -> torch.Tensor:
    return torch.tensor([c.stoi[ch] for ch in s], dtype=torch.long)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def scenario(corpus: dict) -> dict:
    return {"modules": [{"type": "transformer", "count": 1}], "corpus": {"kind": "text", **corpus}}


# --------------------------------------------------------------------------- tinyshakespeare


def test_tinyshakespeare_vocab(corpus: TextCorpus, text: str) -> None:
    assert len(text) == SHAKESPEARE_CHARS
    assert corpus.vocab_size == 65
    assert "".join(corpus.itos) == SHAKESPEARE_VOCAB
    assert corpus.itos == sorted(set(text))
    assert all(corpus.stoi[ch] == i for i, ch in enumerate(corpus.itos))
    assert corpus.vocab() == {"kind": "char", "itos": list(SHAKESPEARE_VOCAB)}
    assert corpus.domains == ["text"]
    assert corpus.block_size == 64


def test_decode_round_trips(corpus: TextCorpus, text: str) -> None:
    head = text[:100]
    assert head.startswith("First Citizen:\nBefore we proceed any further, hear me speak.")
    assert corpus.decode(corpus.splits["train"][:100]) == head
    assert corpus.decode(encode(corpus, head)) == head
    assert corpus.decode(encode(corpus, head).tolist()) == head
    assert corpus.decode([]) == ""


def test_batch_shapes_and_shift(corpus: TextCorpus) -> None:
    for split in ("train", "val"):
        b = corpus.batch(split, 8, gen(0))
        assert b.x.shape == b.y.shape == (8, 64)
        assert b.domain.shape == (8,)
        assert b.x.dtype == b.y.dtype == b.domain.dtype == torch.long
        assert torch.equal(b.y[:, :-1], b.x[:, 1:])
        assert torch.equal(b.domain, torch.zeros(8, dtype=torch.long))
        assert 0 <= int(b.x.min()) and int(b.x.max()) < 65
        assert 0 <= int(b.y.min()) and int(b.y.max()) < 65


def test_splits_are_contiguous_and_disjoint(corpus: TextCorpus, text: str) -> None:
    train, val = corpus.splits["train"], corpus.splits["val"]
    assert len(train) == SHAKESPEARE_TRAIN
    assert len(val) == SHAKESPEARE_VAL
    assert len(train) + len(val) == len(text)
    assert abs(len(val) - 0.1 * len(text)) <= 1
    n = len(train)
    assert torch.equal(train.long(), encode(corpus, text[:n]))
    assert torch.equal(val.long(), encode(corpus, text[n:]))


def test_batches_come_from_their_split(corpus: TextCorpus, text: str) -> None:
    n = len(corpus.splits["train"])
    head, tail = text[:n], text[n:]
    g = gen(123)
    for _ in range(3):
        v = corpus.batch("val", 16, g)
        for x, y in zip(v.x, v.y, strict=True):
            # x plus the last target = the block_size + 1 characters the sample was cut from
            assert corpus.decode(torch.cat([x, y[-1:]])) in tail
        t = corpus.batch("train", 16, g)
        for x, y in zip(t.x, t.y, strict=True):
            assert corpus.decode(torch.cat([x, y[-1:]])) in head


def test_batches_reach_the_ends_of_a_split(tmp_path: Path) -> None:
    # a split block_size + 2 long has two windows of block_size + 1: both must appear
    p = tmp_path / "abc.txt"
    p.write_text("abcdefghij" + "ABCDEFGHIJ")  # val_fraction 0.5: train = a..j, val = A..J
    c = TextCorpus(TextCorpus.Config(path=str(p), block_size=8, val_fraction=0.5))
    seen = {c.decode(x) for x in c.batch("train", 64, gen(0)).x}
    assert seen == {"abcdefgh", "bcdefghi"}
    seen = {c.decode(x) for x in c.batch("val", 64, gen(0)).x}
    assert seen == {"ABCDEFGH", "BCDEFGHI"}


def test_same_seed_same_batches(corpus: TextCorpus) -> None:
    a = corpus.batch("train", 8, gen(7))
    b = corpus.batch("train", 8, gen(7))
    c = corpus.batch("train", 8, gen(8))
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, c.x)
    # consecutive draws from one generator differ, and replay identically
    g1, g2 = gen(7), gen(7)
    first = [corpus.batch("val", 4, g1).x for _ in range(2)]
    again = [corpus.batch("val", 4, g2).x for _ in range(2)]
    assert not torch.equal(first[0], first[1])
    assert all(torch.equal(p, q) for p, q in zip(first, again, strict=True))


def test_build_ignores_the_seed(corpus: TextCorpus) -> None:
    # the corpus is the file: the seed only matters through the batch generator
    other = TextCorpus.build(TextCorpus.Config(), seed=99)
    assert other.itos == corpus.itos
    assert torch.equal(other.splits["val"], corpus.splits["val"])


# --------------------------------------------------------------------------- custom files


def test_custom_file_end_to_end(tmp_path: Path) -> None:
    line = "the cat sat on the mat; é ü → 猫\n"
    text = line * 40
    p = tmp_path / "tiny.txt"
    p.write_text(text, encoding="utf-8")
    sc = load_scenario(
        scenario({"path": str(p), "block_size": 16, "val_fraction": 0.25}),
        {
            "modules.0.n_layer": 1,
            "modules.0.d_model": 16,
            "modules.0.n_head": 2,
            "train.steps": 2,
            "train.batch_size": 4,
            "train.eval_every": 1,
            "train.eval_batches": 1,
            "train.warmup_steps": 0,
            "log.every": 1,
            "device": "cpu",
        },
    )
    assert sc.corpus.kind == "text" and sc.corpus.path == str(p)
    c = build_corpus(sc.corpus, sc.seed)
    assert isinstance(c, TextCorpus)
    assert c.itos == sorted(set(line))
    assert c.vocab_size == len(set(line)) == 16
    n = len(c.splits["train"])
    assert n == int(len(text) * 0.75) and n + len(c.splits["val"]) == len(text)
    assert c.decode(c.splits["train"]) + c.decode(c.splits["val"]) == text
    b = c.batch("val", 4, gen(0))
    assert b.x.shape == (4, 16)
    for x in b.x:
        assert c.decode(x) in text[n:]

    sim = Simulation(sc, out_dir=tmp_path / "runs")
    summary = sim.run()
    assert summary["steps"] == 2
    run_dir = Path(summary["run_dir"])
    assert json.loads((run_dir / "vocab.json").read_text()) == {"kind": "char", "itos": c.itos}
    assert summary["final_val_loss"] is not None


def test_builtin_name_and_path_give_the_same_corpus(corpus: TextCorpus) -> None:
    p = resolve_text_path("tinyshakespeare")
    assert p.is_file() and p.name == "tinyshakespeare.txt"
    by_path = TextCorpus(TextCorpus.Config(path=str(p)))
    assert by_path.itos == corpus.itos
    assert torch.equal(by_path.splits["train"], corpus.splits["train"])


# --------------------------------------------------------------------------- bad paths


def _bad_files(tmp: Path) -> dict[str, tuple[str, str]]:
    """case -> (corpus.path value, a phrase the message must contain)."""
    (tmp / "a_dir").mkdir()
    (tmp / "empty.txt").write_bytes(b"")
    (tmp / "blank.txt").write_bytes(b"  \n\n\t \n")
    (tmp / "binary.bin").write_bytes(b"abc\x00def\x00" * 50)
    (tmp / "latin1.txt").write_bytes(b"\xff\xfe\xfa" * 100)
    (tmp / "late_bad.txt").write_bytes(b"fine text\n" * 100 + b"\xe9t\xe9\n")
    return {
        "missing": (str(tmp / "nope.txt"), "no such file"),
        "directory": (str(tmp / "a_dir"), "not a file"),
        "empty": (str(tmp / "empty.txt"), "empty"),
        "whitespace only": (str(tmp / "blank.txt"), "empty"),
        "binary": (str(tmp / "binary.bin"), "binary"),
        "not utf-8": (str(tmp / "latin1.txt"), "UTF-8"),
        "not utf-8 late in the file": (str(tmp / "late_bad.txt"), "byte 1000"),
        "unknown built-in": ("tinyshakespear", "no such file"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "directory",
        "empty",
        "whitespace only",
        "binary",
        "not utf-8",
        "not utf-8 late in the file",
        "unknown built-in",
    ],
)
def test_bad_path_is_a_one_line_scenario_error(tmp_path: Path, case: str) -> None:
    path, phrase = _bad_files(tmp_path)[case]
    with pytest.raises(ScenarioError) as info:
        load_scenario(scenario({"path": path}))
    msg = str(info.value)
    assert "\n" not in msg and len(info.value.problems) == 1
    assert "corpus.path" in msg
    assert repr(path) in msg
    assert "allowed" in msg and "tinyshakespeare" in msg
    assert phrase in msg
    assert "Traceback" not in msg and "pydantic" not in msg.lower()


@pytest.mark.parametrize("vf", [0, 1, -0.1, 1.5])
def test_val_fraction_out_of_range(vf: float) -> None:
    with pytest.raises(ScenarioError) as info:
        load_scenario(scenario({"val_fraction": vf}))
    msg = str(info.value)
    assert "\n" not in msg
    assert f"corpus.val_fraction = {vf}" in msg
    assert ("must be > 0" if vf <= 0 else "must be < 1") in msg


def test_several_problems_one_line_each(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError) as info:
        load_scenario(
            scenario({"path": str(tmp_path / "nope.txt"), "val_fraction": 2, "block_size": 1})
        )
    problems = info.value.problems
    assert len(problems) == 3
    assert str(info.value).splitlines() == problems
    fields = sorted(p.split(" = ")[0].split(": ")[-1] for p in problems)
    assert fields == ["corpus.block_size", "corpus.path", "corpus.val_fraction"]


def test_text_only_fields_are_unknown_for_tasks() -> None:
    with pytest.raises(ScenarioError) as info:
        load_scenario({"modules": [{"type": "transformer"}], "corpus": {"path": "x.txt"}})
    msg = str(info.value)
    assert "corpus.path" in msg and "unknown field" in msg and "allowed:" in msg


# --------------------------------------------------------------------------- too short


def test_file_shorter_than_block_size(tmp_path: Path) -> None:
    p = tmp_path / "short.txt"
    p.write_text("to be or not to be\n")  # 19 characters
    with pytest.raises(ScenarioError) as info:  # caught when the scenario is validated
        load_scenario(scenario({"path": str(p), "block_size": 64}))
    msg = str(info.value)
    assert "\n" not in msg
    assert f"corpus.path = {str(p)!r}" in msg
    assert "train split has 17 characters" in msg  # int(19 * 0.9)
    assert "allowed: at least block_size + 1 = 65" in msg


def test_val_split_too_short(tmp_path: Path) -> None:
    p = tmp_path / "short_val.txt"
    p.write_text("x" * 100)
    with pytest.raises(ValidationError, match=r"the val split has 5 characters; allowed: .* = 9"):
        TextCorpus.Config(path=str(p), block_size=8, val_fraction=0.05)  # val = 5 chars
    # just long enough: block_size + 1 characters in each split
    p.write_text("x" * 18)
    c = TextCorpus(TextCorpus.Config(path=str(p), block_size=8, val_fraction=0.5))
    assert len(c.splits["train"]) == len(c.splits["val"]) == 9
