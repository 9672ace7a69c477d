"""The paper's figures, drawn from run records alone (matplotlib, PNG and PDF).

Nothing here reads a method or a task: only ``results/records`` (and, for the XDA figure, the JSON and
arrays that ``dabench xda`` writes). :func:`draw_all` draws the report's figures: runtime vs average
rank (:mod:`paper_figures.runtime_vs_rank`), sparsity vs C (:mod:`paper_figures.sparsity_vs_c`),
explanation time vs training-set size (:mod:`paper_figures.scaling`) and mislabel-detection curves
(:mod:`paper_figures.mislabel_curves`) and the critical-difference diagram of the average ranks
(:mod:`paper_figures.critical_difference`); :mod:`paper_figures.xda_figure` draws the XDA figure.
"""

# --- the report's figures (runtime vs rank, sparsity vs C, scaling, mislabel curves) -----------
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import os
    from collections.abc import Iterable

    from harness.runs import Runs, Table
    from paper_figures._common import Drawn

#: The engine's tables (:mod:`harness.report`) the figures read, by table name.
TABLES_READ = ("speedup", "ranks", "sparsity")


def draw_all(
    results: "str | os.PathLike[str] | Runs",
    out_dir: "str | os.PathLike[str]",
    tables: "Iterable[Table] | None" = None,
) -> "Drawn":
    """Draw every report figure (PNG and PDF) into ``out_dir`` from the records alone.

    Parameters
    ----------
    results:
        A results folder holding ``records/``, or records already loaded by
        :func:`harness.runs.load_runs`.
    out_dir:
        Folder of the figures (created).
    tables:
        The tables the engine derived from these runs (:func:`harness.report.derive_tables`; the
        report passes its own, so nothing is computed twice); those of :data:`TABLES_READ` not given
        are derived here.

    Returns
    -------
    Drawn
        ``paths`` of the files written and ``notes`` on what could not be drawn and why.
    """
    import logging
    from pathlib import Path

    from harness.runs import Runs, load_runs
    from paper_figures import mislabel_curves, runtime_vs_rank, scaling, sparsity_vs_c
    from paper_figures._common import Drawn

    runs = results if isinstance(results, Runs) else load_runs(Path(results) / "records")
    out = Path(out_dir)
    drawn = Drawn()
    if runs.empty:
        drawn.notes.append("figures: no successful records, nothing drawn.")
        return drawn
    given = {table.name: table for table in tables or ()}
    if any(name not in given for name in TABLES_READ):
        from harness.cost_tables import sparsity_table, speedup_table
        from harness.quality_tables import metric_values, rank_table

        values = metric_values(runs)
        derive = {
            "speedup": lambda: speedup_table(runs),
            "ranks": lambda: rank_table(runs, values),
            "sparsity": lambda: sparsity_table(runs),
        }
        given.update({name: derive[name]() for name in TABLES_READ if name not in given})
    figures = {
        "runtime vs rank": lambda: runtime_vs_rank.draw(runs, given["speedup"], given["ranks"], out),
        "sparsity vs C": lambda: sparsity_vs_c.draw(runs, given["sparsity"], out),
        "scaling": lambda: scaling.draw(runs, out),
        "mislabel curves": lambda: mislabel_curves.draw(runs, out),
        "critical difference": lambda: _critical_differences(runs, out),
    }
    for name, draw in figures.items():
        try:  # one figure that fails must not cost the report its tables and other figures
            drawn.extend(draw())
        except Exception as err:  # reported in the notes and the log
            logging.getLogger(__name__).exception("figure %s failed", name)
            drawn.notes.append(f"{name}: drawing failed ({type(err).__name__}: {err}).")
    return drawn


def _critical_differences(runs: "Runs", out: "os.PathLike[str]") -> "Drawn":
    """``critical_difference_<setting>.png/.pdf`` per setting with at least two of the paper's metrics."""
    from pathlib import Path

    from harness import evidence
    from harness.runs import settings_of
    from paper_figures._common import Drawn, slug
    from paper_figures.critical_difference import plot_critical_difference

    drawn = Drawn()
    for setting in settings_of(runs.frame):
        cd = evidence.critical_difference(runs.setting_blocks(setting))
        if cd is None:
            drawn.notes.append(
                f"critical difference: {setting}: fewer than two methods or blocks, not drawn."
            )
            continue
        blocks = f"{len(cd.metrics)} metrics x {cd.n_seeds} seed(s)"
        title = f"{setting}: {len(cd.result.methods)} methods, blocks = {blocks}"
        drawn.paths += plot_critical_difference(
            cd.result, Path(out) / f"critical_difference_{slug(setting)}", title
        )
        if cd.dropped_metrics:
            drawn.notes.append(
                f"critical difference: {setting}: {', '.join(cd.dropped_metrics)} left out (not every method "
                "has a value for it)."
            )
    return drawn
