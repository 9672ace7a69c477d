"""DualDA's sparsity against its regularisation C (DualXDA, Yolcu et al., arXiv 2402.12118).

Three panels over C (log x): l0_eps (share of training points whose attribution is below 1e-6 of
the row's largest), the Hoyer measure, and the support share (support vectors / training points:
only they can get a non-zero attribution). One line per dataset variant; values from the
report's ``sparsity`` table (records' sparsity blocks and DualDA's diagnostics). One figure per
task, for the setting with the most DualDA rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from harness.paper_numbers import DATASET_NAMES, REFERENCE_METHOD
from paper_figures._common import Drawn, colours, new_figure, pick_setting, save, slug

if TYPE_CHECKING:
    from harness.runs import Runs, Table

PANELS = (
    ("l0_eps", "l0_eps (share of |a_i| < 1e-6 max|a|)"),
    ("hoyer", "Hoyer measure"),
    ("support_share", "support share (support vectors / n_train)"),
)


def draw(runs: Runs, sparsity: Table, out_dir: Path) -> Drawn:
    """``sparsity_vs_c_<setting>.png/.pdf`` per task with DualDA records."""
    drawn = Drawn()
    frame = sparsity.frame
    labels = (
        set(runs.frame.loc[runs.frame["method_name"] == REFERENCE_METHOD, "method"])
        if not runs.empty
        else set()
    )
    rows = frame[frame["method"].isin(labels) & frame["C"].notna()] if not frame.empty else frame
    if rows.empty:
        drawn.notes.append(f"sparsity vs C: not drawn (no {REFERENCE_METHOD} records with a C).")
        return drawn
    scores = {
        setting: (part["task"].iloc[0], int(part["n_train"].iloc[0]), float(len(part)))
        for setting, part in rows.groupby("setting")
    }
    for task, setting in sorted(pick_setting(scores).items()):
        part = rows[rows["setting"] == setting]
        variants = sorted(part["variant"].unique(), key=lambda v: (v != "std", v))
        colour = colours(variants)
        fig = new_figure(11.0, 3.6, left=0.06, right=0.98, bottom=0.15, top=0.8, wspace=0.25)
        axes = fig.subplots(1, len(PANELS))
        for ax, (column, title) in zip(axes, PANELS, strict=True):
            for variant in variants:
                line = part[part["variant"] == variant].groupby("C")[column].mean().dropna()
                if line.empty:
                    continue
                ax.plot(line.index, line.values, "o-", color=colour[variant], label=variant)
            ax.set_xscale("log")
            ax.set_xlabel("C (log)")
            ax.set_title(title, fontsize=9)
            ax.grid(True, alpha=0.3)
        axes[0].legend(title="variant", fontsize=8)
        fig.suptitle(f"{DATASET_NAMES.get(task, task)}: DualDA sparsity vs C ({setting})", fontsize=10)
        drawn.paths += save(fig, out_dir / f"sparsity_vs_c_{slug(setting)}")
        if part["C"].nunique() < 2:
            drawn.notes.append(f"sparsity vs C: {setting}: DualDA was run at one C only.")
    return drawn
