"""Scenario validation: every problem is one line naming the source, the field, the value."""

from __future__ import annotations

import pytest
import yaml

from brainnet.config import Scenario, ScenarioError, builtin_scenarios, load_scenario
from brainnet.modules.bank import check_module_type
from brainnet.modules.tiny_lm import TransformerConfig
from brainnet.registry import ACTIONS, MODULE_TYPES, TOPOLOGIES, Registry, RegistryError

MIN = {"modules": [{"type": "transformer", "count": 2}]}


def errors(source, overrides=None) -> list[str]:
    with pytest.raises(ScenarioError) as e:
        load_scenario(source, overrides)
    return e.value.problems


def test_builtins_load_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    names = builtin_scenarios()
    assert {"quickstart", "nanogpt_baby"} <= set(names)
    assert all(desc for desc in names.values()), "every built-in has a description"
    sc = load_scenario("quickstart")
    assert sc.name == "quickstart" and isinstance(sc.modules[0], TransformerConfig)
    assert load_scenario("quickstart.yaml").model_dump() == sc.model_dump()


def test_defaults_and_overrides():
    sc = load_scenario(MIN, {"train.lr": 3e-4, "modules.0.n_layer": 3})
    assert sc.train.lr == 3e-4 and sc.modules[0].n_layer == 3
    assert sc.corpus.kind == "tasks" and sc.train.weight_decay == 0.1
    sc2 = load_scenario(MIN, ["train.lr=3e-4", "corpus.kind=text", "seed=7"])
    assert sc2.train.lr == 3e-4 and sc2.corpus.kind == "text" and sc2.seed == 7


def test_resolved_yaml_round_trips():
    sc = load_scenario("nanogpt_baby")
    again = load_scenario(yaml.safe_load(sc.to_yaml()))
    assert again == sc
    assert isinstance(again, Scenario)


@pytest.mark.parametrize(
    "overrides, field, value, allowed",
    [
        ({"train.lr": -1}, "train.lr", "-1", "must be > 0"),
        ({"train.lrr": 1}, "train.lrr", "1", "allowed: answer_weight, batch_size, betas"),
        ({"device": "gpu"}, "device", "'gpu'", "'auto', 'cpu' or 'cuda'"),
        ({"train.steps": 0}, "train.steps", "0", "must be >= 1"),
        ({"train.betas": [0.9, 1.5]}, "train.betas", "[0.9, 1.5]", "each must be in [0, 1)"),
        ({"train.min_lr": 0.5}, "train.min_lr", "0.5", "must be <= lr"),
        ({"modules.0.n_head": 3}, "modules.0.n_head", "3", "must divide d_model (64)"),
        ({"modules.0.type": "lstm"}, "modules.0.type", "'lstm'", "known: gru, transformer"),
        ({"modules.0.dropout": 1.0}, "modules.0.dropout", "1.0", "must be < 1"),
        ({"corpus.kind": "nope"}, "corpus.kind", "'nope'", "known: binding, tasks, text"),
        ({"corpus.block_size": 1}, "corpus.block_size", "1", "must be >= 2"),
        ({"name": "has space"}, "name", "'has space'", "must match"),
        ({"precision": "fp8"}, "precision", "'fp8'", "'auto', 'fp32' or 'bf16'"),
        ({"log.every": "often"}, "log.every", "'often'", "must be an integer"),
        (
            {"society.topology": "ring"},
            "society.topology",
            "'ring'",
            "known: all_to_all, attention, brain",
        ),
        (
            {"emergence.every": 50, "reorganize.actions": ["replace", "grow"]},
            "reorganize.actions.1",
            "'grow'",
            "known: merge, prune, replace, rewire, spawn, split",
        ),
        (
            {"distill.teacher_run": "C:/runs/x"},
            "distill.teacher_run",
            "'C:/runs/x'",
            "allowed: null, or set teacher to 'run'",
        ),
    ],
)
def test_bad_values_give_one_line_naming_field_value_and_allowed(overrides, field, value, allowed):
    (line,) = errors(MIN, overrides)
    assert "\n" not in line
    assert line.startswith("--set: ")
    assert f" {field} = " in line and value in line and allowed in line, line


def test_every_problem_is_reported():
    problems = errors(MIN, {"train.lr": -1, "train.batch_size": 0, "seed": -1, "foo": 1})
    assert len(problems) == 4
    assert {p.split(" = ")[0] for p in problems} == {
        "--set: train.lr",
        "--set: train.batch_size",
        "--set: seed",
        "--set: foo",
    }


def test_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodules: [\n")
    (line,) = errors(bad)
    assert line.startswith("bad.yaml: invalid YAML (line ")
    bad.write_text("- a\n- b\n")
    assert errors(bad) == [
        "bad.yaml: must be a mapping of fields (name, modules, train, ...), got a list"
    ]
    bad.write_text("name: x\nmodules: []\n")
    assert errors(bad) == ["bad.yaml: modules = []: must have at least 1 item(s)"]
    (line,) = errors("no_such_scenario")
    assert "no such file and no built-in" in line and "quickstart" in line


@pytest.mark.parametrize(
    "item, expect",
    [
        ("novalue", "expected FIELD=VALUE"),
        ("modules.3.count=1", "not an index of a list of 1"),
        ("seed.x=1", '--set: seed = {"x": 1}: must be an integer'),
    ],
)
def test_bad_set_syntax(item, expect):
    (line,) = errors(MIN, [item])
    assert expect in line


def test_registry_rejects_duplicates_and_bad_plugins():
    reg: Registry[int] = Registry("thing")
    reg.add("a", 1)
    with pytest.raises(RegistryError, match="'a' is already registered"):
        reg.add("a", 2)
    with pytest.raises(RegistryError, match="unknown thing 'b'; known: a"):
        reg.get("b")
    with pytest.raises(RegistryError, match="already registered"):
        MODULE_TYPES.add("transformer", MODULE_TYPES.get("transformer"))
    with pytest.raises(RegistryError, match="must be a subclass of brainnet.Bank"):
        MODULE_TYPES.add("not_a_bank", object)
    assert "not_a_bank" not in MODULE_TYPES


def test_entry_point_plugins_are_loaded_and_checked(monkeypatch):
    """A third-party module type arrives through the `brainnet.modules` entry-point group."""
    import brainnet.registry as registry
    from brainnet.modules.tiny_lm import TransformerBank

    class PluginBank(TransformerBank):
        class Config(TransformerConfig):
            type: str = "plugin_lm"

    class FakeEntryPoint:
        def __init__(self, name, obj):
            self.name, self.value, self.obj = name, f"pkg:{name}", obj

        def load(self):
            if isinstance(self.obj, Exception):
                raise self.obj
            return self.obj

    def fresh(eps):
        monkeypatch.setattr(registry, "entry_points", lambda group: eps)
        return Registry(
            "module type",
            builtins="brainnet.modules",
            entry_point_group="brainnet.modules",
            check=check_module_type,
        )

    reg = fresh([FakeEntryPoint("plugin_lm", PluginBank)])
    assert reg.names() == ["plugin_lm"] and reg.get("plugin_lm") is PluginBank
    with pytest.raises(RegistryError, match="must be a subclass of brainnet.Bank"):
        fresh([FakeEntryPoint("bad", dict)]).names()
    with pytest.raises(
        RegistryError, match="entry point 'broken' = 'pkg:broken' .* failed to load"
    ):
        fresh([FakeEntryPoint("broken", ImportError("no module named x"))]).names()


def test_topology_and_action_names_come_from_the_registries():
    (line,) = errors(MIN, {"society.topology": "nope"})
    assert line.endswith(f"unknown topology 'nope'; known: {', '.join(TOPOLOGIES.names())}")
    assert "independent" in TOPOLOGIES.names()
    # one cluster whatever `clusters` says: a count of 3 fits
    sc = load_scenario(MIN, {"society.topology": "independent", "modules.0.count": 3})
    assert sc.society.topology == "independent"
    TOPOLOGIES.add("test_routed", TOPOLOGIES.get("routing"))
    ACTIONS.add("test_action", ACTIONS.get("replace"))
    try:
        base = {"society.topology": "test_routed", "society.clusters": 2, "emergence.every": 50}
        sc = load_scenario(MIN, {**base, "reorganize.actions": ["split", "test_action"]})
        assert sc.reorganize.actions == ["split", "test_action"]
        (line,) = errors(MIN, {**base, "society.router.top_k": 3})
        assert line == "--set: society.router.top_k = 3: must be <= society.clusters (2)"
    finally:
        TOPOLOGIES.remove("test_routed")
        ACTIONS.remove("test_action")
    (line,) = errors(MIN, {"society.topology": "test_routed"})
    assert "unknown topology 'test_routed'" in line


def test_checks_report_every_problem_at_once():
    """A section's cross-field checks all run; a Scenario validated directly raises them too."""
    problems = errors(MIN, {"society.topology": "pipeline", "society.clusters": 4,
                            "modules.0.count": 3, "emergence.every": 50,
                            "reorganize.actions": ["split", "merge"]})  # fmt: skip
    assert [p.split(": ")[1] for p in problems] == [
        "reorganize.actions.0 = 'split'",
        "reorganize.actions.1 = 'merge'",
        "modules.0.count = 3",
    ]
    with pytest.raises(ValueError, match=r"(?s)min_lr\n  must be <= lr \(0\.001\)"):
        Scenario.model_validate({**MIN, "train": {"lr": 1e-3, "min_lr": 0.1}})
