"""Writing a :class:`~harness.runs.Table`: CSV (numbers unrounded), Markdown and LaTeX (text).

:mod:`harness.report` derives the tables; this module only renders them, and
:mod:`dabench.html_report` uses :func:`label_footnote` for the HTML page.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from harness.runs import Table


def label_footnote(labels: dict[str, str]) -> str:
    """One line naming the full label of every short one in ``labels`` (empty when there is none)."""
    if not labels:
        return ""
    pairs = "; ".join(f"{short} = {full}" for short, full in labels.items())
    return f"Method labels (short = full; the CSV's method_label column): {pairs}."


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "↑": r"$\uparrow$",
    "↓": r"$\downarrow$",
    "—": "--",
}
_LATEX_PATTERN = re.compile("|".join(re.escape(k) for k in _LATEX_SPECIAL))


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped and the arrows and dash spelled for LaTeX."""
    return _LATEX_PATTERN.sub(lambda m: _LATEX_SPECIAL[m.group(0)], text)


def latex_tabular(display: pd.DataFrame, numeric: Sequence[bool] | None = None) -> str:
    """A booktabs ``tabular`` of a text table, numeric columns right-aligned.

    Needs ``\\usepackage{booktabs}`` in the document.
    """
    numeric = list(numeric) if numeric is not None else [False] * len(display.columns)
    spec = "".join("r" if n else "l" for n in numeric)
    lines = [f"\\begin{{tabular}}{{{spec}}}", "\\toprule"]
    lines.append(" & ".join(latex_escape(str(c)) for c in display.columns) + r" \\")
    lines.append("\\midrule")
    for row in display.itertuples(index=False):
        lines.append(" & ".join(latex_escape(str(v)) for v in row) + r" \\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines)


def _numeric_columns(table: Table, columns: Sequence[str]) -> list[bool]:
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    out = []
    for column in columns:
        series = table.frame[column] if column in table.frame.columns else None
        out.append(series is not None and is_numeric_dtype(series) and not is_bool_dtype(series))
    return out


def table_markdown(table: Table) -> str:
    parts = [f"## {table.title}", "", table.definition, ""]
    for setting, part in table.per_setting():
        parts += [f"### {setting}", "", part.to_markdown(index=False), ""]
    if table.frame.empty:
        parts += ["(no rows: the records hold nothing this table needs)", ""]
    if table.notes or table.missing:
        parts += ["Notes:", "", *[f"- {note}" for note in table.missing + table.notes], ""]
    if table.labels:
        parts += [label_footnote(table.labels), ""]
    return "\n".join(parts)


def table_latex(table: Table) -> str:
    parts = [f"% {table.title} (dabench report; needs \\usepackage{{booktabs}})"]
    for setting, part in table.per_setting():
        caption = latex_escape(f"{table.title}: {setting}")
        parts += [
            "\\begin{table}[ht]",
            "\\centering",
            "\\small",
            f"\\caption{{{caption}}}",
            latex_tabular(part, _numeric_columns(table, part.columns)),
            "\\end{table}",
            "",
        ]
    return "\n".join(parts)


def write_table(table: Table, out_dir: Path) -> list[Path]:
    """``<name>.csv`` (numbers), ``<name>.md`` and ``<name>.tex`` (text) under ``out_dir``."""
    paths = [out_dir / f"{table.name}.{ext}" for ext in ("csv", "md", "tex")]
    table.frame.to_csv(paths[0], index=False)
    paths[1].write_text(table_markdown(table) + "\n")
    paths[2].write_text(table_latex(table) + "\n")
    return paths
