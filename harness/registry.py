"""One small generic registry for methods, tasks and metrics.

Entries are *lazy*: a catalogue line names the class as ``"module:attribute"`` with a one-line
description, so ``dabench list`` answers without importing torch, quanda or any method module.
The class is imported (and its base class checked) only when it is first asked for.

Adding a method = one file in ``methods/`` plus one line in ``methods/__init__.py``::

    METHODS.add("mymethod", "methods.mymethod:MyMethod", "What it does, in one line.")

Code outside this repository can register classes directly (the decorator form)::

    @register_method("mine", "My experimental method.")
    class Mine(Method): ...

and load them with ``dabench run --plugin my_module``.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class RegistryError(KeyError):
    """Unknown name, duplicate name or wrong base class. ``str()`` is the plain message."""

    def __str__(self) -> str:  # KeyError would add quotes around the message
        return str(self.args[0]) if self.args else ""


@dataclass
class Entry:
    name: str
    target: str | type
    description: str


class Registry(Generic[T]):
    """Name -> class, with lazy import and a base-class check.

    Parameters
    ----------
    kind:
        "method", "task" or "metric": used in messages.
    base:
        ``"module:Class"`` of the base class every entry must subclass (resolved lazily).
    catalogue:
        Module whose import adds the built-in entries (e.g. ``"methods"``).
    """

    def __init__(self, kind: str, base: str, catalogue: str) -> None:
        self.kind = kind
        self._base = base
        self._catalogue = catalogue
        self._entries: dict[str, Entry] = {}
        self._loaded: dict[str, type] = {}
        self._catalogue_imported = False

    # ----- declaring ------------------------------------------------------------------------
    def add(self, name: str, target: str | type, description: str) -> None:
        if not name or not name.replace("_", "").isalnum() or name != name.lower():
            raise RegistryError(f"{self.kind} name {name!r} must be lower_snake_case")
        if name in self._entries:
            raise RegistryError(
                f"duplicate {self.kind} name {name!r}: already registered as "
                f"{_target_name(self._entries[name].target)}"
            )
        if isinstance(target, type):
            self._check_base(name, target)
        self._entries[name] = Entry(name, target, description)

    def register(self, name: str, description: str) -> Callable[[type[T]], type[T]]:
        """Decorator form of :meth:`add` for classes defined outside the catalogue."""

        def decorate(cls: type[T]) -> type[T]:
            self.add(name, cls, description)
            return cls

        return decorate

    # ----- reading --------------------------------------------------------------------------
    def _ensure_catalogue(self) -> None:
        if not self._catalogue_imported:
            self._catalogue_imported = True
            importlib.import_module(self._catalogue)

    def names(self) -> list[str]:
        self._ensure_catalogue()
        return sorted(self._entries)

    def entries(self) -> Iterator[Entry]:
        self._ensure_catalogue()
        for name in sorted(self._entries):
            yield self._entries[name]

    def __contains__(self, name: object) -> bool:
        self._ensure_catalogue()
        return name in self._entries

    def check_name(self, name: str) -> None:
        """Raise a "did you mean" error for an unknown name; imports nothing heavy."""
        self._ensure_catalogue()
        if name not in self._entries:
            close = difflib.get_close_matches(name, self._entries, n=3, cutoff=0.5)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise RegistryError(
                f"unknown {self.kind} {name!r}{hint} (known: {', '.join(sorted(self._entries))}; "
                f"`dabench list {self.kind}s` describes them)"
            )

    def get(self, name: str) -> type[T]:
        """The registered class; imports its module on first use."""
        self.check_name(name)
        if name not in self._loaded:
            target = self._entries[name].target
            if isinstance(target, str):
                module_name, _, attr = target.partition(":")
                cls = getattr(importlib.import_module(module_name), attr)
                self._check_base(name, cls)
            else:
                cls = target
            cls.name = name
            self._loaded[name] = cls
        return self._loaded[name]

    def description(self, name: str) -> str:
        self.check_name(name)
        return self._entries[name].description

    def _check_base(self, name: str, cls: Any) -> None:
        module_name, _, attr = self._base.partition(":")
        base = getattr(importlib.import_module(module_name), attr)
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise RegistryError(
                f"{self.kind} {name!r}: {_target_name(cls)} must subclass {base.__module__}."
                f"{base.__qualname__}"
            )


def _target_name(target: Any) -> str:
    if isinstance(target, str):
        return target
    return f"{getattr(target, '__module__', '?')}:{getattr(target, '__qualname__', target)}"


METHODS: Registry[Any] = Registry("method", "harness.protocols:Method", "methods")
TASKS: Registry[Any] = Registry("task", "harness.protocols:Task", "tasks")
METRICS: Registry[Any] = Registry("metric", "harness.protocols:Metric", "tasks.metrics")

register_method = METHODS.register
register_task = TASKS.register
register_metric = METRICS.register


def load_plugin(module: str) -> None:
    """Import a user module that registers extra methods, tasks or metrics."""
    try:
        importlib.import_module(module)
    except ImportError as err:
        raise RegistryError(f"cannot import plugin module {module!r} ({err}); put it on PYTHONPATH") from err
