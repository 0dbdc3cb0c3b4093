"""One registry helper for everything pluggable: module types, corpora, topologies and
reorganisation actions.

A registry maps a name to an object. Registering a name twice raises (torchdistill's silent
overwrite is the bug we avoid). Built-ins are imported lazily on first lookup, and third-party
packages add entries through an entry-point group, e.g. in their pyproject.toml::

    [project.entry-points."brainnet.modules"]
    my_lm = "my_package.my_lm:MyLMBank"
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class RegistryError(ValueError):
    """Unknown or duplicate name in a registry."""


class Registry(Generic[T]):
    """Name -> object map with duplicate checks, lazy built-ins and entry-point plugins.

    Args:
        kind: what the entries are, used in error messages ("module type").
        builtins: dotted module path imported on first lookup; importing it registers the
            built-in entries.
        entry_point_group: group whose entry points are loaded (once) as extra entries.
        check: called on every entry as it is registered; raises with a clear message when a
            plugin does not fit the interface.
    """

    def __init__(
        self,
        kind: str,
        *,
        builtins: str | None = None,
        entry_point_group: str | None = None,
        check: Callable[[str, T], None] | None = None,
    ) -> None:
        self.kind = kind
        self._builtins = builtins
        self._group = entry_point_group
        self.check = check  # set by the package that defines the interface (e.g. modules)
        self._entries: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REG.register("name")`` adds the decorated object under ``name``."""

        def add(obj: T) -> T:
            self.add(name, obj)
            return obj

        return add

    def add(self, name: str, obj: T) -> None:
        if name in self._entries:
            raise RegistryError(
                f"{self.kind} {name!r} is already registered (by {where(self._entries[name])})"
            )
        if self.check is not None:
            self.check(name, obj)
        self._entries[name] = obj

    def remove(self, name: str) -> None:
        """Drop an entry (tests and notebooks that re-register a type use this)."""
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._entries[name]
        except KeyError:
            raise RegistryError(
                f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._entries))}"
            ) from None

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if self._builtins:
            importlib.import_module(self._builtins)
        if self._group:
            for ep in entry_points(group=self._group):
                try:
                    obj = ep.load()
                except Exception as e:  # a broken plugin must say which one it is
                    raise RegistryError(
                        f"entry point {ep.name!r} = {ep.value!r} in group {self._group!r} "
                        f"failed to load: {e}"
                    ) from e
                if self._entries.get(ep.name) is obj:
                    continue  # the plugin registered itself on import
                self.add(ep.name, obj)


def where(obj: Any) -> str:
    """module.qualname of an object, for error messages."""
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _check_corpus(name: str, obj: Any) -> None:
    from pydantic import BaseModel

    cfg = getattr(obj, "Config", None)
    if not (isinstance(cfg, type) and issubclass(cfg, BaseModel)) or not hasattr(obj, "build"):
        raise RegistryError(f"corpus {name!r}: {where(obj)} needs a pydantic Config and build()")


#: Module types (banks). Built-ins live in brainnet.modules, which also sets the check (a
#: subclass of Bank with a ModuleConfig); plugins use the entry-point group.
MODULE_TYPES: Registry[Any] = Registry(
    "module type",
    builtins="brainnet.modules",
    entry_point_group="brainnet.modules",
)
#: Corpora: built-ins live in brainnet.data.
CORPORA: Registry[Any] = Registry(
    "corpus kind",
    builtins="brainnet.data",
    entry_point_group="brainnet.corpora",
    check=_check_corpus,
)
#: Topology kinds (``society.topology``): built-ins live in brainnet.society.topology.
TOPOLOGIES: Registry[Any] = Registry(
    "topology", builtins="brainnet.society.topology", entry_point_group="brainnet.topologies"
)
#: Reorganisation actions (``reorganize.actions``): built-ins live in brainnet.learning.actions.
ACTIONS: Registry[Any] = Registry(
    "reorganisation action",
    builtins="brainnet.learning.actions",
    entry_point_group="brainnet.actions",
)
