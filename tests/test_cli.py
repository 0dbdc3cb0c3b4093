"""The ``brainnet`` command line: help, scenarios, validate (exit 2, one line per problem), run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from typer.testing import CliRunner

from brainnet.cli import app

runner = CliRunner()

#: small enough to train 4 steps in about a second on a laptop CPU
SMALL = [
    "--set", "modules.0.count=4",
    "--set", "train.batch_size=4",
    "--set", "train.eval_batches=2",
    "--set", "corpus.train_sequences=200",
    "--set", "corpus.val_sequences=50",
]  # fmt: skip


def invoke(*args: str | Path):
    return runner.invoke(app, [str(a) for a in args])


def error_lines(result) -> list[str]:
    """The stderr lines of a failed command, after checking the exit-2 / no-traceback contract."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), result.exception
    assert "Traceback" not in result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines and all(line.startswith("error: ") for line in lines), lines
    return lines


def builtin_yaml(name: str) -> dict:
    return yaml.safe_load((resources.files("brainnet.scenarios") / f"{name}.yaml").read_text())


# --------------------------------------------------------------------------- help, scenarios


def test_help_lists_commands() -> None:
    r = invoke("--help")
    assert r.exit_code == 0
    for cmd in ("run", "scenarios", "validate"):
        assert f" {cmd} " in r.output
    assert "society of micro language models" in r.output


def test_run_help_lists_options() -> None:
    r = invoke("run", "--help")
    assert r.exit_code == 0
    for opt in ("--set", "--steps", "--device", "--out", "--quiet", "--seed"):
        assert opt in r.output
    assert "train.lr=3e-4" in r.output


def test_validate_help() -> None:
    r = invoke("validate", "--help")
    assert r.exit_code == 0
    assert "--show" in r.output and "--set" in r.output


def test_scenarios_lists_builtins_with_descriptions() -> None:
    r = invoke("scenarios")
    assert r.exit_code == 0, r.output
    flat = " ".join(r.output.split())  # rich wraps long descriptions over several lines
    for name in ("quickstart", "nanogpt_baby"):
        desc = builtin_yaml(name)["description"]
        assert len(desc) > 20
        assert name in r.output
        assert " ".join(desc.split()) in flat, (name, desc)
    assert flat.index("nanogpt_baby") < flat.index("quickstart")  # sorted by name


# --------------------------------------------------------------------------- validate


@pytest.mark.parametrize("name", ["quickstart", "nanogpt_baby", "quickstart.yaml"])
def test_validate_builtin(name: str) -> None:
    r = invoke("validate", name)
    assert r.exit_code == 0, r.output
    assert r.output.startswith("ok: ")
    assert f"({name.removesuffix('.yaml')})" in r.output


def test_validate_show_fills_every_default(tmp_path: Path) -> None:
    r = invoke("validate", "quickstart", "--show")
    assert r.exit_code == 0, r.output
    data = yaml.safe_load(r.stdout)
    assert isinstance(data, dict)
    assert data["name"] == "quickstart"
    assert data["description"] == builtin_yaml("quickstart")["description"]
    # set in quickstart.yaml
    assert data["train"]["lr"] == 3e-3 and data["train"]["steps"] == 140
    assert data["modules"][0]["count"] == 16 and data["modules"][0]["d_model"] == 64
    # not in quickstart.yaml: filled in from the defaults
    assert data["train"]["weight_decay"] == 0.1
    assert data["train"]["betas"] == [0.9, 0.99]
    assert data["train"]["grad_clip"] == 1.0 and data["train"]["answer_weight"] == 1.0
    assert data["log"]["checkpoint_every"] == 0
    assert data["precision"] == "auto" and data["compile"] is False
    assert data["out_dir"] == "runs"
    assert data["corpus"]["train_sequences"] == 20000
    assert data["corpus"]["val_sequences"] == 1000
    assert data["corpus"]["domains"][0] == "copy" and len(data["corpus"]["domains"]) == 7
    assert data["modules"][0]["dropout"] == 0.0 and data["modules"][0]["bias"] is True
    assert data["society"]["topology"] == "brain"
    assert data["society"]["router"]["balance_weight"] == 0.01  # a default
    assert set(data) == {
        "name", "description", "seed", "device", "precision", "compile",
        "corpus", "modules", "train", "log", "out_dir", "society", "distill",
        "collapse", "emergence", "reorganize", "reliability", "views",
    }  # fmt: skip
    # the resolved scenario is itself a valid scenario file that resolves to the same thing
    f = tmp_path / "resolved.yaml"
    f.write_text(r.stdout)
    again = invoke("validate", f, "--show")
    assert again.exit_code == 0, again.output
    assert yaml.safe_load(again.stdout) == data


def test_validate_show_applies_overrides() -> None:
    r = invoke(
        "validate", "nanogpt_baby", "--show",
        "--set", "train.lr=3e-4",  # PyYAML reads 3e-4 as a string; the field coerces it
        "-s", "modules.0.n_layer=6",
        "--set", "corpus.path=tinyshakespeare",
        "--set", "name=baby2",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    data = yaml.safe_load(r.stdout)
    assert data["train"]["lr"] == pytest.approx(3e-4)
    assert data["modules"][0]["n_layer"] == 6
    assert data["corpus"] == {
        "kind": "text",
        "block_size": 64,
        "path": "tinyshakespeare",
        "val_fraction": 0.1,
    }
    assert data["name"] == "baby2"


def test_validate_a_file(tmp_path: Path) -> None:
    f = tmp_path / "mine.yaml"
    f.write_text("name: mine\nmodules:\n  - type: transformer\n    count: 3\n")
    r = invoke("validate", f)
    assert r.exit_code == 0, r.output
    assert "(mine)" in r.output


# --------------------------------------------------------------------------- bad input -> exit 2

# name -> (scenario file text or None for quickstart, --set items, phrases the line must contain)
BAD_FILES = {
    "invalid yaml": (
        "name: x\nmodules: [{type: transformer}]\ntrain:\n  lr: 0.1\n    steps: 3\n",
        ["invalid YAML", "line 5", "mapping values are not allowed"],
    ),
    "tab in yaml": (
        "name: x\nmodules:\n\t- type: transformer\n",
        ["invalid YAML", "line 3", "'\\t'"],
    ),
    "top-level list": (
        "- name: x\n- modules: []\n",
        ["must be a mapping", "got a list"],
    ),
    "unknown top-level key": (
        "name: x\nmodels:\n  - type: transformer\nmodules:\n  - type: transformer\n",
        ["models = ", "unknown field", "allowed: ", "modules"],
    ),
    "empty modules": (
        "name: x\nmodules: []\n",
        ["modules = []", "at least 1"],
    ),
    "missing modules": (
        "name: x\n",
        ["modules", "required"],
    ),
    "unknown module type": (
        "modules:\n  - type: foo\n",
        ["modules.0.type = 'foo'", "known: gru, transformer"],
    ),
    "n_head does not divide d_model": (
        "modules:\n  - {type: transformer, n_head: 3, d_model: 64}\n",
        ["modules.0.n_head = 3", "must divide d_model (64)"],
    ),
    "beta out of range": (
        "modules:\n  - {type: transformer}\ntrain: {betas: [0.9, 1.5]}\n",
        ["train.betas = [0.9, 1.5]", "each must be in [0, 1)"],
    ),
    "min_lr above lr": (
        "modules:\n  - {type: transformer}\ntrain: {lr: 0.001, min_lr: 0.01}\n",
        ["train.min_lr = 0.01", "must be <= lr (0.001)"],
    ),
    "bad name": (
        "name: my run\nmodules:\n  - {type: transformer}\n",
        ["name = 'my run'", "must match"],
    ),
    "train not a section": (
        "modules:\n  - {type: transformer}\ntrain: 5\n",
        ["train = 5"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_scenario_file(tmp_path: Path, case: str) -> None:
    text, phrases = BAD_FILES[case]
    f = tmp_path / "bad_scenario.yaml"
    f.write_text(text)
    (line,) = error_lines(invoke("validate", f))
    assert line.startswith("error: bad_scenario.yaml: "), line
    for phrase in phrases:
        assert phrase in line, (phrase, line)


BAD_SETS = {
    "negative lr": (["train.lr=-1"], ["--set: ", "train.lr", "-1", "must be > 0"]),
    "misspelt field": (
        ["train.lrr=1"],
        ["train.lrr = 1", "unknown field", "allowed: ", ", lr, ", "min_lr", "weight_decay"],
    ),
    "unknown device": (["device=gpu"], ["device = 'gpu'", "'auto'", "'cpu'", "'cuda'"]),
    "steps not a number": (["train.steps=abc"], ["train.steps = 'abc'", "must be an integer"]),
    "steps a float": (["train.steps=2.5"], ["train.steps = 2.5", "must be an integer"]),
    "module index out of range": (
        ["modules.5.count=2"],
        ["modules.5", "= 2", "list of 1", "0..0"],
    ),
    "negative seed": (["seed=-3"], ["seed = -3", "must be >= 0"]),
    "no equals sign": (["novalue"], ["--set 'novalue'", "FIELD=VALUE"]),
    "empty field name": (["=3"], ["--set '=3'", "FIELD=VALUE"]),
    "unknown corpus kind": (
        ["corpus.kind=nope"],
        ["corpus.kind = 'nope'", "known: binding, tasks, text"],
    ),
    "unknown module type": (
        ["modules.0.type=foo"],
        ["modules.0.type = 'foo'", "known: gru, transformer"],
    ),
    "field of a value": (["train.lr.x=1"], ["train.lr.x", "not a section"]),
    "zero count": (["modules.0.count=0"], ["modules.0.count = 0", "must be >= 1"]),
    "block size too small": (["corpus.block_size=1"], ["corpus.block_size = 1", ">= 2"]),
    "bool field": (["compile=maybe"], ["compile = 'maybe'", "true or false"]),
    "text path on tasks corpus": (["corpus.path=x.txt"], ["corpus.path", "unknown field"]),
    "missing text file": (
        ["corpus.kind=text", "corpus.path=/no/such/file.txt"],
        ["corpus.path = '/no/such/file.txt'", "no such file", "allowed"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_SETS))
def test_bad_override(case: str) -> None:
    sets, phrases = BAD_SETS[case]
    args = [a for s in sets for a in ("--set", s)]
    (line,) = error_lines(invoke("validate", "brain", *args))  # (quickstart's corpus shifts)
    for phrase in phrases:
        assert phrase in line, (phrase, line)


def test_unknown_scenario_name() -> None:
    (line,) = error_lines(invoke("validate", "no_such_scenario"))
    assert "'no_such_scenario'" in line
    assert "no such file and no built-in" in line
    assert "nanogpt_baby" in line and "quickstart" in line


def test_unknown_scenario_name_for_run(tmp_path: Path) -> None:
    (line,) = error_lines(invoke("run", "quickstartt", "--out", tmp_path))
    assert "'quickstartt'" in line and "built-ins: " in line
    assert list(tmp_path.iterdir()) == []


def test_several_problems_one_line_each() -> None:
    lines = error_lines(
        invoke(
            "validate", "quickstart",
            "--set", "train.lr=-1", "--set", "seed=-3", "--set", "device=gpu",
            "--set", "train.lrr=1",
        )
    )  # fmt: skip
    assert len(lines) == 4, lines
    joined = "\n".join(lines)
    for field in ("train.lr = -1", "seed = -3", "device = 'gpu'", "train.lrr = 1"):
        assert sum(field in line for line in lines) == 1, (field, joined)


@pytest.mark.parametrize(
    ("option", "phrase"),
    [(["--steps", "0"], "train.steps = 0"), (["--seed=-1"], "seed = -1")],
)
def test_run_options_are_validated(tmp_path: Path, option: list[str], phrase: str) -> None:
    (line,) = error_lines(invoke("run", "quickstart", *option, "--out", tmp_path))
    assert phrase in line
    assert list(tmp_path.iterdir()) == []  # nothing is written for a bad scenario


def test_error_shows_brackets_verbatim() -> None:
    (line,) = error_lines(invoke("validate", "quickstart", "--set", "name=a[b]c"))
    assert "name = 'a[b]c'" in line


def test_bad_override_in_a_subprocess(tmp_path: Path) -> None:
    """The real console script: exit 2, no traceback, one unwrapped line per problem."""
    env = {**os.environ, "COLUMNS": "60"}
    p = subprocess.run(
        [
            sys.executable, "-m", "brainnet.cli", "validate", "quickstart",
            "--set", "train.lrr=1", "--set", "seed=-3", "--set", "train.lr=-1",
        ],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60,
    )  # fmt: skip
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout
    assert p.stdout == ""
    lines = p.stderr.splitlines()
    assert len(lines) == 3, lines
    assert all(line.startswith("error: --set: ") for line in lines), lines
    assert "\x1b[" not in p.stderr  # no colour codes when stderr is not a terminal
    long = next(line for line in lines if "train.lrr" in line)
    assert len(long) > 60 and long.endswith("warmup_steps, weight_decay")  # not wrapped
    assert any("seed = -3: must be >= 0" in line for line in lines)
    assert any("train.lr = -1: must be > 0" in line for line in lines)


# --------------------------------------------------------------------------- run


def test_run_writes_a_run_directory(tmp_path: Path) -> None:
    r = invoke(
        "run", "quickstart", "--steps", "4",
        "--set", "train.eval_every=2", "--set", "log.every=2",
        *SMALL, "--device", "cpu", "--out", tmp_path, "--quiet",
    )  # fmt: skip
    assert r.exit_code == 0, (r.output, r.exception)
    assert "Traceback" not in r.output
    out_lines = r.stdout.splitlines()
    assert len(out_lines) == 1, r.stdout  # --quiet: only the run directory
    run_dir = Path(out_lines[0])
    assert run_dir.is_dir() and run_dir.parent == tmp_path
    assert run_dir.name.startswith("quickstart-")
    assert {p.name for p in run_dir.iterdir()} >= {
        "config.yaml",
        "vocab.json",
        "metrics.parquet",
        "module_metrics.parquet",
        "events.jsonl",
        "checkpoint.pt",
    }

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["name"] == "quickstart"
    assert cfg["train"]["steps"] == 4
    assert cfg["train"]["eval_every"] == 2 and cfg["log"]["every"] == 2
    assert cfg["train"]["batch_size"] == 4
    assert cfg["modules"][0]["count"] == 4
    assert cfg["corpus"]["train_sequences"] == 200
    assert cfg["device"] == "cpu"
    assert cfg["train"]["weight_decay"] == 0.1  # resolved: defaults filled in

    vocab = json.loads((run_dir / "vocab.json").read_text())
    assert isinstance(vocab, dict) and vocab

    metrics = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    assert [m["step"] for m in metrics] == [0, 2, 4]
    assert all(m["val_loss"] is not None for m in metrics)
    module_rows = pq.read_table(run_dir / "module_metrics.parquet").to_pylist()
    assert len(module_rows) == 3 * 4
    assert sorted({m["module"] for m in module_rows}) == [0, 1, 2, 3]

    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "run_start" and kinds[-1] == "run_end"
    assert kinds.count("eval") == 3 and "checkpoint" in kinds
    assert events[0]["n_modules"] == 4 and events[0]["device"] == "cpu"

    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 4
    assert yaml.safe_load(ckpt["scenario"])["train"]["steps"] == 4


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("how", [["--set", "device=cuda"], ["--device", "cuda"]])
def test_run_on_cuda_without_cuda(tmp_path: Path, how: list[str]) -> None:
    (line,) = error_lines(invoke("run", "quickstart", *how, "--steps", "1", "--out", tmp_path))
    assert "device = 'cuda'" in line
    assert "CUDA is not available" in line and "allowed: auto, cpu" in line
    assert list(tmp_path.iterdir()) == []


def test_run_with_a_too_short_text_file(tmp_path: Path) -> None:
    text = tmp_path / "short.txt"
    text.write_text("to be or not to be\n")
    f = tmp_path / "short.yaml"
    f.write_text(
        "modules:\n  - {type: transformer, count: 1}\n"
        f"corpus: {{kind: text, path: {json.dumps(str(text))}}}\n"
    )
    (line,) = error_lines(invoke("validate", f))
    assert "corpus.path" in line and "block_size" in line
    (line,) = error_lines(invoke("run", f, "--steps", "1", "--out", tmp_path / "runs"))
    assert "corpus.path" in line and "block_size" in line
