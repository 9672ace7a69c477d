"""Mislabel detection curves (metric 4 of DualXDA, Yolcu et al., arXiv 2402.12118).

Training points ranked by self-influence, descending: the share of flipped labels found (y)
against the share of the training set inspected (x), one line per method, from the
``mislabel_detection`` details of ``corrupt``-variant records (``details["curve"]``; the mean
curve over seeds where several share the same x). The diagonal is the expected curve of a random
ordering; the legend gives each method's score (the normalised area, 1 = all flipped labels first).
One figure per setting with such records.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from harness.paper_numbers import DATASET_NAMES, REFERENCE_METHOD
from paper_figures._common import Drawn, colours, new_figure, save, slug

if TYPE_CHECKING:
    from harness.runs import Runs

METRIC = "mislabel_detection"


def curves(runs: Runs) -> dict[str, dict[str, tuple[list[float], list[float], float, bool]]]:
    """``{setting: {method: (x, y, score, is_dualda)}}`` from corrupt-variant records."""
    out: dict[str, dict[str, tuple[list[float], list[float], float, bool]]] = {}
    if runs.empty:
        return out
    corrupt = runs.frame[runs.frame["variant"] == "corrupt"]
    for (setting, method), group in corrupt.groupby(["setting", "method"], sort=True):
        found = [
            (run["details"][METRIC]["curve"], run["metrics"][METRIC])
            for _, run in group.iterrows()
            if METRIC in run["details"] and "curve" in run["details"][METRIC]
        ]
        if not found:
            continue
        x = list(found[0][0]["x"])
        same = [c for c, _ in found if list(c["x"]) == x]
        y = [sum(values) / len(same) for values in zip(*(c["y"] for c in same), strict=True)]
        score = sum(s for _, s in found) / len(found)
        out.setdefault(setting, {})[method] = (x, y, score, group["method_name"].iloc[0] == REFERENCE_METHOD)
    return out


def draw(runs: Runs, out_dir: Path) -> Drawn:
    """``mislabel_curves_<setting>.png/.pdf`` per setting with corrupt-variant curves."""
    drawn = Drawn()
    found = curves(runs)
    if not found:
        drawn.notes.append("mislabel curves: not drawn (no corrupt-variant record with mislabel_detection).")
    for setting, lines in sorted(found.items()):
        task = runs.frame.loc[runs.frame["setting"] == setting, "task"].iloc[0]
        colour = colours(lines)
        fig = new_figure(6.4, 5.0, left=0.11, right=0.97, bottom=0.11, top=0.92)
        ax = fig.add_subplot()
        ax.plot([0, 1], [0, 1], "--", color="grey", label="random ordering (expected)")
        ranked = sorted(lines.items(), key=lambda item: -item[1][2])
        for method, (x, y, score, is_ref) in ranked:
            ax.plot(
                x,
                y,
                color=colour[method],
                linewidth=2.2 if is_ref else 1.2,
                label=f"{method} (score {score:.3f})",
            )
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_xlabel("share of the training set inspected (by self-influence, descending)")
        ax.set_ylabel("share of flipped labels found")
        ax.set_title(f"{DATASET_NAMES.get(task, task)}: mislabel detection ({setting}, corrupt)", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        drawn.paths += save(fig, out_dir / f"mislabel_curves_{slug(setting)}")
    return drawn
