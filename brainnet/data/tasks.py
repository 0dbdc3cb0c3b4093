"""A seeded, procedurally generated, byte-level multi-domain corpus (brainnet's default corpus).

Tokens are the bytes of ASCII strings (``vocab_size = 256``). The corpus is made of short
*instances*, each from one *domain*. An instance starts with its domain's tag (a letter and a
colon) and ends with ``;``, which occurs nowhere else. Where a domain has a prompt and an answer,
they are separated by ``=`` and the answer is a deterministic function of the prompt:

- ``copy``     ``c:hxqbt=hxqbt;``  3-8 random lowercase letters, then repeated.
- ``reverse``  ``r:hxqbt=tbqxh;``  3-8 random lowercase letters, then reversed.
- ``sort``     ``s:dbcab=abbcd;``  3-8 random lowercase letters, then sorted.
- ``arith``    ``a:67+45=12;``  two operands 00-99, then their sum mod 100; every number is
  written with two digits (zero-padded).
- ``brackets`` ``b:([]{(=)});``  a prefix over ``()[]{}`` that never closes wrongly (depth <= 4,
  at least one bracket left open), then the closers that complete it (the shortest completion).
- ``recall``   ``k:a3b7c1?b=7;``  3-5 distinct lowercase keys each followed by a digit value,
  ``?`` and one of the keys, ``=`` and its value.
- ``grammar``  ``g:the red cat sees two dogs.;``  a sentence of a tiny fixed grammar,
  ``det [adj] noun verb det [adj] noun [prep the place].`` (words in :data:`GRAMMAR_WORDS`);
  the verb agrees in number with the subject (``the cat sees``, ``two cats see``).

Sequences: each sequence holds instances of one domain only. Instances are concatenated, from the
start of an instance, until there are at least ``block_size + 1`` bytes, and cut to
``block_size + 1``. So every sequence starts at the start of an instance (complete whenever it
fits, as all do at the default block size of 64); the last one is usually cut. Domains are
assigned to sequences round-robin (sequence ``i`` has domain ``i % len(domains)``), so they are
balanced; a domain's id is its index in ``cfg.domains``.

Tags: ``tags: false`` drops every instance's tag, so the domain must be told from the content
(the router's ``context`` then has to reach past the first token). Untagged instances of
different domains can coincide (``abc=abc;`` is a copy and a sort); the split hash is of the
text as written, so such a string still sits in one split only.

Splits: every instance is assigned to train or val by a stable hash of its exact text
(``zlib.crc32(text) % 10 == 0`` -> val, see :func:`split_of`), independently of the seed, and
each split's sequences are built only from instances assigned to it. So no instance string occurs
in both splits. Each domain draws its instances from its own ``random.Random`` seeded by the
corpus seed and the domain name; the same seed gives identical pools, a different seed different
ones. The global RNGs are never touched.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator

from brainnet.config import CorpusConfig
from brainnet.config_errors import Problems, check, problem
from brainnet.data.base import Batch, Corpus, Split
from brainnet.registry import CORPORA

_LOWER = "abcdefghijklmnopqrstuvwxyz"
_DIGITS = "0123456789"

#: Instances whose ``crc32 % VAL_BUCKETS`` is 0 belong to the val split.
VAL_BUCKETS = 10

#: End of every instance; it occurs nowhere inside an instance.
END = ";"


def _letters(rng: random.Random) -> str:
    return "".join(rng.choices(_LOWER, k=rng.randint(3, 8)))


def gen_copy(rng: random.Random) -> str:
    """``c:hxqbt=hxqbt;``"""
    s = _letters(rng)
    return f"c:{s}={s};"


def gen_reverse(rng: random.Random) -> str:
    """``r:hxqbt=tbqxh;``"""
    s = _letters(rng)
    return f"r:{s}={s[::-1]};"


def gen_sort(rng: random.Random) -> str:
    """``s:dbcab=abbcd;``"""
    s = _letters(rng)
    return f"s:{s}={''.join(sorted(s))};"


#: Modulus of the arith domain.
ARITH_MOD = 100


def gen_arith(rng: random.Random) -> str:
    """``a:67+45=12;`` (sum mod 100, every number two digits)."""
    a, b = rng.randrange(ARITH_MOD), rng.randrange(ARITH_MOD)
    return f"a:{a:02d}+{b:02d}={(a + b) % ARITH_MOD:02d};"


_OPEN_TO_CLOSE = {"(": ")", "[": "]", "{": "}"}
_OPENERS = "([{"
_MAX_DEPTH = 4


def gen_brackets(rng: random.Random) -> str:
    """``b:([]{(=)});``: a prefix that never closes wrongly, then its minimal completion."""
    stack: list[str] = []
    prefix: list[str] = []
    for _ in range(rng.randint(2, 10)):
        if stack and (len(stack) >= _MAX_DEPTH or rng.random() < 0.4):
            prefix.append(_OPEN_TO_CLOSE[stack.pop()])
        else:
            c = rng.choice(_OPENERS)
            stack.append(c)
            prefix.append(c)
    if not stack:
        c = rng.choice(_OPENERS)
        stack.append(c)
        prefix.append(c)
    closing = "".join(_OPEN_TO_CLOSE[c] for c in reversed(stack))
    return f"b:{''.join(prefix)}={closing};"


def gen_recall(rng: random.Random) -> str:
    """``k:a3b7c1?b=7;``: 3-5 distinct keys with digit values, then one key queried."""
    keys = rng.sample(_LOWER, rng.randint(3, 5))
    values = rng.choices(_DIGITS, k=len(keys))
    i = rng.randrange(len(keys))
    pairs = "".join(k + v for k, v in zip(keys, values, strict=True))
    return f"k:{pairs}?{keys[i]}={values[i]};"


#: The grammar domain's word lists. Nouns take a plain ``s`` plural; verbs are (plural, singular).
GRAMMAR_WORDS: dict[str, tuple[str, ...]] = {
    "det_sg": ("the", "a", "one", "every"),
    "det_pl": ("the", "some", "two", "many"),
    "adj": ("red", "big", "small", "old", "happy", "blue"),
    "noun": ("cat", "dog", "bird", "frog", "girl", "boy"),
    "verb": ("see", "like", "chase", "find", "help"),
    "prep": ("in", "near", "under"),
    "place": ("park", "house", "tree", "river"),
}


def _noun_phrase(rng: random.Random) -> tuple[str, bool]:
    plural = rng.random() < 0.5
    w = GRAMMAR_WORDS
    det = rng.choice(w["det_pl"] if plural else w["det_sg"])
    noun = rng.choice(w["noun"]) + ("s" if plural else "")
    if rng.random() < 0.5:
        return f"{det} {rng.choice(w['adj'])} {noun}", plural
    return f"{det} {noun}", plural


def gen_grammar(rng: random.Random) -> str:
    """``g:the red cat sees two dogs.;`` (subject-verb agreement in number)."""
    subj, plural = _noun_phrase(rng)
    verb = rng.choice(GRAMMAR_WORDS["verb"]) + ("" if plural else "s")
    obj, _ = _noun_phrase(rng)
    pp = ""
    if rng.random() < 0.3:
        pp = f" {rng.choice(GRAMMAR_WORDS['prep'])} the {rng.choice(GRAMMAR_WORDS['place'])}"
    return f"g:{subj} {verb} {obj}{pp}.;"


#: Domain name -> instance generator, in the default order.
GENERATORS: dict[str, Callable[[random.Random], str]] = {
    "copy": gen_copy,
    "reverse": gen_reverse,
    "sort": gen_sort,
    "arith": gen_arith,
    "brackets": gen_brackets,
    "recall": gen_recall,
    "grammar": gen_grammar,
}
#: Domain name -> the tag every instance of it starts with.
TAGS: dict[str, str] = {
    "copy": "c:",
    "reverse": "r:",
    "sort": "s:",
    "arith": "a:",
    "brackets": "b:",
    "recall": "k:",
    "grammar": "g:",
}
ALL_DOMAINS: list[str] = list(GENERATORS)


def answer_mask(seqs: torch.Tensor) -> torch.Tensor:
    """``uint8 [N, L]`` sequences -> ``bool [N, L]``: the byte is part of an answer (after an
    instance's ``=``, before its ``;``). Sequences start at an instance start, so ``=`` and
    ``;`` alternate; a domain without ``=`` (grammar) has no answer bytes."""
    eq = seqs == ord("=")
    end = seqs == ord(END)
    depth = eq.long().cumsum(1) - end.long().cumsum(1)  # 1 from '=' up to (not incl.) ';'
    return (depth > 0) & ~eq


def split_of(instance: str | bytes) -> Split:
    """The split an instance belongs to: a stable hash of its exact text (not ``hash()``)."""
    data = instance.encode("ascii") if isinstance(instance, str) else instance
    return "val" if zlib.crc32(data) % VAL_BUCKETS == 0 else "train"


def _domain_rng(seed: int, domain: str) -> random.Random:
    # str seeds are hashed with SHA-512 by random.Random: stable across processes and platforms.
    return random.Random(f"brainnet.tasks:{seed}:{domain}")


def _generate_domain(
    domain: str, seed: int, counts: dict[str, int], length: int, tags: bool = True
) -> dict[str, bytes]:
    """``counts[split]`` sequences of ``length`` bytes of ``domain``, each split's from its own
    instances only (``tags=False``: each instance without its 2-byte tag, hashed as written).
    Returns split -> the sequences concatenated."""
    gen = GENERATORS[domain]
    rng = _domain_rng(seed, domain)
    done: dict[str, list[bytes]] = {s: [] for s in counts}
    buf: dict[str, list[bytes]] = {s: [] for s in counts}
    size = dict.fromkeys(counts, 0)
    todo = sum(counts.values())
    budget = 50 * (todo + 10) * length  # instances; guards against a split that never fills
    crc32 = zlib.crc32
    while todo:
        inst = gen(rng).encode("ascii")
        if not tags:
            inst = inst[2:]  # "c:hxq=hxq;" -> "hxq=hxq;"
        split = "val" if crc32(inst) % VAL_BUCKETS == 0 else "train"
        budget -= 1
        if budget <= 0:
            raise RuntimeError(f"tasks corpus: domain {domain!r} cannot fill its splits")
        if len(done[split]) >= counts[split]:
            continue
        buf[split].append(inst)
        size[split] += len(inst)
        if size[split] >= length:
            done[split].append(b"".join(buf[split])[:length])
            buf[split].clear()
            size[split] = 0
            todo -= 1
    return {s: b"".join(seqs) for s, seqs in done.items()}


class PoolConfig(CorpusConfig):
    """What a corpus of pre-generated sequence pools has (tasks, binding)."""

    train_sequences: int = Field(
        20000, ge=1, description="sequences pre-generated for the train split"
    )
    val_sequences: int = Field(1000, ge=1, description="sequences pre-generated for the val split")


def check_domains(names: list[str], known: list[str]) -> list[str]:
    """``names`` must be distinct known domains, at least one (a domain list validator)."""
    allowed = f"allowed: {', '.join(sorted(known))}"
    if not names:
        raise ValueError(f"must name at least one domain; {allowed}")
    for i, name in enumerate(names):
        if name not in known:
            raise ValueError(f"unknown domain {name!r}; {allowed}")
        if name in names[:i]:
            raise ValueError(f"duplicate domain {name!r}; {allowed}")
    return names


@CORPORA.register("tasks")
class TaskCorpus(Corpus):
    """Seeded byte-level multi-domain task corpus (see the module docstring for the formats)."""

    has_answers = True

    class Config(PoolConfig):
        kind: Literal["tasks"] = "tasks"
        domains: list[str] = Field(
            default_factory=lambda: list(ALL_DOMAINS),
            description=f"task domains, in domain-id order; allowed: {', '.join(ALL_DOMAINS)}",
        )
        shift_step: int | None = Field(
            None,
            ge=1,
            description="training draws only from the first `shift_domains` "
            "domains before this step, from all after it (a distribution shift); None = never",
        )
        shift_domains: int | None = Field(
            None, ge=1, description="how many of `domains` (the first ones) exist before the shift"
        )
        tags: bool = Field(
            True,
            description="instances start with their domain's tag (`c:`); false: no tag, so a "
            "router (or anyone) must tell the domain from the content",
        )

        @check("shift_step", "shift_domains", "domains")
        def _shift(self) -> Problems:
            if (self.shift_step is None) != (self.shift_domains is None):
                name = "shift_domains" if self.shift_domains is None else "shift_step"
                yield problem(name, None, "shift_step and shift_domains go together")
            elif self.shift_domains is not None and self.shift_domains >= len(self.domains):
                yield problem(
                    "shift_domains",
                    self.shift_domains,
                    f"must be < the number of domains ({len(self.domains)}), so that some "
                    "domains are new",
                )

        @field_validator("domains")
        @classmethod
        def _known(cls, v: list[str]) -> list[str]:
            return check_domains(v, ALL_DOMAINS)

    def __init__(self, cfg: Config, seed: int) -> None:
        self.vocab_size = 256
        self.block_size = cfg.block_size
        self.domains = list(cfg.domains)
        self.seed = seed
        length = cfg.block_size + 1
        sizes = {"train": cfg.train_sequences, "val": cfg.val_sequences}
        n_dom = len(self.domains)
        doms = {s: np.arange(n) % n_dom for s, n in sizes.items()}
        pools = {s: np.empty((n, length), dtype=np.uint8) for s, n in sizes.items()}
        for d, name in enumerate(self.domains):
            counts = {s: int((doms[s] == d).sum()) for s in sizes}
            out = _generate_domain(name, seed, counts, length, cfg.tags)
            for s in sizes:
                pools[s][doms[s] == d] = np.frombuffer(out[s], dtype=np.uint8).reshape(-1, length)
        #: split -> ``uint8 [N, block_size + 1]`` sequences.
        self.seqs: dict[str, torch.Tensor] = {s: torch.from_numpy(p) for s, p in pools.items()}
        #: split -> ``long [N]`` domain id of each sequence.
        self.seq_domains: dict[str, torch.Tensor] = {
            s: torch.from_numpy(d).long() for s, d in doms.items()
        }
        self.shift_step, self.shift_domains = cfg.shift_step, cfg.shift_domains
        #: train rows drawn from before the shift (the first ``shift_domains`` domains)
        self._early_rows = (
            None
            if cfg.shift_domains is None
            else (self.seq_domains["train"] < cfg.shift_domains).nonzero().flatten()
        )
        self._shifted = cfg.shift_step is None
        #: split -> ``bool [N, block_size + 1]``: the byte is an answer byte
        self.answers = {s: answer_mask(p) for s, p in self.seqs.items()}

    def at_step(self, step: int) -> None:
        """Before ``shift_step`` training batches come from the early domains only."""
        self._shifted = self.shift_step is None or step >= self.shift_step

    @classmethod
    def build(cls, cfg: Config, seed: int) -> TaskCorpus:
        return cls(cfg, seed)

    def batch(self, split: Split, batch_size: int, generator: torch.Generator) -> Batch:
        seqs, doms = self.seqs[split], self.seq_domains[split]
        if split == "train" and not self._shifted:
            rows = self._early_rows
            ix = rows[torch.randint(len(rows), (batch_size,), generator=generator)]
        else:
            ix = torch.randint(len(seqs), (batch_size,), generator=generator)
        seq = seqs[ix].long()
        ans = self.answers[split][ix, 1:]  # [B, T] the target is an answer byte
        return Batch(x=seq[:, :-1], y=seq[:, 1:], domain=doms[ix], answer=ans)

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        """Bytes -> text; bytes outside ASCII become U+FFFD."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return bytes(int(i) & 0xFF for i in ids).decode("ascii", errors="replace")

    def vocab(self) -> dict[str, Any]:
        return {"kind": "byte", "vocab_size": 256, "domains": list(self.domains)}
