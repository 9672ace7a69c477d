"""Tables derived from run records alone (:func:`derive_report`), written by :func:`write_tables`.

The engine half of ``dabench report``: :func:`dabench.report.build_report` calls these and adds the
figures and the HTML page. Records are read by :func:`harness.runs.load_runs`.

Every number here comes from the records under ``<results>/records`` except the paper's Figure-1 numbers
set beside them (:mod:`harness.paper_numbers`). Written under ``<results>/tables/`` as CSV (one long
table, numbers unrounded), Markdown and LaTeX (one table per setting, numbers to 4 significant digits):

``summary``
    One row per (task, variant, n_train, n_test, method label, config hash): metric values and
    costs averaged over seeds (``n_seeds`` says over how many).
``speedup``
    Cost of explaining 2,000 test points (the paper's count), ``std`` variant; see :func:`speedup_table`.
``metrics``
    Method x metric, each metric from the variant the paper computes it on; see :func:`metric_table`.
``ranks``
    Per-metric ranks and their average over the paper's seven metrics; see :func:`rank_table`.
``sparsity``
    l0_eps, Hoyer and the support size per method (per DualDA C); see :func:`sparsity_table`.
``models``
    The trained model of each variant: epochs, steps, final training loss, train / validation / test
    accuracy and (corrupt) the share of flipped labels it fits; see :func:`models_table`.

A *setting* is one (task, training-set size, test-set size, task configuration apart from the
variant): the four variants of one setting are joined by method label. Metric values and times are means
over seeds. Missing variants, metrics or methods leave cells empty and are listed in the notes,
never an error.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import evidence
from harness.evidence import RANDOM_METHOD
from harness.paper_numbers import (
    DATASET_NAMES,
    METRIC_VARIANT,
    PAPER_METRICS,
    PAPER_N_TEST,
    REFERENCE_C,
    REFERENCE_METHOD,
    figure1,
    format_c,
)
from harness.runs import (
    MISSING,
    SETTING_COLUMNS,
    STD,
    Runs,
    Table,
    as_number,
    display_frame,
    failure_line,
    fmt,
    load_runs,
    metric_order,
    setting_columns,
    settings_of,
)
from harness.table_format import label_footnote, latex_tabular, write_table

if TYPE_CHECKING:
    import pandas as pd

    from harness.reference_comparison import Comparison

log = logging.getLogger(__name__)

ARROWS = {"higher": "↑", "lower": "↓"}
#: Values equal to this many significant digits tie in a ranking (averaging over seeds adds noise).
RANK_DIGITS = 12


def _reference_row(rows: pd.DataFrame) -> pd.Series | None:
    """DualDA at C = :data:`REFERENCE_C` (its default label first), else the DualDA C nearest in log10."""
    candidates = rows[(rows["method_name"] == REFERENCE_METHOD) & rows["C"].notna() & (rows["C"] > 0)]
    if candidates.empty:
        return None
    distance = (candidates["C"].map(math.log10) - math.log10(REFERENCE_C)).abs()
    plain = candidates["method_label"] != REFERENCE_METHOD  # False (sorts first) for the default label
    order = candidates.assign(_d=distance, _plain=plain).sort_values(["_d", "_plain", "method"])
    return order.iloc[0]


def speedup_table(runs: Runs) -> Table:
    """Cost of explaining the paper's 2,000 test points, and DualDA's speed-up, per setting (``std``).

    Per method label (means over seeds):

    - ``cache_s``: the cold fit (cache miss: everything a method computes once before explaining);
      where no record of the row measured a cold fit (the cache was already filled), the warm fit,
      and ``cache_from`` says ``warm``;
    - ``explain_ms_per_point``: the median over timed passes of the per-point explanation time;
      ``explain_batch``: test points per ``explain()`` call (the paper's batch where the method
      prescribes one, e.g. LiSSA 5 and EK-FAC 20, whose cost is amortised over a batch);
    - one-off process costs (compiling kernels, importing a library) are measured apart, before the
      timed fit, and never counted: the notes give the largest warm-up per method;
    - ``total_2000_s = cache_s + explain_ms_per_point * 2000 / 1000``; ``extrapolated`` is true when
      the run explained fewer than 2,000 points (the total then scales the measured per-point time)
      and ``n_explained`` says how many it explained;
    - ``speedup = total_2000_s / total_2000_s of the reference``: how many times DualDA is faster.
      The reference is DualDA at C = 1e-3 (the paper's middle C and the method's default; with
      several such rows the default label), else the DualDA row whose C is nearest to 1e-3 in
      log10; ``reference`` names it. Without DualDA rows the column is empty;
    - ``paper_total_s``: the paper's Figure-1 total for the same method and dataset, and
      ``paper_speedup`` = that / the paper's total of DualDA at the reference's C.
    """
    import pandas as pd

    columns = [
        "method",
        "paper_name",
        "n_seeds",
        "cache_s",
        "cache_from",
        "explain_ms_per_point",
        "explain_batch",
        "n_explained",
        "extrapolated",
        "total_2000_s",
        "reference",
        "speedup",
        "paper_total_s",
        "paper_speedup",
    ]
    notes: list[tuple[str, str]] = []
    missing: list[tuple[str, str]] = []
    rows: list[dict[str, Any]] = []
    frame = runs.frame
    std = frame[frame["variant"] == STD] if not frame.empty else frame
    for setting in settings_of(frame):
        part = std[std["setting"] == setting]
        if part.empty:
            missing.append((setting, "no std-variant records, so no speed-up rows"))
            continue
        task = part["task"].iloc[0]
        table_rows = []
        for method, group in part.groupby("method", sort=True):
            cold = group["fit_cold_s"].dropna()
            cache_s = float(cold.mean()) if len(cold) else float(group["fit_warm_s"].mean())
            per_point_s = float(group["explain_s_per_point"].mean())
            n_explained = int(group["n_explained"].min())
            table_rows.append(
                {
                    **setting_columns(part.iloc[0]),
                    "method": method,
                    "method_label": group["method_label"].iloc[0],
                    "paper_name": group["paper_name"].iloc[0],
                    "method_name": group["method_name"].iloc[0],
                    "C": group["C"].iloc[0],
                    "n_seeds": len(group),
                    "cache_s": cache_s,
                    "cache_from": "cold" if len(cold) else "warm",
                    "explain_ms_per_point": 1e3 * per_point_s,
                    "explain_batch": group["explain_batch"].max(),
                    "warmup_s": group["warmup_s"].max(),
                    "n_explained": n_explained,
                    "extrapolated": bool(group["explain_extrapolated"].any() or n_explained < PAPER_N_TEST),
                    "total_2000_s": cache_s + per_point_s * PAPER_N_TEST,
                }
            )
        block = pd.DataFrame(table_rows)
        ref = _reference_row(block)
        paper_ref = figure1(task, ref["paper_name"]) if ref is not None else None
        if ref is None:
            missing.append((setting, f"no std-variant {REFERENCE_METHOD} record, so no speed-up factor"))
        elif ref["C"] != REFERENCE_C:
            notes.append(
                (
                    setting,
                    f"no {REFERENCE_METHOD} run at C={format_c(REFERENCE_C)}; the reference is "
                    f"{ref['method']} (C={format_c(ref['C'])})",
                )
            )
        for row in table_rows:
            paper = figure1(task, row["paper_name"])
            row["reference"] = ref["method"] if ref is not None else None
            row["speedup"] = row["total_2000_s"] / ref["total_2000_s"] if ref is not None else math.nan
            row["paper_total_s"] = paper[0] if paper else math.nan
            row["paper_speedup"] = paper[0] / paper_ref[0] if paper and paper_ref else math.nan
            del row["method_name"], row["C"], row["method_label"]
        warm = sorted(
            ((row.pop("warmup_s"), row["method"]) for row in table_rows), key=lambda item: -as_number(item[0])
        )
        paid = [f"{method} {seconds:.2g} s" for seconds, method in warm if as_number(seconds) >= 0.01]
        if paid:
            notes.append(
                (
                    setting,
                    "one-off process costs, measured before the timed fit and not counted in cache_s "
                    "(warm-up: kernel compilation, library imports; largest per method): " + ", ".join(paid),
                )
            )
        if task not in DATASET_NAMES:
            missing.append((setting, f"the paper has no numbers for task {task!r}"))
        if any(r["cache_from"] == "warm" for r in table_rows):
            notes.append(
                (
                    setting,
                    "cache_from = warm: the cache was already filled when the row's runs started (an "
                    "earlier run, or another config sharing the same inputs), so the warm fit is shown",
                )
            )
        if any(r["extrapolated"] for r in table_rows):
            notes.append(
                (
                    setting,
                    f"totals marked * are extrapolated: the run explained fewer than {PAPER_N_TEST:,} test "
                    f"points (n_explained), so the total is the cache time plus the measured per-point "
                    f"time x {PAPER_N_TEST:,}",
                )
            )
        rows += sorted(table_rows, key=lambda r: r["total_2000_s"])
    numbers = pd.DataFrame(rows, columns=[*SETTING_COLUMNS, *columns])
    display = display_frame(
        numbers, {"n_seeds": "int", "n_explained": "int", "n_train": "int", "explain_batch": "int"}
    )
    if not numbers.empty:
        display["total_2000_s"] = [
            f"{t}*" if extra else t
            for t, extra in zip(display["total_2000_s"], numbers["extrapolated"], strict=True)
        ]
        display = display.drop(columns="extrapolated")
    return Table(
        "speedup",
        f"Cost of explaining {PAPER_N_TEST:,} test points, and DualDA's speed-up",
        numbers,
        display,
        _doc_definition(speedup_table),
        merge_notes(notes),
        merge_notes(missing),
    )


def metric_values(runs: Runs) -> pd.DataFrame:
    """Long table of metric values with their intervals: one row per (setting, method, metric).

    A metric is read from the records of the variant the paper computes it on
    (:data:`harness.paper_numbers.METRIC_VARIANT`: subclass detection from ``group``, mislabel
    detection from ``corrupt``, shortcut detection from ``mark``; every other metric from ``std``).
    ``value`` is the mean over model seeds; ``ci_low`` / ``ci_high`` its 95% bootstrap interval and
    ``resampled`` what the bootstrap resampled (:mod:`harness.evidence`); ``seed_sd``,
    ``seed_ci_low`` / ``seed_ci_high`` the spread and Student-t interval over the ``n_seeds`` seeds
    alone; ``tied_with_best`` whether the paired bootstrap cannot tell the method from the best one
    (``best``).
    """
    import pandas as pd

    columns = [
        *SETTING_COLUMNS,
        "method",
        "paper_name",
        "metric",
        "variant",
        "direction",
        "value",
        "ci_low",
        "ci_high",
        "resampled",
        "n_seeds",
        "seed_sd",
        "seed_ci_low",
        "seed_ci_high",
        "tied_with_best",
        "best",
    ]
    rows = evidence.interval_rows(runs.blocks)
    if not rows:
        return pd.DataFrame(columns=columns)
    firsts = runs.frame.drop_duplicates("setting").set_index("setting")
    for row in rows:
        first = firsts.loc[row["setting"]]
        row.update({c: first[c] for c in SETTING_COLUMNS if c != "setting"})
    long = pd.DataFrame(rows)[columns]
    return long.sort_values([*SETTING_COLUMNS, "method", "metric"], kind="stable").reset_index(drop=True)


def _methods_of(runs: Runs, setting: str) -> pd.DataFrame:
    part = runs.frame[runs.frame["setting"] == setting]
    return part.drop_duplicates("method")[["method", "paper_name"]].sort_values("method")


def _missing_metric_notes(runs: Runs, values: pd.DataFrame) -> list[str]:
    notes: list[tuple[str, str]] = []
    for setting in settings_of(runs.frame):
        part = runs.frame[runs.frame["setting"] == setting]
        variants = set(part["variant"])
        have = set(values.loc[values["setting"] == setting, "metric"]) if not values.empty else set()
        for metric in PAPER_METRICS:
            if metric in have:
                continue
            variant = METRIC_VARIANT.get(metric, STD)
            if variant not in variants:
                notes.append((setting, f"no {variant}-variant records: {metric} not shown"))
            else:
                notes.append((setting, f"no {variant}-variant record has {metric}: not shown"))
    return merge_notes(notes)


#: Marks a value (or rank) the paired bootstrap cannot tell from the best one's.
TIED = "*"


def value_with_interval(value: float, low: float, high: float, tied: bool | None = None) -> str:
    """``"0.9812 [0.9623, 0.9941]*"``: the value, its 95% interval where there is one, and :data:`TIED`."""
    text = fmt(value)
    if text == MISSING:
        return text
    if not (math.isnan(low) or math.isnan(high)):
        text += f" [{fmt(low)}, {fmt(high)}]"
    return text + (TIED if tied else "")


def metric_table(runs: Runs, values: pd.DataFrame | None = None) -> Table:
    """Method x metric per setting, each value with its 95% interval; ↑ higher / ↓ lower is better.

    Rows are method labels (the variants' records joined by label), columns the metrics: the
    paper's seven in the paper's order, then the others alphabetically. Each value is the mean
    over model seeds of the metric in the records of its variant (subclass detection: ``group``,
    mislabel detection: ``corrupt``, shortcut detection: ``mark``, the rest: ``std``), followed by
    its 95% bootstrap interval (test points resampled within seeds, and seeds; only seeds for
    mislabel detection and top-k cardinality, which have no per-point scores; none with one seed
    and no per-point scores) and a ``*`` where the paired bootstrap cannot tell the method from the
    best one (the difference's interval contains 0). The CSV has the columns ``<metric>``,
    ``<metric>_ci_low`` and ``<metric>_ci_high``; the ``intervals`` table has the rest.
    """
    import pandas as pd

    values = metric_values(runs) if values is None else values
    metrics = metric_order(values["metric"]) if not values.empty else []
    directions = (
        values.drop_duplicates("metric").set_index("metric")["direction"].to_dict() if metrics else {}
    )
    headers = {m: f"{m} {ARROWS.get(directions[m], '')}".strip() for m in metrics}
    rows, shown = [], []
    for setting in settings_of(runs.frame):
        part = values[values["setting"] == setting] if not values.empty else values
        if part.empty:
            continue
        first = runs.frame[runs.frame["setting"] == setting].iloc[0]
        for _, method in _methods_of(runs, setting).iterrows():
            mine = part[part["method"] == method["method"]].set_index("metric")
            if mine.empty:
                continue
            row = {**setting_columns(first), "method": method["method"], "paper_name": method["paper_name"]}
            text = dict(row)
            for m in metrics:
                if m in mine.index:
                    entry = mine.loc[m]
                    row.update(
                        {
                            m: float(entry["value"]),
                            f"{m}_ci_low": float(entry["ci_low"]),
                            f"{m}_ci_high": float(entry["ci_high"]),
                        }
                    )
                    text[headers[m]] = value_with_interval(
                        float(entry["value"]),
                        float(entry["ci_low"]),
                        float(entry["ci_high"]),
                        bool(entry["tied_with_best"]) if entry["tied_with_best"] is not None else None,
                    )
                else:
                    row.update({m: math.nan, f"{m}_ci_low": math.nan, f"{m}_ci_high": math.nan})
                    text[headers[m]] = MISSING
            rows.append(row)
            shown.append(text)
    value_columns = [c for m in metrics for c in (m, f"{m}_ci_low", f"{m}_ci_high")]
    numbers = pd.DataFrame(rows, columns=[*SETTING_COLUMNS, "method", "paper_name", *value_columns])
    display = pd.DataFrame(shown, columns=[*SETTING_COLUMNS, "method", "paper_name", *headers.values()])
    display = display.astype(object).where(display.notna(), MISSING)
    for column in ("n_train", "n_test"):
        display[column] = [fmt(v.item() if hasattr(v, "item") else v, "int") for v in display[column]]
    sources = ", ".join(f"{m} from {v}" for m, v in METRIC_VARIANT.items())
    return Table(
        "metrics",
        "Method x metric with 95% intervals (↑ higher is better, ↓ lower is better; * tied with the best)",
        numbers,
        display,
        _doc_definition(metric_table) + f" Variants: {sources}; every other metric from std.",
        missing=_missing_metric_notes(runs, values),
    )


def intervals_table(runs: Runs, values: pd.DataFrame | None = None) -> Table:
    """Every metric value with both its intervals, long: one row per (setting, method, metric).

    ``value`` (mean over ``n_seeds`` model seeds), ``ci_low`` / ``ci_high`` (95% two-stage
    bootstrap; ``resampled`` says what), ``seed_sd`` and ``seed_ci_low`` / ``seed_ci_high`` (the
    Student-t interval over the per-seed values alone: the model-seed noise), ``tied_with_best``
    (paired bootstrap) and ``best`` (the best method of the metric in the setting).
    """
    values = metric_values(runs) if values is None else values
    numbers = values.drop(columns=["variant"]).reset_index(drop=True)
    return Table(
        "intervals",
        "Metric values with the bootstrap and the across-seed intervals",
        numbers,
        display_frame(numbers, {"n_train": "int", "n_seeds": "int"}),
        _doc_definition(intervals_table),
    )


def _rounded(value: float) -> float:
    return float(f"{value:.{RANK_DIGITS}g}")


def rank_metric(values: pd.Series, direction: str) -> pd.Series:
    """Ranks of ``values`` (1 = best by ``direction``); equal values share the mean of their ranks."""
    return values.map(_rounded).rank(ascending=direction == "lower", method="average")


def rank_table(runs: Runs, values: pd.DataFrame | None = None) -> Table:
    """Per-metric ranks (1 = best) and the average rank over the paper's seven metrics, per setting.

    For each of the paper's metrics present in the setting, the methods with a value are ranked by
    the metric's direction; equal values (to 12 significant digits) share the mean of the ranks
    they span (1, 2.5, 2.5, 4). A method without a value for a metric is left out of that metric's
    ranking (the others are ranked among themselves) and its average is over the metrics it has:
    ``n_metrics`` says how many entered it, so averages over different counts are not directly
    comparable. ``avg_rank`` ranks among all methods of the setting; ``avg_rank_paper_methods``
    ranks among the methods of the paper's Figure 1 only (baselines such as ``random`` and the
    similarity methods left out; empty for them), which is what ``paper_avg_rank`` (Figure 1, the
    same dataset, ranks among 11 entries) compares with.

    Uncertainty: ``avg_rank_ci_low`` / ``avg_rank_ci_high`` (and the same for
    ``avg_rank_paper_methods``) are the 95% interval of the average rank over bootstrap replicates
    (every metric's values resampled as in the metrics table, the methods re-ranked in each
    replicate); ``n_tied_best`` counts the metrics on which the method is tied with the best (the
    paired bootstrap cannot tell them apart), marked ``*`` after the per-metric rank.
    """
    import pandas as pd

    values = metric_values(runs) if values is None else values
    paper_values = values[values["metric"].isin(PAPER_METRICS)] if not values.empty else values
    metrics = metric_order(paper_values["metric"]) if not paper_values.empty else []
    rank_columns = [f"rank {m}" for m in metrics]
    rows = []
    notes = []
    for setting in settings_of(runs.frame):
        part = paper_values[paper_values["setting"] == setting] if not paper_values.empty else paper_values
        if part.empty:
            continue
        first = runs.frame[runs.frame["setting"] == setting].iloc[0]
        ranks_all: dict[str, dict[str, float]] = {}
        ranks_paper: dict[str, dict[str, float]] = {}
        counts = []
        for metric in metrics:
            m = part[part["metric"] == metric].set_index("method")
            if m.empty:
                continue
            direction = m["direction"].iloc[0]
            ranks_all[metric] = rank_metric(m["value"], direction).to_dict()
            pool = m[m["paper_name"].notna()]
            ranks_paper[metric] = rank_metric(pool["value"], direction).to_dict()
            counts.append(f"{metric} {len(m)}")
        notes.append(f"{setting}: methods ranked per metric: {', '.join(counts)}.")
        blocks = runs.setting_blocks(setting)
        tied = {b.metric: b.tied for b in blocks}
        evidence_all = evidence.average_ranks(blocks)
        paper_pool = [m for b in blocks for m, n in b.paper_names.items() if n is not None]
        evidence_paper = evidence.average_ranks(blocks, methods=paper_pool) if paper_pool else None
        for _, method in _methods_of(runs, setting).iterrows():
            label = method["method"]
            mine = {mt: r[label] for mt, r in ranks_all.items() if label in r}
            if not mine:
                continue
            paper_ranks = [r[label] for r in ranks_paper.values() if label in r]
            figure = figure1(first["task"], method["paper_name"])
            row = {
                **setting_columns(first),
                "method": label,
                "paper_name": method["paper_name"],
            }
            row.update({f"rank {mt}": mine.get(mt, math.nan) for mt in metrics})
            row.update(
                {
                    "n_metrics": len(mine),
                    "avg_rank": sum(mine.values()) / len(mine),
                    "avg_rank_paper_methods": sum(paper_ranks) / len(paper_ranks)
                    if paper_ranks
                    else math.nan,
                    "paper_avg_rank": figure[1] if figure else math.nan,
                }
            )
            low, high = _rank_interval(evidence_all, label)
            low_p, high_p = _rank_interval(evidence_paper, label)
            row.update(
                {
                    "avg_rank_ci_low": low,
                    "avg_rank_ci_high": high,
                    "avg_rank_paper_methods_ci_low": low_p,
                    "avg_rank_paper_methods_ci_high": high_p,
                    "n_tied_best": sum(1 for mt in mine if tied.get(mt, {}).get(label)),
                    "_tied": {mt for mt in mine if tied.get(mt, {}).get(label)},
                }
            )
            rows.append(row)
    columns = [
        *SETTING_COLUMNS,
        "method",
        "paper_name",
        *rank_columns,
        "n_metrics",
        "n_tied_best",
        "avg_rank",
        "avg_rank_ci_low",
        "avg_rank_ci_high",
        "avg_rank_paper_methods",
        "avg_rank_paper_methods_ci_low",
        "avg_rank_paper_methods_ci_high",
        "paper_avg_rank",
    ]
    numbers = pd.DataFrame(rows, columns=[*columns, "_tied"])
    if not numbers.empty:
        numbers = numbers.sort_values(
            ["task", "n_train", "n_test", "setting", "avg_rank", "method"], kind="stable"
        )
        numbers = numbers.reset_index(drop=True)
    tied_sets = list(numbers.pop("_tied")) if not numbers.empty else []
    display = display_frame(numbers, {"n_train": "int", "n_metrics": "int", "n_tied_best": "int"})
    for i, marked in enumerate(tied_sets):
        for metric in marked:
            display.loc[i, f"rank {metric}"] += TIED
    if not numbers.empty:
        for column in ("avg_rank", "avg_rank_paper_methods"):
            display[column] = [
                value_with_interval(v, lo, hi)
                for v, lo, hi in zip(
                    numbers[column], numbers[f"{column}_ci_low"], numbers[f"{column}_ci_high"], strict=True
                )
            ]
    display = display.drop(columns=[c for c in display.columns if c.endswith(("_ci_low", "_ci_high"))])
    return Table(
        "ranks",
        "Average rank over the paper's seven metrics with 95% intervals (1 = best; * tied with the best)",
        numbers,
        display,
        _doc_definition(rank_table),
        notes,
    )


def _rank_interval(ranks: evidence.RankEvidence | None, method: str) -> tuple[float, float]:
    if ranks is None or method not in ranks.methods:
        return math.nan, math.nan
    return ranks.interval(method)


def sparsity_table(runs: Runs) -> Table:
    """Sparsity of the attributions per (setting, variant, method), means over seeds.

    ``l0_eps`` (share of training points with ``|a_i| / max|a| < 1e-6``), ``hoyer`` and
    ``exact_zero_share`` are the record's sparsity block (the ``sparsity`` metric's details where the
    block is missing), each already a mean over the explained test points; ``n_support`` and
    ``support_share`` (of the training set) are the method's own diagnostics where it reports them
    (DualDA: the support vectors, the only training points that can get a non-zero attribution).
    ``C`` is the method's regularisation where its config has one. Rows: ``std`` first.
    """
    import pandas as pd

    columns = [
        "variant",
        "method",
        "paper_name",
        "C",
        "n_seeds",
        "l0_eps",
        "hoyer",
        "exact_zero_share",
        "n_support",
        "support_share",
    ]
    rows = []
    frame = runs.frame
    for (_, variant, method), group in (
        frame.groupby(["setting", "variant", "method"]) if not frame.empty else []
    ):
        values: dict[str, list[float]] = {
            k: [] for k in ("l0_eps", "hoyer", "exact_zero_share", "n_support", "support_share")
        }
        for _, run in group.iterrows():
            block = run["sparsity"] or run["details"].get("sparsity") or {}
            for key in ("l0_eps", "hoyer", "exact_zero_share"):
                values[key].append(as_number(block.get(key)))
            diag = run["diagnostics"]
            n_support = as_number(diag.get("n_support"))
            share = as_number(diag.get("support_share"))
            if math.isnan(share) and not math.isnan(n_support):
                share = n_support / run["n_train"]
            values["n_support"].append(n_support)
            values["support_share"].append(share)
        mean = {k: _nanmean(v) for k, v in values.items()}
        if all(math.isnan(v) for v in mean.values()):
            continue
        first = group.iloc[0]
        rows.append(
            {
                **setting_columns(first),
                "variant": variant,
                "method": method,
                "paper_name": first["paper_name"],
                "C": first["C"],
                "n_seeds": len(group),
                **mean,
            }
        )
    numbers = pd.DataFrame(rows, columns=[*SETTING_COLUMNS, *columns])
    if not numbers.empty:
        numbers = numbers.assign(_std=numbers["variant"] != STD).sort_values(
            ["task", "n_train", "n_test", "setting", "_std", "variant", "method"], kind="stable"
        )
        numbers = numbers.drop(columns="_std").reset_index(drop=True)
    display = display_frame(numbers, {"n_train": "int", "n_seeds": "int", "n_support": ".6g"})
    if not numbers.empty:
        display["C"] = [format_c(c) if c == c else MISSING for c in numbers["C"]]
    return Table(
        "sparsity",
        "Sparsity of the attributions and support size",
        numbers,
        display,
        _doc_definition(sparsity_table),
        [],
    )


def models_table(runs: Runs) -> Table:
    """The model each variant's runs explain, one row per (setting, variant, seed, model key).

    From the record's ``task.model`` block: ``epochs`` (run; fewer than the maximum when training
    stopped early on the training loss), ``steps`` (optimiser steps: the counterfactual models of the
    retraining metrics get as many), ``final_loss`` (mean training loss of the last epoch),
    ``train_accuracy`` (the final model, eval mode, on the training labels it was trained on),
    ``val_accuracy``, ``test_accuracy`` (on the explained test points, against their true labels; all
    test images are watermarked in ``mark``, so it is low by design there) and, for ``corrupt``,
    ``flipped_fitted`` / ``clean_fitted``: the shares of flipped and clean training points the model
    predicts as their (possibly flipped) training label. ``n_runs``: records that used the model.
    """
    import pandas as pd

    columns = [
        "variant",
        "seed",
        "epochs",
        "steps",
        "final_loss",
        "train_accuracy",
        "val_accuracy",
        "test_accuracy",
        "flipped_fitted",
        "clean_fitted",
        "n_runs",
    ]
    rows = []
    frame = runs.frame
    if not frame.empty:
        keys = [
            (row["setting"], row["variant"], row["seed"], row["model"].get("key"))
            for _, row in frame.iterrows()
        ]
        frame = frame.assign(_model_key=keys)
        for _, group in frame.groupby("_model_key", sort=False):
            first = group.iloc[0]
            model, history = first["model"], first["model"].get("history") or {}
            losses = history.get("loss") or []
            rows.append(
                {
                    **setting_columns(first),
                    "variant": first["variant"],
                    "seed": first["seed"],
                    "epochs": as_number(history.get("epochs_run", len(losses) or math.nan)),
                    "steps": as_number(history.get("steps")),
                    "final_loss": as_number(losses[-1]) if losses else math.nan,
                    "train_accuracy": as_number(history.get("train_accuracy_final")),
                    "val_accuracy": as_number(history.get("val_accuracy")),
                    "test_accuracy": as_number(model.get("test_accuracy")),
                    "flipped_fitted": as_number(history.get("flipped_fitted")),
                    "clean_fitted": as_number(history.get("clean_fitted")),
                    "n_runs": len(group),
                }
            )
    numbers = pd.DataFrame(rows, columns=[*SETTING_COLUMNS, *columns])
    if not numbers.empty:
        order = {v: i for i, v in enumerate((STD, "group", "corrupt", "mark"))}
        numbers = numbers.assign(_v=numbers["variant"].map(lambda v: order.get(v, len(order))))
        numbers = numbers.sort_values(["task", "n_train", "n_test", "setting", "_v", "variant", "seed"])
        numbers = numbers.drop(columns="_v").reset_index(drop=True)
    display = display_frame(
        numbers,
        {
            "n_train": "int",
            "seed": "int",
            "epochs": "int",
            "steps": "int",
            "n_runs": "int",
            "final_loss": ".2g",
        },
    )
    return Table(
        "models",
        "The trained models: training length and how well they fit",
        numbers,
        display,
        _doc_definition(models_table),
    )


def health_table(runs: Runs) -> Table:
    """Where the benchmark can and cannot tell methods apart: one row per (setting, metric).

    - ``saturated``: at least half the methods' 95% intervals reach the metric's ceiling
      (``ceiling``; ``n_at_ceiling`` methods do; empty for metrics without one, e.g. the
      cross-entropies of coreset selection and data pruning);
    - ``n_random_level`` / ``random_level_methods``: the methods whose interval overlaps the random
      baseline's (they are not distinguishable from random attributions on this metric);
    - ``random_not_floor``: the random baseline's value is better than the median method's, so the
      metric, its direction or the setup is suspect before any method is;
    - ``n_tied_with_best``: methods the paired bootstrap cannot tell from the best one;
    - ``flags``: the above in words (``ok`` when none applies).
    """
    import pandas as pd

    rows = []
    firsts = runs.frame.drop_duplicates("setting").set_index("setting") if not runs.empty else pd.DataFrame()
    frame = runs.frame
    baselines = set(frame.loc[frame["method_name"] == RANDOM_METHOD, "method"]) if not runs.empty else set()
    for block in runs.blocks:
        random_label = min((m for m in block.methods if m in baselines), default="")
        row = evidence.health_row(block, random_label)
        first = firsts.loc[block.setting]
        rows.append({**{c: first[c] for c in SETTING_COLUMNS if c != "setting"}, **row})
    columns = [
        *SETTING_COLUMNS,
        "metric",
        "direction",
        "n_methods",
        "n_seeds",
        "resampled",
        "ceiling",
        "n_at_ceiling",
        "saturated",
        "random_value",
        "median_method_value",
        "n_random_level",
        "random_level_methods",
        "random_not_floor",
        "n_tied_with_best",
        "flags",
    ]
    numbers = pd.DataFrame(rows, columns=columns)
    if not numbers.empty:
        order = {m: i for i, m in enumerate(metric_order(numbers["metric"]))}
        numbers = numbers.assign(_o=numbers["metric"].map(order))
        numbers = numbers.sort_values(["task", "n_train", "n_test", "setting", "_o"], kind="stable")
        numbers = numbers.drop(columns="_o").reset_index(drop=True)
    formats = {
        c: "int"
        for c in ("n_train", "n_methods", "n_seeds", "n_at_ceiling", "n_random_level", "n_tied_with_best")
    }
    return Table(
        "metric_health",
        "Metric health: saturated metrics, random-level methods, random baseline not the floor",
        numbers,
        display_frame(numbers, formats),
        _doc_definition(health_table),
    )


def paper_agreement_table(runs: Runs) -> Table:
    """The paper's MNIST findings against ours, per MNIST setting with std records.

    First row: Spearman between our average ranks of the paper's methods (ranked among themselves)
    and the paper's Figure-1 MNIST average ranks, with the 95% interval over bootstrap replicates of
    our ranks and Spearman's p-value; reproduced when the interval lies above 0 and p < 0.05,
    contradicted when it lies below 0 and p < 0.05, inconclusive otherwise. Then the paper's
    qualitative findings: DualDA fastest of the paper's methods and LiSSA slowest by orders of
    magnitude (cold fit + 2,000 test points at the measured per-point time, per model seed:
    reproduced when it holds for every seed, contradicted for none; for LiSSA reproduced at >= 100x
    the median other method, contradicted below 10x or when another method is slower); DualDA's
    sparsity rising with C (paired bootstrap intervals of the differences between consecutive C:
    reproduced when all lie above 0, contradicted when one lies below); DualDA C=1e-3 within the
    best half on average rank (interval of its rank below / above the middle); EK-FAC, TracIn and
    Representer Points the three best-ranked (share of bootstrap replicates in which they are:
    reproduced at >= 95%, contradicted at <= 5%). Nothing here is tuned: it is a measurement.
    """
    import pandas as pd

    rows = []
    for setting in settings_of(runs.frame):
        part = runs.frame[runs.frame["setting"] == setting]
        first = part.iloc[0]
        if first["task"] != "mnist" or not (part["variant"] == STD).any():
            continue
        std_runs = part[part["variant"] == STD]
        for row in evidence.paper_agreement_rows(setting, "mnist", runs.setting_blocks(setting), std_runs):
            rows.append({**setting_columns(first), **{k: v for k, v in row.items() if k != "setting"}})
    columns = [*SETTING_COLUMNS, "finding", "paper", "measured", "value", "ci_low", "ci_high", "verdict"]
    numbers = pd.DataFrame(rows, columns=columns)
    return Table(
        "paper_agreement",
        "Agreement with the paper's MNIST findings (reproduced / contradicted / inconclusive)",
        numbers,
        display_frame(numbers, {"n_train": "int", "value": ".3g", "ci_low": ".3g", "ci_high": ".3g"}),
        _doc_definition(paper_agreement_table),
    )


def cost_table(runs: Runs) -> Table:
    """Where the run's time went: seconds per phase and method, summed over variants and seeds.

    ``model_s``: training the task models (paid by the first record of each model, the others
    load it from the cache); ``warmup_s``: one-off process costs before the timed fit; ``fit_s``:
    cold fits (warm fits where the method cache was filled); ``explain_s``: every explanation pass
    (the first over all test points, the repeats over the timed points: the median per-point time
    times the points explained); ``self_influence_s``;
    ``metrics_s``: computing the metrics, including the retraining of counterfactual models for
    LDS, coreset selection and data pruning (paid by the first method that needs a model, shared
    by the others through the cache); ``total_s`` their sum. The ``all methods`` row sums them.
    The wall time of a suite is larger by the process start, data loading and report.
    """
    import pandas as pd

    phases = ["model_s", "warmup_s", "fit_s", "explain_s", "self_influence_s", "metrics_s"]
    rows = []
    for setting in settings_of(runs.frame):
        part = runs.frame[runs.frame["setting"] == setting].copy()
        part["fit_s"] = part["fit_cold_s"].where(part["fit_cold_s"].notna(), part["fit_warm_s"])
        part["explain_s"] = part["explain_spent_s"]
        first = part.iloc[0]
        for method, group in part.groupby("method", sort=True):
            row = {**setting_columns(first), "method": method, "n_records": len(group)}
            row.update({p: float(group[p].fillna(0).sum()) for p in phases})
            row["total_s"] = sum(row[p] for p in phases)
            rows.append(row)
        total = {**setting_columns(first), "method": "all methods", "n_records": len(part)}
        total.update({p: float(part[p].fillna(0).sum()) for p in phases})
        total["total_s"] = sum(total[p] for p in phases)
        rows.append(total)
    numbers = pd.DataFrame(rows, columns=[*SETTING_COLUMNS, "method", "n_records", *phases, "total_s"])
    formats = {"n_train": "int", "n_records": "int", **{p: ".1f" for p in [*phases, "total_s"]}}
    return Table(
        "costs",
        "Cost per phase and method (seconds, summed over variants and seeds)",
        numbers,
        display_frame(numbers, formats),
        _doc_definition(cost_table),
    )


def merge_notes(notes: Sequence[tuple[str, str]]) -> list[str]:
    """``(setting, message)`` pairs as one line per message, listing its settings (first-seen order)."""
    merged: dict[str, list[str]] = {}
    for setting, message in notes:
        merged.setdefault(message, [])
        if setting not in merged[message]:
            merged[message].append(setting)
    return [f"{message} ({'; '.join(settings)})." for message, settings in merged.items()]


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _doc_definition(function: Any) -> str:
    """The docstring of a table function without its first line's indentation, for the reports."""
    lines = (function.__doc__ or "").strip().splitlines()
    body = [lines[0]] + [line[4:] if line.startswith("    ") else line for line in lines[1:]]
    return "\n".join(body)


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
    """The speed-up, metric, rank, health, paper-agreement, interval, sparsity, model and cost tables."""
    values = metric_values(runs)
    tables = [
        speedup_table(runs),
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
