"""Class detection: share of the top-k attributed training points labelled as the prediction.

Metric 1 of the DualXDA paper (Yolcu, Weckbecker, Wiegand, Samek, Lapuschkin, "DualXDA: Towards
Sparse, Efficient and Explainable Data Attribution in Large AI Models", arXiv 2402.12118)::

    CD = 1/n_test * sum_j  1/k * |{ i in top_k(A[j, :]) : y_i == c_j }|,   k = 5

with ``A`` the ``(n_test, n_train)`` attribution matrix, ``c_j`` the model's predicted class for
test point ``j`` (``ctx.targets``) and ``y_i`` the training labels (``ctx.data.train.y``, i.e. the
labels the model was trained on). ``top_k`` takes the k *highest* (signed) attributions.

Computed by quanda 0.5.0's ``ClassDetectionMetric`` (parameter ``s`` = our ``top_k``), which does
exactly this: ``explanations.topk(k=min(s, n_train), dim=1)``, looks up the labels of the chosen
training points through ``train_dataset[i]``, and averages the per-point match fractions. Ties at
the k-th place are broken by ``torch.topk`` (unspecified order); a method whose rows have fewer
than k distinct top scores (e.g. many exact zeros) may therefore depend on that choice.

Streamed: a run feeds quanda's metric one chunk of test points at a time (its ``update``; ``topk``
works row by row), so it keeps one share per test point, never the matrix.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

from harness.config import Config, option, require_positive_int
from harness.protocols import DataError, Metric, MetricContext, MetricResult
from tasks.metrics._quanda import LabelledTensors, QuandaStream

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ClassDetectionConfig(Config):
    """Configuration of :class:`ClassDetection`."""

    top_k: int = option(5, "number of top-attributed training points compared with the prediction")

    def __post_init__(self) -> None:
        require_positive_int(self.top_k, "top_k")


class ClassDetection(Metric):
    """Mean share of the top-k attributed training points whose label is the predicted class."""

    Config = ClassDetectionConfig
    version = "1"
    direction = "higher"

    def reader(self, ctx: MetricContext) -> QuandaStream:
        """quanda's ``ClassDetectionMetric``, fed chunk by chunk: it keeps one share per test point."""
        with warnings.catch_warnings():  # quanda's import chain warns about torch.jit.script
            warnings.simplefilter("ignore", FutureWarning)
            from quanda.metrics.downstream_eval import ClassDetectionMetric

        top_k: int = self.config.top_k  # type: ignore[attr-defined]
        train = LabelledTensors(ctx.data.train.inputs, ctx.data.train.y)
        metric = ClassDetectionMetric(model=ctx.model, train_dataset=train, s=top_k)
        targets = ctx.targets.detach()
        return QuandaStream(
            metric,
            lambda rows, chunk: {"explanations": chunk, "test_targets": targets[rows]},
            kept=f"the share of the top-{top_k} labelled as the prediction, per test point",
        )

    def compute(self, ctx: MetricContext) -> MetricResult:
        """Class detection over all explained test points.

        Parameters
        ----------
        ctx:
            The explanations ``(n_test, n_train)`` (read through :meth:`reader`), ``targets``
            ``(n_test,)`` predicted classes, ``data.train.y`` ``(n_train,)`` training labels,
            ``model`` (quanda places its work on the model's device).

        Returns
        -------
        MetricResult
            ``value`` in [0, 1]; ``details`` = ``{"top_k": k, "n_test": n_test}`` where ``k`` is
            capped at ``n_train``; ``per_point``: each test point's share.
        """
        n_test, n_train = len(ctx.data.test), len(ctx.data.train)
        if tuple(ctx.targets.shape) != (n_test,):
            raise DataError(
                f"class detection needs targets of shape (n_test,) = ({n_test},); got "
                f"{tuple(ctx.targets.shape)}"
            )
        metric = ctx.read(self, QuandaStream).metric
        value = float(metric.compute()["score"])
        per_point = [float(v) for v in metric._per_sample_scores().cpu()]
        top_k: int = self.config.top_k  # type: ignore[attr-defined]
        return MetricResult(
            value=value, details={"top_k": min(top_k, n_train), "n_test": n_test}, per_point=per_point
        )
