"""The DualXDA paper's published numbers that the report sets beside ours, and how names map.

Source: Yolcu, Weckbecker, Wiegand, Samek, Lapuschkin, "DualXDA: Towards Sparse, Efficient and
Explainable Data Attribution in Large AI Models" (arXiv 2402.12118, v3, TMLR 2025), Figure 1:
total runtime in seconds for explaining 2,000 test images on a GPU (cache/fit time included) and
the average rank over the paper's seven metrics, per dataset. The values are read off the
figure's axes (about +-10%; ../shared/reference/dualxda-paper.md, "Headline numbers"). They are
facts of the paper, not measurements of this project: every measured number of the report comes
from the run records.

Code names against the paper's: a record's ``task.name`` is the dataset key (``mnist``,
``cifar10``, ``awa2``); a record's ``method.name`` (plus ``C`` for DualDA) maps to the paper's
method name through :func:`paper_name`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

#: Display names of the paper's datasets, keyed by task name.
DATASET_NAMES: dict[str, str] = {"mnist": "MNIST", "cifar10": "CIFAR-10", "awa2": "AwA2"}

#: Figure 1 of the paper: ``FIGURE1[task][paper method name] = (runtime_s, average_rank)``,
#: runtime = total seconds for 2,000 test images, rank = average over the seven metrics among the
#: paper's 11 entries (8 methods + DualDA at three C), 1 = best.
FIGURE1: dict[str, dict[str, tuple[float, float]]] = {
    "mnist": {
        "DualDA C=1e-5": (10.5, 5.2),
        "DualDA C=1e-3": (10.6, 5.3),
        "DualDA C=1e-1": (11.0, 6.2),
        "Representer Points": (19.0, 4.0),
        "TRAK": (270.0, 6.6),
        "GradDot": (160.0, 6.8),
        "GradCos": (120.0, 6.6),
        "TracIn": (5_800.0, 4.1),
        "EK-FAC": (1_800.0, 4.55),
        "Arnoldi": (25_000.0, 5.8),
        "LiSSA": (1.06e6, 7.4),
    },
    "cifar10": {
        "DualDA C=1e-5": (15.0, 5.0),
        "DualDA C=1e-3": (16.0, 5.2),
        "DualDA C=1e-1": (19.0, 4.2),
        "Representer Points": (33.0, 5.6),
        "TRAK": (415.0, 6.9),
        "GradDot": (840.0, 8.8),
        "GradCos": (75_000.0, 9.4),
        "TracIn": (17_000.0, 4.3),
        "EK-FAC": (5_700.0, 3.6),
        "Arnoldi": (157_000.0, 6.0),
        "LiSSA": (1.97e6, 6.4),
    },
    "awa2": {
        "DualDA C=1e-5": (190.0, 4.4),
        "DualDA C=1e-3": (165.0, 4.1),
        "DualDA C=1e-1": (190.0, 4.7),
        "Representer Points": (520.0, 4.55),
        "TRAK": (1_200.0, 6.6),
        "GradDot": (1_250.0, 8.55),
        "GradCos": (87_000.0, 7.9),
        "TracIn": (10_500.0, 5.4),
        "EK-FAC": (86_000.0, 6.0),
        "Arnoldi": (68_000.0, 4.8),
        "LiSSA": (4.3e6, 8.0),
    },
}

#: Test points the paper explains per dataset (the speed-up table's totals are for this many).
PAPER_N_TEST = 2000

#: The paper's seven metrics (its average rank is over these), in the paper's order.
PAPER_METRICS: tuple[str, ...] = (
    "class_detection",
    "subclass_detection",
    "shortcut_detection",
    "mislabel_detection",
    "lds",
    "coreset_selection",
    "data_pruning",
)

#: The dataset variant whose model each metric is computed on (the paper's protocol); a metric not
#: listed here is read from the ``std`` variant.
METRIC_VARIANT: dict[str, str] = {
    "subclass_detection": "group",
    "mislabel_detection": "corrupt",
    "shortcut_detection": "mark",
}

#: Registered method name -> the paper's name (DualDA gets its ``C`` appended by :func:`paper_name`).
PAPER_METHOD_NAMES: dict[str, str] = {
    "dualda": "DualDA",
    "representer": "Representer Points",
    "trak": "TRAK",
    "graddot": "GradDot",
    "gradcos": "GradCos",
    "tracin": "TracIn",
    "ekfac": "EK-FAC",
    "arnoldi": "Arnoldi",
    "lissa": "LiSSA",
}

#: The method whose speed-up the report states, and the regularisation at which it is the
#: reference: the paper's middle C (also the method's default).
REFERENCE_METHOD = "dualda"
REFERENCE_C = 1e-3


def format_c(c: float) -> str:
    """The paper's spelling of a C: ``1e-05 -> "1e-5"``, ``0.1 -> "1e-1"``, ``10 -> "1e1"``.

    Values that do not have one significant digit are written with ``:g`` (``0.25 -> "0.25"``).
    """
    text = f"{c:.0e}"
    if float(text) != c:
        return f"{c:g}"
    mantissa, exponent = text.split("e")
    return f"{mantissa}e{int(exponent)}"


def paper_name(method_name: str, config: Mapping[str, Any] | None) -> str | None:
    """The paper's name of a method (``"DualDA C=1e-3"``, ``"LiSSA"``), None for methods not in Figure 1."""
    base = PAPER_METHOD_NAMES.get(method_name)
    if base is None:
        return None
    if method_name == REFERENCE_METHOD:
        c = (config or {}).get("C")
        if not isinstance(c, int | float) or isinstance(c, bool) or not math.isfinite(c) or c <= 0:
            return base
        return f"{base} C={format_c(float(c))}"
    return base


def figure1(task: str, name: str | None) -> tuple[float, float] | None:
    """``(runtime_s, average_rank)`` of the paper's Figure 1, or None where the paper has no point."""
    if name is None:
        return None
    return FIGURE1.get(task, {}).get(name)
