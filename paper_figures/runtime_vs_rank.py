"""Runtime vs average rank, in the style of Figure 1 of DualXDA (Yolcu et al., arXiv 2402.12118).

x: total runtime for 2,000 test points (cache + explanation, log scale; the report's ``speedup``
table), y: average rank over the paper's seven metrics (the ``ranks`` table; 1 = best, drawn at
the top as in the paper). One filled marker per method of this run, DualDA as large stars; the
paper's own Figure-1 points for the same methods as hollow markers of the same colour, joined
to ours by a dotted line; a vertical bar through our marker spans the 95% bootstrap interval of
our average rank (the ``ranks`` table's ``*_ci_low`` / ``*_ci_high``). Ranks are among the
paper's methods only (the paper ranks its 11 entries; baselines are left out), unless fewer than
two of them have ranks: then among all methods, as the title says. One figure per task, for the
setting with the most metric values.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from harness.paper_numbers import DATASET_NAMES, PAPER_N_TEST, REFERENCE_METHOD, figure1
from paper_figures._common import Drawn, colours, new_figure, pick_setting, save, slug

if TYPE_CHECKING:
    from harness.runs import Runs, Table


def draw(runs: Runs, speedup: Table, ranks: Table, out_dir: Path) -> Drawn:
    """``runtime_vs_rank_<setting>.png/.pdf`` per task; notes say why a task has none."""
    drawn = Drawn()
    frame, times = ranks.frame, speedup.frame
    if frame.empty or times.empty:
        drawn.notes.append(
            "runtime vs rank: not drawn (needs std-variant timings and at least one of the paper's metrics)."
        )
        return drawn
    merged = frame.merge(
        times[["setting", "method", "total_2000_s", "extrapolated"]], on=["setting", "method"]
    )
    scores = {
        setting: (part["task"].iloc[0], int(part["n_train"].iloc[0]), float(part["n_metrics"].sum()))
        for setting, part in merged.groupby("setting")
    }
    reference_labels = set(runs.frame.loc[runs.frame["method_name"] == REFERENCE_METHOD, "method"])
    for task, setting in sorted(pick_setting(scores).items()):
        part = merged[merged["setting"] == setting].sort_values("method")
        paper_pool = part["avg_rank_paper_methods"].notna().sum() >= 2
        column = "avg_rank_paper_methods" if paper_pool else "avg_rank"
        part = part[part[column].notna() & part["total_2000_s"].map(math.isfinite)]
        if part.empty:
            drawn.notes.append(f"runtime vs rank: {setting}: no method has both a total time and a rank.")
            continue
        fig = new_figure(10.0, 5.2, left=0.08, right=0.66, bottom=0.11, top=0.88)
        ax = fig.add_subplot()
        colour = colours(part["method"])
        for _, row in part.iterrows():
            is_ref = row["method"] in reference_labels
            marker, size = ("*", 260) if is_ref else ("o", 70)
            # the short label (the paper's name plus the settings that differ from the preset)
            label = row["method"] + (" (total extrapolated)" if row["extrapolated"] else "")
            ax.scatter(
                row["total_2000_s"],
                row[column],
                s=size,
                marker=marker,
                color=colour[row["method"]],
                edgecolors="black",
                linewidths=0.8 if is_ref else 0.4,
                zorder=3,
                label=label,
            )
            low, high = row.get(f"{column}_ci_low", math.nan), row.get(f"{column}_ci_high", math.nan)
            if not (math.isnan(low) or math.isnan(high)):  # the 95% interval of the average rank
                ax.plot(
                    [row["total_2000_s"]] * 2, [low, high], "-", color=colour[row["method"]], lw=1.2, zorder=2
                )
            paper = figure1(task, row["paper_name"])
            if paper is not None:
                ax.scatter(
                    *paper,
                    s=size,
                    marker=marker,
                    facecolors="none",
                    edgecolors=colour[row["method"]],
                    linewidths=1.2,
                    alpha=0.6,
                    zorder=2,
                )
                ax.plot(
                    [row["total_2000_s"], paper[0]],
                    [row[column], paper[1]],
                    ":",
                    color=colour[row["method"]],
                    alpha=0.5,
                    zorder=1,
                )
        if task in DATASET_NAMES:
            ax.scatter(
                [], [], s=70, facecolors="none", edgecolors="grey", label="hollow: the paper's Figure 1"
            )
        ax.set_xscale("log")
        ax.invert_yaxis()
        ax.set_xlabel(f"total runtime for {PAPER_N_TEST:,} test points: cache + explanations (s, log)")
        ax.set_ylabel("average rank (1 = best, at the top)")
        pool = "of the paper's methods" if paper_pool else "methods (all)"
        dataset = DATASET_NAMES.get(task, task)
        ax.set_title(
            f"{dataset}: runtime vs average rank ({setting})\nranks among the {len(part)} {pool} run here "
            "(bars: 95% intervals); the paper's among its 11 entries",
            fontsize=9,
        )
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        drawn.paths += save(fig, out_dir / f"runtime_vs_rank_{slug(setting)}")
    return drawn
