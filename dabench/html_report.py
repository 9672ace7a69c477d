"""``results/report.html``: the report's tables, figures, environment and commits in one file.

Self-contained: the style sheet is inline, the figures are embedded as base64 PNG data URIs and
the tables are HTML tables, so the page can be mailed or archived alone. Everything on it comes
from a :class:`harness.report.Report` (itself derived from the run records).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import os
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.table_format import label_footnote

if TYPE_CHECKING:
    import pandas as pd

    from harness.report import Report
    from harness.runs import Table

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.3rem; margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
h3 { font-size: 1.05rem; margin-top: 1.4rem; }
table.data { border-collapse: collapse; font-size: 0.82rem; margin: 0.5rem 0 1rem; }
table.data th, table.data td { border: 1px solid #d0d0d0; padding: 0.2rem 0.45rem; text-align: right;
                               white-space: nowrap; }
table.data th { background: #f3f3f3; }
table.data td:first-child, table.data th:first-child { text-align: left; }
.scroll { overflow-x: auto; }
.notes li { color: #7a4a00; }
figure { margin: 1rem 0 2rem; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.85rem; color: #555; }
code { background: #f5f5f5; padding: 0 0.2rem; border-radius: 3px; }
.meta { font-size: 0.85rem; color: #555; }
"""


def _text_to_html(text: str) -> str:
    """Plain docstring-like text to HTML: paragraphs, ``- `` lists, double-backquoted code."""
    blocks = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = block.splitlines()
        items: list[str] = []
        paragraph: list[str] = []
        for line in lines:
            stripped = line.strip()
            if stripped.startswith("- "):
                items.append(stripped[2:])
            elif items and line.startswith("  "):
                items[-1] += " " + stripped
            else:
                paragraph.append(stripped)
        if paragraph:
            blocks.append(f"<p>{_inline(' '.join(paragraph))}</p>")
        if items:
            blocks.append("<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in items) + "</ul>")
    return "\n".join(blocks)


def _inline(text: str) -> str:
    escaped = html.escape(text)
    return re.sub(r"``(.+?)``", r"<code>\1</code>", escaped)


def _html_table(frame: pd.DataFrame) -> str:
    return (
        '<div class="scroll">' + frame.to_html(index=False, escape=True, border=0, classes="data") + "</div>"
    )


def _table_section(table: Table, anchor: str) -> str:
    parts = [f'<h2 id="{anchor}">{html.escape(table.title)}</h2>', _text_to_html(table.definition)]
    for setting, part in table.per_setting():
        parts += [f"<h3>{html.escape(setting)}</h3>", _html_table(part)]
    if table.frame.empty:
        parts.append("<p><em>No rows: the records hold nothing this table needs.</em></p>")
    if table.notes or table.missing:
        parts.append(_notes(table.missing + table.notes))
    if table.labels:
        parts.append(f'<p class="meta">{_inline(label_footnote(table.labels))}</p>')
    return "\n".join(parts)


def _reference_section(report: Report) -> str:
    """This run beside the reference: the overall line, one line per method, then the table."""
    comparison = report.reference
    if comparison is None:
        return f"<p>{_inline(report.reference_skipped or 'not compared')}.</p>"
    if comparison.table is None:
        return f"<p>{_inline(comparison.note or 'no matched records')}</p>"
    lines = [
        f"<li><strong>{html.escape(method)}</strong> ({html.escape(setting)}): {_inline(line)}</li>"
        for setting, method, line in comparison.lines
    ]
    return (
        f"<p>Reference: <code>{html.escape(str(comparison.reference_dir))}</code>. "
        f"Overall: {_inline(comparison.overall)}.</p><ul>{''.join(lines)}</ul>"
        + _table_section(comparison.table, "vs_reference_table")
    )


def _notes(notes: list[str]) -> str:
    return '<ul class="notes">' + "".join(f"<li>{_inline(n)}</li>" for n in notes) + "</ul>"


def _figure_caption(path: Path) -> str:
    """The first paragraph of the docstring of the module that drew ``path`` (by its file name)."""
    import importlib

    for prefix, module in (
        ("runtime_vs_rank", "runtime_vs_rank"),
        ("sparsity_vs_c", "sparsity_vs_c"),
        ("scaling", "scaling"),
        ("mislabel_curves", "mislabel_curves"),
        ("critical_difference", "critical_difference"),
    ):
        if path.stem.startswith(prefix):
            doc = importlib.import_module(f"paper_figures.{module}").__doc__ or ""
            return re.split(r"\n\s*\n", doc.strip())[0].replace("\n", " ")
    return ""


def _figure_section(paths: list[Path]) -> str:
    pngs = [p for p in paths if p.suffix == ".png"]
    if not pngs:
        return "<p><em>No figures were drawn (see the notes).</em></p>"
    parts = []
    for png in pngs:
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        caption = _figure_caption(png)
        parts.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(png.stem)}">'
            f"<figcaption><strong>{html.escape(png.stem)}</strong>"
            f" (.png and .pdf in {html.escape(str(png.parent))})"
            f"{': ' + _inline(caption) if caption else ''}</figcaption></figure>"
        )
    return "\n".join(parts)


ENVIRONMENT_KEYS = ("python", "platform", "torch", "device", "cpu", "gpu", "threads", "cpu_count")


def environment_frames(records: list[dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(machines, package versions, git commits) over the records, each with its record count."""
    import pandas as pd

    machines: Counter[tuple[Any, ...]] = Counter()
    packages: dict[str, Counter[str]] = {}
    commits: Counter[tuple[Any, Any]] = Counter()
    for rec in records:
        env = rec.get("environment") or {}
        machines[tuple(env.get(k) for k in ENVIRONMENT_KEYS)] += 1
        for name, version in (env.get("packages") or {}).items():
            packages.setdefault(name, Counter())[str(version) if version else "not installed"] += 1
        git = rec.get("git") or {}
        commits[(git.get("commit"), git.get("dirty"))] += 1
    machine_frame = pd.DataFrame(
        [dict(zip(ENVIRONMENT_KEYS, key, strict=True), records=n) for key, n in machines.most_common()]
    )
    package_frame = pd.DataFrame(
        [
            {
                "package": name,
                "versions (records)": ", ".join(f"{v} ({n})" for v, n in versions.most_common()),
            }
            for name, versions in sorted(packages.items())
        ]
    )
    commit_frame = pd.DataFrame(
        [
            {
                "commit": commit or "unknown",
                "dirty (uncommitted changes)": {True: "yes", False: "no"}.get(dirty, "unknown"),
                "records": n,
            }
            for (commit, dirty), n in commits.most_common()
        ]
    )
    return machine_frame, package_frame, commit_frame


def render_html(report: Report) -> str:
    """The whole page as a string."""
    from harness.runs import fmt

    runs = report.runs
    machine, packages, commits = environment_frames(runs.records)
    sections = [
        ("speedup", "Speed-up"),
        ("speedup_at_scale", "Speed-up at scale"),
        ("metrics", "Metrics"),
        ("ranks", "Ranks"),
        ("metric_health", "Metric health"),
        ("paper_agreement", "Agreement with the paper"),
        ("intervals", "Intervals"),
        ("sparsity", "Sparsity"),
        ("models", "Models"),
        ("costs", "Costs"),
    ]
    toc = '<li><a href="#vs_reference">This run vs the reference</a></li>'
    toc += "".join(f'<li><a href="#{a}">{t}</a></li>' for a, t in sections)
    toc += '<li><a href="#figures">Figures</a></li><li><a href="#summary">All runs</a></li>'
    toc += '<li><a href="#environment">Environment and commits</a></li>'
    settings = sorted(set(runs.frame["setting"])) if not runs.empty else []
    now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    summary = report.summary.drop(columns=[c for c in ("method_label",) if c in report.summary.columns])
    for column in summary.columns:
        summary[column] = [fmt(v.item() if hasattr(v, "item") else v) for v in report.summary[column]]
    body = [
        "<h1>dabench report</h1>",
        f'<p class="meta">Generated {now} from {len(runs.records)} successful record(s)'
        f" ({runs.n_failed} failed) in {len(settings)} setting(s): "
        f"{html.escape('; '.join(settings))}. Every number is derived from the run records, except the"
        " paper's Figure-1 numbers set beside them (DualXDA, Yolcu et al., arXiv 2402.12118).</p>",
        f"<ul>{toc}</ul>",
        "<h2>What is missing</h2>",
        _notes(report.missing) if report.missing else "<p>Nothing: every table and figure has data.</p>",
    ]
    body += ['<h2 id="vs_reference">This run vs the reference</h2>', _reference_section(report)]
    body += [_table_section(report.table(anchor), anchor) for anchor, _ in sections]
    body += ['<h2 id="figures">Figures</h2>', _figure_section(report.figure_paths)]
    body += [
        '<h2 id="summary">All runs (mean over seeds)</h2>',
        _html_table(summary),
        _summary_labels(report.summary),
        '<h2 id="environment">Environment and commits</h2>',
        "<h3>Machines</h3>",
        _html_table(machine),
        "<h3>Package versions</h3>",
        _html_table(packages),
        "<h3>Git commits of the records</h3>",
        _html_table(commits),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>dabench report</title><style>{STYLE}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def _summary_labels(summary: pd.DataFrame) -> str:
    if "method_label" not in summary.columns:
        return ""
    labels = dict(zip(summary["method"], summary["method_label"], strict=True))
    footnote = label_footnote({m: full for m, full in sorted(labels.items()) if m != full})
    return f'<p class="meta">{_inline(footnote)}</p>' if footnote else ""


def write_html(report: Report, path: str | os.PathLike[str]) -> Path:
    """Write :func:`render_html` to ``path`` atomically; return the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(render_html(report))
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
