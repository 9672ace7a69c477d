"""Mislabel detection: how early the flipped training labels appear in the self-influence ranking.

Metric 4 of the DualXDA paper (Yolcu, Weckbecker, Wiegand, Samek, Lapuschkin, "DualXDA: Towards
Sparse, Efficient and Explainable Data Attribution in Large AI Models", arXiv 2402.12118), after
Koh and Liang (2017). The model of the ``corrupt`` variant is trained with 30% of the training
labels flipped; ranking the training points by self-influence, descending, should bring the
flipped ones first. With ``N`` training points of which ``F`` are flipped, ``pi`` the ranking
(``pi(1)`` the most self-influential point) and ``r_f`` the 1-based rank of flipped point ``f``::

    d_i   = |{ t <= i : pi(t) flipped }| / F,     i = 0..N    (the detection curve, d_0 = 0)
    S     = sum_{i=1..N} d_i                                  (area under the curve, step-wise)
    S_best  = S of the ordering with all flipped points first = (F + 1) / 2 + N - F
    S_worst = S of the ordering with all flipped points last  = (F + 1) / 2
    MD    = (S - S_worst) / (S_best - S_worst) = (S - (F + 1) / 2) / (N - F)

``MD`` is 1 for the best ordering, 0 for the worst and 1/2 in expectation for a random one. Since
``S = N + 1 - mean_f r_f``, ``MD`` equals the ROC AUC of the self-influence scores against the
flipped flags (without ties). The trapezoidal area over ``i = 0..N`` differs from ``S`` by the
constant ``d_N / 2 = 1/2``, which the min-max scaling cancels: both readings of "area" give ``MD``.

Code names against the paper's notation: ``ctx.self_influence`` ``(N,)`` = the method's
self-influence scores; ``ctx.data.train.meta["flipped"]`` ``(N,)`` bool = the flipped points;
``details["curve"]`` = ``(i / N, d_i)``; ``value`` = ``MD``.

What quanda 0.5.0's ``MislabelingDetectionMetric`` (with ``precomputed_self_influence``) computes,
and how it is used here:

- its ranking (``SelfInfluenceRanking.get_global_rank``) adds ``1e-4 * i`` to the score of point
  ``i`` before a descending sort, to break ties. That is not a tie-break only: it reorders any two
  points whose scores differ by less than ``1e-4 * |i - i'|`` (up to 6.0 for 60,000 points), in
  favour of the later index. This metric therefore ranks the points itself (descending
  self-influence, ties broken by the LOWER index, i.e. a stable sort) and hands quanda the rank
  encoded as a score with gaps wider than quanda's perturbation, so quanda's ranking equals ours
  (checked on its success array);
- its curve is ``d_1..d_N`` (the cumulative share of flipped points found) and its ``score`` is
  ``trapezoid(d_1..d_N) / N = (S - (d_1 + 1) / 2) / N``: an area that is NOT min-max normalised
  (its best value is about ``1 - F / (2N)``, and it depends on ``F / N``). It is reported as
  ``details["quanda_score"]``; ``value`` is the paper's ``MD``, computed from quanda's success
  array (which ranked point is flipped) in integer arithmetic, since quanda's float32 curve is off
  by up to about 1e-7.

With tied self-influence scores (e.g. a sparse method giving many points exactly 0) ``value``
depends on the index order among the tied points; ``details["value_ties_averaged"]`` is its
expectation over random orders of the tied points (every tied point at the mean rank of its tie
group: the ROC AUC with ties counted half), and ``details["tied_points"]`` counts the points that
share their score with another point.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import torch

from harness.config import Config
from harness.protocols import CapabilityError, DataError, Metric, MetricContext, MetricResult
from tasks.metrics._quanda import LabelledTensors

log = logging.getLogger(__name__)

#: Largest number of (x, y) points of the detection curve kept in the details.
CURVE_POINTS = 201


@dataclass(frozen=True, kw_only=True)
class MislabelDetectionConfig(Config):
    """Configuration of :class:`MislabelDetection` (no options: the paper's metric has none)."""


def _ties_averaged_score(scores: torch.Tensor, flipped: torch.Tensor) -> float:
    """``MD`` with every point at the mean descending rank of its tie group (float64, 1-based)."""
    n, n_flipped = len(scores), int(flipped.sum())
    _, inverse, counts = torch.unique(scores, sorted=True, return_inverse=True, return_counts=True)
    counts = counts.double()
    above = n - torch.cumsum(counts, dim=0)  # points with a strictly larger score, per group
    mean_rank = (above + (counts + 1) / 2)[inverse]
    area = n + 1 - float(mean_rank[flipped].mean())
    return (area - (n_flipped + 1) / 2) / (n - n_flipped)


def _downsampled_curve(detected: torch.Tensor, n: int) -> dict[str, list[float]]:
    """``(i / n, d_i)`` for at most :data:`CURVE_POINTS` evenly spaced ``i`` in 0..n (both ends kept).

    ``detected`` is ``(n,)`` = ``d_1..d_n``.
    """
    full = torch.cat([detected.new_zeros(1), detected])  # d_0..d_n
    steps = torch.linspace(0, n, min(n + 1, CURVE_POINTS), dtype=torch.float64).round().long().unique()
    return {
        "x": (steps.double() / n).tolist(),
        "y": full[steps].double().tolist(),
    }


class MislabelDetection(Metric):
    """Normalised area under the flipped-label detection curve of the self-influence ranking."""

    Config = MislabelDetectionConfig
    version = "1"
    direction = "higher"
    requires_variant = "corrupt"
    needs = frozenset({"self_influence"})

    def compute(self, ctx: MetricContext) -> MetricResult:
        """Mislabel detection from ``ctx.self_influence`` and the flipped training points.

        Parameters
        ----------
        ctx:
            ``self_influence`` ``(n_train,)``, ``data.train.meta["flipped"]`` ``(n_train,)`` bool.
            ``targets``, and ``explanations`` where a caller passes the matrix, are shape-checked
            but not used: the metric reads no explanations (its reader is None; a run keeps
            nothing of them for it).

        Returns
        -------
        MetricResult
            ``value`` = ``MD`` in [0, 1]; ``details``: ``quanda_score`` (quanda's un-normalised
            area, for the same ranking), ``value_ties_averaged``, ``tied_points``, ``n_flipped``, ``n_train``,
            ``flipped_share`` and ``curve`` = ``{"x": share of the training set inspected,
            "y": share of flipped points found}`` (at most :data:`CURVE_POINTS` points, from
            ``(0, 0)`` to ``(1, 1)``).

        Raises
        ------
        CapabilityError
            When ``ctx.self_influence`` is None (the method has no self-influence).
        DataError
            When shapes do not match the data, self-influence is not finite, ``flipped`` is missing
            or malformed, or no point / every point is flipped (the score is then undefined).
        """
        with warnings.catch_warnings():  # quanda's import chain warns about torch.jit.script
            warnings.simplefilter("ignore", FutureWarning)
            from quanda.metrics.downstream_eval import MislabelingDetectionMetric

        train = ctx.data.train
        n_test, n_train = len(ctx.data.test), len(train)
        ctx.check_explanations(self.name or "mislabel_detection")  # a matrix held must fit the data
        if tuple(ctx.targets.shape) != (n_test,):
            raise DataError(
                f"mislabel detection needs targets of shape (n_test,) = ({n_test},); got "
                f"{tuple(ctx.targets.shape)}"
            )
        si = ctx.self_influence
        if si is None:
            raise CapabilityError(
                f"metric {self.name or 'mislabel_detection'!r} needs self-influence scores, and the run "
                "provided none (the method does not support self-influence)"
            )
        if tuple(si.shape) != (n_train,):
            raise DataError(
                f"mislabel detection needs self-influence of shape (n_train,) = ({n_train},), got "
                f"{tuple(si.shape)}"
            )
        si = si.detach().cpu().double()
        if not torch.isfinite(si).all():
            raise DataError("mislabel detection needs finite self-influence; got NaN or infinite values")

        flipped = train.meta.get("flipped")
        if flipped is None:
            raise DataError(
                "mislabel detection needs meta['flipped'] (which training labels were flipped) on the "
                f"train split; the 'corrupt' variant provides it (this data is variant "
                f"{ctx.data.variant!r}): run with --variant corrupt"
            )
        if (
            not isinstance(flipped, torch.Tensor)
            or flipped.dtype != torch.bool
            or flipped.shape != (n_train,)
        ):
            raise DataError(
                f"meta['flipped'] of the train split must be a bool tensor of shape ({n_train},), got "
                f"{type(flipped).__name__} {getattr(flipped, 'dtype', '')} "
                f"{tuple(getattr(flipped, 'shape', ()))}"
            )
        flipped = flipped.cpu()
        n_flipped = int(flipped.sum())
        if n_flipped == 0 or n_flipped == n_train:
            raise DataError(
                f"mislabel detection needs some flipped and some clean training points; {n_flipped} of "
                f"{n_train} are flipped, so every ordering scores the same and the score is undefined"
            )

        # Our ranking (descending, ties by lower index), encoded so that quanda's ``+ 1e-4 * i``
        # cannot reorder it: consecutive ranks differ by more than the largest perturbation.
        order = torch.argsort(si, descending=True, stable=True)
        gap = 1.0 + 1e-4 * n_train
        encoded = torch.empty(n_train, dtype=torch.float64)
        encoded[order] = torch.arange(n_train, 0, -1, dtype=torch.float64) * gap

        metric = MislabelingDetectionMetric(
            model=ctx.model,
            train_dataset=LabelledTensors(train.inputs, train.y),
            mislabeling_indices=torch.nonzero(flipped).flatten().tolist(),
            precomputed_self_influence=encoded,
        )
        out = metric.compute()
        success = out["success_arr"].cpu()
        if not torch.equal(success, flipped[order]):
            raise RuntimeError("quanda's self-influence ranking differs from the intended one (a bug)")
        # Exact: F * S = sum of the integer counts found so far, F * S_worst = F (F + 1) / 2, so
        # MD = (F * S - F (F + 1) / 2) / (F (N - F)) is one rounding away from the true value
        # (quanda's float32 curve would put the best ordering at 1 + 6e-9).
        found = torch.cumsum(success.long(), dim=0)  # F * d_1..d_N
        numerator = int(found.sum()) - n_flipped * (n_flipped + 1) // 2
        value = numerator / (n_flipped * (n_train - n_flipped))
        detected = found.double() / n_flipped

        tied = n_train - int((torch.unique(si, return_counts=True)[1] == 1).sum())
        details = {
            "quanda_score": float(out["score"]),
            "value_ties_averaged": _ties_averaged_score(si, flipped),
            "tied_points": tied,
            "n_flipped": n_flipped,
            "n_train": n_train,
            "flipped_share": n_flipped / n_train,
            "curve": _downsampled_curve(detected, n_train),
        }
        return MetricResult(value=value, details=details)
