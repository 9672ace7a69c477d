"""How each method's cost grows with the training set: explanation and cache time vs n_train.

DualXDA (Yolcu et al., arXiv 2402.12118) claims DualDA stays fast as the training set grows. Two
log-log panels per task, from ``std``-variant records at different training-set sizes: the
explanation time per test point (median over timed passes) and the cache (cold fit; warm where
no cold fit was measured). One line per method label (DualDA drawn thicker, with stars); times at
the same size are averaged over seeds and task configurations. The legend gives each line's
growth exponent: the slope ``b`` of a least-squares line ``log t = a + b log n`` (``t ~ n^b``).
The scaling suite needs at least :data:`MIN_SIZES` sizes; with fewer, what exists is drawn and
the notes say that the suite has not been run.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from harness.paper_numbers import DATASET_NAMES, REFERENCE_METHOD
from paper_figures._common import Drawn, colours, new_figure, save

if TYPE_CHECKING:
    import pandas as pd

    from harness.runs import Runs

MIN_SIZES = 4


def growth_exponent(n: list[float], t: list[float]) -> float:
    """Slope of the least-squares line through ``(log n, log t)``; NaN with fewer than two sizes."""
    import numpy as np

    pairs = [(a, b) for a, b in zip(n, t, strict=True) if a > 0 and b > 0 and math.isfinite(b)]
    if len({a for a, _ in pairs}) < 2:
        return math.nan
    x, y = np.log([a for a, _ in pairs]), np.log([b for _, b in pairs])
    return float(np.polyfit(x, y, 1)[0])


def scaling_frame(runs: Runs) -> pd.DataFrame:
    """Per (task, method, n_train): ``explain_ms_per_point`` and ``cache_s`` (std variant, seed means)."""
    import pandas as pd

    frame = runs.frame
    if frame.empty:
        return pd.DataFrame(
            columns=["task", "method", "method_name", "n_train", "explain_ms_per_point", "cache_s"]
        )
    std = frame[frame["variant"] == "std"].copy()
    std["explain_ms_per_point"] = 1e3 * std["explain_s_per_point"]
    grouped = std.groupby(["task", "method", "n_train"], sort=True)
    out = grouped.agg(
        method_name=("method_name", "first"),
        explain_ms_per_point=("explain_ms_per_point", "mean"),
        cold=("fit_cold_s", "mean"),  # NaN-skipping: the cold fits of the group's records
        warm=("fit_warm_s", "mean"),
    )
    # Cold fits where any record of the size measured one, never averaged with another record's
    # warm (cache-hit) fit; warm only where no record of that size was cold.
    out["cache_s"] = out["cold"].where(out["cold"].notna(), out["warm"])
    return out.drop(columns=["cold", "warm"]).reset_index()


def growth_exponents(runs: Runs, column: str = "explain_ms_per_point") -> dict[tuple[str, str], float]:
    """``{(task, method): b}``, the growth exponent of ``column`` over training-set sizes (NaN: one size)."""
    table = scaling_frame(runs)
    out = {}
    for (task, method), line in table.groupby(["task", "method"], sort=True):
        line = line.dropna(subset=[column])
        out[(task, method)] = growth_exponent(list(line["n_train"]), list(line[column]))
    return out


def draw(runs: Runs, out_dir: Path) -> Drawn:
    """``scaling_<task>.png/.pdf`` per task with std records; notes when fewer than 4 sizes exist."""
    drawn = Drawn()
    table = scaling_frame(runs)
    for task, part in table.groupby("task", sort=True):
        sizes = part.groupby("method")["n_train"].nunique()
        if sizes.max() < MIN_SIZES:
            drawn.notes.append(
                f"scaling ({task}): the scaling suite has not been run: at most {sizes.max()} training-set "
                f"size(s) per method (at least {MIN_SIZES} needed); the figure shows what exists."
            )
        elif (sizes < MIN_SIZES).any():
            few = ", ".join(f"{m} ({k})" for m, k in sizes[sizes < MIN_SIZES].items())
            drawn.notes.append(f"scaling ({task}): fewer than {MIN_SIZES} training-set sizes for {few}.")
        colour = colours(part["method"])
        fig = new_figure(11.0, 7.2, left=0.08, right=0.98, bottom=0.36, top=0.93, wspace=0.28)
        axes = fig.subplots(1, 2)
        panels = (
            ("explain_ms_per_point", "explanation time per test point (ms)"),
            ("cache_s", "cache (fit) time (s)"),
        )
        for ax, (column, ylabel) in zip(axes, panels, strict=True):
            for method, line in part.groupby("method", sort=True):
                line = line.dropna(subset=[column]).sort_values("n_train")
                line = line[line[column] > 0]
                if line.empty:
                    continue
                slope = growth_exponent(list(line["n_train"]), list(line[column]))
                is_ref = line["method_name"].iloc[0] == REFERENCE_METHOD
                shown = round(slope, 2) + 0.0  # + 0.0: no "-0.00"
                # config labels are too long for a legend: keep DualDA's C, drop other configs
                name = method if method.startswith(REFERENCE_METHOD) else method.split("(")[0]
                label = f"{name} (slope {shown:.2f})" if math.isfinite(slope) else f"{name} (one size)"
                ax.plot(
                    line["n_train"],
                    line[column],
                    "*-" if is_ref else "o-",
                    color=colour[method],
                    linewidth=2.4 if is_ref else 1.2,
                    markersize=10 if is_ref else 5,
                    label=label,
                )
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("training-set size n_train (log)")
            ax.set_ylabel(ylabel + " (log)")
            ax.grid(True, alpha=0.3)
            ax.legend(
                fontsize=7,
                title="slope = growth exponent b in t ~ n^b",
                title_fontsize=7,
                loc="upper center",
                bbox_to_anchor=(0.5, -0.14),
                ncol=2,
                frameon=False,
            )
        fig.suptitle(f"{DATASET_NAMES.get(task, task)}: cost vs training-set size (std variant)", fontsize=10)
        drawn.paths += save(fig, out_dir / f"scaling_{task}")
    return drawn
