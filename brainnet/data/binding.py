"""Binding tasks: instances whose fields go to different views, with an answer that needs them all.

Why: when every module sees the whole input, messages carry nothing a module lacks and
communication structures tie. Here each field of an instance is a "sensory modality": a view
(``views:`` in a scenario) gives a module some fields and blanks the rest, so the answer can
only be computed by combining what different modules saw, through messages, the blackboard or
top-down links. Tokens are bytes (``vocab_size = 256``); every instance of a domain has the same
length and layout, so blanks never leak a field's content through its length.

- ``sum``     ``s:3+4=2;``        left: the first digit, right: the second (digits 0-4); answer
  (a + b) mod 5
- ``add``     ``a:3+4=7;``        the same operands, answer a + b (0-8)
- ``lookup``  ``k:a3b7c1d5?b=7;`` left: 4 distinct keys with digit values, right: the queried
  key; answer its value
- ``agree``   ``g:cat.|sees=y;``  left: a noun, singular (``cat.``) or plural (``cats``); right:
  a verb, singular (``sees``) or plural (``see.``); answer ``y`` if they agree in number, else
  ``n``
- ``pick``    ``p:37|1=7;``       left: two different digits; right: which one to pick (0 or 1);
  answer that digit

Fields: 0 = shared (tag, separators, answer, ``;``; every view sees them), 1 = left, 2 = right.
The answer is field 0, but it is the target at the position before it: a causal module has not
seen it when it predicts it.

The no-communication floor (:data:`FLOORS`): the answer-token loss of the best predictor that
sees ONE view only, minimised over the views. ``sum``: the answer is uniform whatever one digit
is, so ln 5. ``add``: one operand leaves the other's 5 values, ln 5. ``agree``: independent
numbers, ln 2. ``pick``: the left view knows the answer is one
of its two digits, ln 2 (the right view alone: ln 10). ``lookup``: the right view alone gives ln 10;
the left view knows the 4 values, so its best guess is each shown value with probability
(keys holding it) / 4, and the floor is E[-ln(c / 4)] with c - 1 ~ Binomial(3, 1/10)
(:func:`lookup_floor`, 1.1868). For these domains a mixture of single-view predictors (an ensemble's
merge) cannot beat the floor either: in ``sum``, ``add``, ``agree`` and ``pick`` each view's
expected probability on the answer is at most e^-floor, so any mixture's is too (a numerical
optimisation of a left table, a right table and their mixture weight ends at the floor, all
weight on one view); for ``lookup`` this holds for the equal-weight merge (1.42 > 1.19), not for
any weight. (It is no general law: views that each knew the whole answer half of the time would
mix below their floors.) A *product* of experts could beat ``add``'s floor (its logits are a sum of
a left and a right part, see below), which is why brainnet's merges are mixtures of
probabilities. The ceiling with every field is 0.

``sum`` and ``agree`` are parity-like: what one field says about the answer depends on the other
field, so the answer's logits are no sum of a left and a right part, gradient descent gets no
first-order signal until both are combined, and they are learnt late and suddenly (if at all) in
a short run. ``add`` is not: its logits can be a sum of a part from each operand
(-(s - a - b)² expands into s², s·a and s·b terms), so a module that receives the other operand
through a message only has to add it in. ``pick`` is in between: the left view learns "one of
my two digits" on its own, and the selector then has to gate between them.

Splits: the instance spaces are small (``sum`` has 25 instances), so train and val are drawn
from separate random streams rather than from disjoint strings: what is measured is binding,
not generalisation to unseen combinations.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator

from brainnet.data.base import Batch, Corpus, Split
from brainnet.data.tasks import PoolConfig, answer_mask, check_domains
from brainnet.registry import CORPORA

_LOWER = "abcdefghijklmnopqrstuvwxyz"

#: Field names, in field-id order.
FIELDS = ("shared", "left", "right")

#: sum and add: digits 0 .. SUM_MOD - 1; sum's answer (a + b) mod SUM_MOD, add's a + b (one
#: byte while SUM_MOD <= 5)
SUM_MOD = 5
#: lookup: keys per instance
LOOKUP_KEYS = 4
_NOUNS = ("cat", "dog", "owl", "fox", "pig", "ant", "bee")
_VERBS = ("see", "run", "hop", "eat", "nap", "dig", "fly")


def gen_sum(rng: random.Random) -> str:
    """``s:3+4=2;``"""
    a, b = rng.randrange(SUM_MOD), rng.randrange(SUM_MOD)
    return f"s:{a}+{b}={(a + b) % SUM_MOD};"


def gen_add(rng: random.Random) -> str:
    """``a:3+4=7;``"""
    a, b = rng.randrange(SUM_MOD), rng.randrange(SUM_MOD)
    return f"a:{a}+{b}={a + b};"


def gen_lookup(rng: random.Random) -> str:
    """``k:a3b7c1d5?b=7;``"""
    keys = rng.sample(_LOWER, LOOKUP_KEYS)
    values = [str(rng.randrange(10)) for _ in keys]
    i = rng.randrange(LOOKUP_KEYS)
    pairs = "".join(k + v for k, v in zip(keys, values, strict=True))
    return f"k:{pairs}?{keys[i]}={values[i]};"


def gen_agree(rng: random.Random) -> str:
    """``g:cat.|sees=y;``"""
    plural_noun, plural_verb = rng.random() < 0.5, rng.random() < 0.5
    noun = rng.choice(_NOUNS) + ("s" if plural_noun else ".")
    verb = rng.choice(_VERBS) + ("." if plural_verb else "s")
    return f"g:{noun}|{verb}={'y' if plural_noun == plural_verb else 'n'};"


def gen_pick(rng: random.Random) -> str:
    """``p:37|1=7;``"""
    digits = rng.sample("0123456789", 2)
    i = rng.randrange(2)
    return f"p:{digits[0]}{digits[1]}|{i}={digits[i]};"


#: Domain name -> instance generator.
GENERATORS: dict[str, Callable[[random.Random], str]] = {
    "sum": gen_sum,
    "lookup": gen_lookup,
    "agree": gen_agree,
    "add": gen_add,
    "pick": gen_pick,
}
#: Domain name -> the field id of every byte of an instance (instances have a fixed layout).
LAYOUTS: dict[str, str] = {
    "sum": "00102000",
    "lookup": "00" + "1" * 2 * LOOKUP_KEYS + "0" + "2" + "000",
    "agree": "00111102222000",
    "add": "00102000",
    "pick": "001102000",
}
ALL_DOMAINS: list[str] = list(GENERATORS)


def lookup_floor(keys: int = LOOKUP_KEYS, values: int = 10) -> float:
    """E[-ln(c / keys)], c - 1 ~ Binomial(keys - 1, 1 / values): the left view's best answer
    loss on ``lookup`` (the right view alone gives ln values, which is worse)."""
    p = 1 / values
    return sum(
        math.comb(keys - 1, j) * p**j * (1 - p) ** (keys - 1 - j) * -math.log((1 + j) / keys)
        for j in range(keys)
    )


#: Domain -> the analytic no-communication floor of its answer-token loss (nats).
FLOORS: dict[str, float] = {
    "sum": math.log(SUM_MOD),
    "lookup": lookup_floor(),
    "agree": math.log(2),
    "add": math.log(SUM_MOD),
    "pick": math.log(2),
}


def _sequences(domain: str, seed: int, split: Split, count: int, length: int) -> np.ndarray:
    """``uint8 [count, length]``: instances of ``domain`` concatenated from a sequence's start
    and cut (every sequence starts at an instance start)."""
    rng = random.Random(f"brainnet.binding:{seed}:{domain}:{split}")
    gen = GENERATORS[domain]
    per_seq = -(-length // len(LAYOUTS[domain]))  # instances that cover a sequence
    text = "".join(gen(rng) for _ in range(count * per_seq)).encode("ascii")
    n = len(LAYOUTS[domain])
    return np.frombuffer(text, dtype=np.uint8).reshape(count, per_seq * n)[:, :length]


@CORPORA.register("binding")
class BindingCorpus(Corpus):
    """Seeded byte-level binding tasks with fields (see the module docstring)."""

    class Config(PoolConfig):
        kind: Literal["binding"] = "binding"
        domains: list[str] = Field(
            default_factory=lambda: list(ALL_DOMAINS),
            description=f"binding domains, in domain-id order; allowed: {', '.join(ALL_DOMAINS)}",
        )

        @field_validator("domains")
        @classmethod
        def _known(cls, v: list[str]) -> list[str]:
            return check_domains(v, ALL_DOMAINS)

    n_fields = len(FIELDS)
    blank_token = 0  # NUL: no instance contains it
    has_answers = True

    def __init__(self, cfg: Config, seed: int) -> None:
        self.vocab_size = 256
        self.block_size = cfg.block_size
        self.domains = list(cfg.domains)
        self.seed = seed
        length = cfg.block_size + 1
        sizes = {"train": cfg.train_sequences, "val": cfg.val_sequences}
        D = len(self.domains)
        #: split -> ``uint8 [N, block_size + 1]`` sequences; ``long [N]`` domains; fields
        self.seqs: dict[str, torch.Tensor] = {}
        self.seq_domains: dict[str, torch.Tensor] = {}
        self.fields: dict[str, torch.Tensor] = {}
        for s, n in sizes.items():
            doms = np.arange(n) % D  # round-robin: balanced domains
            pool = np.empty((n, length), dtype=np.uint8)
            field = np.empty((n, length), dtype=np.uint8)
            for d, name in enumerate(self.domains):
                rows = doms == d
                pool[rows] = _sequences(name, seed, s, int(rows.sum()), length)
                layout = np.frombuffer(LAYOUTS[name].encode(), dtype=np.uint8) - ord("0")
                field[rows] = np.resize(layout, length)  # the layout tiled, cut
            self.seqs[s] = torch.from_numpy(pool)
            self.seq_domains[s] = torch.from_numpy(doms).long()
            self.fields[s] = torch.from_numpy(field)
        self.answers = {s: answer_mask(p) for s, p in self.seqs.items()}
        counts = self.answers["val"][:, 1:].sum(1)  # [N] answer targets per val sequence
        per_domain = [float(counts[self.seq_domains["val"] == d].sum()) for d in range(D)]
        #: the floor of the overall answer loss: domains' floors weighted by answer tokens
        self.answer_floor_mean = sum(
            FLOORS[name] * c for name, c in zip(self.domains, per_domain, strict=True)
        ) / max(1.0, sum(per_domain))

    @classmethod
    def build(cls, cfg: Config, seed: int) -> BindingCorpus:
        return cls(cfg, seed)

    def batch(self, split: Split, batch_size: int, generator: torch.Generator) -> Batch:
        ix = torch.randint(len(self.seqs[split]), (batch_size,), generator=generator)
        seq = self.seqs[split][ix].long()
        return Batch(
            x=seq[:, :-1],
            y=seq[:, 1:],
            domain=self.seq_domains[split][ix],
            field=self.fields[split][ix, :-1].long(),  # [B, T] field of each input token
            answer=self.answers[split][ix, 1:],  # [B, T] the target is an answer byte
        )

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        """Bytes -> text; the blank (NUL) shows as ``_``, other non-ASCII bytes as U+FFFD."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        data = bytes(int(i) & 0xFF for i in ids).replace(b"\0", b"_")
        return data.decode("ascii", errors="replace")

    def vocab(self) -> dict[str, Any]:
        return {
            "kind": "byte",
            "vocab_size": 256,
            "domains": list(self.domains),
            "fields": list(FIELDS),
            "answer_floor": {d: FLOORS[d] for d in self.domains},
            "answer_floor_mean": self.answer_floor_mean,
            "answer_ceiling": 0.0,
        }
