"""The sweep file: which scenario, which overrides, which seeds.

    name: topologies                # the sweep's directory (default: the file's stem)
    base: quickstart                # a built-in name or a file, relative to this file
    seeds: [0, 1, 2]
    set: {train.steps: 200}         # dotted overrides of every run
    grid:                           # cartesian product: one group per point
      train.lr: [1.0e-3, 3.0e-3]
    groups:                         # optional; each is crossed with every grid point
      - {name: brain}
      - {name: pipeline, scenario: pipeline, set: {society.clusters: 4}}

Groups are the listed groups (one group ``default`` if none) times the grid points; a group's
name is its listed name plus the grid point's ``key=value`` parts, joined with ``,``. A run is
one group and one seed; its scenario is the group's scenario (else ``base``) with ``set``, the
group's ``set``, the grid point and the seed applied in that order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field, ValidationError

from brainnet.config import Strict, builtin_scenarios
from brainnet.config_errors import (
    Problems,
    ScenarioError,
    check,
    format_error,
    parse_yaml,
    problem,
    show,
    skipped_problems,
)

#: a group or sweep name: a directory name that is not hidden
NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"
Overrides = dict[str, Any]


class GroupSpec(Strict):
    """One listed group of runs."""

    name: str = Field(pattern=NAME, description="the group's name (its directory)")
    scenario: str | None = Field(
        None, description="a built-in name or a file relative to the sweep file; None = base"
    )
    set: Overrides = Field(default_factory=dict, description="dotted overrides of this group")


class SweepSpec(Strict):
    """A sweep: groups × seeds, each run a scenario with overrides (see the module docstring)."""

    name: str | None = Field(
        None, pattern=NAME, description="the sweep's directory name; None = the file's stem"
    )
    description: str = ""
    base: str | None = Field(
        None, description="a built-in name or a file relative to the sweep file"
    )
    seeds: list[Annotated[int, Field(ge=0)]] = Field(min_length=1, description="one run each")
    set: Overrides = Field(default_factory=dict, description="dotted overrides of every run")
    grid: dict[str, Annotated[list[Any], Field(min_length=1)]] = Field(
        default_factory=dict, description="dotted field -> values; every combination is a group"
    )
    groups: list[GroupSpec] = Field(default_factory=list, description="listed groups")

    @check("seeds")
    def _unique_seeds(self) -> Problems:
        if len(set(self.seeds)) != len(self.seeds):
            yield problem("seeds", self.seeds, "must not repeat a seed")

    @check("groups")
    def _unique_groups(self) -> Problems:
        names = [g.name for g in self.groups]
        for i, name in enumerate(names):
            if name in names[:i]:
                yield problem(("groups", i, "name"), name, "must differ from the other groups'")

    @check("base", "groups")
    def _has_scenario(self) -> Problems:
        if self.base is None and (not self.groups or any(g.scenario is None for g in self.groups)):
            yield problem(
                "base", None, "required: a run whose group names no scenario runs the base"
            )

    @check("set", "grid", "groups")
    def _keys(self) -> Problems:
        places: list[tuple[tuple[str | int, ...], Overrides]] = [
            (("set",), self.set),
            (("grid",), self.grid),
            *((("groups", i, "set"), g.set) for i, g in enumerate(self.groups)),
        ]
        for loc, overrides in places:
            for key, value in overrides.items():
                if key == "seed":
                    yield problem((*loc, key), value, "is set by `seeds`; allowed: other fields")
                elif not key or any(not part for part in key.split(".")):
                    yield problem((*loc, key), value, "must be a dotted field, e.g. train.lr")


def load_sweep(source: str | Path | dict[str, Any]) -> tuple[SweepSpec, str]:
    """Read and validate a sweep file (or a dict) -> (spec, label of the file for error lines).

    The spec comes back resolved: ``name`` filled in, and ``base`` and each group's
    ``scenario`` either a built-in name or an absolute file path. Raises ScenarioError with
    one line per problem."""
    if isinstance(source, dict):
        label, root, stem = "sweep", Path.cwd(), "sweep"
        data = json.loads(json.dumps(source, default=str))
    else:
        path = Path(source)
        label, root, stem = path.name, path.resolve().parent, path.stem
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ScenarioError([f"{path}: cannot read sweep file: {e}"]) from None
        data = parse_yaml(text, label)
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        if skipped := skipped_problems(SweepSpec, data):
            errors += ValidationError.from_exception_data("SweepSpec", skipped).errors()
        raise ScenarioError([format_error(err, label, set()) for err in errors]) from None
    problems: list[str] = []
    spec.name = spec.name or _name_of(stem)
    if spec.base is not None:
        spec.base = _scenario_ref(spec.base, root, f"{label}: base", problems)
    for i, g in enumerate(spec.groups):
        if g.scenario is not None:
            g.scenario = _scenario_ref(g.scenario, root, f"{label}: groups.{i}.scenario", problems)
    if problems:
        raise ScenarioError(problems)
    return spec, label


def dump_spec(spec: SweepSpec) -> str:
    """The resolved spec as YAML (what ``sweep.yaml`` in the sweep directory holds)."""
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)


def _name_of(stem: str) -> str:
    """A file stem as a sweep name (characters a directory name should not have become _)."""
    name = "".join(c if c.isalnum() or c in "_.-" else "_" for c in stem).lstrip(".")
    return name or "sweep"


def _scenario_ref(ref: str, root: Path, where: str, problems: list[str]) -> str:
    """A file relative to the sweep file -> its absolute path; a built-in name stays a name."""
    path = root / ref
    if path.is_file():
        return str(path)
    name = ref.removesuffix(".yaml")
    builtins = builtin_scenarios()
    if name in builtins:
        return name
    problems.append(
        f"{where} = {show(ref)}: no such file (relative to the sweep file) and no built-in of "
        f"that name; built-ins: {', '.join(builtins)}"
    )
    return ref
