"""docs/extending.md is followed by a test: its example module type is executed from the page,
checked against a per-module reference, run in a society, and the registry errors it shows are
the ones the registry raises."""

from __future__ import annotations

import math
import re
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

import brainnet
import brainnet.registry as registry
from brainnet.modules.bank import Bank, check_module_type
from brainnet.registry import MODULE_TYPES, Registry, RegistryError

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
NAME = "bigram_lm"
V, T, B, P, DM = 11, 7, 3, 4, 6
TOL = dict(atol=1e-6, rtol=1e-6)


def blocks(lang: str) -> list[str]:
    """The ```lang fenced code blocks of docs/extending.md."""
    return re.findall(rf"^```{lang}\n(.*?)^```$", DOC.read_text(), flags=re.S | re.M)


def only_block(lang: str, needle: str) -> str:
    found = [b for b in blocks(lang) if needle in b]
    assert len(found) == 1, f"expected one ```{lang} block containing {needle!r}"
    return found[0]


@pytest.fixture
def plugin(monkeypatch):
    """The docs' example file, imported as the module ``my_bigram``; unregistered afterwards."""
    MODULE_TYPES.remove(NAME)
    mod = types.ModuleType("my_bigram")
    monkeypatch.setitem(sys.modules, "my_bigram", mod)
    try:
        exec(compile(only_block("python", f'register("{NAME}")'), str(DOC), "exec"), mod.__dict__)
        yield mod
    finally:
        MODULE_TYPES.remove(NAME)


def make_bank(plugin, M: int = 5):
    torch.manual_seed(0)
    return plugin.BigramBank(plugin.BigramConfig(count=M, message_dim=DM), V, T)


def reference(bank, m, tokens, memory=None, mask=None):
    """Module ``m`` alone, the formula written out: tokens [B, T] -> logits, message, salience."""
    logits = bank.table[m][tokens]  # [B, T, V]
    if memory is not None:
        mask = torch.ones(memory.shape[:-1], dtype=torch.bool) if mask is None else mask
        read = torch.zeros(B, T, DM)
        for b in range(B):
            for t in range(T):
                slots = memory[b, t][mask[b, t]]  # [k, Dm]
                if len(slots):
                    read[b, t] = slots.mean(0)
        logits = logits + read @ bank.mem_w[m]
    e = bank.emb[m][tokens]  # [B, T, Dm]
    return logits, e @ bank.msg_w[m], e @ bank.sal_w[m]


def inputs(M: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, V, (M, B, T), generator=g)
    memory = torch.randn(M, B, T, P, DM, generator=g)
    mask = torch.rand(M, B, T, P, generator=g) > 0.4
    mask[:, 0, 2] = False  # positions with every slot empty
    memory[~mask] = float("nan")  # an empty slot's contents must never matter
    return tokens, memory, mask


def loss_of(logits, message, salience, y, proj):
    """Touches all three outputs, so every parameter gets a gradient."""
    ce = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
    return ce + (message * proj).sum() + salience.square().mean()


def test_registered_type_and_shapes(plugin):
    cls = MODULE_TYPES.get(NAME)
    assert cls is plugin.BigramBank and issubclass(cls, Bank)
    assert NAME in MODULE_TYPES.names()
    bank = make_bank(plugin)
    assert bank.n_modules == 5 and bank.table.shape == (5, V, V)
    assert all(getattr(bank, n).shape[0] == 5 for n in bank.param_names)
    tokens, memory, mask = inputs(5)
    for mem, msk in ((None, None), (memory, mask)):
        out = bank(tokens, mem, msk)
        assert out.logits.shape == (5, B, T, V)
        assert out.message.shape == (5, B, T, DM)
        assert out.salience.shape == (5, B, T)
        assert all(torch.isfinite(t).all() for t in out)


@pytest.mark.parametrize("subset", [None, [3, 0, 4]])
@pytest.mark.parametrize("with_memory", [False, True])
def test_bank_equals_per_module_formula(plugin, subset, with_memory):
    """Forward and gradients of the batched bank == the formula run module by module."""
    bank = make_bank(plugin)
    ids = list(range(bank.n_modules)) if subset is None else subset
    idx = None if subset is None else torch.tensor(subset)
    M = len(ids)
    tokens, memory, mask = inputs(M)
    memory, mask = (memory, mask) if with_memory else (None, None)
    g = torch.Generator().manual_seed(2)
    y = torch.randint(0, V, (M, B, T), generator=g)
    proj = torch.randn(M, B, T, DM, generator=g)

    out = bank(tokens, memory, mask, idx=idx)
    sum(loss_of(*(o[i] for o in out), y[i], proj[i]) for i in range(M)).backward()
    grads = {n: getattr(bank, n).grad for n in bank.param_names}
    bank.zero_grad(set_to_none=True)

    ref_loss = 0.0
    for i, m in enumerate(ids):
        mem_i = None if memory is None else memory[i]
        ref = reference(bank, m, tokens[i], mem_i, None if mask is None else mask[i])
        for got, want in zip((o[i] for o in out), ref, strict=True):
            torch.testing.assert_close(got, want, **TOL)
        ref_loss = ref_loss + loss_of(*ref, y[i], proj[i])
    ref_loss.backward()
    for n in bank.param_names:
        want = getattr(bank, n).grad
        if not with_memory and n == "mem_w":  # no memory: the read is not part of the graph
            assert grads[n] is None and want is None
            continue
        torch.testing.assert_close(grads[n], want, **TOL)
        assert torch.isfinite(grads[n]).all()
    if subset is not None:
        rest = [m for m in range(bank.n_modules) if m not in subset]
        assert all(not g[rest].any() for g in grads.values() if g is not None)


def test_causal_and_empty_memory_is_no_memory(plugin):
    bank = make_bank(plugin, M=3)
    tokens, memory, mask = inputs(3)
    out = bank(tokens, memory, mask)
    changed = tokens.clone()
    changed[..., -1] = (changed[..., -1] + 1) % V
    mem2 = memory.clone()
    mem2[:, :, -1] = torch.randn(3, B, P, DM)  # so does the memory at the last position
    out2 = bank(changed, mem2, mask)
    for a, b in zip(out, out2, strict=True):
        torch.testing.assert_close(a[:, :, :-1], b[:, :, :-1], atol=0, rtol=0)
    assert not torch.equal(out.logits[:, :, -1], out2.logits[:, :, -1])

    none = bank(tokens)
    empty = bank(tokens, memory, torch.zeros_like(mask))
    for a, b in zip(none, empty, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_society_with_the_docs_scenario_runs(plugin, tmp_path):
    data = yaml.safe_load(only_block("yaml", f"type: {NAME}"))
    overrides = {
        "train.steps": 6,
        "train.eval_every": 6,
        "train.eval_batches": 1,
        "train.batch_size": 8,
        "corpus.train_sequences": 300,
        "corpus.val_sequences": 50,
        "device": "cpu",
    }
    sim = brainnet.Simulation(brainnet.load_scenario(data, overrides), out_dir=tmp_path)
    summary = sim.run()
    assert sim.step == 6
    assert isinstance(sim.banks[1], plugin.BigramBank) and sim.banks[1].n_modules == 8
    losses = (summary["initial_val_loss"], summary["final_val_loss"], summary["final_train_loss"])
    assert all(math.isfinite(x) for x in losses)
    rows = brainnet.open_run(sim.run_dir).module_metrics.to_pylist()
    mine = [r for r in rows if r["type"] == NAME]
    assert {r["module"] for r in mine} == set(range(8, 16))
    assert all(math.isfinite(r["train_loss"]) for r in mine if r["step"] == 6)


def documented_errors() -> list[str]:
    return [
        line.removeprefix("RegistryError: ")
        for b in blocks("text")
        for line in b.splitlines()
        if line.startswith("RegistryError: ")
    ]


def test_registry_errors_are_the_documented_ones(plugin):
    shown = documented_errors()
    assert len(shown) == 3

    with pytest.raises(RegistryError) as e:
        MODULE_TYPES.register(NAME)(plugin.BigramBank)
    assert str(e.value) == shown[0]
    assert MODULE_TYPES.get(NAME) is plugin.BigramBank  # the first registration stands

    checked = Registry("module type", check=check_module_type)
    not_a_bank = type("NotABank", (), {"__module__": "my_bigram"})
    with pytest.raises(RegistryError) as e:
        checked.add(NAME, not_a_bank)
    assert str(e.value) == shown[1]

    bad_config = type("BigramBank", (Bank,), {"__module__": "my_bigram", "Config": dict})
    with pytest.raises(RegistryError) as e:
        checked.add(NAME, bad_config)
    assert str(e.value) == shown[2]
    assert checked.names() == []


def test_entry_point_plugin_is_listed(plugin, monkeypatch):
    """The pyproject table of the docs, as an entry point the registry loads."""
    toml = only_block("toml", '[project.entry-points."brainnet.modules"]')
    assert f'{NAME} = "my_bigram:BigramBank"' in toml

    class FakeEntryPoint:
        name, value = NAME, "my_bigram:BigramBank"

        def load(self):
            return plugin.BigramBank

    monkeypatch.setattr(registry, "entry_points", lambda group: [FakeEntryPoint()])
    reg = Registry(
        "module type",
        builtins="brainnet.modules",
        entry_point_group="brainnet.modules",
        check=check_module_type,
    )
    assert NAME in reg.names() and reg.get(NAME) is plugin.BigramBank
