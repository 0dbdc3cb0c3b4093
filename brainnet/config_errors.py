"""Config problems as data, the one line each becomes, and the raw-input steps (YAML text,
``--set`` items) whose failures are such lines.

A check never writes its problem into a string for a formatter to parse back: it yields
``problem(loc, value, msg)``, a pydantic error of type ``brainnet_field`` whose ``loc`` is the
field path (relative to the section being validated) and whose ``input`` is the bad value, so
that pydantic prefixes the path of the section as it would for any field error. One
``format_error`` turns every pydantic error into ``<source>: <field> = <value>: <message>``.

A section's cross-field checks are methods marked ``@check("field", ...)`` with the fields they
read. Pydantic runs a model's checks only when all its fields validate; ``skipped_problems``
runs, after a failed validation, every check whose fields did validate, so that a scenario with
a bad ``train.lr`` still reports ``society.router.top_k > clusters``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from functools import cache
from types import UnionType
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

#: pydantic error type of every problem a brainnet check reports
FIELD_ERROR = "brainnet_field"
#: what a ``@check`` method returns
Problems = Iterator[InitErrorDetails]
#: where an override came from, for its error lines: (source, path of its key there), e.g.
#: ("sweep.yaml", "grid") prints ``sweep.yaml: grid.train.lr = ...``
Origin = tuple[str, str]
#: a ``--set`` item on the command line
SET: Origin = ("--set", "")


class ScenarioError(ValueError):
    """A scenario, override or input file is invalid. ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = [one_line(p) for p in problems]
        super().__init__("\n".join(self.problems))


class Unknown:
    """The value of an unknown key, with the names its section allows."""

    def __init__(self, value: Any, allowed: str) -> None:
        self.value, self.allowed = value, allowed


# --------------------------------------------------------------------------- raising problems


def problem(loc: str | tuple[str | int, ...], value: Any, msg: str) -> InitErrorDetails:
    """``loc`` (a field name or a path, relative to the section) has the bad ``value``; ``msg``
    says what is allowed."""
    return {
        "type": PydanticCustomError(FIELD_ERROR, "{msg}", {"msg": msg}),
        "loc": (loc,) if isinstance(loc, str) else tuple(loc),
        "input": value,
    }


def field_error(loc: str | tuple[str | int, ...], value: Any, msg: str) -> ValidationError:
    """One ``problem`` as an exception to raise from a validator."""
    return ValidationError.from_exception_data("config", [problem(loc, value, msg)])


def check(*fields: str) -> Callable[[Callable[[Any], Iterable[InitErrorDetails]]], Any]:
    """Mark a method of a config section as a cross-field check that reads ``fields`` and yields
    ``problem``s. Strict runs every check of a section after its fields validate."""

    def mark(fn: Callable[[Any], Iterable[InitErrorDetails]]) -> Any:
        fn.check_fields = frozenset(fields)  # type: ignore[attr-defined]
        return fn

    return mark


@cache
def checks_of(cls: type[BaseModel]) -> tuple[Any, ...]:
    """The ``@check`` methods of a section, base classes' first (an override without
    ``@check`` drops the base's check)."""
    seen: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        for name, fn in vars(klass).items():
            if hasattr(fn, "check_fields"):
                seen[name] = fn
            else:
                seen.pop(name, None)
    return tuple(seen.values())


def run_checks(model: BaseModel) -> None:
    """Raise every problem of the model's checks at once (Strict's after-validator)."""
    found = [p for fn in checks_of(type(model)) for p in fn(model)]
    if found:
        raise ValidationError.from_exception_data(type(model).__name__, found)


def skipped_problems(cls: type[BaseModel], data: Any) -> list[InitErrorDetails]:
    """The problems of the checks pydantic skipped in raw ``data`` of section ``cls``.

    Each field is validated on its own; a check runs on the fields that validate if none of
    the fields it reads failed, and a failed sub-section is searched the same way. Sections
    whose fields all validate (and that have no unknown keys) had their checks run already.
    """
    if not isinstance(data, dict):
        return []
    values, failed, found = {}, set(), []
    for name, f in cls.model_fields.items():
        if name not in data and f.is_required():
            failed.add(name)
            continue
        raw = data[name] if name in data else f.get_default(call_default_factory=True)
        try:
            values[name] = _adapter(cls, name).validate_python(raw)
        except ValidationError:
            failed.add(name)
            sub = _section(f.annotation)
            if sub is not None:
                for p in skipped_problems(sub, raw):
                    found.append({**p, "loc": (name, *p["loc"])})
    if failed or any(k not in cls.model_fields for k in data):
        partial = cls.model_construct(**values)
        for fn in checks_of(cls):
            if not fn.check_fields & failed:
                found.extend(fn(partial))
    return found


@cache
def _adapter(cls: type[BaseModel], name: str) -> TypeAdapter[Any]:
    return TypeAdapter(cls.model_fields[name].rebuild_annotation())


def _section(annotation: Any) -> type[BaseModel] | None:
    """The section class of a field typed ``Section`` or ``Section | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, UnionType):
        models = [a for a in get_args(annotation) if isinstance(a, type)]
        models = [a for a in models if issubclass(a, BaseModel)]
        return models[0] if len(models) == 1 else None
    return None


# --------------------------------------------------------------------------- the one line

_MESSAGES = {
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "missing": "required field is missing",
    "too_short": "must have at least {min_length} item(s)",
    "string_too_short": "must not be empty",
    "string_pattern_mismatch": "must match {pattern}",
    "string_type": "must be a string",
    "literal_error": "must be one of {expected}",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "int_parsing": "must be an integer",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "dict_type": "must be a section (a mapping of fields)",
    "model_type": "must be a section (a mapping of fields)",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "int_from_float": "must be an integer",
    "float_parsing": "must be a number",
}


def format_error(err: dict[str, Any], label: str, set_keys: set[str] | dict[str, Origin]) -> str:
    """``<label or --set>: <field> = <value>: <message>`` (ScenarioError makes it one line).

    ``set_keys``: the overridden dotted fields (``--set``), or a mapping of them to where each
    came from (the first one related to the field names the source)."""
    loc = [str(p) for p in err["loc"]]
    value: Any = err.get("input")
    msg: str = err["msg"]
    ctx = err.get("ctx") or {}
    if err["type"] == FIELD_ERROR:
        pass  # ours: loc, input and msg are what the check said
    elif err["type"] == "value_error":
        msg = str(ctx.get("error", msg)).removeprefix("Value error, ")
    elif err["type"] == "extra_forbidden" and isinstance(value, Unknown):
        msg, value = f"unknown field; allowed: {value.allowed}", value.value
    elif err["type"] in _MESSAGES:
        msg = _MESSAGES[err["type"]].format(**{k: _show_ctx(v) for k, v in ctx.items()})
    else:
        msg = msg[:1].lower() + msg[1:]
    field = ".".join(loc) or "<top>"
    origins = set_keys if isinstance(set_keys, dict) else dict.fromkeys(set_keys, SET)
    src = label
    for key, (source, prefix) in origins.items():
        if _overridden(field, key):
            src, field = source, f"{prefix}.{field}" if prefix else field
            break
    return f"{src}: {field} = {show(value)}: {msg}"


def _overridden(field: str, key: str) -> bool:
    """Was ``field`` (or a section above or below it) set by the override of ``key``?"""
    return key == field or key.startswith(f"{field}.") or field.startswith(f"{key}.")


def show(value: Any) -> str:
    """A value as the user wrote it: strings quoted, lists and short mappings as JSON."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (dict, list, tuple, bool, type(None))):
        try:
            text = json.dumps(value, default=str, ensure_ascii=False)
        except (TypeError, ValueError):  # keys JSON cannot write, or a recursive YAML anchor
            text = repr(value)
        return "{...}" if isinstance(value, dict) and len(text) > 60 else text
    return str(value)


def one_line(text: str) -> str:
    """Escape newlines and other unprintable characters, so that a problem stays one line."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _show_ctx(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# --------------------------------------------------------------------------- raw input


def parse_yaml(text: str, label: str) -> dict[str, Any]:
    """A scenario file's text -> its mapping of fields."""
    try:
        data = yaml.safe_load(text)
    except Exception as e:  # YAMLError, or ValueError from a bad date or !!int
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or (str(e).splitlines() or [type(e).__name__])[0]
        raise ScenarioError([f"{label}: invalid YAML{where}: {problem}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ScenarioError(
            [
                f"{label}: must be a mapping of fields (name, modules, train, ...), "
                f"got a {type(data).__name__}"
            ]
        )
    return data


def parse_sets(items: list[str]) -> list[tuple[str, Any]]:
    """``--set FIELD=VALUE`` items -> (field, value) pairs, values parsed as YAML."""
    out = []
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ScenarioError([f"--set {item!r}: expected FIELD=VALUE, e.g. train.lr=3e-4"])
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except Exception:  # not YAML (or a bad date, !!int, ...): the text itself
            value = raw
        out.append((key, value))
    return out


def apply_override(data: dict[str, Any], key: str, value: Any, origin: Origin = SET) -> None:
    """Set the dotted field ``key`` of raw scenario ``data`` (sections are created); a problem
    names the override's ``origin``."""
    source, prefix = origin
    shown = f"{prefix}.{key}" if prefix else key
    parts = key.split(".")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ScenarioError(
                    [
                        f"{source}: {shown} = {show(value)}: {where!r} is not an index of a "
                        f"list of {len(node)} (allowed: 0..{len(node) - 1})"
                    ]
                )
            part = int(part)  # type: ignore[assignment]
        elif not isinstance(node, dict):
            raise ScenarioError(
                [
                    f"{source}: {shown} = {show(value)}: {'.'.join(parts[:i])} is a value "
                    f"({show(node)}), not a section"
                ]
            )
        if last:
            node[part] = value
        else:
            if isinstance(node, dict) and part not in node:
                node[part] = {}
            node = node[part]
