"""The base of every scenario section: ``Strict`` (unknown keys are errors; cross-field
checks run together) and the pluggable sections, validated by the registry entry they name."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializeAsAny,
    WrapValidator,
    model_validator,
)

from brainnet.config_errors import (
    Unknown,
    field_error,
    run_checks,
)
from brainnet.registry import ACTIONS, CORPORA, MODULE_TYPES, TOPOLOGIES, Registry


class Strict(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated, and
    the section's ``@check`` methods run once its fields validate (all their problems at once).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    @model_validator(mode="before")
    @classmethod
    def _tag_unknown_fields(cls, data: Any) -> Any:
        # extra="forbid" reports unknown keys; wrapping their values lets the error message
        # list the fields this section allows (pydantic's own message does not).
        if isinstance(data, dict) and any(k not in cls.model_fields for k in data):
            allowed = ", ".join(sorted(cls.model_fields))
            data = {k: v if k in cls.model_fields else Unknown(v, allowed) for k, v in data.items()}
        return data

    @model_validator(mode="after")
    def _run_checks(self) -> Any:
        run_checks(self)
        return self


# --------------------------------------------------------------------------- pluggable sections


class ModuleConfig(Strict):
    """What every module type's config has. A type adds its own fields in a subclass."""

    type: str = Field(description="registered module type, e.g. 'transformer'")
    count: int = Field(8, ge=1, description="number of modules of this group")
    message_dim: int = Field(
        32, ge=1, description="width of the message a module emits and of memory slots it reads"
    )


class CorpusConfig(Strict):
    """What every corpus config has. A corpus kind adds its own fields in a subclass."""

    kind: str = Field("tasks", description="registered corpus kind: 'tasks' or 'text'")
    block_size: int = Field(64, ge=2, le=4096, description="tokens per training sequence")


def _unknown(registry: Registry[Any], name: Any) -> str:
    return f"unknown {registry.kind} {name!r}; known: {', '.join(registry.names())}"


def _registered(registry: Registry[Any]) -> BeforeValidator:
    """A str field whose value must be a name in ``registry``."""

    def validate(name: Any) -> Any:
        if not isinstance(name, str) or name not in registry:
            raise ValueError(_unknown(registry, name))
        return name

    return BeforeValidator(validate)


def _by_tag(registry: Registry[Any], tag: str, default: str | None = None) -> WrapValidator:
    """Validate a dict with the Config class of the registry entry named by ``data[tag]``."""

    def validate(value: Any, handler: Any) -> Any:
        if isinstance(value, BaseModel):
            value = value.model_dump()
        if not isinstance(value, dict):
            raise ValueError(f"must be a mapping with a {tag!r} key")
        name = value.get(tag, default)
        if name is None:
            raise ValueError(f"missing {tag!r}; allowed: {', '.join(registry.names())}")
        if not isinstance(name, str) or name not in registry:
            raise field_error(tag, name, _unknown(registry, name))
        return registry.get(name).Config.model_validate({**value, tag: name})

    return WrapValidator(validate)


ModuleGroup = Annotated[SerializeAsAny[ModuleConfig], _by_tag(MODULE_TYPES, "type")]
Corpus = Annotated[SerializeAsAny[CorpusConfig], _by_tag(CORPORA, "kind", default="tasks")]
#: a name registered in brainnet.registry.TOPOLOGIES / ACTIONS
Topology = Annotated[str, _registered(TOPOLOGIES)]
Action = Annotated[str, _registered(ACTIONS)]
