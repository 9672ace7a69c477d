"""Tables derived from run records alone: method x metric, with cost columns.

One row per (task, variant, method label, config hash); metric values are averaged over seeds
(``n_seeds`` says over how many). Written as CSV and Markdown under ``<results>/tables/``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.records import iter_records

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

ARROWS = {"higher": "↑", "lower": "↓"}


def records_frame(records_dir: str | Path) -> pd.DataFrame:
    """One row per successful record, flattened: ids, metrics and timings."""
    import pandas as pd

    rows: list[dict[str, Any]] = []
    for rec in iter_records(records_dir):
        if rec["status"] != "ok":
            continue
        row: dict[str, Any] = {
            "task": rec["task"]["name"],
            "variant": rec["task"]["variant"],
            "n_train": rec["task"]["n_train"],
            "n_test": rec["task"]["n_test"],
            "method": rec["method"]["label"],
            "config_hash": rec["method"]["config_hash"],
            "seed": rec["task"]["seed"],
            "model_test_acc": (rec["task"].get("model") or {}).get("test_accuracy"),
            "fit_cold_s": rec["timings"]["fit"]["cold_s"],
            "fit_warm_s": rec["timings"]["fit"]["warm_s"],
            "explain_ms_per_point": 1e3 * rec["timings"]["explain"]["per_point_median_s"],
            "explain_total_s": rec["timings"]["explain"]["total_s"],
            "n_explained": rec["timings"]["explain"]["n_points"],
        }
        for name, entry in rec["metrics"].items():
            if entry["status"] == "ok":
                row[f"{name} {ARROWS[entry['direction']]}"] = entry["value"]
        rows.append(row)
    return pd.DataFrame(rows)


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    keys = ["task", "variant", "n_train", "n_test", "method", "config_hash"]
    if frame.empty:
        return frame
    numeric = [c for c in frame.columns if c not in keys and c != "seed"]
    grouped = frame.groupby(keys, dropna=False, sort=True)
    table = grouped[numeric].mean()
    table.insert(0, "n_seeds", grouped.size())
    table = table.reset_index().drop(columns="config_hash")
    return table


def write_report(results_dir: str | Path, out_dir: str | Path | None = None) -> tuple[Path, Path, str]:
    """Write ``summary.csv`` and ``summary.md``; return their paths and the Markdown text."""
    results_dir = Path(results_dir)
    records_dir = results_dir / "records"
    if not records_dir.is_dir():
        raise FileNotFoundError(
            f"no records under {records_dir}; run `dabench run ...` or `./run_all.sh` first"
        )
    table = summary_table(records_frame(records_dir))
    if table.empty:
        raise FileNotFoundError(f"no successful records under {records_dir}")
    out = Path(out_dir) if out_dir is not None else results_dir / "tables"
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / "summary.csv", out / "summary.md"
    table.to_csv(csv_path, index=False)
    markdown = table.to_markdown(index=False, floatfmt=".4g", missingval="—")
    if (table["n_explained"] < table["n_test"]).any():
        markdown += (
            "\n\nexplain_total_s: where n_explained < n_test, only the first n_explained test points were"
            " explained (--explain-limit) and the total for all n_test points is extrapolated from their"
            " per-point time; the metrics of those rows are computed on the n_explained points."
        )
    if table["fit_cold_s"].isna().any():
        markdown += (
            "\n\nfit_cold_s —: the method's cache was already filled (by an earlier run, or by another"
            " config sharing the same inputs), so no cold fit was measured for that row."
        )
    md_path.write_text(markdown + "\n")
    return csv_path, md_path, markdown
