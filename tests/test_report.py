"""Reports: every plot the run has data for, notes for the rest, and a real browser loads them."""

from __future__ import annotations

import base64
import io
import re

import pytest
from browser import check_in_chromium
from PIL import Image
from typer.testing import CliRunner

import brainnet
from brainnet.cli import app
from brainnet.viz.report import compare, render

SMALL = {
    "train.steps": 6, "train.eval_every": 3, "train.eval_batches": 1, "train.batch_size": 8,
    "log.every": 2, "corpus.block_size": 32, "corpus.train_sequences": 300,
    "corpus.val_sequences": 50, "modules.0.d_model": 16, "modules.0.n_layer": 1, "device": "cpu",
}  # fmt: skip


@pytest.fixture(scope="module")
def brain_run(tmp_path_factory):
    sim = brainnet.Simulation(
        brainnet.load_scenario("quickstart", SMALL), out_dir=tmp_path_factory.mktemp("runs")
    )
    sim.run()
    return sim.run_dir


def run_rows(run_dir) -> list[dict]:
    return brainnet.open_run(run_dir).metrics.to_pylist()


def images(page: str) -> list[Image.Image]:
    found = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    return [Image.open(io.BytesIO(base64.b64decode(b))).convert("L") for b in found]


def test_report_has_every_plot_the_run_has_data_for(brain_run):
    page = render(brain_run).read_text()
    for title in ("society graph", "losses (society, per cluster, per domain)",
                  "routing: domain x cluster", "blackboard: occupancy and who wrote",
                  "arousal and focus", "communication cost against loss"):  # fmt: skip
        assert title in page, title
    # the task corpus may mark answer tokens (then its answers plot is drawn) or not (a note)
    answers = any(r.get("answer_loss") is not None for r in run_rows(brain_run))
    assert ("answer tokens: loss and accuracy per domain" in page) and (
        ("no answer tokens in this run" in page) != answers
    )
    imgs = images(page)
    # graph, losses, routing, blackboard, arousal, communication (+ answers)
    assert len(imgs) == 6 + answers
    for img in imgs:
        assert img.width > 300 and img.height > 200
        lo, hi = img.getextrema()
        assert hi - lo > 100, "an image is blank"
    # data this run does not have: a note, never an empty plot
    assert "no collapse diagnostics in this run" in page
    assert "no emergence probe in this run" in page
    assert "<td>scenario</td><td>quickstart</td>" in page


def test_report_of_independent_modules_leaves_society_plots_out(tmp_path):
    sc = brainnet.load_scenario("nanogpt_baby", {
        "train.steps": 4, "train.eval_every": 2, "train.eval_batches": 1, "log.every": 2,
        "modules.0.n_layer": 1, "modules.0.d_model": 32, "device": "cpu"})  # fmt: skip
    sim = brainnet.Simulation(sc, out_dir=tmp_path)
    sim.run()
    page = render(sim.run_dir).read_text()
    assert len(images(page)) == 1  # the losses
    for note in ("no topology.json", "no routing", "no blackboard", "no arousal",
                 "no communication counted"):  # fmt: skip
        assert note in page


def test_compare_and_cli(brain_run, tmp_path):
    out = compare([brain_run, brain_run], tmp_path / "cmp.html")
    assert len(images(out.read_text())) == 1
    r = CliRunner().invoke(app, ["report", str(brain_run)])
    assert r.exit_code == 0 and "report.html" in r.output
    r = CliRunner().invoke(app, ["compare", str(brain_run), str(brain_run),
                                 "--out", str(tmp_path / "c.html")])  # fmt: skip
    assert r.exit_code == 0 and "| quickstart | brain |" in r.output
    r = CliRunner().invoke(app, ["report", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "no config.yaml" in r.output


def test_run_writes_the_report_unless_told_not_to(tmp_path):
    args = ["run", "quickstart", "--quiet", "--out"]
    sets = [x for k, v in SMALL.items() for x in ("--set", f"{k}={v}")]
    r = CliRunner().invoke(app, [*args, str(tmp_path / "a"), *sets])
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "a").glob("*/report.html"))) == 1
    r = CliRunner().invoke(app, [*args, str(tmp_path / "b"), "--no-report", *sets])
    assert r.exit_code == 0
    assert list((tmp_path / "b").glob("*/report.html")) == []


def test_tensorboard_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    sc = brainnet.load_scenario("quickstart", {**SMALL, "log.tensorboard": True})
    sim = brainnet.Simulation(sc, out_dir=tmp_path)
    sim.run()
    files = list((sim.run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert files and files[0].stat().st_size > 0


def test_report_loads_in_headless_chromium(brain_run, tmp_path):
    answers = any(r.get("answer_loss") is not None for r in run_rows(brain_run))
    check_in_chromium(render(brain_run), images=6 + answers, height=3000,
                      shot=tmp_path / "report.png")  # fmt: skip


# --------------------------------------------------------------------------- binding tasks

DOMAINS = ["pairs", "triples", "plain"]  # "plain" has no answer tokens
FLOORS = {"pairs": 1.6, "triples": 2.1}
FLOOR_MEAN = 1.8


def fake_run(path, answers: bool = True, new_kinds: bool = True):
    """A run directory by hand (config, vocab, metrics, events): evaluations at steps 0, 4 and
    6, train rows every 2 steps, distillation at step 4; ``answers``: the binding task's
    answer-token columns and floors; ``new_kinds``: the split message kinds (else the old
    ``messages_input``)."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    path.mkdir(parents=True)
    cfg = {"name": "binding", "seed": 0, "corpus": {"domains": DOMAINS}, "society": {}}
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    voc = {"kind": "byte", "vocab_size": 256, "domains": DOMAINS}
    if answers:
        voc |= {"answer_floor": FLOORS, "answer_floor_mean": FLOOR_MEAN, "answer_ceiling": 0.0}
    (path / "vocab.json").write_text(json.dumps(voc))
    kinds = ["bottom_up", "top_down", "attend"] if new_kinds else ["input"]
    rows = []
    for step in (0, 2, 4, 6):
        train, val = step > 0, step in (0, 4, 6)
        a = 2.5 - 0.1 * step
        row = {
            "step": step, "train_loss": 3.0 - 0.1 * step if train else None,
            "val_loss": 3.1 - 0.1 * step if val else None,
            "tokens_per_s": 1000.0 if train else None, "messages": 60.0 if train else None,
            "messages_mate": 30.0 if train else None, "messages_board_read": 0.0 if train else None,
            "messages_board_write": 0.0 if train else None, "sim_time_ms": 1.5 if train else None,
            "arousal": 0.5, "focus": 0.4, "k": 2, "rounds": 1, "temperature": 1.0 + 0.05 * step,
            "threshold": 0.2, "lr_scale": 1.0 - 0.05 * step,
            "distill_loss": [1.0, 1.2, 0.8] if step == 4 else None,
            "warmup_replaced": [0.1, 0.2, 0.3] if step == 4 else None,
        }  # fmt: skip
        for k in kinds:
            row[f"messages_{k}"] = 10.0 if train else None
        if answers:
            row |= {
                "answer_loss": a if train else None, "answer_acc": 0.1 * step if train else None,
                "domain_answer_loss": [a, a + 0.3, None] if train else None,
                "domain_answer_acc": [0.1 * step, 0.05 * step, None] if train else None,
                "val_answer_loss": a + 0.1 if val else None,
                "val_answer_acc": 0.1 * step if val else None,
                "val_domain_answer_loss": [a + 0.1, a + 0.4, None] if val else None,
                "val_domain_answer_acc": [0.1 * step, 0.05 * step, None] if val else None,
            }  # fmt: skip
        rows.append(row)
    pq.write_table(pa.Table.from_pylist(rows), path / "metrics.parquet")
    events = [{"step": 0, "kind": "run_start", "n_modules": 3, "params_total": 1000},
              {"step": 6, "kind": "run_end", "steps": 6, "final_val_loss": 2.5}]  # fmt: skip
    (path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


def _lines(fig, axes=None):
    """Label -> line of the figure's axes (``axes``: only those, by position)."""
    chosen = fig.axes if axes is None else [fig.axes[i] for i in axes]
    return {line.get_label(): line for ax in chosen for line in ax.get_lines()}


def test_answers_plot_per_domain_with_floors(tmp_path):
    from matplotlib.figure import Figure

    from brainnet.metrics import open_run
    from brainnet.viz import plots

    fig = plots.answers(open_run(fake_run(tmp_path / "b")))
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    lines = _lines(fig, axes=[0])  # the loss panel (the accuracy panel has no floors)
    for name, floor in FLOORS.items():
        assert list(lines[f"{name} floor"].get_ydata()) == [floor, floor]
        assert f"{name} train" in lines and f"{name} val" in lines
    assert list(lines["all floor"].get_ydata()) == [FLOOR_MEAN, FLOOR_MEAN]
    assert "plain train" not in lines  # a domain without answers is not drawn
    val = lines["pairs val"]
    assert list(val.get_xdata()) == [0, 4, 6]  # the evaluation rows only
    assert val.get_ydata()[-1] == pytest.approx(2.5 - 0.6 + 0.1)
    acc = _lines(fig, axes=[1])
    assert "pairs floor" not in acc and acc["pairs val"].get_ydata()[-1] == pytest.approx(0.6)


NO_ANSWERS = "no answer tokens in this run (answer metrics come with binding tasks)"


def test_answers_is_a_note_without_answer_columns(tmp_path):
    from brainnet.metrics import open_run
    from brainnet.viz import plots

    assert plots.answers(open_run(fake_run(tmp_path / "plain", answers=False))) == NO_ANSWERS


def test_a_real_run_gets_an_answers_plot_only_with_answer_columns(brain_run):
    from brainnet.metrics import open_run
    from brainnet.viz import plots

    run = open_run(brain_run)
    answers = any(r.get("answer_loss") is not None for r in run_rows(brain_run))
    assert (plots.answers(run) == NO_ANSWERS) != answers
    assert plots.distillation(run).startswith("no distillation in this run")
    assert not isinstance(plots.communication(run), str)  # its kinds, old or new, are drawn


def test_arousal_communication_and_distillation_of_a_binding_run(tmp_path):
    from matplotlib.figure import Figure

    from brainnet.metrics import open_run
    from brainnet.viz import plots

    run = open_run(fake_run(tmp_path / "b"))
    fig = plots.arousal(run)
    assert len(fig.axes) == 3 and "what arousal set" in fig.axes[2].get_title()
    assert {"router temperature", "board write threshold", "lr scale"} <= set(_lines(fig))
    labels = set(_lines(plots.communication(run)))
    assert {"mate", "bottom_up", "top_down", "attend"} <= labels and "input" not in labels
    old = open_run(fake_run(tmp_path / "old", answers=False, new_kinds=False))
    labels = set(_lines(plots.communication(old)))
    assert "input" in labels and "bottom_up" not in labels
    assert plots.message_kinds(old.metrics.to_pylist())[:2] == ["messages_mate", "messages_input"]
    fig = plots.distillation(run)
    assert isinstance(fig, Figure)
    mean = _lines(fig)["mean over modules"]
    assert list(mean.get_xdata()) == [4] and mean.get_ydata()[0] == pytest.approx(1.0)
    assert list(_lines(fig)["warmup_replaced"].get_ydata()) == pytest.approx([0.2])


def test_report_of_a_binding_run_has_the_new_sections(tmp_path):
    page = render(fake_run(tmp_path / "b")).read_text()
    for title in ("answer tokens: loss and accuracy per domain",
                  "distillation: loss and teacher statistics", "what arousal set",
                  "communication cost against loss"):  # fmt: skip
        assert title in page, title
    # losses, answers, arousal, distillation, communication (no graph, router, board, probes)
    imgs = images(page)
    assert len(imgs) == 5
    for img in imgs:
        lo, hi = img.getextrema()
        assert hi - lo > 100, "an image is blank"
    assert "<td>final val answer loss</td><td>2.0000</td>" in page  # the last evaluation's
    assert f"<td>answer floor (no communication)</td><td>{FLOOR_MEAN:.4f}</td>" in page
    plain = render(fake_run(tmp_path / "p", answers=False)).read_text()
    assert "no answer tokens in this run" in plain and "final val answer loss" not in plain
