"""What the report's figures share: atomic PNG + PDF output, colours, picking a task's main setting.

Figures are drawn on :class:`matplotlib.figure.Figure` objects with the Agg canvas (no pyplot, so
no global state and no display needed), with fixed margins: an automatic layout engine (constrained
or tight) lays the figure out again for every file and doubles the time ``dabench report`` takes.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FORMATS = ("png", "pdf")
PNG_DPI = 120


@dataclass
class Drawn:
    """Figures written and what the reader should know about them (e.g. data that are missing)."""

    paths: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def extend(self, other: Drawn) -> None:
        self.paths += other.paths
        self.notes += other.notes


def new_figure(width: float, height: float, **margins: float) -> Figure:
    """An Agg figure of ``width`` x ``height`` inches; ``margins`` go to ``subplots_adjust``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    fig.subplots_adjust(**{"left": 0.08, "right": 0.97, "bottom": 0.13, "top": 0.88, **margins})
    return fig


def save(fig: Figure, stem: Path) -> list[Path]:
    """Write ``<stem>.png`` and ``<stem>.pdf``, each through a temp file and ``os.replace``."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in FORMATS:
        target = stem.with_name(f"{stem.name}.{ext}")
        fd, tmp = tempfile.mkstemp(prefix=f".{stem.name}.", suffix=f".{ext}", dir=stem.parent)
        os.close(fd)
        try:
            fig.savefig(tmp, format=ext, dpi=PNG_DPI)
            os.chmod(tmp, 0o644)  # mkstemp creates 0600
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        paths.append(target)
    return paths


def colours(labels: Iterable[str]) -> dict[str, tuple[float, ...]]:
    """A stable colour per label (tab10, then tab20 for more than ten labels)."""
    from matplotlib import colormaps

    labels = sorted(set(labels))
    cmap = colormaps["tab10" if len(labels) <= 10 else "tab20"]
    return {label: cmap(i % cmap.N) for i, label in enumerate(labels)}


def pick_setting(scores: Mapping[str, tuple[str, int, float]]) -> dict[str, str]:
    """Per task, the setting with the highest score; ties go to the larger training set.

    ``scores[setting] = (task, n_train, score)``.
    """
    best: dict[str, tuple[float, int, str]] = {}
    for setting, (task, n_train, score) in scores.items():
        key = (score, n_train, setting)
        if task not in best or key > best[task]:
            best[task] = key
    return {task: key[2] for task, key in best.items()}


def slug(text: str) -> str:
    """A setting name as a file name: ``"mnist, n_train=2000, n_test=100"`` -> ``"mnist_n2000_t100"``."""
    out = text.replace(", n_train=", "_n").replace(", n_test=", "_t").replace(" [task config ", "_")
    out = out.replace("]", "")
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in out)
