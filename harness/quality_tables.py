"""The quality tables of a report: metric values with intervals, ranks, metric health, paper verdicts.

``metrics`` (method x metric, each from its paper variant, with 95% intervals and ties with the
best), ``intervals``, ``ranks`` (per-metric and average ranks with intervals), ``metric_health``
and ``paper_agreement``, each derived from :class:`harness.runs.Runs` and :mod:`harness.evidence`.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from harness import evidence
from harness.evidence import RANDOM_METHOD
from harness.paper_numbers import (
    METRIC_VARIANT,
    PAPER_METRICS,
    figure1,
)
from harness.runs import (
    ARROWS,
    MISSING,
    SETTING_COLUMNS,
    STD,
    Runs,
    Table,
    display_frame,
    doc_definition,
    fmt,
    merge_notes,
    metric_order,
    setting_columns,
    settings_of,
)

if TYPE_CHECKING:
    import pandas as pd


log = logging.getLogger(__name__)


log = logging.getLogger(__name__)


#: Values equal to this many significant digits tie in a ranking (averaging over seeds adds noise).
RANK_DIGITS = 12


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
        doc_definition(metric_table) + f" Variants: {sources}; every other metric from std.",
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
        doc_definition(intervals_table),
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
        doc_definition(rank_table),
        notes,
    )


def _rank_interval(ranks: evidence.RankEvidence | None, method: str) -> tuple[float, float]:
    if ranks is None or method not in ranks.methods:
        return math.nan, math.nan
    return ranks.interval(method)


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
        doc_definition(health_table),
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
        doc_definition(paper_agreement_table),
    )
