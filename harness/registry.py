"""One small generic registry for methods, tasks and metrics.

Entries are *lazy*: a catalogue line names the class as ``"module:attribute"`` with a one-line
description, so ``dabench list`` answers without importing torch, quanda or any method module.
The class is imported (and its base class checked) only when it is first asked for.

Adding a method = one file in ``methods/`` plus one line in ``methods/__init__.py``::

    METHODS.add("mymethod", "methods.mymethod:MyMethod", "What it does, in one line.")

Code outside this repository can register classes directly (the decorator form)::

    @register_method("mine", "My experimental method.")
    class Mine(Method): ...

and load them with ``dabench run --plugin my_module`` (a module importable from the current folder)
or ``dabench run --plugin path/to/my_method.py``. Installed packages register through the
entry-point group ``dabench.plugins`` (see :func:`load_installed_plugins`); no flag is needed.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import importlib.util
import os
import re
import sys
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

    def in_order(self) -> list[str]:
        """The names in registration order: the catalogue's, then plug-ins' (the order of the tables)."""
        self._ensure_catalogue()
        return list(self._entries)

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


PLUGIN_GROUP = "dabench.plugins"

#: the ``--plugin`` arguments loaded in this process, as workers must load them: absolute paths of
#: ``.py`` files, or ``(module, folder)`` for modules (folder: the working folder they came from)
_loaded_plugins: list[str | tuple[str, str]] = []
_installed_loaded = False


def _is_path(plugin: str) -> bool:
    return plugin.endswith(".py") or os.sep in plugin or "/" in plugin


def plugin_module_name(path: str) -> str:
    """The stable module name under which the plugin file ``path`` is imported.

    ``dabench_plugin_<stem>``, where ``<stem>`` is the file name without ``.py`` made a valid
    identifier; the same file gets the same name in every process, so its classes pickle.
    """
    stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    return f"dabench_plugin_{stem}"


def load_plugin(plugin: str, folder: str | None = None) -> None:
    """Import a user plugin that registers extra methods, tasks or metrics.

    Parameters
    ----------
    plugin:
        A path to a ``.py`` file (imported as :func:`plugin_module_name` and registered in
        ``sys.modules``), or a module name importable from ``folder`` or from ``sys.path``.
    folder:
        The folder a module name is looked up in (default: the current working folder); it is
        appended to ``sys.path`` when missing.

    Raises
    ------
    RegistryError
        One line naming the plugin, the error and the fix when the plugin cannot be imported.
    """
    if _is_path(plugin):
        _load_plugin_file(plugin)
        return
    folder = os.path.abspath(folder if folder is not None else os.getcwd())
    if folder not in [os.path.abspath(p or os.curdir) for p in sys.path]:
        sys.path.append(folder)
    try:
        importlib.import_module(plugin)
    except ModuleNotFoundError as err:
        if err.name is not None and (plugin == err.name or plugin.startswith(err.name + ".")):
            raise RegistryError(
                f"cannot import plugin module {plugin!r}: no such module in {folder} or on sys.path; "
                "run from the folder that holds it, pass the path to its .py file, or pip install it"
            ) from err
        raise RegistryError(_plugin_failure(plugin, err)) from err
    except Exception as err:
        raise RegistryError(_plugin_failure(plugin, err)) from err
    entry = (plugin, folder)
    if entry not in _loaded_plugins:
        _loaded_plugins.append(entry)


def _load_plugin_file(plugin: str) -> None:
    path = os.path.abspath(plugin)
    if not os.path.isfile(path):
        raise RegistryError(
            f"plugin file {plugin!r} not found (looked at {path}); pass the path to an existing .py file"
        )
    name = plugin_module_name(path)
    known = sys.modules.get(name)
    if known is not None:
        if os.path.abspath(getattr(known, "__file__", "") or "") == path:
            return  # already loaded: loading is idempotent
        raise RegistryError(
            f"plugin file {plugin!r} would be imported as {name!r}, which is already {known.__file__}; "
            "rename one of the two files"
        )
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise RegistryError(f"cannot import plugin file {plugin!r}; pass the path to a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before executing it: dataclasses and pickle look the module up here
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[name]
        raise RegistryError(_plugin_failure(plugin, err)) from err
    if path not in _loaded_plugins:
        _loaded_plugins.append(path)


def _plugin_failure(plugin: str, err: BaseException) -> str:
    return f"cannot import plugin {plugin!r}: {_one_line(err)}; fix the plugin's code or its dependencies"


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def loaded_plugins() -> list[str | tuple[str, str]]:
    """The ``--plugin`` arguments loaded in this process, in a form :func:`load_plugins` takes."""
    return list(_loaded_plugins)


def load_plugins(plugins: list[str | tuple[str, str]]) -> None:
    """Load the installed plugins and then ``plugins`` (from :func:`loaded_plugins`; used by workers)."""
    load_installed_plugins()
    for plugin in plugins:
        if isinstance(plugin, tuple):
            load_plugin(plugin[0], folder=plugin[1])
        else:
            load_plugin(plugin)


def load_installed_plugins() -> None:
    """Load the plugins of installed packages (entry-point group ``dabench.plugins``), once per process.

    Each entry point names a module (importing it registers) or a callable (called with no
    arguments, it registers). The built-in catalogues are imported first, so a plugin's duplicate
    name is reported against them. A plugin that fails (any exception) prints one warning line on
    stderr naming the package, the entry point and the error; the other plugins still load.
    """
    global _installed_loaded
    if _installed_loaded:
        return
    _installed_loaded = True
    for registry in (METHODS, TASKS, METRICS):
        registry._ensure_catalogue()
    for ep in importlib.metadata.entry_points(group=PLUGIN_GROUP):
        try:
            target = ep.load()
            if callable(target):
                target()
        except Exception as err:
            package = ep.dist.name if ep.dist is not None else "?"
            print(
                f"dabench: warning: plugin {package!r} (entry point {ep.name} = {ep.value} in "
                f"{PLUGIN_GROUP}) was not loaded: {_one_line(err)}; fix or uninstall that package",
                file=sys.stderr,
            )
