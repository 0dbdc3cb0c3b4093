"""Generated bad input through the command line: whole scenario files and ``--set`` items that
break one or more fields (wrong types, out-of-range numbers, unknown keys, bad enum strings,
nested garbage, text with ``:``, ``@``, quotes, newlines and unicode), fed to
``brainnet validate`` and ``brainnet run --steps 1``.

Every case must end with exit code 2, only ``error:`` lines on stderr (one per problem, nothing
on stdout), a line that names each field broken, no traceback, and nothing written: the
``--out`` directory of ``run`` stays empty. tests/test_config_fuzz.py fuzzes ``load_scenario``
value by value; this file drives the CLI (typer's CliRunner, in-process, plus a few real
subprocesses) with whole bad files and sets of overrides. Hypothesis keeps no examples
database (``database=None``) and draws the same examples on every run (``derandomize``).
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner, Result

from brainnet.cli import app
from brainnet.config_errors import SET, one_line, parse_sets

runner = CliRunner()

FUZZ = settings(
    max_examples=120,
    database=None,  # no examples database in the repository
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# --------------------------------------------------------------------------- bad values

SPECIAL = [":", ": ", "@", "'", '"', "\n", "\t", "#", "{", "}", "[", "]", "&", "*", "!", "|",
           ">", "%", ",", "é", "日本", "😀", "\u2028", "\u200b", "\x85", "\\", "- "]  # fmt: skip
#: strings pydantic reads as a boolean (lax mode), so never a bad boolean
BOOL_WORDS = {"0", "1", "off", "on", "f", "t", "false", "true", "n", "y", "no", "yes"}


def _not_a_number(s: str) -> bool:
    """No digit, inf or nan: pydantic can read the string as neither an int nor a float."""
    return re.search(r"\d|inf|nan", s, re.IGNORECASE) is None


#: text with at least one hostile character, which no number, boolean, name, enum value or
#: known field name reads as valid
hostile = st.builds(
    lambda a, b, c: a + b + c, st.text(max_size=6), st.sampled_from(SPECIAL), st.text(max_size=6)
).filter(lambda s: _not_a_number(s) and s.strip().lower() not in BOOL_WORDS)
leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), hostile)
nested = st.recursive(
    leaf,
    lambda kids: st.one_of(st.lists(kids, max_size=3), st.dictionaries(hostile, kids, max_size=3)),
    max_leaves=6,
)
#: non-empty containers of garbage: never a number, a string or a boolean
containers = st.one_of(
    st.lists(nested, min_size=1, max_size=3),
    st.dictionaries(hostile, nested, min_size=1, max_size=3),
)


def bad_int(ge: int, le: int | None = None) -> st.SearchStrategy[Any]:
    out = [
        st.integers(max_value=ge - 1),
        st.builds(lambda i, f: i + f, st.integers(-(10**9), 10**9), st.floats(0.01, 0.99)),
        hostile,
        containers,
    ]
    if le is not None:
        out.append(st.integers(min_value=le + 1))
    return st.one_of(out)


def bad_float(
    lo: float | None = None, lo_open: bool = False, hi: float | None = None, hi_open: bool = False
) -> st.SearchStrategy[Any]:
    out: list[st.SearchStrategy[Any]] = [hostile, containers]
    if lo is not None:
        below = (lambda x: x <= lo) if lo_open else (lambda x: x < lo)
        out.append(st.floats(max_value=lo, allow_nan=False).filter(below))
        out.append(st.integers(max_value=int(lo) - 1))
    if hi is not None:
        above = (lambda x: x >= hi) if hi_open else (lambda x: x > hi)
        out.append(st.floats(min_value=hi, allow_nan=False).filter(above))
        out.append(st.integers(min_value=int(hi) + 1))
    return st.one_of(out)


bad_bool = st.one_of(
    st.integers().filter(lambda x: x not in (0, 1)),
    st.floats(allow_nan=False).filter(lambda x: x not in (0, 1)),
    hostile,
    containers,
)
#: a bad value of a Literal / registry-name field (hostile text is never one of its names)
bad_enum = st.one_of(hostile, st.integers(), st.floats(allow_nan=False), containers)
#: a bad value of a str field: anything but a string (None included: no str field is optional)
bad_str = st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), containers)
bad_name = st.one_of(
    st.just(""), hostile.filter(lambda s: not re.fullmatch(r"[A-Za-z0-9_.-]+", s)), bad_str
)
#: a bad value of a whole section: a scalar or a list (an empty mapping would be valid)
bad_section = st.one_of(
    st.integers(), st.floats(allow_nan=False), st.booleans(), hostile, st.lists(nested, max_size=3)
)
unit = st.floats(0, 0.99)
bad_betas = st.one_of(
    st.lists(unit, max_size=1),
    st.lists(unit, min_size=3, max_size=4),
    st.tuples(unit, st.floats(min_value=1, allow_nan=False)).map(list),
    st.tuples(hostile, unit).map(list),
    hostile,
    st.integers(),
)
bad_range = st.one_of(  # k_range: [lo, hi] with 1 <= lo <= hi
    st.tuples(st.integers(max_value=0), st.integers(1, 4)).map(list),
    st.tuples(st.integers(3, 9), st.integers(1, 2)).map(list),
    st.lists(st.integers(1, 4), min_size=3, max_size=4),
    hostile,
)
bad_names = st.one_of(  # a list of registry names: one of them hostile, or not a list
    st.lists(hostile, min_size=1, max_size=3),
    st.tuples(st.just("replace"), hostile).map(list),
    st.integers(),
    hostile,
)

# (path, bad values): every one is a field error of its own, whatever else is broken
FIELDS: list[tuple[tuple[str | int, ...], st.SearchStrategy[Any]]] = [
    (("name",), bad_name),
    (("description",), bad_str),
    (("out_dir",), bad_str),
    (("seed",), bad_int(0)),
    (("device",), bad_enum),
    (("precision",), bad_enum),
    (("compile",), bad_bool),
    (("corpus",), bad_section),
    (("corpus", "kind"), bad_enum),
    (("corpus", "block_size"), bad_int(2, 4096)),
    (("corpus", "domains"), st.one_of(st.just([]), bad_names)),
    (("corpus", "train_sequences"), bad_int(1)),
    (("modules",), st.one_of(st.just([]), bad_section.filter(lambda v: v != []))),
    (("modules", 0), bad_section),
    (("modules", 0, "type"), bad_enum),
    (("modules", 0, "count"), bad_int(1)),
    (("modules", 0, "n_layer"), bad_int(1, 64)),
    (("modules", 0, "d_model"), bad_int(1, 8192)),
    (("modules", 0, "message_dim"), bad_int(1)),
    (("modules", 0, "dropout"), bad_float(0, hi=1, hi_open=True)),
    (("modules", 0, "bias"), bad_bool),
    (("train",), bad_section),
    (("train", "steps"), bad_int(1)),
    (("train", "batch_size"), bad_int(1)),
    (("train", "lr"), bad_float(0, lo_open=True, hi=1)),
    (("train", "min_lr"), bad_float(0, hi=1)),
    (("train", "weight_decay"), bad_float(0)),
    (("train", "betas"), bad_betas),
    (("train", "grad_clip"), bad_float(0)),
    (("train", "eval_every"), bad_int(1)),
    (("log",), bad_section),
    (("log", "every"), bad_int(1)),
    (("log", "checkpoint_every"), bad_int(0)),
    (("log", "tensorboard"), bad_bool),
    (("society",), bad_section),
    (("society", "topology"), bad_enum),
    (("society", "clusters"), bad_int(1)),
    (("society", "intra"), bad_enum),
    (("society", "rounds"), bad_int(0)),
    (("society", "module_loss_weight"), bad_float(0)),
    (("society", "router"), bad_section),
    (("society", "router", "top_k"), bad_int(1)),
    (("society", "router", "temperature"), bad_float(0, lo_open=True)),
    (("society", "router", "capacity_factor"), bad_float(1)),
    (("society", "blackboard", "threshold"), bad_float(0, hi=1)),
    (("society", "blackboard", "slots"), bad_int(1)),
    (("society", "arousal", "enabled"), bad_bool),
    (("society", "arousal", "rate"), bad_float(0, lo_open=True, hi=1)),
    (("society", "arousal", "k_range"), bad_range),
    (("society", "clock", "flops_per_ms"), bad_float(0, lo_open=True)),
    (("distill",), bad_section),
    (("distill", "enabled"), bad_bool),
    (("distill", "teacher"), bad_enum),
    (("distill", "teacher_run"), bad_str),
    (("distill", "temperature"), bad_float(0, lo_open=True)),
    (("distill", "ema", "schedule"), bad_enum),
    (("emergence",), bad_section),
    (("emergence", "every"), bad_int(1)),
    (("emergence", "norm"), bad_enum),
    (("emergence", "threshold"), bad_enum),
    (("collapse", "n"), bad_int(1, 8)),
    (("reorganize", "actions"), bad_names),
    (("reliability",), bad_section),
    (("reliability", "on_nonfinite"), bad_enum),
    (("reliability", "max_strikes"), bad_int(0)),
]
#: sections whose unknown keys are generated (() is the scenario itself)
SECTIONS: list[tuple[str | int, ...]] = [
    (), ("train",), ("log",), ("corpus",), ("modules", 0), ("society",), ("society", "router"),
    ("society", "arousal"), ("distill",), ("distill", "ema"), ("emergence",), ("reliability",),
]  # fmt: skip


@dataclass(frozen=True)
class Break:
    """One thing broken: the bad ``value`` at ``path``."""

    path: tuple[str | int, ...]
    value: Any
    #: --set only: the key itself cannot be applied (a list index or a field of a value); the
    #: command stops at the first such item, with its one line
    structural: bool = False

    @property
    def key(self) -> str:
        return ".".join(map(str, self.path))

    @property
    def group(self) -> str:
        """At most one break per top-level section, so that none masks another (a bad
        ``corpus.kind`` hides the corpus's other fields, a bad ``train`` its fields)."""
        return str(self.path[0])


def field_break(path: tuple[str | int, ...], values: st.SearchStrategy[Any]) -> Any:
    return values.map(lambda v: Break(path, v))


def unknown_key(for_set: bool) -> st.SearchStrategy[Break]:
    """An unknown key in one of SECTIONS; a --set key has no '.' or '=' and no outer blanks."""
    key = hostile.filter(lambda s: s != "" and s != "<<")  # '<<' is YAML's merge key
    if for_set:
        key = key.filter(lambda s: "." not in s and "=" not in s and s == s.strip())
    return st.builds(
        lambda section, k, v: Break((*section, k), v), st.sampled_from(SECTIONS), key, nested
    )


def structural_break() -> st.SearchStrategy[Break]:
    """--set keys that cannot be applied to quickstart (which sets train.lr, seed and name)."""
    junk = hostile.filter(lambda s: s != "" and "." not in s and "=" not in s and s == s.strip())
    return st.one_of(
        st.builds(lambda i: Break(("modules", i, "count"), 2, True), st.integers(1, 10**6)),
        st.builds(lambda j: Break(("modules", j, "count"), 2, True), junk),
        st.builds(
            lambda f, j, v: Break((*f, j), v, True),
            st.sampled_from([("train", "lr"), ("seed",), ("name",), ("modules", 0, "count")]),
            junk,
            leaf,
        ),
    )


def breaks(for_set: bool) -> st.SearchStrategy[list[Break]]:
    one = st.one_of(*(field_break(path, values) for path, values in FIELDS), unknown_key(for_set))
    if for_set:
        one = st.one_of(one, structural_break())
    return st.lists(one, min_size=1, max_size=4, unique_by=lambda b: b.group)


# --------------------------------------------------------------------------- the contract


def error_lines(r: Result) -> list[str]:
    """Exit 2, nothing on stdout, no traceback, only ``error:`` lines on stderr."""
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.output
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert lines, r.stderr
    assert all(line.startswith("error: ") for line in lines), lines
    assert all(line.isprintable() for line in lines), lines
    return lines


def names(line: str, label: str, key: str) -> bool:
    """Does the error line name the field ``key`` (or a field inside it) from ``label``?"""
    field = re.escape(one_line(key))
    return re.match(rf"error: {re.escape(label)}: {field}(\.\S*)? = ", line) is not None


def assert_names_every_break(lines: list[str], label: str, broken: list[Break]) -> None:
    for b in broken:
        assert any(names(line, label, b.key) for line in lines), (b.key, b.value, lines)


def invoke_run(args: list[str], out: Path) -> list[str]:
    """``brainnet run ... --steps 1`` on a bad case: exit 2 before anything is written."""
    lines = error_lines(
        runner.invoke(
            app, ["run", *args, "--steps", "1", "--out", str(out), "--quiet", "--no-report"]
        )  # fmt: skip
    )
    assert list(out.iterdir()) == [], list(out.iterdir())
    return lines


def steps_broken(broken: list[Break]) -> bool:
    """``--steps 1`` writes train.steps: a case that breaks it (or ``train``) is not a bad run."""
    return any(b.path in (("train",), ("train", "steps")) for b in broken)


# --------------------------------------------------------------------------- whole files

MIN = {"modules": [{"type": "transformer", "count": 4}]}
SOCIETY = {
    "name": "fuzz",
    "modules": [{"type": "transformer", "count": 4, "d_model": 16, "n_head": 2}],
    "society": {"topology": "brain", "clusters": 2, "router": {"top_k": 1}},
    "emergence": {"every": 10},
    "log": {"every": 10},
}
FILE_NAMES = ["bad.yaml", "my scenario.yml", "it's: @odd.yaml", "日本語.yaml", "x"]


def nest(data: dict[str, Any], path: tuple[str | int, ...], value: Any) -> None:
    node: Any = data
    for part in path[:-1]:
        if isinstance(node, list):
            node = node[part]  # type: ignore[index]
        else:
            if not isinstance(node.get(part), (dict, list)):
                node[part] = {}
            node = node[part]
    node[path[-1]] = value


@st.composite
def bad_files(draw: st.DrawFn) -> tuple[str, str, list[Break]]:
    """(file name, YAML text, what is broken in it)."""
    data = copy.deepcopy(draw(st.sampled_from([MIN, SOCIETY])))
    broken = draw(breaks(for_set=False))
    for b in broken:
        nest(data, b.path, copy.deepcopy(b.value))
    text = yaml.safe_dump(
        data,
        sort_keys=False,
        allow_unicode=draw(st.booleans()),
        default_flow_style=draw(st.sampled_from([None, True, False])),
        width=draw(st.sampled_from([80, 1 << 20])),
    )
    assume(yaml.safe_load(text) == data)  # the file says what the case means
    return draw(st.sampled_from(FILE_NAMES)), text, broken


@FUZZ
@given(case=bad_files())
def test_generated_bad_scenario_files(case: tuple[str, str, list[Break]]) -> None:
    name, text, broken = case
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / name
        f.write_text(text, encoding="utf-8")
        lines = error_lines(runner.invoke(app, ["validate", str(f)]))
        assert_names_every_break(lines, name, broken)
        if not steps_broken(broken):
            (Path(tmp) / "out").mkdir()
            assert invoke_run([str(f)], Path(tmp) / "out") == lines


# --------------------------------------------------------------------------- --set items


def set_item(key: str, value: Any, style: str) -> str:
    """``key=value``, the value written as YAML text in one of several ways."""
    if style == "plain" and isinstance(value, str):
        raw = value
    elif style == "json":
        raw = json.dumps(value, ensure_ascii=False)
    else:
        raw = yaml.safe_dump(value, default_flow_style=True, width=1 << 20, allow_unicode=True)
        raw = raw.removesuffix("\n").removesuffix("\n...")
    return f"{key}={raw}"


@st.composite
def bad_sets(draw: st.DrawFn) -> tuple[list[str], list[Break]]:
    """(--set items for quickstart, what they break)."""
    broken = draw(breaks(for_set=True))
    items = []
    for b in broken:
        styles = [draw(st.sampled_from(["plain", "json", "yaml"])), "yaml"]
        # the first way of writing it that reads back as this break (plain text is often YAML
        # of something else, JSON and YAML disagree on a few floats)
        ok = [i for i in (set_item(b.key, b.value, s) for s in styles)
              if parse_sets([i]) == [(b.key, b.value)]]  # fmt: skip
        assume(ok)
        items.append(ok[0])
    return items, broken


@FUZZ
@given(case=bad_sets())
def test_generated_bad_overrides(case: tuple[list[str], list[Break]]) -> None:
    items, broken = case
    args = [a for item in items for a in ("--set", item)]
    lines = error_lines(runner.invoke(app, ["validate", "quickstart", *args]))
    structural = [b for b in broken if b.structural]
    if structural:  # the first item that cannot be applied stops the command, alone
        assert len(lines) == 1, lines
        assert_names_every_break(lines, SET[0], structural[:1])
    else:
        assert_names_every_break(lines, SET[0], broken)
    if not steps_broken(broken):
        with tempfile.TemporaryDirectory() as tmp:
            assert invoke_run(["quickstart", *args], Path(tmp)) == lines


# --------------------------------------------------------------------------- any bytes

QUICKSTART = (resources.files("brainnet.scenarios") / "quickstart.yaml").read_text()


@st.composite
def mangled(draw: st.DrawFn) -> bytes:
    """The quickstart file cut, spliced or overwritten with random bytes (maybe still valid)."""
    data = bytearray(QUICKSTART.encode())
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(data)))
        j = draw(st.integers(i, min(len(data), i + 40)))
        data[i:j] = draw(st.binary(max_size=8))
    return bytes(data[: draw(st.integers(0, len(data)))] if draw(st.booleans()) else data)


@settings(FUZZ, max_examples=60)
@given(data=st.one_of(st.binary(max_size=200), mangled()))
def test_any_bytes_are_valid_or_one_line_per_problem(data: bytes) -> None:
    """Whatever a scenario file holds, ``validate`` says ok or names the file in each error
    line; it never crashes."""
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "junk.yaml"
        f.write_bytes(data)
        r = runner.invoke(app, ["validate", str(f)])
        if r.exit_code == 0:
            assert r.stderr == "" and r.stdout.startswith("ok: "), r.output
            return
        lines = error_lines(r)
        assert all("junk.yaml" in line for line in lines), lines


# --------------------------------------------------------------------------- known defects


def test_error_lines_show_colon_words_verbatim() -> None:
    """Rich replaces ``:cat:`` with an emoji unless told not to: the line must show the value
    the user wrote."""
    r = runner.invoke(app, ["validate", "quickstart", "--set", "name=':a: :cat:'"])
    (line,) = error_lines(r)
    assert "name = ':a: :cat:'" in line, line


# --------------------------------------------------------------------------- real processes

BAD_FILE = (
    "name: 'it''s: @x'\n"
    "modules: [{type: transformer, count: 0, 'd_model\\n': 3}]\n"
    "train: {lr: {a: [1, '日本']}, betas: [0.9]}\n"
    "society: {topology: 'brain\"', intra: ring}\n"
    'device: "gpu\\u2028"\n'
)
BAD_FILE_FIELDS = ["name", "modules.0.count", "modules.0.d_model\\n", "train.lr", "train.betas",
                   "society.topology", "device"]  # fmt: skip


def brainnet(*args: str, cwd: Path) -> list[str]:
    """The real ``python -m brainnet``: exit 2, only unwrapped, uncoloured ``error:`` lines."""
    env = {**os.environ, "COLUMNS": "40"}
    p = subprocess.run([sys.executable, "-m", "brainnet", *args], capture_output=True,
                       text=True, cwd=cwd, env=env, timeout=120)  # fmt: skip
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr + p.stdout
    assert p.stdout == ""
    assert "\x1b[" not in p.stderr
    lines = p.stderr.splitlines()
    assert lines and all(line.startswith("error: ") for line in lines), lines
    return lines


def test_bad_file_in_a_subprocess(tmp_path: Path) -> None:
    f = tmp_path / "bad file.yaml"
    f.write_text(BAD_FILE, encoding="utf-8")
    lines = brainnet("validate", str(f), cwd=tmp_path)
    assert len(lines) == len(BAD_FILE_FIELDS), lines
    for field in BAD_FILE_FIELDS:
        assert any(names(line, "bad file.yaml", field) for line in lines), (field, lines)


def test_bad_overrides_of_run_in_a_subprocess(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    sets = ["train.lr=a:b", "society.router.x@y=1", "modules.3.count=2"]
    lines = brainnet("run", "quickstart", "--steps", "1", "--out", "out", "--quiet",
                     *(a for s in sets for a in ("--set", s)), cwd=tmp_path)  # fmt: skip
    assert len(lines) == 1 and names(lines[0], "--set", "modules.3.count"), lines
    lines = brainnet("run", "quickstart", "--steps", "1", "--out", "out", "--quiet",
                     *(a for s in sets[:2] for a in ("--set", s)), cwd=tmp_path)  # fmt: skip
    assert len(lines) == 2, lines
    assert names(lines[0], "--set", "train.lr") or names(lines[1], "--set", "train.lr"), lines
    assert any(names(line, "--set", "society.router.x@y") for line in lines), lines
    assert list((tmp_path / "out").iterdir()) == []


def test_binary_scenario_file_in_a_subprocess(tmp_path: Path) -> None:
    f = tmp_path / "blob.yaml"
    f.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    (line,) = brainnet("validate", str(f), cwd=tmp_path)
    assert "blob.yaml" in line, line
