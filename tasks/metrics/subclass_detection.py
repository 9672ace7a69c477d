"""Subclass detection: share of the top-k attributed training points of the test point's fine class.

Metric 2 of the DualXDA paper (Yolcu, Weckbecker, Wiegand, Samek, Lapuschkin, "DualXDA: Towards
Sparse, Efficient and Explainable Data Attribution in Large AI Models", arXiv 2402.12118), after
Hanawa et al. (ICLR 2021). The model of the ``group`` variant is trained on superclasses
(class ``c`` -> ``c // 2``) and explained for its predicted superclass; a good attribution still
points to training images of the test image's ORIGINAL (fine) class::

    SD = 1/n_test * sum_j  1/k * |{ i in top_k(A[j, :]) : f_i == g_j }|,   k = 5

Code names against the paper's notation:

- ``A`` = ``ctx.explanations`` ``(n_test, n_train)``, computed for the targets
  ``ctx.targets`` = the model's predicted superclasses ``c_j`` (the targets do not enter the
  formula, but the attributions were computed for them);
- ``f_i`` = ``ctx.data.train.meta["fine_labels"]`` ``(n_train,)``, the original class of training
  point ``i`` (``ctx.data.train.y`` holds the superclass ``f_i // 2`` the model was trained on);
- ``g_j`` = ``ctx.data.test.meta["fine_labels"]`` ``(n_test,)``, the original class of test
  point ``j``;
- ``k`` = option ``top_k`` (capped at ``n_train``); ``top_k`` takes the k *highest* (signed)
  attributions.

Computed by quanda 0.5.0's ``SubclassDetectionMetric`` (parameter ``s`` = our ``top_k``,
``train_subclass_labels`` = ``f``, ``test_targets`` = ``g``, ``filter_by_prediction=False``: every
explained test point counts, as in the paper), which does exactly this: ``explanations.topk(k=
min(s, n_train), dim=1)``, looks up ``f`` at the chosen indices and averages the per-point match
fractions. Ties at the k-th place are broken by ``torch.topk`` (unspecified order), as in class
detection. Streamed like class detection: quanda's metric is fed one chunk of test points at a time
and keeps one share per test point.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from harness.config import Config, option, require_positive_int
from harness.protocols import DataError, Metric, MetricContext, MetricResult
from tasks.metrics._quanda import LabelledTensors, QuandaStream

if TYPE_CHECKING:
    from torch import Tensor

    from harness.protocols import Split

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SubclassDetectionConfig(Config):
    """Configuration of :class:`SubclassDetection`."""

    top_k: int = option(5, "number of top-attributed training points compared with the fine label")

    def __post_init__(self) -> None:
        require_positive_int(self.top_k, "top_k")


def _fine_labels(split: Split, variant: str) -> Tensor:
    """``meta["fine_labels"]`` of ``split`` as an ``(n,)`` long tensor, or a DataError naming the fix."""
    fine = split.meta.get("fine_labels")
    if fine is None:
        raise DataError(
            f"subclass detection needs meta['fine_labels'] (the original class of every point) on the "
            f"{split.name} split; the 'group' variant provides it (this data is variant {variant!r}): "
            "run with --variant group"
        )
    if not isinstance(fine, torch.Tensor) or fine.dtype.is_floating_point or fine.dtype == torch.bool:
        raise DataError(
            f"meta['fine_labels'] of the {split.name} split must be an integer tensor, got "
            f"{type(fine).__name__} {getattr(fine, 'dtype', '')}".rstrip()
        )
    if tuple(fine.shape) != (len(split),):
        raise DataError(
            f"meta['fine_labels'] of the {split.name} split must have shape ({len(split)},), "
            f"got {tuple(fine.shape)}"
        )
    return fine.long()


class SubclassDetection(Metric):
    """Mean share of the top-k attributed training points whose fine label is the test point's."""

    Config = SubclassDetectionConfig
    version = "1"
    direction = "higher"
    requires_variant = "group"

    def reader(self, ctx: MetricContext) -> QuandaStream:
        """quanda's ``SubclassDetectionMetric``, fed chunk by chunk: it keeps one share per test point.

        Raises
        ------
        DataError
            When ``fine_labels`` is missing or malformed on either split.
        """
        with warnings.catch_warnings():  # quanda's import chain warns about torch.jit.script
            warnings.simplefilter("ignore", FutureWarning)
            from quanda.metrics.downstream_eval import SubclassDetectionMetric

        train_fine = _fine_labels(ctx.data.train, ctx.data.variant)
        test_fine = _fine_labels(ctx.data.test, ctx.data.variant)
        top_k: int = self.config.top_k  # type: ignore[attr-defined]
        train = LabelledTensors(ctx.data.train.inputs, ctx.data.train.y)
        metric = SubclassDetectionMetric(
            model=ctx.model, train_dataset=train, train_subclass_labels=train_fine, s=top_k
        )
        return QuandaStream(
            metric,
            lambda rows, chunk: {"explanations": chunk, "test_targets": test_fine[rows]},
            kept=f"the share of the top-{top_k} of the test point's fine class, per test point",
        )

    def compute(self, ctx: MetricContext) -> MetricResult:
        """Subclass detection over all explained test points.

        Parameters
        ----------
        ctx:
            The explanations ``(n_test, n_train)`` (computed for the predicted superclasses; read
            through :meth:`reader`), ``targets`` ``(n_test,)`` predicted superclasses,
            ``data.train.meta["fine_labels"]`` ``(n_train,)`` and ``data.test.meta["fine_labels"]``
            ``(n_test,)`` original classes, ``model`` (quanda places its work on the model's device).

        Returns
        -------
        MetricResult
            ``value`` in [0, 1]; ``details`` = ``{"top_k": k, "n_test": n_test,
            "superclass_accuracy": share of test points whose predicted superclass is their true
            one}``, ``k`` capped at ``n_train``; ``per_point``: each test point's share.

        Raises
        ------
        DataError
            When the shapes of explanations or targets do not match the data, when the
            explanations are not finite, or when ``fine_labels`` is missing or malformed.
        """
        targets = ctx.targets
        n_test, n_train = len(ctx.data.test), len(ctx.data.train)
        if tuple(targets.shape) != (n_test,):
            raise DataError(
                f"subclass detection needs targets of shape (n_test,) = ({n_test},); got "
                f"{tuple(targets.shape)}"
            )
        if n_test == 0:
            raise DataError("subclass detection needs at least one explained test point, got none")
        metric = ctx.read(self, QuandaStream).metric
        value = float(metric.compute()["score"])
        accuracy = float((targets.detach().cpu() == ctx.data.test.y.cpu()).double().mean())
        top_k: int = self.config.top_k  # type: ignore[attr-defined]
        details = {"top_k": min(top_k, n_train), "n_test": n_test, "superclass_accuracy": accuracy}
        per_point = [float(v) for v in metric._per_sample_scores().cpu()]
        return MetricResult(value=value, details=details, per_point=per_point)
