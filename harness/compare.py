"""Compare two measurements of the benchmark: run records or pytest-benchmark files, BASE vs HEAD.

Two kinds of input, recognised from their content (never from file names):

- **run records** (a results directory, its ``records/`` folder, or one record file): rows are
  matched on (task, variant, task config hash, method, method config hash, seed). A pair whose task
  or method *versions* differ is not compared: its row says "skipped: versions differ". Each row
  carries the per-point explanation time, the cold fit time and every metric, base and head, with the
  ratio head / base for times and the difference for metrics.
- **benchmark files** (pytest-benchmark JSON, as ``dabench bench`` writes them, or a folder of them:
  the newest file per folder is taken): rows are matched on the benchmark's full name; the ratio is
  head / base of the median time.

A time ratio above ``1 + threshold`` is a regression; so is a metric that moved against its
direction by more than ``metric_tolerance``. :func:`history` draws one figure per benchmark across all
the benchmark files of a folder, ordered by commit time.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import records
from harness.config import ConfigError

log = logging.getLogger(__name__)


@dataclass
class Comparison:
    """The comparison table (one dict per matched item) and what was flagged."""

    kind: str  # "records" or "benchmarks"
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def regressions(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r.get("status") == "REGRESSION"]

    def to_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame(self.rows)


# =============================================================================================
# Loading
# =============================================================================================
def load(path: str | Path) -> tuple[str, Any]:
    """``("records", [record, ...])`` or ``("benchmarks", benchmark_json)`` from ``path``.

    Raises
    ------
    ConfigError
        When ``path`` does not exist or holds neither kind.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(
            f"{path} does not exist; give a results directory, a record or a benchmark JSON file"
        )
    if path.is_file():
        data = _read_json(path)
        if _is_benchmark(data):
            return "benchmarks", data
        if isinstance(data, dict) and "run_id" in data:
            return "records", [records.read_record(path)]
        if path.suffix == ".json" and not _is_benchmark(data):
            records.read_record(path)  # raises RecordError naming what is wrong with the file
        raise ConfigError(f"{path} is neither a run record nor a pytest-benchmark file")
    record_dir = path / "records" if (path / "records").is_dir() else path
    found, unreadable = records.scan_records(record_dir)
    for bad, reason in unreadable:
        if not _is_benchmark(_read_json(Path(bad))):
            log.warning("%s is left out of the comparison: %s", bad, reason)
    if found:
        return "records", found
    benches = [p for p in sorted(path.glob("*.json")) if _is_benchmark(_read_json(p))]
    if benches:
        newest = max(benches, key=lambda p: _read_json(p).get("datetime", ""))
        return "benchmarks", _read_json(newest)
    raise ConfigError(f"{path} holds no run records (records/*.json) and no pytest-benchmark files")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _is_benchmark(data: Any) -> bool:
    return isinstance(data, dict) and "benchmarks" in data and "machine_info" in data


# =============================================================================================
# Comparing
# =============================================================================================
def compare(
    base: str | Path, head: str | Path, *, threshold: float = 0.2, metric_tolerance: float = 0.01
) -> Comparison:
    """The comparison of ``head`` against ``base`` (see the module docstring).

    Raises
    ------
    ConfigError
        For unreadable inputs, inputs of different kinds, or a negative threshold.
    """
    if not threshold >= 0 or not metric_tolerance >= 0:
        raise ConfigError("--threshold and --metric-tolerance must be >= 0")
    base_kind, base_data = load(base)
    head_kind, head_data = load(head)
    if base_kind != head_kind:
        raise ConfigError(
            f"cannot compare {base_kind} ({base}) with {head_kind} ({head}); give two of a kind"
        )
    if base_kind == "benchmarks":
        return _compare_benchmarks(base_data, head_data, threshold)
    return _compare_records(base_data, head_data, threshold, metric_tolerance)


def _record_key(record: dict[str, Any]) -> tuple:
    task, method = record["task"], record["method"]
    return (
        task["name"],
        task["variant"],
        task.get("config_hash"),
        method["name"],
        method.get("config_hash"),
        task.get("seed"),
    )


def _compare_records(
    base: list[dict[str, Any]], head: list[dict[str, Any]], threshold: float, tolerance: float
) -> Comparison:
    out = Comparison("records")
    base_by_key = {_record_key(r): r for r in base if r["status"] == "ok"}
    for rec in head:
        if rec["status"] != "ok":
            continue
        key = _record_key(rec)
        row: dict[str, Any] = {
            "task": f"{key[0]}/{key[1]}",
            "method": rec["method"].get("label", key[3]),
            "seed": key[5],
        }
        old = base_by_key.get(key)
        if old is None:
            out.rows.append({**row, "status": "new (no base)"})
            continue
        if (old["task"]["version"], old["method"]["version"]) != (
            rec["task"]["version"],
            rec["method"]["version"],
        ):
            out.rows.append(
                {
                    **row,
                    "status": "skipped: versions differ",
                    "detail": f"task {old['task']['version']}->{rec['task']['version']}, "
                    f"method {old['method']['version']}->{rec['method']['version']}",
                }
            )
            continue
        flags = []
        for name, getter in (("explain_ms", _explain_ms), ("fit_cold_s", _fit_cold_s)):
            b, h = getter(old), getter(rec)
            row[f"{name}_base"], row[f"{name}_head"] = b, h
            ratio = h / b if b and h is not None and b > 0 else None
            row[f"{name}_ratio"] = ratio
            if ratio is not None and ratio > 1 + threshold:
                flags.append(f"{name} x{ratio:.2f}")
        for metric, entry in rec["metrics"].items():
            old_entry = old["metrics"].get(metric)
            if not old_entry or entry["value"] is None or old_entry["value"] is None:
                continue
            delta = entry["value"] - old_entry["value"]
            row[f"{metric}_delta"] = delta
            worse = -delta if entry["direction"] == "higher" else delta
            if worse > tolerance:
                flags.append(f"{metric} {delta:+.3g}")
        row["status"] = "REGRESSION" if flags else "ok"
        row["detail"] = ", ".join(flags)
        out.rows.append(row)
    return out


def _explain_ms(record: dict[str, Any]) -> float | None:
    explain = record["timings"].get("explain") or {}
    value = explain.get("per_point_median_s")
    return None if value is None else 1e3 * value


def _fit_cold_s(record: dict[str, Any]) -> float | None:
    return (record["timings"].get("fit") or {}).get("cold_s")


def _compare_benchmarks(base: dict[str, Any], head: dict[str, Any], threshold: float) -> Comparison:
    out = Comparison("benchmarks")
    base_by_name = {b["fullname"]: b for b in base["benchmarks"]}
    same_machine = _machine(base) == _machine(head)
    for bench in head["benchmarks"]:
        row: dict[str, Any] = {"benchmark": bench["fullname"], "group": bench.get("group")}
        old = base_by_name.get(bench["fullname"])
        if old is None:
            out.rows.append({**row, "status": "new (no base)"})
            continue
        b, h = old["stats"]["median"], bench["stats"]["median"]
        ratio = h / b if b > 0 else math.nan
        status = "REGRESSION" if ratio > 1 + threshold else "ok"
        out.rows.append(
            {
                **row,
                "median_s_base": b,
                "median_s_head": h,
                "ratio": ratio,
                "status": status,
                "detail": "" if same_machine else "machines differ",
            }
        )
    return out


def _machine(data: dict[str, Any]) -> tuple:
    info = data.get("machine_info", {})
    return (info.get("node"), (info.get("cpu") or {}).get("brand_raw"))


def describe(data: dict[str, Any]) -> str:
    """``commit (date) on machine`` of a benchmark file, for table headers."""
    commit = data.get("commit_info", {})
    dirty = "+dirty" if commit.get("dirty") else ""
    return (
        f"{str(commit.get('id', '?'))[:8]}{dirty} ({data.get('datetime', '?')[:19]}) on {_machine(data)[0]}"
    )


# =============================================================================================
# History
# =============================================================================================
def history(folder: str | Path, out: str | Path | None = None) -> list[Path]:
    """One PNG per benchmark: its median time in every benchmark file of ``folder``, by commit time.

    Returns the written figure paths (``out`` defaults to ``folder/history``); a CSV of all points
    (``history.csv``) is written beside them.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    folder = Path(folder)
    files = [p for p in sorted(folder.glob("*.json")) if _is_benchmark(_read_json(p))]
    if not files:
        raise ConfigError(f"{folder} holds no pytest-benchmark files; measure with `dabench bench` first")
    rows = []
    for path in files:
        data = _read_json(path)
        commit = data.get("commit_info", {})
        for bench in data["benchmarks"]:
            rows.append(
                {
                    "benchmark": bench["fullname"],
                    "name": bench["name"],
                    "time": commit.get("time") or data.get("datetime"),
                    "measured": data.get("datetime"),
                    "commit": str(commit.get("id", "?"))[:8] + ("+" if commit.get("dirty") else ""),
                    "median_s": bench["stats"]["median"],
                    "iqr_s": bench["stats"].get("iqr"),
                    "file": path.name,
                }
            )
    frame = pd.DataFrame(rows).sort_values(["benchmark", "time", "measured"])
    out_dir = Path(out) if out is not None else folder / "history"
    out_dir.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out_dir / "history.csv", index=False)
    written = []
    for name, group in frame.groupby("benchmark", sort=True):
        fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(group) + 2), 3.2))
        xs = range(len(group))
        ax.errorbar(xs, group["median_s"], yerr=group["iqr_s"].fillna(0) / 2, marker="o", capsize=3)
        ax.set_xticks(list(xs), group["commit"], rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("median time (s)")
        ax.set_ylim(bottom=0)
        ax.set_title(group["name"].iloc[0], fontsize=9)
        fig.tight_layout()
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))[-120:]
        path = out_dir / f"{safe}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
