"""Run records loaded for the report: :class:`Runs` (one row per successful record), short method
labels, setting names, and the :class:`Table` every derived table is (with its cell formatting).

The layer under :mod:`harness.report` (the tables) and :mod:`harness.reference_comparison` (this run
beside the reference): both read records through :func:`load_runs`. Imports only the engine's leaves
(:mod:`harness.records`, :mod:`harness.evidence`, :mod:`harness.paper_numbers`; the registry lazily).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import evidence
from harness.paper_numbers import PAPER_METRICS, REFERENCE_METHOD, format_c, paper_name
from harness.records import Record, scan_records

if TYPE_CHECKING:
    import pandas as pd

    from harness.evidence import Block

log = logging.getLogger(__name__)

#: How a metric's direction is shown beside its name in tables.
ARROWS = {"higher": "↑", "lower": "↓"}

STD = "std"
#: Setting columns that lead every long table; the per-setting Markdown/LaTeX tables drop them.
SETTING_COLUMNS = ("setting", "task", "n_train", "n_test")
TASK_KEYS_IGNORED = ("variant", "n_test", "n_train", "data_root")


# =============================================================================================
# Loading
# =============================================================================================
@dataclass
class Runs:
    """The successful records of a results folder, one row each, plus what was left out.

    ``frame`` columns: ``setting`` (display name), ``setting_key``, ``task``, ``variant``,
    ``n_train``, ``n_test``, ``method`` (the short label, :func:`short_labels`), ``method_label``
    (the record's full label), ``method_name``, ``method_config`` (dict),
    ``paper_name`` (None outside the paper's Figure 1), ``C`` (the config's ``C`` or NaN),
    ``seed``, ``fit_cold_s``, ``fit_warm_s``, ``explain_s_per_point`` (median over repeats),
    ``warmup_s``, ``model_s``, ``explain_spent_s``, ``self_influence_s``, ``metrics_s`` (phase seconds),
    ``per_point`` (per metric: the per-test-point scores, or None),
    ``n_explained``, ``n_test_total``, ``explain_extrapolated``, ``metrics`` / ``directions`` /
    ``details`` (dicts over the metrics that succeeded), ``sparsity``, ``diagnostics``, ``git``,
    ``environment``, ``created_utc``, ``run_id``.
    """

    frame: pd.DataFrame
    records: list[Record]
    n_failed: int = 0
    #: ``(run_id, metric)`` of metrics a record calls "ok" whose value is not a finite number (never shown).
    unusable_metrics: list[tuple[str, str]] = field(default_factory=list)
    #: ``(path, reason)`` of record files that could not be read (never shown; their runs rerun).
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    #: The failed records (listed with what broke, never in a table).
    failed: list[Record] = field(default_factory=list)
    #: Short label (the ``method`` column) -> the record's full label (``method_label``).
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return self.frame.empty

    @functools.cached_property
    def blocks(self) -> list[Block]:
        """The (setting, metric) blocks with their bootstrap (:func:`harness.evidence.blocks`), once."""
        return evidence.blocks(self.frame) if not self.frame.empty else []

    def setting_blocks(self, setting: str) -> list[Block]:
        return [b for b in self.blocks if b.setting == setting]


# =============================================================================================
# Short method labels
# =============================================================================================
#: Display names of the built-in methods outside the paper's Figure 1 (the paper's methods take
#: :func:`harness.paper_numbers.paper_name`); ``{key}`` is filled from the config and ``key`` is
#: then never repeated among the settings.
DISPLAY_NAMES: dict[str, str] = {
    "random": "Random",
    "feature_similarity": "Similarity (features, {metric})",
    "input_similarity": "Similarity (inputs, {metric})",
}
#: Config keys a paper name already states (DualDA's ``C``).
NAMED_KEYS: dict[str, tuple[str, ...]] = {REFERENCE_METHOD: ("C",)}
#: The presets a record's config is compared with (the nearest one is the run's preset).
PRESETS = ("default", "quick", "paper")


@functools.cache
def _method_presets(name: str) -> tuple[dict[str, Any], ...]:
    """The ``to_dict()`` of each of :data:`PRESETS` of a registered method (empty if not registered)."""
    try:
        from harness.registry import METHODS

        config_cls = METHODS.get(name).Config
        return tuple(config_cls.preset(p).to_dict() for p in PRESETS)
    except Exception as err:  # an unregistered plug-in, a broken import: keep the record's own label
        log.debug("no presets for method %r (%s): its label keeps the record's settings", name, err)
        return ()


def _differing(config: dict[str, Any], preset: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in preset or preset[k] != v}


def _setting_text(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return format_c(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(_setting_text(v) for v in value) + "]"
    return str(value)


def _base_name(name: str, config: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    """The paper's (or display) name of a method and the config keys that name already states."""
    paper = paper_name(name, config)
    if paper is not None:
        return paper, NAMED_KEYS.get(name, ())
    template = DISPLAY_NAMES.get(name)
    if template is None:
        return name, ()
    keys = tuple(re.findall(r"{(\w+)}", template))
    try:
        return template.format(**{k: _setting_text(config[k]) for k in keys}), keys
    except KeyError:  # a config without the key (an old record): the registered name
        return name, ()


def short_labels(methods: Iterable[tuple[str, str, dict[str, Any]]]) -> dict[str, str]:
    """Short, unique labels for tables and figures: ``{full label: short label}``.

    Parameters
    ----------
    methods:
        ``(method name, full label, config)`` of every record (the full label is the record's
        ``method.label``: the name plus the settings that differ from the class defaults).

    Returns
    -------
    dict
        The paper's name (``"DualDA C=1e-5"``, ``"EK-FAC"``; :data:`DISPLAY_NAMES` for the built-in
        baselines, the registered name for a plug-in) plus the settings that differ from the
        preset the run used, e.g. ``"TracIn proj_dim=256"``. The preset is the one of
        :data:`PRESETS` nearest to the method's configs (fewest differing settings over all of
        them; a suite runs every method at one preset). A method the report cannot import keeps
        its full label. Two full labels never share a short one: colliding labels add the
        settings in which they differ, else keep their full label.
    """
    configs: dict[str, tuple[str, dict[str, Any]]] = {}
    for name, label, config in methods:
        configs.setdefault(label, (name, dict(config or {})))
    by_name: dict[str, list[str]] = {}
    for label, (name, _) in configs.items():
        by_name.setdefault(name, []).append(label)
    short: dict[str, str] = {}
    shown: dict[str, dict[str, Any]] = {}
    for name, labels in by_name.items():
        presets = _method_presets(name)
        if not presets:
            short.update({label: label for label in labels})
            continue
        preset = min(presets, key=lambda p: sum(len(_differing(configs[lab][1], p)) for lab in labels))
        for label in labels:
            config = configs[label][1]
            base, named = _base_name(name, config)
            differing = {k: v for k, v in sorted(_differing(config, preset).items()) if k not in named}
            shown[label] = differing
            settings = ", ".join(f"{k}={_setting_text(v)}" for k, v in differing.items())
            separator = ", " if named else " "  # "DualDA C=1e-5, tol=1e-3", "TracIn proj_dim=256"
            short[label] = f"{base}{separator}{settings}" if settings else base
    groups: dict[str, list[str]] = {}
    for label, text in short.items():
        groups.setdefault(text, []).append(label)
    for text, labels in groups.items():
        if len(labels) < 2:
            continue
        keys = sorted({k for lab in labels for k in configs[lab][1]})
        apart = [
            k for k in keys if len({json.dumps(configs[lab][1].get(k), sort_keys=True) for lab in labels}) > 1
        ]
        for label in labels:
            config = configs[label][1]
            extra = ", ".join(
                f"{k}={_setting_text(config.get(k))}" for k in apart if k not in shown.get(label, {})
            )
            if extra:
                short[label] = f"{text}{',' if shown.get(label) else ''} {extra}"
    texts = list(short.values())
    return {label: text if texts.count(text) == 1 else label for label, text in short.items()}


def _task_setting_hash(task: Mapping[str, Any]) -> str:
    config = {k: v for k, v in (task.get("config") or {}).items() if k not in TASK_KEYS_IGNORED}
    blob = json.dumps([task["name"], task.get("version"), config], sort_keys=True, default=str)
    return hashlib.blake2b(blob.encode(), digest_size=4).hexdigest()


def as_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)


def load_runs(records_dir: str | Path) -> Runs:
    """Read every record under ``records_dir`` into :class:`Runs` (failed ones are only counted)."""
    import pandas as pd

    all_records, unreadable = scan_records(records_dir)
    ok = []
    rows = []
    unusable: list[tuple[str, str]] = []
    for rec in all_records:
        if rec["status"] != "ok":
            continue
        try:
            rows.append(_run_row(rec, unusable))
        except (KeyError, TypeError, ValueError, AttributeError) as err:  # valid schema, broken content
            unreadable.append(
                (str(rec.get("run_id")), f"record {rec.get('run_id')}: {type(err).__name__}: {err}")
            )
            continue
        ok.append(rec)
    frame = pd.DataFrame(rows)
    labels: dict[str, str] = {}
    if not frame.empty:
        names = _setting_names(frame["setting_key"])
        frame.insert(0, "setting", [names[key] for key in frame["setting_key"]])
        short = short_labels(
            zip(frame["method_name"], frame["method_label"], frame["method_config"], strict=True)
        )
        frame["method"] = frame["method_label"].map(short)
        labels = {text: label for label, text in short.items()}
    failed = [r for r in all_records if r["status"] != "ok"]
    return Runs(
        frame=frame,
        records=ok,
        n_failed=len(failed),
        unusable_metrics=unusable,
        unreadable=unreadable,
        failed=failed,
        labels=labels,
    )


def _run_row(rec: Record, unusable: list[tuple[str, str]]) -> dict[str, Any]:
    """One row of :class:`Runs`' frame from an ok record (appends its non-finite metrics to ``unusable``)."""
    task, method, timings = rec["task"], rec["method"], rec["timings"]
    # read defensively: a record of a valid schema can still hold broken content (load_runs names it)
    explain: dict[str, Any] = dict(timings.get("explain") or {})
    fit: dict[str, Any] = dict(timings.get("fit") or {})
    metrics = {n: e for n, e in rec["metrics"].items() if e.get("status") == "ok" and _finite(e.get("value"))}
    unusable += [
        (rec["run_id"], n)
        for n, e in rec["metrics"].items()
        if e.get("status") == "ok" and not _finite(e.get("value"))
    ]
    config = method.get("config") or {}
    n_explained = explain.get("n_points", task.get("n_explained", task["n_test"]))
    return {
        "setting_key": (task["name"], task["n_train"], task["n_test"], _task_setting_hash(task)),
        "task": task["name"],
        "variant": task.get("variant") or STD,
        "n_train": task["n_train"],
        "n_test": task["n_test"],
        "method": method["label"],  # replaced by the short label once every record is read
        "method_label": method["label"],
        "method_name": method["name"],
        "method_config": config,
        "config_hash": method["config_hash"],
        "paper_name": paper_name(method["name"], config),
        "C": as_number(config.get("C")),
        "seed": task.get("seed"),
        "fit_cold_s": as_number(fit.get("cold_s")),
        "fit_warm_s": as_number(fit.get("warm_s")),
        "explain_s_per_point": as_number(explain.get("per_point_median_s")),
        "explain_batch": as_number(explain.get("batch_size")),
        "explain_total_s": as_number(explain.get("total_s")),
        "warmup_s": as_number(timings.get("warmup_s")),
        "model_s": as_number(timings.get("model_s")),
        "explain_spent_s": _explain_spent(explain),
        "self_influence_s": as_number(timings.get("self_influence_s")),
        "metrics_s": math.fsum(
            as_number(v) for v in (timings.get("metrics_s") or {}).values() if not math.isnan(as_number(v))
        ),
        "n_explained": n_explained,
        "n_test_total": explain.get("n_test_total", task["n_test"]),
        "explain_extrapolated": bool(explain.get("extrapolated", False)),
        "metrics": {n: as_number(e["value"]) for n, e in metrics.items()},
        "per_point": {n: e.get("per_point") for n, e in metrics.items()},
        "directions": {n: e["direction"] for n, e in metrics.items()},
        "details": {n: e.get("details") or {} for n, e in metrics.items()},
        "sparsity": rec.get("sparsity"),
        "diagnostics": rec.get("diagnostics") or {},
        "model": task.get("model") or {},
        "git": rec.get("git") or {},
        "environment": rec.get("environment") or {},
        "created_utc": rec.get("created_utc"),
        "run_id": rec["run_id"],
    }


def failure_line(rec: Record) -> str:
    """``method on task/variant (n_train, seed): what broke``, one line, from a failed record."""
    method, task = rec["method"], rec["task"]
    error: dict[str, Any] = dict(rec.get("error") or {})
    message = str(error.get("message") or "no error message").strip().splitlines() or [""]
    where = (
        f"{task.get('name')}/{task.get('variant', STD)} n_train={task.get('n_train')} seed={task.get('seed')}"
    )
    return (
        f"{method.get('label') or method.get('name')} on {where}: {error.get('type', 'Error')}: {message[0]}"
    )


def _finite(value: Any) -> bool:
    return not math.isnan(as_number(value)) and math.isfinite(as_number(value))


def _explain_spent(explain: dict[str, Any]) -> float:
    """Seconds the explain passes took: the first over all points, the repeats over the timed points.

    Records keep per-point statistics, not the passes' sums: this is the median per-point time times
    the points explained (the warm-up batch left out).
    """
    per_point = as_number(explain.get("per_point_median_s"))
    n_points, repeats = explain.get("n_points"), explain.get("repeats") or 1
    timed = explain.get("timed_points") or n_points
    if math.isnan(per_point) or not isinstance(n_points, int) or not isinstance(timed, int):
        return math.nan
    return per_point * (n_points + (repeats - 1) * timed)


def _setting_names(keys: Iterable[tuple[str, int, int, str]]) -> dict[tuple[str, int, int, str], str]:
    """``"mnist, n_train=2000, n_test=100"``; the task configuration's hash is added where two settings
    share that."""
    keys = sorted(set(keys))
    names = {}
    for key in keys:
        task, n_train, n_test, digest = key
        base = f"{task}, n_train={n_train}, n_test={n_test}"
        twins = [k for k in keys if k[:3] == key[:3]]
        names[key] = base if len(twins) == 1 else f"{base} [task config {digest}]"
    return names


def setting_columns(row: Any) -> dict[str, Any]:
    """The :data:`SETTING_COLUMNS` of a row of :attr:`Runs.frame` (or of a table)."""
    return {column: row[column] for column in SETTING_COLUMNS}


def settings_of(frame: pd.DataFrame) -> list[str]:
    """Setting names in a stable order: by task, then training-set size, then name."""
    if frame.empty:
        return []
    keys: dict[str, tuple[str, int, int, str]] = {}
    for setting, task, n_train, n_test in zip(*(frame[c] for c in SETTING_COLUMNS), strict=True):
        keys.setdefault(setting, (task, int(n_train), int(n_test), setting))
    return sorted(keys, key=keys.__getitem__)


# =============================================================================================
# Tables
# =============================================================================================
@dataclass
class Table:
    """A derived table: ``frame`` (numbers, for CSV) and ``display`` (text, for Markdown, LaTeX, HTML).

    Both are long: the :data:`SETTING_COLUMNS` first, then the table's own columns.
    """

    name: str
    title: str
    frame: pd.DataFrame
    display: pd.DataFrame
    definition: str
    notes: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    #: Short label -> full label of the methods the table shows whose labels differ (the footnote).
    labels: dict[str, str] = field(default_factory=dict)

    def per_setting(self) -> list[tuple[str, pd.DataFrame]]:
        """``(setting, display table without the setting columns and without all-empty columns)``."""
        out: list[tuple[str, pd.DataFrame]] = []
        if self.display.empty:
            return out
        for setting in settings_of(self.frame):  # the numbers sort by size, their text would not
            part = self.display[self.display["setting"] == setting]
            part = part.drop(columns=[c for c in SETTING_COLUMNS if c in part.columns])
            keep = [c for c in part.columns if (part[c] != MISSING).any()]
            out.append((setting, part[keep].reset_index(drop=True)))
        return out


MISSING = "—"


def fmt(value: Any, spec: str = ".4g") -> str:
    """A cell as text: numbers to ``spec``, missing values as an em dash, booleans as yes / empty."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return MISSING
        if value.is_integer() and abs(value) < 1e6 and spec == "int":
            return str(int(value))
        return format(value, ".4g" if spec == "int" else spec)
    text = str(value)
    return text if text and text != "nan" else MISSING


def display_frame(frame: pd.DataFrame, formats: dict[str, str] | None = None) -> pd.DataFrame:
    formats = formats or {}
    out = frame.copy()
    for column in out.columns:
        spec = formats.get(column, ".4g")
        out[column] = [fmt(v.item() if hasattr(v, "item") else v, spec) for v in frame[column]]
    return out


def metric_order(metrics: Iterable[str]) -> list[str]:
    metrics = set(metrics)
    return [m for m in PAPER_METRICS if m in metrics] + sorted(metrics - set(PAPER_METRICS))


def merge_notes(notes: Sequence[tuple[str, str]]) -> list[str]:
    """``(setting, message)`` pairs as one line per message, listing its settings (first-seen order)."""
    merged: dict[str, list[str]] = {}
    for setting, message in notes:
        merged.setdefault(message, [])
        if setting not in merged[message]:
            merged[message].append(setting)
    return [f"{message} ({'; '.join(settings)})." for message, settings in merged.items()]


def nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def doc_definition(function: Any) -> str:
    """The docstring of a table function without its first line's indentation, for the reports."""
    lines = (function.__doc__ or "").strip().splitlines()
    body = [lines[0]] + [line[4:] if line.startswith("    ") else line for line in lines[1:]]
    return "\n".join(body)
