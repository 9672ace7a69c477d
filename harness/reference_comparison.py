"""This run beside the committed reference results: same run, same numbers?

A record's ``run_id`` hashes exactly what it computes (task and its config, method and its config,
metrics, model seed), so a record of this run and a reference record with the same ``run_id``
computed the same thing (the same test points with the same model seed), only on another machine
or commit. :func:`compare` pairs the ok records of a run with the ok reference records by
``run_id`` (all records under the reference folder, recursively; ``results/reference`` by default)
and derives, per (setting, method):

- ``n_seeds``: the model seeds with at least one paired record;
- ``explain_ratio``: mean over the paired records (``std`` variant where there are such, else all)
  of this run's per-point explain time (median over repeats) / the same mean of the reference;
  ``fit_cold_ratio`` the same for the cold fit, over the pairs where both fits were cold;
- per metric (read from the variant the paper computes it on, as in the metrics table):
  ``this_value`` and ``reference_value`` (means over the paired seeds), ``difference`` (this -
  reference) and its 95% interval. Where both records of every paired seed have per-point scores
  for the same test points, the interval is the paired two-stage bootstrap
  (:func:`harness.stats.joint_bootstrap` of the per-point differences: seeds resampled, then test
  points within each seed, the same draws for both sides); else, with two or more paired seeds, the
  bootstrap over the per-seed differences; with one paired seed and no per-point scores there is
  none. ``differs`` flags a difference whose interval excludes 0 (and which is larger than float
  noise, :data:`NOISE`).
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness import stats
from harness.paper_numbers import METRIC_VARIANT

if TYPE_CHECKING:
    import pandas as pd

    from harness.runs import Runs, Table

log = logging.getLogger(__name__)

STD = "std"
#: A difference smaller than this (relative to ``max(1, |reference|)``) is float noise, never flagged.
NOISE = 1e-6
NAME = "vs_reference"
TITLE = "This run vs the reference results (same run_id: same task, method, metrics and model seed)"


@dataclass
class Comparison:
    """What :func:`compare` found: the table (None without a match), one line per method, and why not."""

    reference_dir: Path
    table: Table | None = None
    #: ``(setting, method, line)``: "explain x1.3, cold fit x0.9; 1 of 7 metrics differ: lds" (times
    #: are multiples of the reference's).
    lines: list[tuple[str, str, str]] = field(default_factory=list)
    overall: str = ""
    #: Why nothing matched (for the report's missing list), else None.
    note: str | None = None


def default_reference_dir() -> Path:
    """``<project root>/results/reference``."""
    from harness.records import PROJECT_ROOT

    return PROJECT_ROOT / "results" / "reference"


def is_inside(folder: str | Path, reference_dir: str | Path) -> bool:
    """True when ``folder`` is ``reference_dir`` or lies under it (then there is nothing to compare)."""
    folder, reference = Path(folder).resolve(), Path(reference_dir).resolve()
    return folder == reference or reference in folder.parents


def compare(runs: Runs, reference_dir: str | Path) -> Comparison:
    """Pair ``runs`` with the reference records by ``run_id`` and derive the ``vs_reference`` table."""
    import pandas as pd

    from harness.runs import load_runs

    reference_dir = Path(reference_dir)
    result = Comparison(reference_dir)
    if not reference_dir.is_dir():
        result.note = f"no comparison with the reference: {reference_dir} is not a folder."
        return result
    reference = load_runs(reference_dir)
    if reference.empty:
        result.note = f"no comparison with the reference: no successful record under {reference_dir}."
        return result
    ref = reference.frame.sort_values("created_utc", kind="stable").drop_duplicates("run_id", keep="last")
    ref = ref.set_index("run_id")
    mine = runs.frame[runs.frame["run_id"].isin(ref.index)]
    if mine.empty:
        result.note = _why_unmatched(runs.frame, reference.frame, reference_dir)
        return result
    rows: list[dict[str, Any]] = []
    for setting in _settings(mine):
        part = mine[mine["setting"] == setting]
        for method, group in part.groupby("method", sort=True):
            method_rows, line = _method_rows(setting, method, group, ref)
            rows += method_rows
            result.lines.append((setting, method, line))
    numbers = pd.DataFrame(rows, columns=_COLUMNS)
    result.table = _table(numbers)
    n_differ = sum(1 for flag in numbers["differs"] if flag is True)
    n_metrics = int(numbers["metric"].notna().sum())
    ratios = numbers.drop_duplicates(["setting", "method"])["explain_ratio"].dropna()
    seeds = sorted({int(s) for s in mine["seed"]})
    time = f"explain x{_ratio_text(float(ratios.median()))} (median)" if len(ratios) else "no explain times"
    result.overall = (
        f"{len(mine)}/{len(runs.frame)} records, {numbers['method'].nunique()} methods, seeds "
        f"{','.join(map(str, seeds))}; {time}; {n_differ} of {n_metrics} values differ"
    )
    unmatched = len(runs.frame) - len(mine)
    if unmatched:
        result.table.notes.append(
            f"{unmatched} of this run's {len(runs.frame)} successful records have no reference record with "
            f"the same run_id (another size, seed, config or version) and are not compared."
        )
    return result


_COLUMNS = [
    "setting",
    "task",
    "n_train",
    "n_test",
    "method",
    "method_label",
    "n_seeds",
    "explain_ratio",
    "fit_cold_ratio",
    "metric",
    "variant",
    "n_metric_seeds",
    "this_value",
    "reference_value",
    "difference",
    "ci_low",
    "ci_high",
    "resampled",
    "differs",
]


def _settings(frame: pd.DataFrame) -> list[str]:
    from harness.runs import settings_of

    return settings_of(frame)


def _method_rows(
    setting: str, method: str, group: pd.DataFrame, ref: pd.DataFrame
) -> tuple[list[dict[str, Any]], str]:
    """The table rows of one (setting, method) and its console line."""
    first = group.iloc[0]
    timed = group[group["variant"] == STD] if (group["variant"] == STD).any() else group
    explain = _ratio(timed, ref, "explain_s_per_point")
    fit = _ratio(timed, ref, "fit_cold_s")
    base = {
        "setting": setting,
        "task": first["task"],
        "n_train": first["n_train"],
        "n_test": first["n_test"],
        "method": method,
        "method_label": first["method_label"],
        "n_seeds": group["seed"].nunique(),
        "explain_ratio": explain,
        "fit_cold_ratio": fit,
    }
    rows = []
    from harness.runs import metric_order

    metrics = metric_order({m for metrics in group["metrics"] for m in metrics})
    for metric in metrics:
        pairs = []
        variant = METRIC_VARIANT.get(metric, STD)
        for _, run in group[group["variant"] == variant].sort_values("seed").iterrows():
            other = ref.loc[run["run_id"]]
            if metric in run["metrics"] and metric in other["metrics"]:
                pairs.append((run, other))
        if pairs:
            rows.append(
                {**base, "metric": metric, "variant": variant, **_difference(setting, method, metric, pairs)}
            )
    if not rows:
        rows.append({**base, "metric": None, "variant": None, "n_metric_seeds": 0, "differs": None})
    differ = [r["metric"] for r in rows if r.get("differs")]
    n_metrics = sum(1 for r in rows if r["metric"] is not None)
    time = f"explain x{_ratio_text(explain)}" + (
        f", cold fit x{_ratio_text(fit)}" if not math.isnan(fit) else ""
    )
    line = f"{time}; {len(differ)} of {n_metrics} metrics differ"
    if differ:
        line += f": {', '.join(differ)}"
    return rows, line


def _ratio(group: pd.DataFrame, ref: pd.DataFrame, column: str) -> float:
    """Mean of ``column`` over this run's paired records / the same mean of the reference records.

    Only the pairs where both numbers exist count (e.g. a cold fit only where both fits were cold).
    """
    mine, theirs = [], []
    for _, run in group.iterrows():
        a, b = float(run[column]), float(ref.loc[run["run_id"], column])
        if math.isfinite(a) and math.isfinite(b):
            mine.append(a)
            theirs.append(b)
    if not mine or sum(theirs) <= 0:
        return math.nan
    return float(np.mean(mine) / np.mean(theirs))


def _ratio_text(ratio: float) -> str:
    if math.isnan(ratio):
        return "n/a"
    if ratio >= 10:
        return f"{ratio:.0f}"
    text = f"{ratio:.2g}"
    return text if "." in text or "e" in text else f"{ratio:.1f}"


def _difference(setting: str, method: str, metric: str, pairs: Sequence[tuple[Any, Any]]) -> dict[str, Any]:
    """Values, difference, its interval and the flag of one metric over its paired records."""
    this = [float(a["metrics"][metric]) for a, _ in pairs]
    theirs = [float(b["metrics"][metric]) for _, b in pairs]
    value, reference = float(np.mean(this)), float(np.mean(theirs))
    difference = value - reference
    points = [_per_point_difference(a, b, metric) for a, b in pairs]
    seed = zlib.crc32(f"{setting}|{method}|{metric}".encode())
    low = high = math.nan
    complete = [p for p in points if p is not None]
    if len(complete) == len(points):
        sample = stats.joint_bootstrap({"difference": complete}, seed=seed)
        resampled = "test points within seeds, and seeds" if len(pairs) > 1 else "test points (one seed)"
    elif len(pairs) > 1:
        per_seed = [a - b for a, b in zip(this, theirs, strict=True)]
        sample = stats.joint_bootstrap({"difference": per_seed}, seed=seed)
        resampled = "seeds (no per-point scores)"
    else:
        sample = None
        resampled = "no interval: one paired seed, no per-point scores"
    if sample is not None:
        lo, hi = stats.percentile_interval(sample.draws[:, 0])
        low, high = float(lo), float(hi)
    noise = NOISE * max(1.0, abs(reference))
    differs = None if sample is None else bool((low > 0 or high < 0) and abs(difference) > noise)
    return {
        "n_metric_seeds": len(pairs),
        "this_value": value,
        "reference_value": reference,
        "difference": difference,
        "ci_low": low,
        "ci_high": high,
        "resampled": resampled,
        "differs": differs,
    }


def _per_point_difference(run: Any, other: Any, metric: str) -> np.ndarray | None:
    """This run's per-point scores minus the reference's, where both have them for the same points."""
    a = (run["per_point"] or {}).get(metric)
    b = (other["per_point"] or {}).get(metric)
    if a is None or b is None or len(a) != len(b) or len(a) == 0:
        return None
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return diff if np.all(np.isfinite(diff)) else None


def _table(numbers: pd.DataFrame) -> Table:
    from harness.runs import MISSING, Table, display_frame, fmt

    display = display_frame(
        numbers.drop(columns=["method_label"]),
        {
            "n_train": "int",
            "n_seeds": "int",
            "n_metric_seeds": "int",
            "explain_ratio": ".2g",
            "fit_cold_ratio": ".2g",
        },
    )
    if not numbers.empty:
        display["difference"] = [
            MISSING
            if math.isnan(d)
            else f"{fmt(d, '+.3g')}"
            + (f" [{fmt(lo, '+.3g')}, {fmt(hi, '+.3g')}]" if not math.isnan(lo) else "")
            for d, lo, hi in zip(numbers["difference"], numbers["ci_low"], numbers["ci_high"], strict=True)
        ]
        display["differs"] = [{True: "yes", False: "no"}.get(v, MISSING) for v in numbers["differs"]]
        repeated = numbers.duplicated(["setting", "method"])
        for column in ("n_seeds", "explain_ratio", "fit_cold_ratio"):
            display[column] = [MISSING if r else v for v, r in zip(display[column], repeated, strict=True)]
        display = display.drop(columns=["ci_low", "ci_high"])
    return Table(NAME, TITLE, numbers, display, _definition(__doc__))


def _definition(doc: str | None) -> str:
    paragraphs = (doc or "").strip().split("\n\n")
    return "\n\n".join(paragraphs[1:]).strip()


def _why_unmatched(mine: pd.DataFrame, theirs: pd.DataFrame, reference_dir: Path) -> str:
    """One sentence: no record of this run has a reference twin, and the likeliest reason."""
    head = f"no comparison with the reference ({reference_dir}): no record of this run has the same run_id"

    def sizes(frame: pd.DataFrame) -> set[tuple[str, int, int]]:
        return {
            (t, int(n), int(m))
            for t, n, m in zip(frame["task"], frame["n_train"], frame["n_test"], strict=True)
        }

    def text(keys: set[tuple[str, int, int]]) -> str:
        shown = sorted(keys)[:3]
        more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
        return "; ".join(f"{t} n_train={n} n_test={m}" for t, n, m in shown) + more

    if not sizes(mine) & sizes(theirs):
        return f"{head}: another size (this run: {text(sizes(mine))}; the reference: {text(sizes(theirs))})."
    seeds, ref_seeds = set(mine["seed"]), set(theirs["seed"])
    if not seeds & ref_seeds:
        return f"{head}: other model seeds (this run: {sorted(seeds)}; the reference: {sorted(ref_seeds)})."
    labels, ref_labels = set(mine["method_label"]), set(theirs["method_label"])
    if not labels & ref_labels:
        return f"{head}: other methods or method settings (none of this run's labels is in the reference)."
    return f"{head}: same sizes, seeds and methods, but other task or metric configurations or versions."
