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
    for text in ("<h2>summary</h2>", "<h2>groups: mean ± 95 % CI over seeds</h2>",
                 "<h2>final validation loss against messages per step</h2>",
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
