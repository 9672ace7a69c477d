"""The cost tables of a report: what explaining costs, how sparse it is, what the models are.

``speedup`` (the paper's Figure 1: the cost of explaining 2,000 test points, and DualDA's speed-up),
``speedup_at_scale`` (the same at the largest training-set size, extrapolated from smaller sizes for the
methods not measured there), ``costs`` (seconds per phase), ``sparsity`` (l0_eps, Hoyer, support size)
and ``models`` (the trained model of each variant), each derived from :class:`harness.runs.Runs` alone.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from harness.paper_numbers import (
    DATASET_NAMES,
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
    doc_definition,
    merge_notes,
    nanmean,
    setting_columns,
    settings_of,
)

if TYPE_CHECKING:
    import pandas as pd


log = logging.getLogger(__name__)


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
        doc_definition(speedup_table),
        merge_notes(notes),
        merge_notes(missing),
    )


#: A method needs this many training-set sizes for its cost to be extrapolated to a larger one.
MIN_SIZES_TO_EXTRAPOLATE = 2


def fit_power_law(sizes: Sequence[float], seconds: Sequence[float]) -> tuple[float, float]:
    """``(a, b)`` of the least-squares line ``log t = a + b log n`` (``t ~ n^b``; natural logs).

    Raises
    ------
    ValueError
        Fewer than two distinct sizes, or a time that is not a positive finite number.
    """
    import numpy as np

    n, t = np.asarray(sizes, dtype=float), np.asarray(seconds, dtype=float)
    if len(set(n.tolist())) < 2:
        raise ValueError(f"a power law needs two or more distinct sizes, got {sorted(set(n.tolist()))}")
    if not (np.isfinite(t).all() and (t > 0).all() and (n > 0).all()):
        raise ValueError("a power law needs positive finite sizes and times")
    b, a = np.polyfit(np.log(n), np.log(t), 1)
    return float(a), float(b)


def speedup_at_scale_table(runs: Runs) -> Table:
    """The speed-up table at the largest training-set size of a task, extrapolated where not measured.

    Runs of one task that differ only in the training-set size (same test-set size and task options)
    form a family; its target size is the largest measured one (e.g. all 60,000 MNIST points). Per
    method label (std variant, means over seeds):

    - measured at the target size: ``cache_s`` and ``explain_ms_per_point`` as in ``speedup``;
      ``how`` says ``measured``, or ``measured, explain extrapolated`` where fewer than the
      2,000 test points were explained (``n_explained``; the total scales the time per point, as
      ``speedup`` marks with ``*``);
    - measured only at smaller sizes (at least two): each of the two is extrapolated separately along
      its own power law ``t = exp(a) n^b``, fitted by least squares in log-log over those sizes
      (``cache_exponent``, ``explain_exponent``; ``from_sizes`` lists them); ``how`` says
      ``extrapolated``. A method measured at one smaller size only is left out (noted);
    - ``total_2000_s``, ``speedup`` (against DualDA at C = 1e-3 at the target size), ``paper_total_s``
      and ``ratio_to_paper`` (ours / the paper's Figure-1 total) as in ``speedup``.

    Empty unless some family has two or more sizes: the table exists for measurements like the
    paper-scale MNIST reference, where the slowest methods cannot run at the full size here.
    """
    import pandas as pd

    columns = [
        "method",
        "paper_name",
        "how",
        "from_sizes",
        "n_explained",
        "cache_s",
        "cache_exponent",
        "explain_ms_per_point",
        "explain_exponent",
        "total_2000_s",
        "reference",
        "speedup",
        "paper_total_s",
        "ratio_to_paper",
    ]
    notes: list[tuple[str, str]] = []
    rows: list[dict[str, Any]] = []
    frame = runs.frame
    std = frame[frame["variant"] == STD] if not frame.empty else frame
    families: dict[tuple[Any, ...], pd.DataFrame] = {}
    if not std.empty:
        keys = [(k[0], k[2], k[3]) for k in std["setting_key"]]
        for key in dict.fromkeys(keys):
            families[key] = std[[k == key for k in keys]]
    for part in families.values():
        if part["n_train"].nunique() < MIN_SIZES_TO_EXTRAPOLATE:
            continue
        target = int(part["n_train"].max())
        top = part[part["n_train"] == target]
        setting, task = top["setting"].iloc[0], top["task"].iloc[0]
        block = []
        for method, group in part.groupby("method", sort=True):
            per_size = []
            for n, at in group.groupby("n_train", sort=True):
                cold = at["fit_cold_s"].dropna()
                cache_s = float(cold.mean()) if len(cold) else float(at["fit_warm_s"].mean())
                per_size.append((int(n), cache_s, float(at["explain_s_per_point"].mean())))
            largest = group[group["n_train"] == per_size[-1][0]]
            n_explained = int(largest["n_explained"].min())
            explain_extrapolated = bool(largest["explain_extrapolated"].any() or n_explained < PAPER_N_TEST)
            row = {
                **setting_columns(top.iloc[0]),
                "method": method,
                "method_label": group["method_label"].iloc[0],
                "method_name": group["method_name"].iloc[0],
                "C": group["C"].iloc[0],
                "paper_name": group["paper_name"].iloc[0],
                "from_sizes": ", ".join(f"{n:,}" for n, _, _ in per_size),
                "n_explained": n_explained,
            }
            if per_size[-1][0] == target:
                _, cache_s, per_point_s = per_size[-1]
                how = "measured, explain extrapolated" if explain_extrapolated else "measured"
                row.update(how=how, cache_exponent=math.nan, explain_exponent=math.nan)
                row["from_sizes"] = f"{target:,}"
            elif len(per_size) >= MIN_SIZES_TO_EXTRAPOLATE:
                sizes = [n for n, _, _ in per_size]
                try:
                    a_cache, b_cache = fit_power_law(sizes, [c for _, c, _ in per_size])
                    a_explain, b_explain = fit_power_law(sizes, [p for _, _, p in per_size])
                except ValueError as err:
                    notes.append((setting, f"{method}: not extrapolated ({err})"))
                    continue
                cache_s = math.exp(a_cache) * target**b_cache
                per_point_s = math.exp(a_explain) * target**b_explain
                row.update(how="extrapolated", cache_exponent=b_cache, explain_exponent=b_explain)
            else:
                notes.append(
                    (setting, f"{method}: measured at {per_size[0][0]:,} points only, so not extrapolated")
                )
                continue
            row.update(
                cache_s=cache_s,
                explain_ms_per_point=1e3 * per_point_s,
                total_2000_s=cache_s + per_point_s * PAPER_N_TEST,
            )
            block.append(row)
        if not block:
            continue
        ref = _reference_row(pd.DataFrame(block))
        for row in block:
            paper = figure1(task, row["paper_name"])
            row["reference"] = ref["method"] if ref is not None else None
            row["speedup"] = row["total_2000_s"] / ref["total_2000_s"] if ref is not None else math.nan
            row["paper_total_s"] = paper[0] if paper else math.nan
            row["ratio_to_paper"] = row["total_2000_s"] / paper[0] if paper else math.nan
            del row["method_name"], row["C"], row["method_label"]
        if any(r["how"] == "extrapolated" for r in block):
            notes.append(
                (
                    setting,
                    f"how = extrapolated: not measured at {target:,} training points here; cache time "
                    "and per-point explain time each follow their own power law fitted over from_sizes",
                )
            )
        rows += sorted(block, key=lambda r: r["total_2000_s"])
    numbers = pd.DataFrame(rows, columns=[*SETTING_COLUMNS, *columns])
    display = display_frame(numbers, {"n_train": "int"})
    missing = [] if rows else [("all settings", "no task has records at two or more training-set sizes")]
    return Table(
        "speedup_at_scale",
        f"Cost of explaining {PAPER_N_TEST:,} test points at the largest training-set size (extrapolated "
        "where not measured)",
        numbers,
        display,
        doc_definition(speedup_at_scale_table),
        merge_notes(notes),
        merge_notes(missing),
    )


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
        mean = {k: nanmean(v) for k, v in values.items()}
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
        doc_definition(sparsity_table),
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
        doc_definition(models_table),
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
        doc_definition(cost_table),
    )
