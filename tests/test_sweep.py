"""``brainnet sweep``: the sweep file and its one-line errors, groups × seeds into exact run
directories, the index and its CI table, skip / redo on a second run, the Ray backend, and a
SIGKILLed driver whose sweep finishes only the missing runs. Tiny shapes: seconds."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import brainnet
from brainnet.cli import app
from brainnet.config import ScenarioError, load_scenario
from brainnet.engine import Simulation
from brainnet.metrics import RunWriter, open_sweep
from brainnet.stats import group_table, pareto_front, t_interval
from brainnet.sweep.index import METRICS
from brainnet.sweep.plan import groups, plan
from brainnet.sweep.spec import load_sweep

ROOT = Path(__file__).resolve().parents[1]

#: the quickstart brain at a shape that trains 4 steps in well under a second
TINY = {
    "device": "cpu",
    "train.steps": 4, "train.batch_size": 4, "train.eval_every": 4, "train.eval_batches": 1,
    "train.warmup_steps": 1,
    "modules.0.count": 4, "modules.0.n_layer": 1, "modules.0.d_model": 16, "modules.0.n_head": 2,
    "society.clusters": 2, "society.arousal.k_range": [2, 2],
    "corpus.block_size": 16, "corpus.train_sequences": 64, "corpus.val_sequences": 16,
    "emergence": None, "collapse": None, "log.every": 2,
}  # fmt: skip


def two_by_two(name: str = "two", **extra) -> dict:
    """2 groups (the brain, and independent modules) × 2 seeds."""
    return {
        "name": name,
        "base": "quickstart",
        "seeds": [0, 1],
        "set": TINY,
        "groups": [{"name": "brain"}, {"name": "solo", "set": {"society": None}}],
        **extra,
    }


def write(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def problems(source) -> list[str]:
    with pytest.raises(ScenarioError) as e:
        plan(*load_sweep(source))
    return e.value.problems


def events(run_dir: Path) -> list[str]:
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    return [json.loads(line)["kind"] for line in lines]


def numbers(index) -> dict[str, dict]:
    """id -> the index row without its wall time (what must not depend on how it ran)."""
    return {r["id"]: {k: v for k, v in r.items() if k != "wall_s"} for r in index.to_pylist()}


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """The 2 × 2 sweep on the local backend (2 workers), from a file."""
    root = tmp_path_factory.mktemp("local")
    ended = []
    s = brainnet.sweep(write(root / "two.yaml", two_by_two()), out=root / "out", workers=2,
                       on_run=ended.append)  # fmt: skip
    return s, ended, root


# --------------------------------------------------------------------------- the sweep file


def test_bad_sweep_files_are_one_line_each(tmp_path):
    f = write(tmp_path / "sweep.yaml", {
        "base": "quickstart", "seeds": [0, 0], "colour": 1,
        "grid": {"train.lr": 0.1}, "groups": [{"name": "a/b"}],
    })  # fmt: skip
    got = problems(f)
    assert "sweep.yaml: colour = 1: unknown field; allowed: base, description, grid, groups, " \
        "name, seeds, set" in got  # fmt: skip
    assert "sweep.yaml: grid.train.lr = 0.1: must be a list" in got
    assert any(p.startswith("sweep.yaml: groups.0.name = 'a/b': must match") for p in got)
    assert "sweep.yaml: seeds = [0, 0]: must not repeat a seed" in got
    assert problems({"seeds": []}) == [
        "sweep: seeds = []: must have at least 1 item(s)",
        "sweep: base = null: required: a run whose group names no scenario runs the base",
    ]
    assert problems({"base": "nope", "seeds": [0]})[0].startswith(
        "sweep: base = 'nope': no such file (relative to the sweep file) and no built-in"
    )
    assert problems({"base": "quickstart", "seeds": [0], "set": {"seed": 3}}) == [
        "sweep: set.seed = 3: is set by `seeds`; allowed: other fields"
    ]


def test_every_run_is_validated_and_problems_name_their_place_in_the_sweep_file(tmp_path):
    f = write(tmp_path / "sweep.yaml", {
        "base": "quickstart", "seeds": [0, 1], "set": {"train.lr": -1},
        "grid": {"train.lrr": [1, 2]},
        "groups": [{"name": "a"}, {"name": "b", "set": {"modules.3.count": 2}}],
    })  # fmt: skip
    got = problems(f)
    assert "sweep.yaml: set.train.lr = -1: must be > 0" in got
    assert any(p.startswith("sweep.yaml: grid.train.lrr = 1: unknown field; allowed: ")
               for p in got)  # fmt: skip
    assert any(p.startswith("sweep.yaml: grid.train.lrr = 2: unknown field") for p in got)
    assert any(p.startswith("sweep.yaml: groups.1.set.modules.3.count = 2: 'modules.3' is not "
                            "an index of a list of 1") for p in got)  # fmt: skip
    assert len(got) == len(set(got))  # a problem of every run and seed is said once


def test_groups_are_listed_groups_times_grid_points_and_later_overrides_win(tmp_path):
    scen = write(tmp_path / "mine.yaml", {"name": "mine", "modules": [{"type": "transformer"}]})
    spec, label = load_sweep(write(tmp_path / "g.yaml", {
        "base": "brain", "seeds": [0],
        "set": {"train.lr": 0.01, "train.steps": 7},
        "grid": {"train.lr": [0.001, 0.002], "corpus.domains": [["copy", "sort"]]},
        "groups": [{"name": "x", "set": {"train": {"steps": 9}}},
                   {"name": "y", "scenario": "mine.yaml"}],
    }))  # fmt: skip
    assert spec.name == "g" and Path(spec.groups[1].scenario) == scen.resolve()
    gs = groups(spec, label)
    assert [g.name for g in gs] == [
        'x,train.lr=0.001,corpus.domains=__copy_,_sort__',
        'x,train.lr=0.002,corpus.domains=__copy_,_sort__',
        'y,train.lr=0.001,corpus.domains=__copy_,_sort__',
        'y,train.lr=0.002,corpus.domains=__copy_,_sort__',
    ]  # fmt: skip
    runs = plan(spec, label)
    x, y = runs[0].scenario, runs[3].scenario
    assert x.train.lr == 0.001 and x.train.steps == 9  # the group's train section, then the grid
    assert y.name == "mine" and y.train.lr == 0.002 and y.train.steps == 7
    assert list(json.loads(runs[0].overrides_json).items()) == [  # in the order applied
        ("train.steps", 7), ("train", {"steps": 9}), ("train.lr", 0.001),
        ("corpus.domains", ["copy", "sort"]),
    ]  # fmt: skip
    one, _ = load_sweep({"base": "quickstart", "seeds": [1, 2]})
    assert [r.id for r in plan(one, "sweep")] == ["default/seed=1", "default/seed=2"]


@pytest.mark.parametrize("path", sorted((ROOT / "scenarios" / "sweeps").glob("*.yaml")),
                         ids=lambda p: p.name)  # fmt: skip
def test_every_shipped_sweep_file_plans(path):
    spec, label = load_sweep(path)
    runs = plan(spec, label)
    points = math.prod(len(values) for values in spec.grid.values())
    assert len(runs) == len(spec.seeds) * max(1, len(spec.groups)) * points


def test_cli_exit_2_writes_nothing(tmp_path):
    f = write(tmp_path / "bad.yaml", {**two_by_two(), "set": {**TINY, "train.lr": 0}})
    r = CliRunner().invoke(app, ["sweep", str(f), "--out", str(tmp_path / "out")])
    assert r.exit_code == 2, r.output
    assert r.stderr.splitlines() == ["error: bad.yaml: set.train.lr = 0: must be > 0"]
    assert not (tmp_path / "out").exists()
    r = CliRunner().invoke(app, ["sweep", str(write(tmp_path / "ok.yaml", two_by_two())),
                                 "--out", str(tmp_path / "out"), "--backend", "slurm"])  # fmt: skip
    assert r.exit_code == 2 and "must be one of 'local' or 'ray'" in r.stderr
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- run directories


def test_run_writer_claims_distinct_directories_in_the_same_second(tmp_path):
    paths, barrier = [], threading.Barrier(8)

    def claim():
        barrier.wait()
        paths.append(RunWriter(tmp_path, "same").path)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(paths)) == 8 and all(p.is_dir() for p in paths)
    exact = RunWriter(path=tmp_path / "a" / "b").path
    assert exact == tmp_path / "a" / "b" and exact.is_dir()
    (exact / "x").write_text("")
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        RunWriter(path=exact)


def test_simulation_writes_to_an_exact_run_directory(tmp_path):
    sc = load_scenario("quickstart", {**TINY, "train.steps": 2})
    sim = Simulation(sc, run_dir=tmp_path / "here")
    sim.run()
    assert sim.run_dir == tmp_path / "here"
    assert events(sim.run_dir) == ["run_start", "eval", "eval", "checkpoint", "run_end"]


# --------------------------------------------------------------------------- the local backend


def test_a_2x2_sweep_writes_an_index_row_per_run(local):
    s, ended, root = local
    assert s.path == root / "out" / "two"
    rows = s.index.to_pylist()
    ids = ["brain/seed=0", "brain/seed=1", "solo/seed=0", "solo/seed=1"]
    assert [r["id"] for r in rows] == ids and sorted(r["id"] for r in ended) == ids
    assert [r["run_dir"] for r in rows] == ids
    assert all(r["status"] == "done" and r["error"] is None for r in rows)
    for r in rows:
        d = s.path / r["run_dir"]
        marker = json.loads((d / "done.json").read_text())
        assert {k: r[k] for k in METRICS} == marker
        assert events(d).count("run_start") == 1 and events(d)[-1] == "run_end"
        assert r["steps"] == 4 and 0 < r["final_val_loss"] < 6 and r["wall_s"] > 0
        assert json.loads(r["overrides"])["train.steps"] == 4
        assert s.run(r["id"]).config["seed"] == r["seed"]
    brain, solo = rows[0], rows[2]
    assert brain["messages_per_step"] > 0 and brain["bytes_per_step"] > 0
    assert brain["sim_time_ms"] > 0
    assert solo["messages_per_step"] == 0 and solo["bytes_per_step"] == 0
    assert solo["sim_time_ms"] is None  # no clock
    # independent: each of the 4 modules sees every token once; d=16, 1 layer modules
    per_module = solo["params_total"] / 4
    assert solo["module_tokens_per_step"] == 4 * 4 * 16
    assert solo["active_params_per_token"] == pytest.approx(4 * per_module)
    assert brain["params_total"] > solo["params_total"]  # + the router
    # the two seeds differ, the groups too
    assert rows[0]["final_val_loss"] != rows[1]["final_val_loss"]
    assert open_sweep(s.path).spec["name"] == "two"
    assert yaml.safe_load((s.path / "sweep.yaml").read_text())["groups"][1]["set"] == {
        "society": None
    }
    assert set(s.runs()) == set(ids)


def test_the_ci_table_is_the_hand_computed_t_interval(local):
    s, _, _ = local
    rows = s.index.to_pylist()
    t_975_1 = 12.706204736174707  # Student's t, 97.5 % quantile, 1 degree of freedom
    table = {r["group"]: r for r in group_table(s.index)}
    assert list(table) == ["brain", "solo"]
    for g in ("brain", "solo"):
        for m in ("final_val_loss", "messages_per_step", "module_tokens_per_step"):
            a, b = (r[m] for r in rows if r["group"] == g)
            sd = abs(a - b) / math.sqrt(2)  # sample std (ddof 1) of two values
            assert table[g]["n"] == 2 and table[g]["runs"] == 2
            assert table[g][m] == pytest.approx((a + b) / 2)
            assert table[g][f"{m}_ci"] == pytest.approx(t_975_1 * sd / math.sqrt(2), abs=1e-12)
    assert math.isnan(table["solo"]["sim_time_ms"])


def test_running_it_again_skips_finished_runs(local):
    s, _, root = local
    before = {p: p.stat().st_mtime_ns for p in s.path.glob("*/seed=*/done.json")}
    ended, started = [], []
    again = brainnet.sweep(root / "two.yaml", out=root / "out", workers=2,
                           on_run=ended.append, on_start=started.append)  # fmt: skip
    assert ended == [] and started[0]["finished"] == 4 and started[0]["todo"] == 0
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert numbers(again.index) == numbers(s.index)
    r = CliRunner().invoke(app, ["sweep", str(root / "two.yaml"), "--out", str(root / "out")])
    assert r.exit_code == 0, r.output
    assert "4 finished, 0 to run" in r.stdout and "solo" in r.stdout and "±" in r.stdout


def test_a_changed_scenario_of_a_finished_run_is_refused(local):
    _, _, root = local
    changed = two_by_two()
    changed["groups"][0]["set"] = {"train.lr": 0.002}
    with pytest.raises(ScenarioError) as e:
        brainnet.sweep(changed, out=root / "out")
    assert (
        e.value.problems[0].startswith("sweep: run 'brain/seed=0' in ")
        and "was finished with train.lr = 0.003, the sweep now says 0.002" in e.value.problems[0]
    )


def test_a_failed_run_is_recorded_the_sweep_goes_on_and_a_rerun_redoes_it(tmp_path):
    bad = {"distill.enabled": True, "distill.teacher": "run", "distill.teacher_run": "/no/run"}
    spec = two_by_two("fails", seeds=[0])
    spec["groups"][1]["set"] = bad
    s = brainnet.sweep(spec, out=tmp_path, workers=2)
    rows = {r["id"]: r for r in s.index.to_pylist()}
    assert rows["brain/seed=0"]["status"] == "done"
    failed = rows["solo/seed=0"]
    assert failed["status"] == "failed" and failed["final_val_loss"] is None
    assert failed["error"].startswith("distill.teacher_run = '/no/run': checkpoint")
    assert "\n" not in failed["error"]
    marker = json.loads((s.path / "solo/seed=0/failed.json").read_text())
    assert marker["error"] == failed["error"] and "Traceback" in marker["traceback"]
    ended = []
    brainnet.sweep(spec, out=tmp_path, workers=2, on_run=ended.append)
    assert [r["id"] for r in ended] == ["solo/seed=0"]  # only the failed one is redone


# --------------------------------------------------------------------------- statistics


def test_t_interval_and_pareto_front():
    m, h, n = t_interval([2.0])
    assert (m, n) == (2.0, 1) and math.isnan(h)
    m, h, n = t_interval([])
    assert n == 0 and math.isnan(m) and math.isnan(h)
    # 1, 2, 3: mean 2, sd 1, t(0.975, 2) = 4.302652729911275
    assert t_interval([1.0, None, 2.0, 3.0, math.nan]) == pytest.approx(
        (2.0, 4.302652729911275 / math.sqrt(3), 3)
    )
    assert t_interval([1.0, 3.0], confidence=0.9)[1] == pytest.approx(6.313751514675041)
    pts = [(3, 1), (2, 2), (2, 3), (1, 5), (4, 0.5), (2, 2), (0.5, math.nan), (5, 5)]
    assert pareto_front(pts) == [0, 1, 3, 4, 5]


# --------------------------------------------------------------------------- Ray


def test_the_ray_backend_gives_the_local_backends_table(local, tmp_path):
    ray = pytest.importorskip("ray")
    s, _, root = local
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=80 * 2**20)  # fmt: skip
    try:
        r = brainnet.sweep(root / "two.yaml", out=tmp_path, workers=2, backend="ray")
    finally:
        ray.shutdown()
    assert numbers(r.index) == numbers(s.index)
    assert _same_table(r.index, s.index)


def _same_table(a, b) -> bool:
    """group_table of two indexes equal (NaN == NaN)."""
    for x, y in zip(group_table(a), group_table(b), strict=True):
        for k in x:
            if x[k] != y[k] and not (isinstance(x[k], float) and math.isnan(x[k])
                                     and math.isnan(y[k])):  # fmt: skip
                return False
    return True


# --------------------------------------------------------------------------- a killed driver


def grandchildren(pid: int) -> list[int]:
    """The pool workers of a driver: forked by its forkserver (a child of the driver)."""
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    children = {c for c, p in parent.items() if p == pid}
    return [g for g, p in parent.items() if p in children]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def driver(spec_file: Path, out: Path, workers: int) -> subprocess.Popen:
    """``brainnet sweep`` in its own process."""
    cmd = [sys.executable, "-m", "brainnet", "sweep", str(spec_file), "--out", str(out),
           "--workers", str(workers), "--quiet"]  # fmt: skip
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_a_killed_driver_finishes_only_the_missing_runs(tmp_path):
    spec = two_by_two("killed", seeds=[0, 1, 2])
    spec["set"] = {**TINY, "train.steps": 12, "train.eval_every": 6}
    f = write(tmp_path / "killed.yaml", spec)
    proc = driver(f, tmp_path, workers=1)
    sweep_dir, workers = tmp_path / "killed", set()
    deadline = time.monotonic() + 60
    while len(list(sweep_dir.glob("*/seed=*/done.json"))) < 2:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline
        workers.update(grandchildren(proc.pid))
        time.sleep(0.02)
    workers.update(grandchildren(proc.pid))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    while any(alive(w) for w in workers):  # they die with the driver
        assert time.monotonic() < deadline
        time.sleep(0.05)
    done = {p.parent: p.stat().st_mtime_ns for p in sweep_dir.glob("*/seed=*/done.json")}
    ids = [f"{g}/seed={n}" for g in ("brain", "solo") for n in (0, 1, 2)]
    missing = [i for i in ids if sweep_dir / i not in done]
    assert 2 <= len(done) < 6
    ended = []
    s = brainnet.sweep(f, out=tmp_path, workers=1, on_run=ended.append)
    assert [r["id"] for r in ended] == missing  # nothing finished is redone
    assert {p: (p / "done.json").stat().st_mtime_ns for p in done} == done
    assert s.index.column("status").to_pylist() == ["done"] * 6
    for i in ids:
        assert (sweep_dir / i / "done.json").is_file()
        kinds = events(sweep_dir / i)
        assert kinds.count("run_start") == 1 and kinds.count("run_end") == 1
    assert sorted(str(p.relative_to(sweep_dir)) for p in sweep_dir.glob("*/seed=*")) == sorted(ids)
