"""Config errors under hostile values: colons, @, quotes, newlines, control characters and
unicode in every field that takes text, through a dict of overrides, ``--set`` items and a
YAML file. Always a ScenarioError (never a traceback), one printable line per problem that
names the field, shows the value and says what is allowed."""

from __future__ import annotations

import copy
import json
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from brainnet.cli import app
from brainnet.config import ScenarioError, load_scenario
from brainnet.config_errors import one_line

MIN = {"modules": [{"type": "transformer", "count": 2}]}

#: 36 values that broke or could break a formatter that parses "@field:name:value:msg"
NASTY = [
    "C:/runs/x", "a:b:c", "@field:x:y:z", "@", "'", '"', "it's \"quoted\"", "line1\nline2",
    "\r\n", "tab\there", "\x00nul", "\x1b[31mred", "é", "日本語", "😀", "\u2028", "\u200b",
    "\ufeff", "\x85", "{a}", "{msg}", "%s", "\\n", ": ", "- x", "# comment", "&anchor",
    "*alias", "!!int", "[1, 2]", '{"k": 1}', "~", "null", "true", "", "x" * 300,
]  # fmt: skip
SPECIAL = [":", "@", "'", '"', "\n", "\r", "\t", "\x00", "é", "😀", "\u2028", "{", "}"]


@dataclass(frozen=True)
class Case:
    field: str  # dotted path the bad value is written to
    allowed: str  # regex the problem must contain: what is allowed
    setup: dict[str, Any] = field(default_factory=dict)  # other fields the case needs
    wrap: Callable[[str], Any] = lambda s: s  # nasty string -> the value written
    loc: str | None = None  # where the problem is reported (default: field)
    at_loc: Callable[[str], Any] | None = None  # the value shown there (default: wrap(s))
    valid: Callable[[str], bool] = lambda s: False  # strings this field accepts


def _literal(*names: str) -> str:
    return re.escape("must be one of " + ", ".join(f"'{n}'" for n in names[:-1]))


CASES = [
    Case(
        "name",
        r"must match \^\[A-Za-z0-9_\.-\]\+\$|must not be empty",
        valid=lambda s: re.fullmatch(r"[A-Za-z0-9_.-]+", s) is not None,
    ),
    # free text: a nested mapping is the bad value
    Case("description", "must be a string", wrap=lambda s: {"text": s}),
    Case("out_dir", "must be a string", wrap=lambda s: {s: [s]}),
    # any string is a path, but teacher 'ema' uses none: the model-level check names it
    Case("distill.teacher_run", re.escape("allowed: null, or set teacher to 'run'")),
    Case(
        "corpus.path",
        re.escape("allowed: a UTF-8 text file or a built-in (tinyshakespeare)"),
        setup={"corpus.kind": "text"},
        valid=lambda s: s == "tinyshakespeare",
    ),
    Case("society.topology", r"known: all_to_all, attention, brain, .*independent, .*routing"),
    Case("society.intra", _literal("complete", "ring", "small_world")),
    Case(
        "reorganize.actions",
        r"known: merge, prune, replace, rewire, spawn, split",
        setup={"emergence.every": 50},
        wrap=lambda s: ["replace", s],
        loc="reorganize.actions.1",
        at_loc=lambda s: s,
    ),
    Case("modules.0.type", r"known: (\w+, )*transformer"),
    Case("corpus.kind", r"known: (\w+, )*tasks"),
    Case("corpus.domains", r"allowed: \w+", wrap=lambda s: [s]),
    Case("device", _literal("auto", "cpu", "cuda")),
    Case("precision", _literal("auto", "fp32", "bf16")),
    Case("distill.teacher", _literal("ema", "peers", "both", "run")),
    Case("distill.ema.schedule", _literal("constant", "warmup", "cosine")),
    Case("emergence.norm", _literal("fro", "l1")),
    Case("emergence.threshold", _literal("fixed", "adaptive")),
    Case("seed", "must be an integer"),
    Case("train.lr", "must be a number"),
]
ROUTES = ["overrides", "--set", "yaml"]


def shown(value: Any) -> str:
    """How a problem line shows a value: strings as repr, lists and short mappings as JSON."""
    if isinstance(value, str):
        return one_line(repr(value))
    text = json.dumps(value, ensure_ascii=False)
    return one_line("{...}" if isinstance(value, dict) and len(text) > 60 else text)


def nest(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node: Any = data
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    node[int(last) if isinstance(node, list) else last] = value


def set_item(key: str, value: Any) -> str:
    """``--set key=value`` with the value written as YAML that reads back as ``value``."""
    raw = yaml.safe_dump(value, default_style='"', width=1 << 20)
    assert yaml.safe_load(raw) == value, raw
    return f"{key}={raw}"


def problems(route: str, sets: dict[str, Any], tmp: Path) -> tuple[str, list[str]]:
    """(label, problem lines) of MIN with ``sets`` applied through ``route``."""
    with pytest.raises(ScenarioError) as e:  # any other exception fails the test
        if route == "overrides":
            load_scenario(MIN, sets)
        elif route == "--set":
            load_scenario(MIN, [set_item(k, v) for k, v in sets.items()])
        else:
            data = copy.deepcopy(MIN)
            for k, v in sets.items():
                nest(data, k, v)
            (tmp / "bad.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
            load_scenario(tmp / "bad.yaml")
    return ("bad.yaml" if route == "yaml" else "--set"), e.value.problems


def assert_one_problem(case: Case, s: str, route: str, tmp: Path) -> None:
    label, lines = problems(route, {**case.setup, case.field: case.wrap(s)}, tmp)
    assert len(lines) == 1, (case.field, s, lines)
    (line,) = lines
    assert line.isprintable() and line.splitlines() == [line], line  # one line, escaped
    value = case.wrap(s) if case.at_loc is None else case.at_loc(s)
    assert line.startswith(f"{label}: {case.loc or case.field} = {shown(value)}: "), line
    assert re.search(case.allowed, line), (case.allowed, line)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("case", CASES, ids=[c.field for c in CASES])
def test_nasty_values_give_one_line_per_problem(case: Case, route: str, tmp_path: Path) -> None:
    bad = [s for s in NASTY if not case.valid(s)]
    assert len(bad) >= 30
    for s in bad:
        assert_one_problem(case, s, route, tmp_path)


nasty_text = st.builds(
    lambda a, b, c: a + b + c, st.text(max_size=8), st.sampled_from(SPECIAL), st.text(max_size=8)
)


@pytest.mark.parametrize("case", CASES, ids=[c.field for c in CASES])
@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(s=nasty_text)
def test_generated_values_give_one_line_per_problem(case: Case, s: str) -> None:
    if case.valid(s):
        return
    with tempfile.TemporaryDirectory() as tmp:
        for route in ROUTES:
            assert_one_problem(case, s, route, Path(tmp))


def test_unknown_keys_with_nasty_names(tmp_path: Path) -> None:
    for s in NASTY:
        data = {**copy.deepcopy(MIN), s: 1}
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
        with pytest.raises(ScenarioError) as e:
            load_scenario(tmp_path / "bad.yaml")
        (line,) = e.value.problems
        assert line.isprintable(), line
        assert line.startswith(f"bad.yaml: {one_line(s) or '<top>'} = 1: unknown field; allowed: ")


# --------------------------------------------------------------------------- field + model errors


@pytest.mark.parametrize(
    "sets, expect",
    [
        # a section's own cross-field check (society) beside a field error elsewhere
        (
            ["society.router.top_k=9", "train.lr=-1"],
            [
                "train.lr = -1: must be > 0",
                "society.router.top_k = 9: must be <= society.clusters (4)",
            ],
        ),
        # a cross-section check of the scenario (modules vs society) beside a field error
        (
            ["modules.0.count=3", "train.lr=-1"],
            [
                "train.lr = -1: must be > 0",
                "modules.0.count = 3: must be a multiple of society.clusters",
            ],
        ),
        # a cross-field check beside a field error in the same section
        (
            ["distill.teacher_run=C:/runs/x", "distill.temperature=-1"],
            [
                "distill.temperature = -1: must be > 0",
                "distill.teacher_run = 'C:/runs/x': only used",
            ],
        ),
        # several cross-section problems at once
        (
            ["modules.0.count=3", "society.topology=pipeline", "reorganize.actions=[split]"],
            [
                "modules.0.count = 3: must be a multiple",
                "reorganize.actions.0 = 'split': needs a routed society",
                "reorganize = {...}: needs an `emergence:` section",
            ],
        ),
        # a check that reads a failed section (society) is not run on it
        (
            ["modules.0.count=3", "society.router.top_k=9"],
            ["society.router.top_k = 9: must be <= society.clusters (4)"],
        ),
    ],
)
def test_model_level_errors_are_shown_with_field_errors(sets: list[str], expect: list[str]):
    with pytest.raises(ScenarioError) as e:
        load_scenario("brain", sets)
    lines = e.value.problems
    assert len(lines) == len(expect), lines
    for phrase in expect:
        assert sum(phrase in line for line in lines) == 1, (phrase, lines)
    assert all(line.startswith("--set: ") for line in lines), lines


def test_model_level_error_with_field_error_in_a_file(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text(
        "modules: [{type: transformer, count: 4}]\n"
        "society: {topology: routing, clusters: 2, router: {top_k: 3}}\n"
        "train: {lr: -1}\n"
    )
    with pytest.raises(ScenarioError) as e:
        load_scenario(f)
    assert e.value.problems == [
        "s.yaml: train.lr = -1: must be > 0",
        "s.yaml: society.router.top_k = 3: must be <= society.clusters (2)",
    ]


def test_cli_shows_a_value_with_a_colon_on_one_line() -> None:
    r = CliRunner().invoke(
        app, ["validate", "quickstart", "--set", "distill.teacher_run=C:/runs/x"]
    )
    assert r.exit_code == 2, (r.output, r.exception)
    assert "Traceback" not in r.output and r.stdout == ""
    assert r.stderr.splitlines() == [
        "error: --set: distill.teacher_run = 'C:/runs/x': only used by teacher 'run' "
        "(teacher is 'both'); allowed: null, or set teacher to 'run'"
    ]
