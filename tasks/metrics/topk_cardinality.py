"""Top-k cardinality: how many distinct training points the top-k attributions use, over all test points.

A metric of quanda's evaluation toolkit, listed beside the seven metrics of the DualXDA paper
(Yolcu, Weckbecker, Wiegand, Samek, Lapuschkin, "DualXDA: Towards Sparse, Efficient and Explainable
Data Attribution in Large AI Models", arXiv 2402.12118; "Further metrics ... top-k cardinality"),
after Barshan, Brunet and Dziugaite (RelatIF, AISTATS 2020): attributions that depend on the test
input pick different training points for different test points, while a method dominated by a few
globally influential points (outliers, high-loss points) shows the same ones to everybody::

    TKC = |  U_j top_k(A[j, :])  | / (n_test * k)

Code names against the notation: ``A`` = ``ctx.explanations`` ``(n_test, n_train)``; ``k`` =
option ``top_k`` (capped at ``n_train``); ``top_k`` takes the k *highest* (signed) attributions;
the union runs over all explained test points.

Higher is better. The value lies in ``[1 / n_test, min(1, n_train / (n_test * k))]``: ``1 / n_test``
when every test point gets the same top k, the upper end when the top-k sets are disjoint (or cover
the whole training set). It therefore depends on ``n_test``, ``k`` and ``n_train``: compare values
only between runs with the same sizes.

Computed by quanda 0.5.0's ``TopKCardinalityMetric`` (parameter ``top_k``), which does exactly
this: ``explanations.topk(k, dim=1)`` per row, ``len(unique(all indices)) / numel(all indices)``.
Quanda does not cap ``k`` (``topk`` fails for ``k > n_train``); this metric passes
``min(top_k, n_train)``. Ties at the k-th place are broken by ``torch.topk`` (unspecified order).
Streamed: quanda's metric is fed one chunk of test points at a time and keeps the top-k indices of
every test point (``n_test x k``), never the matrix.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import torch

from harness.config import Config, option, require_positive_int
from harness.protocols import DataError, Metric, MetricContext, MetricResult
from tasks.metrics._quanda import LabelledTensors, QuandaStream

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class TopKCardinalityConfig(Config):
    """Configuration of :class:`TopKCardinality`."""

    top_k: int = option(5, "number of top-attributed training points taken from each test point")

    def __post_init__(self) -> None:
        require_positive_int(self.top_k, "top_k")


class TopKCardinality(Metric):
    """Distinct training points among all test points' top-k, over the number of top-k entries."""

    Config = TopKCardinalityConfig
    version = "1"
    direction = "higher"

    def reader(self, ctx: MetricContext) -> QuandaStream:
        """quanda's ``TopKCardinalityMetric``, fed chunk by chunk: it keeps top-k indices per test point."""
        with warnings.catch_warnings():  # quanda's import chain warns about torch.jit.script
            warnings.simplefilter("ignore", FutureWarning)
            from quanda.metrics.heuristics import TopKCardinalityMetric

        k = min(self.config.top_k, len(ctx.data.train))  # type: ignore[attr-defined]
        metric = TopKCardinalityMetric(
            model=ctx.model, train_dataset=LabelledTensors(ctx.data.train.inputs, ctx.data.train.y), top_k=k
        )
        return QuandaStream(
            metric, lambda rows, chunk: {"explanations": chunk}, kept=f"top-{k} indices per test point"
        )

    def compute(self, ctx: MetricContext) -> MetricResult:
        """Top-k cardinality over all explained test points.

        Parameters
        ----------
        ctx:
            The explanations ``(n_test, n_train)`` (read through :meth:`reader`); ``targets``
            ``(n_test,)`` is shape-checked only; ``model`` (quanda places its work on the model's
            device).

        Returns
        -------
        MetricResult
            ``value`` in ``(0, 1]``; ``details`` = ``{"top_k": k, "n_test": n_test,
            "n_distinct": number of distinct training points in the union}``, ``k`` capped at
            ``n_train`` (so ``value == n_distinct / (n_test * k)``).

        Raises
        ------
        DataError
            When the shapes of explanations or targets do not match the data, there is no test
            point, or the attributions are not finite.
        """
        targets = ctx.targets
        n_test, n_train = len(ctx.data.test), len(ctx.data.train)
        if tuple(targets.shape) != (n_test,):
            raise DataError(
                f"top-k cardinality needs targets of shape (n_test,) = ({n_test},); got "
                f"{tuple(targets.shape)}"
            )
        if n_test == 0 or n_train == 0:
            raise DataError(f"top-k cardinality needs test and training points, got ({n_test}, {n_train})")
        metric = ctx.read(self, QuandaStream).metric
        value = float(metric.compute()["score"])
        n_distinct = len(torch.unique(metric.state_dict()["all_top_k_examples"]))
        k = min(self.config.top_k, n_train)  # type: ignore[attr-defined]
        return MetricResult(value=value, details={"top_k": k, "n_test": n_test, "n_distinct": n_distinct})
