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


def images(page: str) -> list[Image.Image]:
    found = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    return [Image.open(io.BytesIO(base64.b64decode(b))).convert("L") for b in found]


def test_report_has_every_plot_the_run_has_data_for(brain_run):
    page = render(brain_run).read_text()
    for title in ("society graph", "losses (society, per cluster, per domain)",
                  "routing: domain x cluster", "blackboard: occupancy and who wrote",
                  "arousal and focus", "communication cost against loss"):  # fmt: skip
        assert title in page, title
    imgs = images(page)
    assert len(imgs) == 6  # graph, losses, routing, blackboard, arousal, communication
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
    check_in_chromium(render(brain_run), images=6, height=3000, shot=tmp_path / "report.png")
