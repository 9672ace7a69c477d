"""Critical-difference diagram of average ranks, after Demsar (2006), JMLR 7:1-30, Figure 1.

A rank axis 1..k (1 = best, on the left) with each method's average rank marked and named: the better
half of the methods labelled on the left, the other half on the right. Above the axis a bar as long as
the Nemenyi critical difference ("CD = x.xx"); below it a thick line joins each clique of methods whose
average ranks differ by less than CD (not significantly different). The title carries the Friedman and
Iman-Davenport p-values. The numbers come from :func:`harness.stats.friedman_nemenyi`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from paper_figures._common import new_figure, save

if TYPE_CHECKING:
    from harness.stats import FriedmanResult

ROW = 0.28  # vertical distance between two method labels (data units = inches)
CLIQUE_ROW = 0.12  # vertical distance between two clique lines
AXIS_WIDTH = 4.0  # inches from rank 1 to rank k


def _layout(k: int, n_cliques: int) -> tuple[np.ndarray, float]:
    """The y of each label row (best half and worse half alike) and the figure's bottom y."""
    first = -(0.22 + CLIQUE_ROW * n_cliques + 0.12)
    rows = first - ROW * np.arange(math.ceil(k / 2))
    return rows, float(rows[-1] - 0.2)


def plot_critical_difference(result: FriedmanResult, out_stem: Path, title: str) -> list[Path]:
    """Draw a Demsar-style critical-difference diagram.

    Parameters
    ----------
    result:
        Average ranks, critical difference, cliques and p-values of ``k`` methods.
    out_stem:
        Path without extension; ``<out_stem>.png`` and ``<out_stem>.pdf`` are written (the folder
        is created).
    title:
        First line of the title; the second gives N, the Friedman and Iman-Davenport p-values and
        alpha.

    Returns
    -------
    list[Path]
        The PNG and PDF paths.
    """
    ranks = np.asarray(result.avg_ranks, dtype=np.float64)
    k = len(result.methods)
    if ranks.shape != (k,) or k < 2:
        raise ValueError(f"need >= 2 methods with one average rank each, got {k} and {ranks.shape}")
    order = np.argsort(ranks, kind="stable")
    rows, bottom = _layout(k, len(result.cliques))
    top = 0.75
    height = top - bottom
    # room for the longest label on each side (about 0.075 inch per character at 9 pt)
    longest = max(len(f"{m} ({r:.2f})") for m, r in zip(result.methods, ranks, strict=True))
    side = max(2.0, 0.075 * longest + 0.45)
    width = AXIS_WIDTH + 2 * side
    fig = new_figure(
        width,
        height + 0.75,
        left=side / width,
        right=1 - side / width,
        bottom=0.02,
        top=height / (height + 0.75),
    )
    ax = fig.add_subplot()
    ax.set_xlim(1.0, float(k))
    ax.set_ylim(bottom, top)
    ax.axis("off")

    # the rank axis with ticks and labels above it
    ax.plot([1, k], [0, 0], color="black", lw=1.0, clip_on=False)
    for tick in range(1, k + 1):
        ax.plot([tick, tick], [0, 0.07], color="black", lw=1.0, clip_on=False)
        ax.text(tick, 0.1, str(tick), ha="center", va="bottom", fontsize=9)
    for tick in np.arange(1.5, k, 1.0):
        ax.plot([tick, tick], [0, 0.035], color="black", lw=0.6, clip_on=False)

    # the critical difference, from rank 1
    cd_y = 0.45
    cd_end = 1.0 + result.cd
    ax.plot([1.0, cd_end], [cd_y, cd_y], color="black", lw=1.2, clip_on=False)
    for x in (1.0, cd_end):
        ax.plot([x, x], [cd_y - 0.04, cd_y + 0.04], color="black", lw=1.2, clip_on=False)
    ax.text((1.0 + cd_end) / 2, cd_y + 0.06, f"CD = {result.cd:.2f}", ha="center", va="bottom", fontsize=9)

    # each method: a line down from its rank, then out to its label
    half = math.ceil(k / 2)
    for pos, j in enumerate(order):
        left = pos < half
        y = rows[pos] if left else rows[k - 1 - pos]
        x_edge = 1.0 - 0.03 * (k - 1) if left else k + 0.03 * (k - 1)
        r = ranks[j]
        ax.plot([r, r, x_edge], [0, y, y], color="black", lw=0.8, clip_on=False)
        ax.plot([r], [0], marker="o", ms=3.5, color="black", clip_on=False)
        ax.text(
            x_edge + (-0.01 if left else 0.01) * (k - 1),
            y,
            f"{result.methods[j]} ({r:.2f})",
            ha="right" if left else "left",
            va="center",
            fontsize=9,
        )

    # cliques: methods not significantly different
    name_rank = dict(zip(result.methods, ranks.tolist(), strict=True))
    for c, clique in enumerate(result.cliques):
        lo = min(name_rank[m] for m in clique)
        hi = max(name_rank[m] for m in clique)
        y = -(0.22 + CLIQUE_ROW * c)
        ax.plot([lo - 0.03, hi + 0.03], [y, y], color="black", lw=3.5, solid_capstyle="butt", clip_on=False)

    ax.set_title(
        f"{title}\nN = {result.n_blocks} blocks, Friedman p = {result.p_chi2:.3g}, "
        f"Iman-Davenport p = {result.p_f:.3g}; Nemenyi alpha = {result.alpha:g}",
        fontsize=9,
    )
    return save(fig, out_stem)
