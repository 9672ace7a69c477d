"""Tables derived from run records alone (:func:`derive_report`), written by :func:`write_tables`.

The engine half of ``dabench report``: :func:`dabench.report.build_report` calls these and adds the
figures and the HTML page. Records are read by :func:`harness.runs.load_runs`.

Every number here comes from the records under ``<results>/records`` except the paper's Figure-1 numbers
set beside them (:mod:`harness.paper_numbers`). Written under ``<results>/tables/`` as CSV (one long
table, numbers unrounded), Markdown and LaTeX (one table per setting, numbers to 4 significant digits):

``summary``
    One row per (task, variant, n_train, n_test, method label, config hash): metric values and
    costs averaged over seeds (``n_seeds`` says over how many); here.
``speedup``, ``costs``, ``sparsity``, ``models``
    What explaining costs and what the models are: :mod:`harness.cost_tables`.
``metrics``, ``intervals``, ``ranks``, ``metric_health``, ``paper_agreement``
    How good the attributions are, with intervals: :mod:`harness.quality_tables`.
``vs_reference``
    This run beside the reference results: :mod:`harness.reference_comparison`.

A *setting* is one (task, training-set size, test-set size, task configuration apart from the
variant): the four variants of one setting are joined by method label. Metric values and times are means
over seeds. Missing variants, metrics or methods leave cells empty and are listed in the notes,
never an error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.cost_tables import (
    cost_table,
    models_table,
    sparsity_table,
    speedup_at_scale_table,
    speedup_table,
)
from harness.quality_tables import (
    health_table,
    intervals_table,
    metric_table,
    metric_values,
    paper_agreement_table,
    rank_table,
)
from harness.runs import (
    ARROWS,
    Runs,
    Table,
    display_frame,
    failure_line,
    load_runs,
)
from harness.table_format import label_footnote, latex_tabular, write_table

if TYPE_CHECKING:
    import pandas as pd

    from harness.reference_comparison import Comparison

log = logging.getLogger(__name__)


# =============================================================================================
# The summary table (one row per run configuration) — what `dabench report` has always shown
# =============================================================================================
def _summary_rows(runs: Runs) -> list[dict[str, Any]]:
    """One row per ok run, read off :class:`Runs`' frame (``method``: the short label; ``method_label``)."""
    rows: list[dict[str, Any]] = []
    for run in runs.frame.to_dict("records") if not runs.empty else []:
        row: dict[str, Any] = {
            "task": run["task"],
            "variant": run["variant"],
            "n_train": run["n_train"],
            "n_test": run["n_test"],
            "method": run["method"],
            "method_label": run["method_label"],
            "config_hash": run["config_hash"],
            "seed": run["seed"],
            "model_test_acc": run["model"].get("test_accuracy"),
            "fit_cold_s": run["fit_cold_s"],
            "fit_warm_s": run["fit_warm_s"],
            "explain_ms_per_point": 1e3 * run["explain_s_per_point"],
            "explain_total_s": run["explain_total_s"],
            "n_explained": run["n_explained"],
        }
        for name, value in run["metrics"].items():
            row[f"{name} {ARROWS[run['directions'][name]]}"] = value
        rows.append(row)
    return rows


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    keys = ["task", "variant", "n_train", "n_test", "method", "method_label", "config_hash"]
    if frame.empty:
        return frame
    numeric = [c for c in frame.columns if c not in keys and c != "seed"]
    grouped = frame.groupby(keys, dropna=False, sort=True)
    table = grouped[numeric].mean()
    table.insert(0, "n_seeds", grouped.size())
    table = table.reset_index().drop(columns="config_hash")
    return table


def _summary_markdown(table: pd.DataFrame) -> str:
    shown = table.drop(columns=[c for c in ("method_label",) if c in table.columns])
    markdown = shown.to_markdown(index=False, floatfmt=".4g", missingval="—")
    if "method_label" in table.columns:
        labels = dict(zip(table["method"], table["method_label"], strict=True))
        footnote = label_footnote({m: full for m, full in sorted(labels.items()) if m != full})
        markdown += f"\n\n{footnote}" if footnote else ""
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
    return markdown


# =============================================================================================
# Entry points
# =============================================================================================
@dataclass
class Report:
    """What :func:`derive_report` derived (and :func:`dabench.report.build_report` wrote)."""

    runs: Runs
    summary: pd.DataFrame
    summary_markdown: str
    tables: list[Table]
    table_paths: list[Path] = field(default_factory=list)
    #: Filled by :func:`dabench.report.build_report` (the engine draws nothing).
    figure_paths: list[Path] = field(default_factory=list)
    html_path: Path | None = None
    #: What the tables and figures could not show, and why (missing variants, metrics, sizes).
    missing: list[str] = field(default_factory=list)
    #: This run beside the reference results (None when not compared: see ``reference_skipped``).
    reference: Comparison | None = None
    #: Why the run was not compared with the reference (None when it was).
    reference_skipped: str | None = None

    def table(self, name: str) -> Table:
        return next(t for t in self.tables if t.name == name)


def with_full_labels(table: Table, labels: dict[str, str]) -> Table:
    """``table`` with a ``method_label`` column (the full label, CSV only) and its label footnote.

    ``labels``: short label -> full label (:attr:`Runs.labels`); rows such as ``all methods`` get none.
    """
    if "method" not in table.frame.columns:
        return table
    if "method_label" not in table.frame.columns:
        position = list(table.frame.columns).index("method") + 1
        table.frame.insert(position, "method_label", [labels.get(m) for m in table.frame["method"]])
    shown = sorted({m for m in table.frame["method"] if isinstance(m, str)})
    table.labels = {m: labels[m] for m in shown if m in labels and labels[m] != m}
    return table


def derive_tables(runs: Runs) -> list[Table]:
    """The speed-up (measured; at scale), metric, rank, health, paper-agreement, interval, sparsity, model
    and cost tables."""
    values = metric_values(runs)
    tables = [
        speedup_table(runs),
        speedup_at_scale_table(runs),
        metric_table(runs, values),
        rank_table(runs, values),
        health_table(runs),
        paper_agreement_table(runs),
        intervals_table(runs, values),
        sparsity_table(runs),
        models_table(runs),
        cost_table(runs),
    ]
    return [with_full_labels(table, runs.labels) for table in tables]


def _records_dir(results_dir: Path) -> Path:
    records_dir = results_dir / "records"
    if not records_dir.is_dir():
        raise FileNotFoundError(
            f"no records under {records_dir}; run `dabench run ...` or `./run_all.sh` first"
        )
    return records_dir


def derive_report(
    results_dir: str | Path,
    *,
    reference_dir: str | Path | None = None,
    compare_reference: bool = True,
) -> Report:
    """Derive every table from the records under ``<results_dir>/records``; write nothing.

    Parameters
    ----------
    results_dir:
        Folder holding ``records/``.
    reference_dir:
        The reference results this run is set beside (every record under it, recursively; default
        :func:`harness.reference_comparison.default_reference_dir`, ``<project>/results/reference``);
        nothing is compared when ``results_dir`` lies inside it. See
        :mod:`harness.reference_comparison` (the ``vs_reference`` table).
    compare_reference:
        False: no comparison with the reference.

    Raises
    ------
    FileNotFoundError
        When there is no ``records/`` folder or no successful record in it.
    """
    import pandas as pd

    results_dir = Path(results_dir)
    runs = load_runs(_records_dir(results_dir))
    if runs.empty:
        raise FileNotFoundError(f"no successful records under {results_dir / 'records'}")
    summary = summary_table(pd.DataFrame(_summary_rows(runs)))
    report = Report(runs, summary, _summary_markdown(summary), derive_tables(runs))
    if runs.unusable_metrics:
        run_id, metric = runs.unusable_metrics[0]
        report.missing.append(
            f"{len(runs.unusable_metrics)} metric value(s) marked ok but not a finite number are not shown, "
            f"e.g. {metric} of record {run_id} (rerun it with --force)."
        )
    for path, reason in runs.unreadable:
        report.missing.append(
            f"unreadable record {path} is not shown ({reason}); the next run of its grid computes it again."
        )
    for rec in runs.failed:
        report.missing.append(f"failed run, not shown: {failure_line(rec)} (rerun it with --retry-failed)")
    _compare_with_reference(report, results_dir, reference_dir, compare_reference)
    for table in report.tables:
        report.missing += table.missing
    return report


def write_tables(report: Report, out_dir: str | Path) -> list[Path]:
    """Write the summary and every table of ``report`` (CSV, Markdown, LaTeX) under ``out_dir``.

    Returns the paths written (``summary.csv``, ``summary.md``, ``summary.tex`` first), also added to
    ``report.table_paths``.
    """
    from pandas.api.types import is_numeric_dtype

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = report.summary
    csv_path, md_path, tex_path = (out / f"summary.{ext}" for ext in ("csv", "md", "tex"))
    summary.to_csv(csv_path, index=False)
    md_path.write_text(report.summary_markdown + "\n")
    summary_text = display_frame(summary)
    tex_path.write_text(
        "% All runs, mean over seeds (dabench report; needs \\usepackage{booktabs})\n"
        + latex_tabular(summary_text, [is_numeric_dtype(summary[c]) for c in summary.columns])
        + "\n"
    )
    paths = [csv_path, md_path, tex_path]
    for table in report.tables:
        paths += write_table(table, out)
    report.table_paths += paths
    return paths


def _compare_with_reference(
    report: Report, results_dir: Path, reference_dir: str | Path | None, enabled: bool
) -> None:
    """Fill ``report.reference`` (and its table) or say why there is no comparison."""
    from harness import reference_comparison

    reference = (
        Path(reference_dir) if reference_dir is not None else reference_comparison.default_reference_dir()
    )
    if not enabled:
        report.reference_skipped = "not compared with the reference (--no-reference)"
        return
    if reference_comparison.is_inside(results_dir, reference):
        report.reference_skipped = f"not compared: these results lie inside the reference folder {reference}"
        return
    comparison = reference_comparison.compare(report.runs, reference)
    report.reference = comparison
    if comparison.note:
        report.missing.append(comparison.note)
    if comparison.table is not None:
        report.tables.append(with_full_labels(comparison.table, report.runs.labels))


def write_report(results_dir: str | Path, out_dir: str | Path | None = None) -> tuple[Path, Path, str]:
    """Write every table (``summary``, ``speedup``, ``metrics``, ``ranks``, ``sparsity``, ``models``; CSV,
    Markdown, LaTeX) under ``out_dir`` (default ``<results>/tables``), no figures.

    Returns the paths of ``summary.csv`` and ``summary.md`` and the summary's Markdown.
    """
    results_dir = Path(results_dir)
    report = derive_report(results_dir)
    write_tables(report, Path(out_dir) if out_dir is not None else results_dir / "tables")
    return report.table_paths[0], report.table_paths[1], report.summary_markdown
