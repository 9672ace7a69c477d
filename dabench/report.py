"""``dabench report``: the engine's tables, then the figures and the HTML page.

:func:`build_report` asks the engine for every table (:func:`harness.report.derive_report`, which
also sets this run beside the reference), writes them (:func:`harness.report.write_tables`), draws
the figures from those same runs and tables (:func:`paper_figures.draw_all`) and writes the page
(:func:`dabench.html_report.write_html`). The engine imports nothing from here.
"""

from __future__ import annotations

from pathlib import Path

from harness.report import Report, derive_report, write_tables


def build_report(
    results_dir: str | Path,
    tables_dir: str | Path | None = None,
    *,
    figures_dir: str | Path | None = None,
    html_path: str | Path | None = None,
    figures: bool = True,
    html: bool = True,
    reference_dir: str | Path | None = None,
    compare_reference: bool = True,
) -> Report:
    """Derive every table from the records; write them, the figures and the HTML page.

    Parameters
    ----------
    results_dir:
        Folder holding ``records/``.
    tables_dir, figures_dir, html_path:
        Outputs (defaults ``<results>/tables``, ``<results>/figures``, ``<results>/report.html``).
    figures, html:
        False skips the figures or the HTML page (which then shows the tables only).
    reference_dir, compare_reference:
        The reference results this run is set beside, and whether to (see
        :func:`harness.report.derive_report`).

    Raises
    ------
    FileNotFoundError
        When there is no ``records/`` folder or no successful record in it.
    """
    results_dir = Path(results_dir)
    report = derive_report(results_dir, reference_dir=reference_dir, compare_reference=compare_reference)
    write_tables(report, Path(tables_dir) if tables_dir is not None else results_dir / "tables")
    if figures:
        from paper_figures import draw_all

        out = Path(figures_dir) if figures_dir is not None else results_dir / "figures"
        drawn = draw_all(report.runs, out, report.tables)
        report.figure_paths = drawn.paths
        report.missing += drawn.notes
    if html:
        from dabench.html_report import write_html

        target = Path(html_path) if html_path is not None else results_dir / "report.html"
        report.html_path = write_html(report, target)
    return report
