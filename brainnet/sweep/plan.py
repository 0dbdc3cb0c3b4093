"""A sweep's runs: the groups (listed groups × grid points) × seeds, each scenario resolved and
validated before anything runs."""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any

from brainnet.config import Scenario, ScenarioError, load_scenario
from brainnet.config_errors import Origin, show
from brainnet.sweep.spec import SweepSpec

#: characters a group name keeps; anything else in a grid value becomes _
_UNSAFE = re.compile(r"[^A-Za-z0-9_.=,-]")


@dataclass(frozen=True)
class Group:
    """One group of runs: a scenario and its dotted overrides (each with where it came from)."""

    name: str
    scenario: str  # a built-in name or an absolute path
    overrides: dict[str, Any]
    origins: dict[str, Origin] = field(compare=False)


@dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep: a group and a seed, its scenario validated."""

    group: Group
    seed: int
    scenario: Scenario

    @property
    def id(self) -> str:
        """``<group>/seed=<n>``: also the run directory, relative to the sweep directory."""
        return f"{self.group.name}/seed={self.seed}"

    @property
    def overrides_json(self) -> str:
        """The group's dotted overrides (``set``, the group's ``set``, the grid point)."""
        return json.dumps(self.group.overrides, default=str)


def groups(spec: SweepSpec, label: str) -> list[Group]:
    """The listed groups (or one, ``default``) × the grid points, in file order."""
    listed = spec.groups or [None]
    keys = list(spec.grid)
    points = list(itertools.product(*(spec.grid[k] for k in keys)))
    out, seen = [], {}
    for i, g in enumerate(listed):
        for point in points:
            over: dict[str, Any] = {}
            origins: dict[str, Origin] = {}
            sources = [
                (spec.set, (label, "set")),
                *([] if g is None else [(g.set, (label, f"groups.{i}.set"))]),
                (dict(zip(keys, point, strict=True)), (label, "grid")),
            ]
            for values, origin in sources:
                for k, v in values.items():
                    over.pop(k, None)  # a later source wins, and applies after the earlier ones
                    over[k] = v
                    origins[k] = origin
            grid = [_UNSAFE.sub("_", f"{k}={_text(v)}") for k, v in zip(keys, point, strict=True)]
            name = ",".join(([] if g is None else [g.name]) + grid) or "default"
            where = point if g is None else (g.name, *point)
            if name in seen:
                raise ScenarioError(
                    [
                        f"{label}: grid = {show(spec.grid)}: {seen[name]} and {where} give the "
                        f"same group name {name!r}; allowed: values that differ in "
                        "[A-Za-z0-9_.=,-]"
                    ]
                )
            if len(name.encode()) > 200:
                raise ScenarioError(
                    [
                        f"{label}: grid: group name {name[:60]!r}... is longer than 200 bytes; "
                        "allowed: shorter values, or list groups with names"
                    ]  # fmt: skip
                )
            seen[name] = where
            scenario = spec.base if g is None or g.scenario is None else g.scenario
            out.append(Group(name, scenario, over, origins))  # type: ignore[arg-type]
    return out


def plan(spec: SweepSpec, label: str) -> list[PlannedRun]:
    """Every run of the sweep with its resolved scenario; every problem of every run at once
    (one line each, duplicates dropped) as a ScenarioError."""
    runs, problems = [], []
    for g in groups(spec, label):
        for seed in spec.seeds:
            over = {**g.overrides, "seed": seed}
            origins = {**g.origins, "seed": (label, "seeds")}
            try:
                sc = load_scenario(g.scenario, over, origins=origins)
            except ScenarioError as e:
                problems += [p for p in e.problems if p not in problems]
                continue
            runs.append(PlannedRun(g, seed, sc))
    if problems:
        raise ScenarioError(problems)
    return runs


def _text(value: Any) -> str:
    """A grid value as part of a group name: strings as they are, the rest as JSON."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
