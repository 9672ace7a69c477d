"""Sparsity of attributions: l0_eps share, Hoyer measure and share of exact zeros.

As reported in the DualXDA paper (Yolcu, Weckbecker, Wiegand, Samek, Lapuschkin, "DualXDA: Towards
Sparse, Efficient and Explainable Data Attribution in Large AI Models", arXiv 2402.12118), per test
point ``j`` with attribution row ``a = A[j, :]`` of ``n = n_train`` entries:

- ``l0_eps(a) = |{i : |a_i| / max_k |a_k| < eps}| / n`` (eps = 1e-6): the reported value;
- Hoyer (2004): ``H(a) = (sqrt(n) - ||a||_1 / ||a||_2) / (sqrt(n) - 1)``, 1 for a one-hot row,
  0 for a constant row;
- ``exact_zero_share(a) = |{i : a_i == 0}| / n``.

Each is averaged over test points. An all-zero row counts as fully sparse (l0_eps = H = 1); with a
single training point (``n = 1``) Hoyer's denominator vanishes and H is taken as 1.
Accumulation is in float64, over chunks of rows to bound memory, on ``ctx.device`` when set.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from harness.config import Config, ConfigError, option
from harness.measures import sparsity_rows
from harness.protocols import DataError, Metric, MetricContext, MetricResult

log = logging.getLogger(__name__)

_ROWS_PER_CHUNK = 256


@dataclass(frozen=True, kw_only=True)
class SparsityConfig(Config):
    """Configuration of :class:`Sparsity`."""

    eps: float = option(1e-6, "relative threshold: |a_i| / max|a| below it counts as zero")

    def __post_init__(self) -> None:
        if (
            isinstance(self.eps, bool)
            or not isinstance(self.eps, int | float)
            or not (0.0 <= self.eps <= 1.0)
        ):
            raise ConfigError(f"eps must be a number in [0, 1], got {self.eps!r}")


class Sparsity(Metric):
    """Mean l0_eps share of (near-)zero attributions per test point; Hoyer and exact zeros too."""

    Config = SparsityConfig
    version = "1"
    direction = "higher"

    def compute(self, ctx: MetricContext) -> MetricResult:
        """Sparsity of ``ctx.explanations`` ``(n_test, n_train)``.

        Returns
        -------
        MetricResult
            ``value`` = mean ``l0_eps``; ``details`` = the means of ``l0_eps``, ``hoyer`` and
            ``exact_zero_share``; ``per_point``: each test point's ``l0_eps``.

        Raises
        ------
        DataError
            When the explanations contain NaN or infinite values.
        """
        eps: float = self.config.eps  # type: ignore[attr-defined]
        explanations = ctx.explanations
        if explanations.ndim != 2 or explanations.shape[0] == 0 or explanations.shape[1] == 0:
            raise DataError(
                f"sparsity needs a non-empty (n_test, n_train) matrix, got {tuple(explanations.shape)}"
            )
        try:
            rows = sparsity_rows(explanations, eps, ctx.device)
        except ValueError as err:
            raise DataError(str(err)) from err
        details = {key: math.fsum(values.tolist()) / len(values) for key, values in rows.items()}
        return MetricResult(value=details["l0_eps"], details=details, per_point=rows["l0_eps"].tolist())
