"""The sweep report (``brainnet report SWEEP_DIR``) and the comparison of sweeps: every section,
the group table's numbers against a hand-computed t-interval, the Pareto front of a constructed
example, images that decode and are not blank, and a real browser that loads the page."""

from __future__ import annotations

import base64
import inspect
import io
import json
import math
import re
import statistics
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from browser import check_in_chromium
from PIL import Image
from scipy import stats

import brainnet
from brainnet.metrics import open_sweep
from brainnet.stats import TABLE_METRICS
from brainnet.sweep.index import SCHEMA
from brainnet.viz.sweep import compare_sweeps, groups_of, is_sweep_dir, markdown, render_sweep

#: the quickstart brain at a shape that trains 4 steps in well under a second
TINY = {"device": "cpu", "train.steps": 4, "train.batch_size": 4, "train.eval_every": 2,
        "train.eval_batches": 1, "train.warmup_steps": 1, "modules.0.count": 4,
        "modules.0.n_layer": 1, "modules.0.d_model": 16, "modules.0.n_head": 2,
        "society.clusters": 2, "society.arousal.k_range": [2, 2], "corpus.block_size": 16,
        "corpus.train_sequences": 64, "corpus.val_sequences": 16, "emergence": None,
        "collapse": None, "reorganize": None, "log.every": 2}  # fmt: skip
ERROR = "ValueError: train.lr = -1: must be > 0"


def hand_interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95 % t-interval, by the textbook formula."""
    mean = statistics.fmean(values)
    return mean, stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5


def write_sweep(path: Path, rows: list[dict], **spec) -> Path:
    """A sweep directory by hand: sweep.yaml and index.parquet (no run directories)."""
    path.mkdir(parents=True, exist_ok=True)
    spec = {"name": path.name, "base": "quickstart", "seeds": [0, 1], **spec}
    (path / "sweep.yaml").write_text(yaml.safe_dump(spec))
    blank = dict.fromkeys(SCHEMA.names)
    full = [{**blank, "overrides": "{}", "seed": 0, "status": "done", **r} for r in rows]
    pq.write_table(pa.Table.from_pylist(full, schema=SCHEMA), path / "index.parquet")
    return path


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    """``brainnet.sweep``: 2 groups (the brain, independent modules) x 2 seeds of tiny real
    runs; then a third group with one failed and one pending run added to the index."""
    root = tmp_path_factory.mktemp("sweeps")
    s = brainnet.sweep({"name": "tiny", "base": "quickstart", "seeds": [0, 1], "set": TINY,
                        "groups": [{"name": "brain"}, {"name": "solo", "set": {"society": None}}]},
                       out=root, workers=2)  # fmt: skip
    rows = s.index.to_pylist()
    assert [r["status"] for r in rows] == ["done"] * 4
    broken = json.dumps({**json.loads(rows[0]["overrides"]), "train.lr": -1})
    rows += [
        {**dict.fromkeys(SCHEMA.names), "id": "broken/seed=0", "group": "broken",
         "overrides": broken, "seed": 0, "status": "failed", "run_dir": "broken/seed=0",
         "error": ERROR},
        {**dict.fromkeys(SCHEMA.names), "id": "broken/seed=1", "group": "broken",
         "overrides": broken, "seed": 1, "status": "pending", "run_dir": "broken/seed=1"},
    ]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), s.path / "index.parquet")
    return s.path


def constructed(path: Path) -> Path:
    """Six groups of two seeds with made-up numbers and no run directories. Lower is better in
    both: a (0 msgs, 3.0), b (10, 2.5) and d (40, 2.0) are the front; c (20, 2.6) is beaten by
    b, e (40, 2.2) by d, f (5, 3.5) by a."""
    pts = {"a": (0, 3.0), "b": (10, 2.5), "c": (20, 2.6), "d": (40, 2.0), "e": (40, 2.2),
           "f": (5, 3.5)}  # fmt: skip
    rows = [
        {"id": f"{g}/seed={s}", "group": g, "seed": s, "messages_per_step": float(m),
         "final_val_loss": loss + 0.01 * s, "params_total": 1000 + s}
        for g, (m, loss) in pts.items() for s in (0, 1)
    ]  # fmt: skip
    return write_sweep(path, rows)


def images(page: str) -> list[Image.Image]:
    found = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    return [Image.open(io.BytesIO(base64.b64decode(b))).convert("L") for b in found]


def assert_drawn(imgs: list[Image.Image]) -> None:
    for img in imgs:
        assert img.width > 300 and img.height > 200
        lo, hi = img.getextrema()
        assert hi - lo > 100, "an image is blank"
        assert len(img.getcolors(256)) > 20, "an image has almost nothing drawn"


def test_sweep_report_has_every_section(sweep_dir):
    assert is_sweep_dir(sweep_dir) and not is_sweep_dir(sweep_dir / "brain" / "seed=0")
    out = render_sweep(sweep_dir)
    assert out == sweep_dir / "report.html"
    page = out.read_text()
    # the task corpus may mark answer tokens: the Pareto plot is then of the answer loss
    answers = any(r.get("final_val_answer_loss") is not None for r in open_sweep(
        sweep_dir).index.to_pylist())  # fmt: skip
    loss = "final validation answer-token loss" if answers else "final validation loss"
    for text in ("<h2>summary</h2>", "<h2>groups: mean ± 95 % CI over seeds</h2>",
                 f"<h2>{loss} against messages per step</h2>",
                 "<h2>loss curves by group</h2>", "base scenario</td><td>quickstart",
                 "seeds</td><td>[0, 1]", "6: 4 done, 1 failed, 1 pending",
                 "brain</td><td>—</td>", "solo</td><td>society=null</td>",
                 "<code>broken/seed=0</code>: ValueError: train.lr = -1: must be &gt; 0",
                 "95 % t-interval"):  # fmt: skip
        assert text in page, text
    imgs = images(page)
    assert len(imgs) == 2  # the Pareto plot and the loss curves
    assert_drawn(imgs)
    # the group without a finished run is a row of dashes, not a crash
    assert re.search(r"<td>broken</td><td>train\.lr=-1</td><td>0</td><td>1</td>(<td>—</td>){7}",
                     page)  # fmt: skip


def test_group_table_is_mean_and_t_interval_over_seeds(sweep_dir):
    index = pq.read_table(sweep_dir / "index.parquet").to_pylist()
    page = render_sweep(sweep_dir).read_text()
    groups = {g.name: g for g in groups_of(open_sweep(sweep_dir))}
    assert [g.done for g in groups.values()] == [2, 2, 0]
    for name in ("brain", "solo"):
        done = [r for r in index if r["group"] == name and r["status"] == "done"]
        for key in TABLE_METRICS:  # every column the table summarises
            if done[0][key] is None:  # independent modules have no clock: no simulated time
                assert groups[name].stats[key] == (None, None, 0)
                continue
            mean, hw = hand_interval([r[key] for r in done])
            got_mean, got_hw, n = groups[name].stats[key]
            assert n == 2 and math.isclose(got_mean, mean, rel_tol=1e-12, abs_tol=1e-12)
            assert math.isclose(got_hw or 0.0, hw, rel_tol=1e-9, abs_tol=1e-12), (name, key)
        mean, hw = hand_interval([r["final_val_loss"] for r in done])
        assert f"<td>{mean:.4f} ± {hw:.4f}</td>" in page  # the page shows the same numbers
    # independent modules send no messages; the brain does
    assert groups["solo"].stats["messages_per_step"][0] == 0
    assert groups["brain"].stats["messages_per_step"][0] > 0
    assert "some groups send no messages: the messages axis is symlog" in page


def test_pareto_front_of_a_constructed_sweep(tmp_path):
    path = constructed(tmp_path / "made")
    groups = {g.name: g for g in groups_of(open_sweep(path))}
    assert {n for n, g in groups.items() if g.front} == {"a", "b", "d"}
    b = groups["b"].stats["final_val_loss"]
    assert math.isclose(b[0], 2.505) and b[2] == 2
    assert math.isclose(b[1], hand_interval([2.5, 2.51])[1])
    assert math.isclose(b[1], 12.706204736174707 * 0.01 / 2)  # t(0.975, 1) · s / √2, s = 0.01/√2
    page = render_sweep(path).read_text()
    for name in "abcdef":
        star = "★ " if name in "abd" else ""
        assert f"<td>{star}{name}</td>" in page, name
    assert "no loss curves" in page  # no run directories: a note, not an empty plot
    imgs = images(page)
    assert len(imgs) == 1
    assert_drawn(imgs)
    md = markdown(list(groups.values()))
    assert "| ★ a | 2 |" in md and "| c | 2 |" in md


def test_one_seed_and_no_messages_give_notes(tmp_path):
    rows = [{"id": f"{g}/seed=0", "group": g, "messages_per_step": 0.0, "final_val_loss": v}
            for g, v in (("x", 3.0), ("y", 2.0))]  # fmt: skip
    page = render_sweep(write_sweep(tmp_path / "one", rows, seeds=[0])).read_text()
    assert "one finished seed per group: no confidence intervals" in page
    assert "no group sends messages" in page
    assert "<td>★ y</td>" in page and "<td>x</td>" in page  # equal messages: y dominates x
    assert "<td>2.0000</td>" in page  # one value: no ± part
    assert_drawn(images(page))


def test_compare_sweeps_overlays_groups(sweep_dir, tmp_path):
    made = constructed(tmp_path / "made")
    run_dir = sweep_dir / "brain" / "seed=0"
    out = compare_sweeps([sweep_dir, made, run_dir], tmp_path / "cmp.html")
    page = out.read_text()
    assert "<h1>compare 2 sweeps and 1 run</h1>" in page
    for cell in ("<td>made</td><td>★ a</td>", "<td>made</td><td>c</td>", "<td>run</td>"):
        assert cell in page, cell
    assert re.search("<td>tiny</td><td>(★ )?brain</td>", page)
    imgs = images(page)
    assert len(imgs) == 2
    assert_drawn(imgs)


def test_sweep_report_loads_in_headless_chromium(sweep_dir, tmp_path):
    check_in_chromium(render_sweep(sweep_dir), images=2, height=2000, shot=tmp_path / "sweep.png")


def _cli_dispatches_sweeps() -> bool:
    import brainnet.cli

    return "is_sweep_dir" in inspect.getsource(brainnet.cli)


@pytest.mark.skipif(not _cli_dispatches_sweeps(), reason="brainnet.cli does not dispatch sweeps")
def test_cli_report_and_compare_take_sweep_directories(sweep_dir, tmp_path):
    from typer.testing import CliRunner

    from brainnet.cli import app

    r = CliRunner().invoke(app, ["report", str(sweep_dir)])
    assert r.exit_code == 0 and "report.html" in r.output, r.output
    r = CliRunner().invoke(app, ["compare", str(sweep_dir), str(constructed(tmp_path / "m")),
                                 "--out", str(tmp_path / "c.html")])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert (tmp_path / "c.html").is_file() and re.search(r"\| tiny \| (★ )?brain \| 2 \|", r.output)


# --------------------------------------------------------------------------- binding tasks

FLOOR_MEAN = 1.7


def binding(path: Path) -> Path:
    """Three groups of two seeds whose fronts differ by loss: by final val loss only ``quiet``
    (0 msgs, 2.0) is on it; by the answer loss ``quiet`` (0, 1.65) and ``talk`` (50, 0.4) are,
    ``noisy`` (80, 0.9) is beaten by ``talk``. The first finished run has a run directory
    whose vocab.json holds the floor."""
    pts = {"quiet": (0.0, 2.0, 1.65), "talk": (50.0, 2.2, 0.4), "noisy": (80.0, 2.3, 0.9)}
    rows = [
        {"id": f"{g}/seed={s}", "group": g, "seed": s, "messages_per_step": m,
         "final_val_loss": v + 0.01 * s, "final_val_answer_loss": a + 0.02 * s,
         "final_val_answer_acc": 0.5 + 0.01 * s, "run_dir": f"{g}/seed={s}"}
        for g, (m, v, a) in pts.items() for s in (0, 1)
    ]  # fmt: skip
    write_sweep(path, rows)
    run = path / "quiet" / "seed=0"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"name": "binding", "seed": 0}))
    vocab = {"domains": ["pairs"], "answer_floor": {"pairs": FLOOR_MEAN},
             "answer_floor_mean": FLOOR_MEAN, "answer_ceiling": 0.0}  # fmt: skip
    (run / "vocab.json").write_text(json.dumps(vocab))
    return path


def test_binding_sweep_pareto_is_answer_loss_with_floor_and_ceiling(tmp_path):
    from brainnet.viz import sweep_plots

    path = binding(tmp_path / "bind")
    groups = groups_of(open_sweep(path))
    assert {g.name for g in groups if g.front} == {"quiet", "talk"}  # by the answer loss
    assert all(g.floor == FLOOR_MEAN and g.ceiling == 0.0 for g in groups)
    fig = sweep_plots.pareto(groups)
    (ax,) = fig.axes
    lines = {line.get_gid(): line for line in ax.get_lines() if line.get_gid()}
    assert list(lines["floor"].get_ydata()) == [FLOOR_MEAN, FLOOR_MEAN]
    assert list(lines["ceiling"].get_ydata()) == [0.0, 0.0]
    assert lines["floor"].get_label().startswith("floor: one view, no communication")
    assert "answer" in ax.get_ylabel()
    # the points are the groups' answer losses, not their val losses
    ys = sorted(y for c in ax.containers for y in c.lines[0].get_ydata())  # errorbar points
    assert ys == pytest.approx(sorted(g.stats["final_val_answer_loss"][0] for g in groups))
    page = render_sweep(path).read_text()
    for text in ("<h2>final validation answer-token loss against messages per step</h2>",
                 "<th>final val answer loss</th>", "<th>final val answer acc</th>",
                 "Pareto front of messages / step and final val answer loss",
                 "<td>★ talk</td>", "<td>noisy</td>"):  # fmt: skip
        assert text in page, text
    mean, hw = hand_interval([0.4, 0.42])
    assert f"<td>{mean:.4f} ± {hw:.4f}</td>" in page
    assert_drawn(images(page))
    assert "final val answer loss" in markdown(groups)


def test_the_index_carries_the_last_evaluations_answer_loss(tmp_path):
    from types import SimpleNamespace

    import torch

    from brainnet.sweep.index import DONE, index_row, write_index, write_marker
    from brainnet.sweep.worker import final_metrics

    def row(step, val=None, ans=None, acc=None):
        train = {"tokens_per_s": 100.0, "module_tokens_per_s": 400.0, "train_loss": 3.0,
                 "messages": 10.0, "bytes": 40.0, "sim_time_ms": 1.0}  # fmt: skip
        train = train if step else {}
        return {"step": step, "val_loss": val, "val_answer_loss": ans, "val_answer_acc": acc,
                **train}  # fmt: skip

    rows = [row(0, 5.0, 3.0, 0.0), row(2), row(4, 4.0, 1.2, 0.6), row(6)]  # eval at 0 and 4
    bank = torch.nn.Linear(2, 2)
    sim = SimpleNamespace(
        scenario=SimpleNamespace(train=SimpleNamespace(batch_size=2)),
        corpus=SimpleNamespace(block_size=2), writer=SimpleNamespace(rows=rows), step=6,
        society=SimpleNamespace(n_modules=1, parameters=bank.parameters), banks=[bank],
    )  # fmt: skip
    metrics = final_metrics(sim)
    assert metrics["final_val_answer_loss"] == 1.2 and metrics["final_val_answer_acc"] == 0.6
    assert metrics["final_val_loss"] == 4.0
    plain = final_metrics(SimpleNamespace(**{**vars(sim), "writer": SimpleNamespace(
        rows=[{k: v for k, v in r.items() if "answer" not in k} for r in rows])}))  # fmt: skip
    assert plain["final_val_answer_loss"] is None and plain["final_val_answer_acc"] is None
    planned = SimpleNamespace(id="g/seed=0", group=SimpleNamespace(name="g", scenario="x"),
                              overrides_json="{}", seed=0)  # fmt: skip
    (tmp_path / "g" / "seed=0").mkdir(parents=True)
    write_marker(tmp_path / "g" / "seed=0", DONE, {"wall_s": 1.0, **metrics})
    write_index(tmp_path, [index_row(planned, tmp_path)])
    (got,) = pq.read_table(tmp_path / "index.parquet").to_pylist()
    assert got["final_val_answer_loss"] == 1.2 and got["final_val_answer_acc"] == 0.6


def test_an_index_from_before_the_answer_columns_loads(tmp_path):
    from brainnet.stats import group_table

    old = pa.schema([f for f in SCHEMA if "answer" not in f.name])
    path = tmp_path / "old"
    path.mkdir()
    (path / "sweep.yaml").write_text(yaml.safe_dump({"name": "old", "base": "quickstart"}))
    rows = [{**dict.fromkeys(old.names), "id": f"{g}/seed=0", "group": g, "overrides": "{}",
             "seed": 0, "status": "done", "messages_per_step": m, "final_val_loss": v}
            for g, m, v in (("x", 0.0, 3.0), ("y", 10.0, 2.0))]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows, schema=old), path / "index.parquet")
    sweep = open_sweep(path)
    assert "final_val_answer_loss" not in sweep.index.column_names
    table = group_table(sweep.index)
    assert table[1]["final_val_loss"] == 2.0 and math.isnan(table[1]["final_val_answer_loss"])
    groups = groups_of(sweep)
    assert {g.name for g in groups if g.front} == {"x", "y"}  # by the val loss
    assert all(g.floor is None for g in groups)
    page = render_sweep(path).read_text()
    assert "<h2>final validation loss against messages per step</h2>" in page
    assert "final val answer" not in page  # no answer columns: none shown
    assert_drawn(images(page))


def test_a_comparison_with_a_sweep_without_answers_uses_the_val_loss(tmp_path):
    from brainnet.viz.sweep import sources
    from brainnet.viz.sweep_plots import loss_key

    groups = sources([binding(tmp_path / "bind"), constructed(tmp_path / "made")])
    assert loss_key(groups) == "final_val_loss"  # the loss every group has
    # quiet (0 msgs, val loss 2.005) beats every group of made on val loss, talk (the answer
    # loss's best) is not on the front of the val loss
    assert {g.label for g in groups if g.front} == {"bind: quiet"}
    assert loss_key([g for g in groups if g.source == "bind"]) == "final_val_answer_loss"
