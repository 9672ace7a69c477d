"""Frozen, keyword-only configuration objects with lossless JSON and a stable hash.

Every method, task and metric has a ``Config`` subclass of :class:`Config`. Fields carry their help
text in ``metadata={"help": ...}`` (use :func:`option`). Presets are classmethods (``paper()``,
``quick()``); sweeps are ``[dataclasses.replace(base, C=c) for c in grid]``.

This module imports nothing heavy: it is used by ``dabench list`` and ``--help``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from typing import Any, Self


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the fix."""


def option(default: Any, help: str, **kwargs: Any) -> Any:  # noqa: A002 - mirrors argparse
    """A dataclass field with help text (shown by ``dabench list --verbose``)."""
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


def require_positive_int(value: Any, name: str, *, allow_none: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``value`` is an int >= 1 (or None when ``allow_none``)."""
    if allow_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        extra = " or None" if allow_none else ""
        raise ConfigError(f"{name} must be an integer >= 1{extra}, got {value!r}")


def require_finite(value: Any, name: str, *, allow_zero: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a finite number > 0 (>= 0 with ``allow_zero``)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{name} must be a finite number {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def parse_key_values(
    items: typing.Iterable[str], where: str, example: str = "KEY=VALUE"
) -> tuple[tuple[str, str], ...]:
    """``("k=v", ...)`` as ``(("k", "v"), ...)``, keys and values stripped: the one KEY=VALUE parser.

    Every command line option that takes KEY=VALUE (``--task-option``, ``--method-option``,
    ``--option``, the ``name:k=v,k=v`` form) goes through here, so they fail alike.

    Raises
    ------
    ConfigError
        An item without ``=`` or with an empty key (``"<where>: cannot read 'x': write KEY=VALUE"``), or
        a key given twice.
    """
    pairs: list[tuple[str, str]] = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            hint = "" if example == "KEY=VALUE" else f", e.g. {example}"
            raise ConfigError(f"{where}: cannot read {item!r}: write KEY=VALUE{hint}")
        if key.strip() in {k for k, _ in pairs}:
            raise ConfigError(f"{where}: {key.strip()!r} is given twice; give each key once")
        pairs.append((key.strip(), value.strip()))
    return tuple(pairs)


def stable_hash(payload: Any, length: int = 16) -> str:
    """Hex digest of the canonical JSON of ``payload`` (sorted keys, no whitespace)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()[:length]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Base of all configs. Subclasses add fields with :func:`option`."""

    # ----- presets -------------------------------------------------------------------------
    @classmethod
    def paper(cls) -> Self:
        """The paper's settings. Defaults to the plain defaults unless a subclass overrides."""
        return cls()

    @classmethod
    def quick(cls) -> Self:
        """Settings scaled so the default suite fits a 2-core CPU."""
        return cls()

    @classmethod
    def smoke(cls) -> Self:
        """Settings for a seconds-long check on a toy task of tens of points (``dabench check``).

        Defaults to :meth:`quick`; a method overrides it only where its quick settings take minutes
        or cannot work on 48 training points (e.g. a regularisation that needs more points than
        dimensions).
        """
        return cls.quick()

    @classmethod
    def sweep(cls) -> tuple[dict[str, Any], ...]:
        """The settings a suite runs side by side, as overrides of the preset (default: just the preset).

        E.g. DualDA's three regularisation constants ``({"C": 1e-5}, {"C": 1e-3}, {"C": 1e-1})``;
        every suite runs one configuration per entry.
        """
        return ({},)

    @classmethod
    def for_dataset(cls, dataset: str) -> dict[str, Any]:
        """Overrides of the paper preset that differ by dataset (task name), e.g. LiSSA's recursion depth.

        The ``paper`` suite applies them on top of :meth:`paper`; default: none.
        """
        return {}

    @classmethod
    def preset(cls, name: str) -> Self:
        presets: dict[str, typing.Callable[[], Self]] = {
            "default": cls,
            "paper": cls.paper,
            "quick": cls.quick,
            "smoke": cls.smoke,
        }
        if name not in presets:
            raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(presets)}")
        return presets[name]()

    # ----- (de)serialisation ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any], base: Config | None = None) -> Self:
        """Build a config from ``values`` on top of ``base`` (default: plain defaults).

        Unknown keys raise :class:`ConfigError`; values are coerced to the field's type where a
        plain conversion exists (strings from the command line), so ``C="1e-3"`` becomes 1e-3.
        """
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown}; valid keys: {sorted(known)}")
        hints = typing.get_type_hints(cls)
        coerced = {k: _coerce(v, hints.get(k), k) for k, v in values.items()}
        start = base if base is not None else cls()
        try:
            return typing.cast(Self, dataclasses.replace(start, **coerced))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"invalid config: {err}") from err

    def config_hash(self) -> str:
        return stable_hash({"type": type(self).__qualname__, **self.to_dict()})

    @classmethod
    def help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Convert command-line strings to the field's declared scalar type."""
    if not isinstance(value, str) or hint is None:
        if isinstance(value, list) and typing.get_origin(hint) is tuple:
            return tuple(value)
        return value
    origin = typing.get_origin(hint)
    candidates = typing.get_args(hint) if origin in (typing.Union, _UnionType) else (hint,)
    if type(None) in candidates and value.lower() in {"none", "null"}:
        return None
    for typ in candidates:
        try:
            if typ is bool:
                if value.lower() in {"true", "1", "yes"}:
                    return True
                if value.lower() in {"false", "0", "no"}:
                    return False
                continue
            if typ in (int, float, str):
                return typ(float(value)) if typ is int and "e" in value.lower() else typ(value)
            if typing.get_origin(typ) is typing.Literal:
                if value in typing.get_args(typ):
                    return value
                continue
            if typing.get_origin(typ) is tuple:
                return tuple(v.strip() for v in value.split(",") if v.strip())
        except ValueError:
            continue
    choices = typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else None
    wanted = f"one of {list(choices)}" if choices else str(hint)
    raise ConfigError(f"config key {key!r}: cannot read {value!r} as {wanted}")


_UnionType = type(int | None)
