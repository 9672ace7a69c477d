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
Accumulation is in float64, on ``ctx.device`` when set. Streamed: the reader
(:class:`harness.measures.SparsityRows`) keeps three numbers per test point, never the matrix.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from harness.config import Config, ConfigError, option
from harness.measures import SparsityRows
from harness.protocols import DataError, Metric, MetricContext, MetricResult, Reader

log = logging.getLogger(__name__)


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

    def reader(self, ctx: MetricContext) -> SparsityReader:
        """The three measures of every test point."""
        return SparsityReader(self.config.eps, ctx.device)  # type: ignore[attr-defined]

    def compute(self, ctx: MetricContext) -> MetricResult:
        """Sparsity of the explanations ``(n_test, n_train)`` (read through :meth:`reader`).

        Returns
        -------
        MetricResult
            ``value`` = mean ``l0_eps``; ``details`` = the means of ``l0_eps``, ``hoyer`` and
            ``exact_zero_share``; ``per_point``: each test point's ``l0_eps``.

        Raises
        ------
        DataError
            When the explanations are empty or contain NaN or infinite values.
        """
        n_test, n_train = len(ctx.data.test), len(ctx.data.train)
        if n_test == 0 or n_train == 0:
            raise DataError(f"sparsity needs a non-empty (n_test, n_train) matrix, got ({n_test}, {n_train})")
        try:
            rows = ctx.read(self, SparsityReader).rows()
        except ValueError as err:  # NaN or inf (DataError is a ValueError too)
            raise DataError(str(err)) from err
        details = {key: math.fsum(values.tolist()) / len(values) for key, values in rows.items()}
        return MetricResult(value=details["l0_eps"], details=details, per_point=rows["l0_eps"].tolist())


class SparsityReader(SparsityRows, Reader):
    """:class:`harness.measures.SparsityRows` (the record's sparsity too) as this metric's reader."""
