"""Shortcut detection: AUPRC of each attribution row against the "training point is watermarked" flag.

Metric 3 of the DualXDA paper (Yolcu, Weckbecker, Wiegand, Samek, Lapuschkin, "DualXDA: Towards
Sparse, Efficient and Explainable Data Attribution in Large AI Models", arXiv 2402.12118), after
Koh and Liang (2017). The model of the ``mark`` variant is trained with a watermark on 30% of the
class-``s`` training images (``s = 2``) and every test image carries the watermark. A test point
that the model assigns to ``s`` although its true class is another one was (presumably) classified
through the shortcut, and a good attribution ranks the watermarked training points first::

    J  = { j : c_j == s  and  y_j != s }
    SC = 1/|J| * sum_{j in J}  AP( A[j, :], m )

Code names against the paper's notation:

- ``A`` = ``ctx.explanations`` ``(n_test, n_train)``; ``c_j`` = ``ctx.targets`` (the model's
  predicted classes, the explanation targets); ``y_j`` = ``ctx.data.test.y`` (true test labels);
- ``m`` = ``ctx.data.train.meta["marked"]`` ``(n_train,)`` bool, the watermarked training points
  (all of them labelled ``s``);
- ``s`` = option ``shortcut_class``;
- ``AP(a, m)`` = average precision, the step-wise area under the precision-recall curve of the
  scores ``a`` against the labels ``m``: ``sum_t (R_t - R_{t-1}) P_t`` over the distinct score
  thresholds ``t`` in descending order (tied scores enter together, no interpolation). Its value for
  a random ranking is the share of marked training points, ``mean(m)``.

Computed by quanda 0.5.0's ``ShortcutDetectionMetric`` (``shortcut_indices`` = ``nonzero(m)``,
``shortcut_cls`` = ``s``), which computes ``AP`` per row with torcheval's ``binary_auprc`` and
averages. Quanda selects the points of ``J`` itself by running the model on the test inputs; here
both filters are switched off and ``J`` is selected from ``ctx.targets`` (the predictions the
attributions were computed for), so the metric never re-runs the model and cannot disagree with the
explained targets. Quanda returns 0.0 when ``J`` is empty; this metric raises instead (a model that
never predicts ``s`` for another class has not learned the shortcut, and 0.0 would read as a result).
Streamed: each chunk of test points goes to quanda's metric with only its rows of ``J``; quanda
keeps one AP per row of ``J``, never the matrix.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from harness.config import Config, ConfigError, option
from harness.protocols import DataError, Metric, MetricContext, MetricResult
from tasks.metrics._quanda import LabelledTensors, QuandaStream

if TYPE_CHECKING:
    from torch import Tensor

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ShortcutDetectionConfig(Config):
    """Configuration of :class:`ShortcutDetection`."""

    shortcut_class: int = option(
        2, "class whose watermarked training images form the shortcut (the mark variant marks class 2)"
    )

    def __post_init__(self) -> None:
        value = self.shortcut_class
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"shortcut_class must be a class index >= 0, got {value!r}")


class ShortcutDetection(Metric):
    """Mean AUPRC of the watermarked training points, over test points predicted through the shortcut."""

    Config = ShortcutDetectionConfig
    version = "1"
    direction = "higher"
    requires_variant = "mark"

    def reader(self, ctx: MetricContext) -> QuandaStream:
        """quanda's ``ShortcutDetectionMetric``, fed the rows of ``J`` of each chunk: it keeps one AP per row.

        Raises
        ------
        DataError
            As :meth:`compute`, for everything but the explanations.
        """
        with warnings.catch_warnings():  # quanda's import chain warns about torch.jit.script
            warnings.simplefilter("ignore", FutureWarning)
            from quanda.metrics.downstream_eval import ShortcutDetectionMetric

        shortcut: int = self.config.shortcut_class  # type: ignore[attr-defined]
        marked, selected, _ = _selection(ctx, shortcut)
        metric = ShortcutDetectionMetric(
            model=ctx.model,
            train_dataset=LabelledTensors(ctx.data.train.inputs, ctx.data.train.y),
            shortcut_indices=torch.nonzero(marked).flatten(),
            shortcut_cls=shortcut,
            filter_by_non_shortcut=False,
            filter_by_shortcut_pred=False,
        )
        selected = selected.cpu()

        def arguments(rows: slice, chunk: Tensor) -> dict[str, Tensor] | None:
            mine = selected[rows]
            return {"explanations": chunk[mine]} if bool(mine.any()) else None

        return QuandaStream(
            metric, arguments, kept="the AP of each test point predicted through the shortcut"
        )

    def compute(self, ctx: MetricContext) -> MetricResult:
        """Shortcut detection over the test points predicted as the shortcut class with another label.

        Parameters
        ----------
        ctx:
            The explanations ``(n_test, n_train)`` (read through :meth:`reader`), ``targets``
            ``(n_test,)`` predicted classes, ``data.test.y`` ``(n_test,)`` true labels,
            ``data.train.meta["marked"]`` ``(n_train,)`` bool, ``model`` (quanda places its work on
            the model's device).

        Returns
        -------
        MetricResult
            ``value`` in [0, 1]; ``details``: ``n_points`` (``|J|``), ``test_indices`` (the rows
            of ``J``), ``random_auprc``
            (share of marked training points: the AP of a random ranking), ``n_marked_train``,
            ``shortcut_prediction_rate`` (``|J|`` over the test points whose true label is not
            ``s``), ``shortcut_class`` and ``n_test``.

        Raises
        ------
        DataError
            When shapes do not match the data, attributions are not finite, ``marked`` is missing
            or malformed, no training point is marked, a marked point is not labelled
            ``shortcut_class``, ``shortcut_class`` is not a class of the task, or no test point is
            predicted as ``shortcut_class`` while labelled otherwise.
        """
        n_test = len(ctx.data.test)
        if tuple(ctx.targets.shape) != (n_test,):
            raise DataError(
                f"shortcut detection needs targets of shape (n_test,) = ({n_test},); got "
                f"{tuple(ctx.targets.shape)}"
            )
        shortcut: int = self.config.shortcut_class  # type: ignore[attr-defined]
        marked, selected, n_other = _selection(ctx, shortcut)
        metric = ctx.read(self, QuandaStream).metric
        value = float(metric.compute()["score"])
        auprc = [float(v) for v in metric.state_dict()["auprc_scores"]]
        rows = torch.nonzero(selected).flatten()
        details = {
            "n_points": len(rows),
            "test_indices": rows.cpu().tolist(),
            "random_auprc": float(marked.double().mean()),
            "n_marked_train": int(marked.sum()),
            "shortcut_prediction_rate": len(rows) / n_other,
            "shortcut_class": shortcut,
            "n_test": n_test,
        }
        return MetricResult(value=value, details=details, per_point=auprc)


def _selection(ctx: MetricContext, shortcut: int) -> tuple[Tensor, Tensor, int]:
    """``(marked, selected, n_other)``: the watermarked training points ``(n_train,)`` bool on the CPU,
    the test points of ``J`` ``(n_test,)`` bool, and the number of test points not labelled
    ``shortcut``; a :class:`DataError` naming the fix when the data cannot give them."""
    train, test, targets = ctx.data.train, ctx.data.test, ctx.targets
    n_test, n_train = len(test), len(train)
    if shortcut >= ctx.data.num_classes:
        raise DataError(
            f"shortcut_class {shortcut} is not a class of this task ({ctx.data.num_classes} classes)"
        )
    marked = train.meta.get("marked")
    if marked is None:
        raise DataError(
            "shortcut detection needs meta['marked'] (which training points carry the watermark) on "
            f"the train split; the 'mark' variant provides it (this data is variant "
            f"{ctx.data.variant!r}): run with --variant mark"
        )
    if not isinstance(marked, torch.Tensor) or marked.dtype != torch.bool or marked.shape != (n_train,):
        raise DataError(
            f"meta['marked'] of the train split must be a bool tensor of shape ({n_train},), got "
            f"{type(marked).__name__} {getattr(marked, 'dtype', '')} "
            f"{tuple(getattr(marked, 'shape', ()))}"
        )
    marked = marked.cpu()
    if not bool(marked.any()):
        raise DataError("shortcut detection needs watermarked training points; meta['marked'] has none")
    marked_labels = train.y.cpu()[marked]
    if not bool((marked_labels == shortcut).all()):
        raise DataError(
            f"every watermarked training point must be labelled shortcut_class = {shortcut}; found "
            f"labels {sorted(set(marked_labels.tolist()))}. Set shortcut_class to the marked class"
        )
    true_y = test.y.to(targets.device)
    selected = (targets == shortcut) & (true_y != shortcut)
    n_other = int((true_y != shortcut).sum())
    if not bool(selected.any()):
        raise DataError(
            f"shortcut detection found no test point predicted as the shortcut class {shortcut} with "
            f"another true label (among {n_test} test points, {n_other} labelled otherwise): the "
            "model did not learn the shortcut, or there are too few test points"
        )
    return marked, selected, n_other
