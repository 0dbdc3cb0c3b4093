"""Reorganisation primitive: after prune / reorder / spawn / combined plans the surviving modules'
outputs, AdamW moments and EMA teacher rows are bit-identical to before; new modules are noisy
copies of their parent with zero moments and a fresh teacher row; RowPlan validation; the row
mapping that the collapse monitor and the emergence tracker follow."""

from __future__ import annotations

import copy
import functools
import math

import pytest
import torch

from brainnet.config import CollapseConfig, EmergenceConfig, TrainConfig
from brainnet.engine.optim import build_optimizer
from brainnet.learning import CollapseMonitor, EMATeacher, EmergenceTracker
from brainnet.modules.bank import module_cross_entropy
from brainnet.modules.recurrent_lm import RecurrentBank, RecurrentConfig
from brainnet.modules.resize import RowPlan, keep, module_rows, resize_bank, spawn
from brainnet.modules.tiny_lm import TransformerBank, TransformerConfig

V, BLOCK, M = 11, 12, 5
CPU = torch.device("cpu")


def make_bank(kind: str):
    torch.manual_seed(0)
    if kind == "tf_tied_bias":
        cfg = TransformerConfig(count=M, n_layer=2, d_model=16, n_head=2, message_dim=8)
        return TransformerBank(cfg, V, BLOCK)
    if kind == "tf_untied_nobias":
        cfg = TransformerConfig(
            count=M, n_layer=2, d_model=16, n_head=2, message_dim=8, bias=False, tie_weights=False
        )
        return TransformerBank(cfg, V, BLOCK)
    cfg = RecurrentConfig(count=M, n_layer=2, d_model=16, message_dim=8, tie_weights=False)
    return RecurrentBank(cfg, V, BLOCK)


KINDS = ["tf_tied_bias", "tf_untied_nobias", "gru"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: intra-op threads only add spin-wait overhead (100x on a busy
    2-core machine). Restored afterwards for the other test modules."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def train_step(bank, opt, teacher, step: int, gen: torch.Generator) -> None:
    n = bank.n_modules
    x = torch.randint(0, V, (n, 4, BLOCK), generator=gen)
    y = torch.randint(0, V, (n, 4, BLOCK), generator=gen)
    mem = torch.randn(n, 4, BLOCK, 2, 8, generator=gen)  # so that the memory weights train too
    opt.zero_grad(set_to_none=True)
    out = bank(x, mem)
    # CE plus a small term on the society heads, so that every parameter has AdamW state
    loss = module_cross_entropy(out.logits, y).sum()
    (loss + out.message.square().mean() + out.salience.square().mean()).backward()
    opt.step()
    teacher.update(step)


@functools.cache
def _trained(kind: str):
    bank = make_bank(kind)
    cfg = TrainConfig(lr=1e-2, min_lr=1e-3, warmup_steps=0, weight_decay=0.1)
    opt = build_optimizer([bank], cfg, CPU)
    teacher = EMATeacher([bank])
    gen = torch.Generator().manual_seed(1)
    for step in range(3):
        train_step(bank, opt, teacher, step, gen)
    opt.zero_grad(set_to_none=True)
    bank.eval()
    return bank, opt, teacher


def trained(kind: str):
    """A bank after 3 real AdamW steps, its optimiser and EMA teacher (a private deep copy of
    one cached run: one deepcopy keeps the optimiser and teacher pointing at this bank)."""
    bank, opt, teacher = copy.deepcopy(_trained(kind))
    assert all(id(p) in {id(q) for q in bank.parameters()} for p in opt.state)
    assert teacher.students[0] is bank
    return bank, opt, teacher, torch.Generator().manual_seed(2)


def snapshot(bank, opt, teacher_bank):
    """name -> (param, exp_avg, exp_avg_sq, step, teacher) clones."""
    out = {}
    for name in bank.param_names:
        p = getattr(bank, name)
        if p is None:
            continue
        st = opt.state[p]
        out[name] = (
            p.detach().clone(),
            st["exp_avg"].clone(),
            st["exp_avg_sq"].clone(),
            st["step"].clone(),
            getattr(teacher_bank, name).detach().clone(),
        )
    return out


PLANS = {
    "prune": keep([0, 2, 4]),
    "reorder": keep([4, 1, 0, 3, 2]),
    "spawn": spawn(M, [1, 3]),
    "combined": RowPlan(source=[0, 1, 3, 4, -1], parent=[-1, -1, -1, -1, 0]),
}


CASES = [
    (action, noise)
    for action in PLANS
    for noise in ([0.0, 0.5] if action in ("spawn", "combined") else [0.0])  # noise: new rows
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("action", "noise"), CASES)
def test_resize_keeps_survivors_exactly(kind, action, noise):
    plan = PLANS[action]
    bank, opt, teacher, gen = trained(kind)
    tbank = teacher.banks[0]
    before = snapshot(bank, opt, tbank)
    n_groups = len(opt.param_groups)
    group_sizes = [len(g["params"]) for g in opt.param_groups]

    new_pos = [i for i, s in enumerate(plan.source) if s >= 0]
    old_rows = [plan.source[i] for i in new_pos]
    x = torch.randint(0, V, (len(new_pos), 3, BLOCK), generator=gen)
    mem = torch.randn(len(new_pos), 3, BLOCK, 2, 8, generator=gen)
    out_before = bank(x, idx=torch.tensor(old_rows))
    out_mem_before = bank(x, mem, idx=torch.tensor(old_rows))
    t_before = tbank(x, idx=torch.tensor(old_rows)).logits

    resize_bank(
        bank, plan, opt, noise=noise, generator=torch.Generator().manual_seed(7), teacher_bank=tbank
    )
    n_new = len(plan.source)

    # (5) counts, layout, optimiser holds exactly the bank's parameters
    assert bank.n_modules == n_new and bank.cfg.count == n_new
    assert tbank.n_modules == n_new and tbank.cfg.count == n_new
    assert len(opt.param_groups) == n_groups
    assert [len(g["params"]) for g in opt.param_groups] == group_sizes
    opt_ids = {id(p) for g in opt.param_groups for p in g["params"]}
    assert opt_ids == {id(p) for p in bank.parameters()}
    assert {id(p) for p in opt.state} == opt_ids
    assert all(p.requires_grad for p in bank.parameters())
    assert not any(p.requires_grad for p in tbank.parameters())

    # (1) survivors' outputs bit-identical, row for row (with and without memory)
    out_after = bank(x, idx=torch.tensor(new_pos))
    out_mem_after = bank(x, mem, idx=torch.tensor(new_pos))
    for a, b in zip(out_before, out_after, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(out_mem_before, out_mem_after, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(t_before, tbank(x, idx=torch.tensor(new_pos)).logits)

    src = torch.tensor(old_rows)
    pos = torch.tensor(new_pos)
    new_rows = [i for i, s in enumerate(plan.source) if s < 0]
    parents = [plan.parent[i] for i in new_rows]
    for name, (p0, m0, v0, step0, t0) in before.items():
        p = getattr(bank, name)
        st = opt.state[p]
        assert p.shape == (n_new, *p0.shape[1:])
        # (2) moments of survivors exact, step unchanged; (3) teacher rows exact
        assert torch.equal(p[pos], p0[src])
        assert torch.equal(st["exp_avg"][pos], m0[src])
        assert torch.equal(st["exp_avg_sq"][pos], v0[src])
        assert torch.equal(st["step"], step0)
        t = getattr(tbank, name)
        assert torch.equal(t[pos], t0[src])
        # (4) new rows: zero moments, teacher = new student row, params = parent (+ noise)
        for i, par in zip(new_rows, parents, strict=True):
            assert torch.count_nonzero(st["exp_avg"][i]) == 0
            assert torch.count_nonzero(st["exp_avg_sq"][i]) == 0
            assert torch.equal(t[i], p[i])
            if noise == 0.0:
                assert torch.equal(p[i], p0[par])
            else:
                diff = (p[i] - p0[par]).flatten()
                sd = p0[par].flatten().std(correction=0).item()
                if sd == 0.0:
                    assert torch.equal(p[i], p0[par])
                elif diff.numel() >= 500:  # large enough for a tight estimate of the scale
                    ratio = diff.std().item() / (noise * sd)
                    assert 0.85 < ratio < 1.15, (name, ratio)
                    assert abs(diff.mean().item()) < 0.2 * noise * sd
                else:
                    assert not torch.equal(p[i], p0[par])
                    assert diff.abs().max().item() < 6 * noise * sd

    # (5) a further step runs, changes the new rows, and the EMA follows the new layout
    new_before = {n: getattr(bank, n).detach()[new_rows].clone() for n in before}
    bank.train()
    train_step(bank, opt, teacher, 3, gen)
    if new_rows:
        changed = [
            not torch.equal(getattr(bank, n).detach()[new_rows], new_before[n]) for n in before
        ]
        assert all(changed)
        st = opt.state[bank.wte]
        assert torch.count_nonzero(st["exp_avg_sq"][new_rows]) > 0


def test_noise_is_reproducible_and_survivors_untouched_by_generator():
    outs = []
    for _ in range(2):
        bank, opt, teacher, _ = trained("tf_tied_bias")
        resize_bank(bank, spawn(M, [2]), opt, noise=0.1, generator=torch.Generator().manual_seed(3))
        outs.append(bank.fc_w.detach().clone())
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0][5], outs[0][2])


def test_resize_without_teacher_and_parameter_without_state():
    bank = make_bank("gru")
    opt = build_optimizer([bank], TrainConfig(), CPU)  # no step yet: no state at all
    w0 = bank.wte.detach().clone()
    resize_bank(bank, keep([3, 1]), opt)
    assert len(opt.state) == 0
    assert torch.equal(bank.wte, w0[[3, 1]])
    assert bank.cfg.count == 2


def test_rowplan_validation():
    with pytest.raises(ValueError, match="more than once"):
        RowPlan(source=[0, 1, 1], parent=[-1, -1, -1])
    with pytest.raises(ValueError, match="source has 2 entries but parent has 3"):
        RowPlan(source=[0, 1], parent=[-1, -1, -1])
    with pytest.raises(ValueError, match="parents out of range"):
        spawn(5, [7])
    with pytest.raises(ValueError, match="need a parent >= 0"):
        RowPlan(source=[0, -1], parent=[-1, -1])
    with pytest.raises(ValueError, match="at least one module"):
        keep([])
    with pytest.raises(ValueError, match="source entries must be >= 0"):
        keep([0, -2])
    with pytest.raises(ValueError, match="out of range"):
        keep([0, 5], n_old=5)


def test_resize_rejects_bad_plan_before_changing_anything():
    bank, opt, teacher, _ = trained("tf_tied_bias")
    params = [p for g in opt.param_groups for p in g["params"]]
    w0 = bank.wte
    with pytest.raises(ValueError, match="parents out of range for a bank of 5"):
        resize_bank(bank, RowPlan(source=[0, -1], parent=[-1, 9]), opt)
    with pytest.raises(ValueError, match="source rows \\[6\\] out of range"):
        resize_bank(bank, keep([6]), opt)
    other = build_optimizer([make_bank("tf_tied_bias")], TrainConfig(), CPU)
    with pytest.raises(ValueError, match="not in the optimizer"):
        resize_bank(bank, keep([0]), other)
    assert bank.wte is w0 and bank.cfg.count == M
    assert [p for g in opt.param_groups for p in g["params"]] == params


def test_module_rows_drive_collapse_and_emergence():
    plan = RowPlan(source=[0, 1, 3, 4, -1], parent=[-1, -1, -1, -1, 0])
    rows = module_rows(plan)
    assert rows.dtype == torch.long and rows.tolist() == [0, 1, 3, 4, -1]

    mon = CollapseMonitor(CollapseConfig(), M)
    mon.collapsed = [True, False, True, True, False]
    mon.select_rows(rows)
    assert mon.collapsed == [True, False, True, False, False]

    bank, opt, teacher, gen = trained("tf_tied_bias")
    tracker = EmergenceTracker(EmergenceConfig(), V, seed=0)
    x = torch.randint(0, V, (1, 3, BLOCK), generator=gen).expand(M, -1, -1)
    tracker.observe(tracker.phi(bank(x).logits))
    resize_bank(bank, plan, opt, teacher_bank=teacher.banks[0])
    tracker.select_rows(rows)
    res = tracker.observe(tracker.phi(bank(x[:1].expand(5, -1, -1)).logits))
    per = res["delta_phi_module"]
    # survivors keep their φ history: Δφ ≈ 0 (not bitwise: a module computed at another position
    # of the batched call may round differently); the new module has none yet
    assert all(abs(d) < 1e-5 for d in per[:4])
    assert math.isnan(per[4])
    assert res["delta_phi"] < 1e-5
