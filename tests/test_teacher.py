"""A frozen teacher from an earlier run (distill.teacher: run): config, loading, its logits,
no gradient, one-line errors, and a student run that distils from it."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

import brainnet
from brainnet.config import ScenarioError, load_scenario
from brainnet.engine import Simulation
from brainnet.learning import EMATeacher, FrozenTeacher
from brainnet.modules import TransformerBank

TINY = {
    "train.steps": 5, "train.eval_every": 5, "train.eval_batches": 1, "train.batch_size": 4,
    "train.warmup_steps": 0, "log.every": 5, "corpus.block_size": 16, "modules.0.d_model": 16,
    "modules.0.n_layer": 1, "modules.0.n_head": 2, "device": "cpu",
}  # fmt: skip


def trained(out, name="nanogpt_baby", **extra) -> Simulation:
    sim = Simulation(load_scenario(name, {**TINY, **extra}), out_dir=out)
    sim.run()
    return sim


@pytest.fixture(scope="module")
def teacher_sim(tmp_path_factory) -> Simulation:
    """A tiny run of two modules on tinyshakespeare, 5 steps, checkpoint in its run dir."""
    return trained(tmp_path_factory.mktemp("teacher"), **{"modules.0.count": 2})


def student(tmp_path, teacher_run, **extra) -> Simulation:
    sets = {
        **TINY, "distill.enabled": True, "distill.teacher": "run",
        "distill.teacher_run": str(teacher_run), **extra,
    }  # fmt: skip
    return Simulation(load_scenario("nanogpt_baby", sets), out_dir=tmp_path)


def one_line_error(fn) -> str:
    with pytest.raises(ScenarioError) as e:
        fn()
    assert len(e.value.problems) == 1 and "\n" not in e.value.problems[0]
    return e.value.problems[0]


# --------------------------------------------------------------------------- config


def test_config_teacher_run_needs_a_path_and_a_path_needs_teacher_run():
    msg = one_line_error(lambda: load_scenario("nanogpt_baby", {"distill.teacher": "run"}))
    assert ": distill.teacher_run = null: teacher 'run' needs" in msg
    msg = one_line_error(lambda: load_scenario("nanogpt_baby", {"distill.teacher_run": "x/y"}))
    assert msg.startswith("--set: distill.teacher_run = 'x/y': only used by teacher 'run'")
    sc = load_scenario("nanogpt_baby", {"distill.teacher": "run", "distill.teacher_run": "x/y"})
    assert sc.distill.teacher_run == "x/y"  # existence is checked when the simulation is built


# --------------------------------------------------------------------------- loading


def test_loads_the_runs_modules_frozen(teacher_sim):
    for path in (teacher_sim.run_dir, teacher_sim.run_dir / "checkpoint.pt"):
        t = FrozenTeacher.load(path, teacher_sim.corpus, "cpu")
        assert t.n_modules == 2 and t.step == 5 and t.name == "nanogpt_baby"
        assert t.mirror(0) is None  # a frozen teacher does not follow a reorganisation
        ema = EMATeacher(teacher_sim.banks)
        assert ema.mirror(0) is ema.banks[0] and ema.scorer(0) is ema.banks[0]
        for mine, theirs in zip(t.banks[0].parameters(), teacher_sim.banks[0].parameters(),
                                strict=True):  # fmt: skip
            assert torch.equal(mine, theirs) and not mine.requires_grad
        assert not t.banks[0].training
        assert t.state_dict() == {"kind": "run", "path": str(path), "step": 5}


def test_teacher_logits_are_the_mixture_of_its_modules_own_forward(teacher_sim):
    t = FrozenTeacher.load(teacher_sim.run_dir, teacher_sim.corpus, "cpu")
    x = teacher_sim.val_batches[0].x  # [B, T]
    bank = teacher_sim.banks[0].eval()
    with torch.no_grad():
        z = bank(x.unsqueeze(0).expand(2, -1, -1)).logits  # [2, B, T, V]
    mix = torch.log((z.softmax(-1)[0] + z.softmax(-1)[1]) / 2)
    out = t.logits(0, x.unsqueeze(0).expand(3, -1, -1))  # three students, one batch
    assert out.shape == (3, *z.shape[1:])
    for m in range(3):
        torch.testing.assert_close(out[m], mix, atol=1e-5, rtol=1e-5)
    # per-student batches (not a broadcast) give each row its own teacher output
    rows = torch.stack([x, x.roll(1, dims=1)])
    own = t.logits(0, rows)
    torch.testing.assert_close(own[0], mix, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(own[1], t.logits(0, rows[1:])[0])
    # one module: its own log-softmax (KD-equivalent to its raw logits)
    one = TransformerBank(bank.cfg.model_copy(update={"count": 1}), bank.vocab_size, 16)
    with torch.no_grad():
        own_z = one(x[None]).logits[0]
    torch.testing.assert_close(FrozenTeacher([one]).logits(0, x[None])[0],
                               own_z.log_softmax(-1))  # fmt: skip


def test_no_gradient_reaches_the_teacher_and_the_student_distils(teacher_sim, tmp_path):
    s = student(tmp_path, teacher_sim.run_dir)
    before = [p.clone() for p in s.teacher.banks[0].parameters()]
    owned = {id(p) for g in s.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in owned for p in s.teacher.banks[0].parameters())
    summary = s.run()
    assert summary["steps"] == 5
    for b, p in zip(before, s.teacher.banks[0].parameters(), strict=True):
        assert torch.equal(b, p) and p.grad is None
    rows = brainnet.open_run(s.run_dir).metrics.to_pylist()
    assert rows[-1]["distill_loss"] is not None and math.isfinite(rows[-1]["distill_loss"])
    assert s.state_dict()["teacher"] == {"kind": "run", "path": str(teacher_sim.run_dir),
                                         "step": 5}  # fmt: skip


def test_distillation_pulls_the_student_toward_the_teacher(teacher_sim, tmp_path):
    """alpha = 0: the loss is T²·KL alone; a few steps lower it."""
    s = student(tmp_path, teacher_sim.run_dir, **{"distill.alpha": 0.0, "train.lr": 1e-2})
    batch = s.val_batches[0]
    with torch.no_grad():
        kd0 = s.consolidation.losses(batch, s.forward(batch), s.step)[0].mean()
    s.run()
    with torch.no_grad():
        assert s.consolidation.losses(batch, s.forward(batch), s.step)[0].mean() < kd0


def test_resume_reloads_the_teacher_from_disk(teacher_sim, tmp_path):
    full = student(tmp_path / "a", teacher_sim.run_dir)
    full.run(steps=3)
    saved = tmp_path / "at3.pt"
    shutil.copy(full.run_dir / "checkpoint.pt", saved)
    full.run()
    resumed = Simulation.resume(saved, out_dir=tmp_path / "b")
    assert isinstance(resumed.teacher, FrozenTeacher)
    resumed.run()
    for p, q in zip(full.banks.parameters(), resumed.banks.parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_society_run_teaches_with_its_banks(tmp_path):
    society = {"topology": "ensemble", "clusters": 2}
    soc = trained(tmp_path / "t", **{"modules.0.count": 2, "society": society})
    t = FrozenTeacher.load(soc.run_dir, soc.corpus, "cpu")
    assert t.n_modules == 2
    for mine, theirs in zip(t.banks[0].parameters(), soc.banks[0].parameters(), strict=True):
        assert torch.equal(mine, theirs)


# --------------------------------------------------------------------------- errors


def test_bad_path_is_one_line_naming_the_field(tmp_path):
    msg = one_line_error(lambda: student(tmp_path, tmp_path / "nowhere"))
    assert msg.startswith(f"distill.teacher_run = '{tmp_path / 'nowhere'}':")
    assert "no such file" in msg and "allowed:" in msg


def test_vocab_mismatch_is_one_line(teacher_sim, tmp_path):
    tasks = trained(tmp_path / "t", "nanogpt_baby", **{"corpus": {"kind": "tasks",
                    "block_size": 16, "train_sequences": 64, "val_sequences": 16}})  # fmt: skip
    msg = one_line_error(lambda: student(tmp_path / "s", tasks.run_dir))
    assert "vocab_size = 256 in the teacher run, 65 in this scenario's corpus" in msg
    assert msg.startswith("distill.teacher_run = ")


def test_shorter_teacher_context_is_one_line(teacher_sim, tmp_path):
    msg = one_line_error(lambda: student(tmp_path, teacher_sim.run_dir,
                                         **{"corpus.block_size": 32}))  # fmt: skip
    assert "block_size = 16 in the teacher run, 32 in this scenario's corpus" in msg


@pytest.mark.slow
def test_distilling_the_stronger_teacher_beats_hard_labels(tmp_path):
    """docs/results.md, seed 0 as shipped: teacher ≈ 1.97, hard-only ≈ 2.36, distilled ≈ 2.28."""
    teacher = trained_as_shipped(tmp_path / "t", "distill_teacher")
    hard = trained_as_shipped(tmp_path / "h", "distill_student")
    kd = trained_as_shipped(tmp_path / "k", "distill_student", **{
        "distill.enabled": True, "distill.teacher": "run",
        "distill.teacher_run": str(teacher["run_dir"])})  # fmt: skip
    assert teacher["final_val_loss"] < hard["final_val_loss"] - 0.2, (teacher, hard)
    assert kd["final_val_loss"] < hard["final_val_loss"] - 0.03, (kd, hard)


def trained_as_shipped(out, name, **sets) -> dict:
    return Simulation(load_scenario(name, sets), out_dir=out).run()
