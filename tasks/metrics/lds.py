"""Linear datamodeling score (LDS): do attributions predict what retraining on a subset does?

Metric 5 of DualXDA (Yolcu et al., arXiv 2402.12118; ../shared/reference/dualxda-paper.md), from
Park et al., "TRAK: Attributing Model Behavior at Scale" (ICML 2023)::

    S_1..S_m       m random subsets of the training set, each of size floor(alpha * N), alpha = 0.5
    theta_k        a model retrained on S_k (the task's recipe and the run's seed, for as many
                   optimiser steps as the original model)
    g_j(S_k)     = sum_{i in S_k} A[j, i]                     attribution-predicted output
    f_j(theta_k) = log softmax(model_{theta_k}(x_j))[c_j]      c_j the ORIGINAL model's prediction
    LDS          = mean_j  Spearman_k( g_j(S_k), f_j(theta_k) )

``m`` is 100 in the paper preset. The counterfactual models come from the harness
(``ctx.retrain``): cached by content hash and shared by every method of a grid, so the m models
are trained once per (task, variant, training set, seed). Training length: unless the ``epochs``
option is set, each retrained model takes exactly as many optimiser steps as the original model
(a subset of alpha = 50% then runs about twice its epochs), so the subsets differ in their data,
not in how long their models were trained; with ``epochs`` set, each model is trained for exactly
that many epochs.

Computed as quanda 0.5.0's ``LinearDatamodelingMetric`` does, in two halves. While a run streams
the explanations, :class:`SubsetSums` keeps ``g_j(S_k)`` for every test point and subset (an
``(n_test, m)`` float32 matrix, never the attributions): quanda's own arithmetic,
``A[rows][:, S_k].sum(dim=1)`` in float32, one chunk of rows at a time (the subsets drawn by its
``generate_subsets`` with ``torch.randperm`` under ``seed``). After retraining, the per-point
Spearman correlation between ``g`` and the retrained models' outputs is quanda's
``correlation_functions["spearman"]`` (torchmetrics) on the same ``(n_test, m)`` matrices its
``update`` would build, so the value is the one its ``update``/``compute`` give. (quanda's own
default output for multi-column logits is the margin ``z_c - logsumexp_{j != c} z_j``, Park et
al.'s Eq. 19; the DualXDA paper uses the log-softmax of the predicted class, our default
(``output="log_softmax"``); ``output="margin"`` gives Park et al.'s.)
A test point whose predicted outputs or attributions are constant across subsets has an undefined
Spearman correlation; torchmetrics returns 0 for it (counted in ``details["constant_rows"]``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

from harness.config import Config, ConfigError, option, require_positive_int
from harness.protocols import DataError, Inputs, Metric, MetricContext, MetricResult, Reader
from tasks.metrics._quanda import LengthOnly

if TYPE_CHECKING:
    from torch import Tensor, nn


@dataclass(frozen=True, kw_only=True)
class LDSConfig(Config):
    """Configuration of :class:`LDS`; :meth:`paper` holds the paper's m = 100."""

    m: int = option(100, "number of random training subsets, one retrained model each (paper: 100)")
    alpha: float = option(0.5, "share of the training set in each subset (paper: 0.5)")
    seed: int = option(42, "seed of the subset draws (the same subsets for every method)")
    output: Literal["log_softmax", "margin"] = option(
        "log_softmax",
        "retrained model's output: log-softmax of the predicted class (DualXDA) or the logit margin (TRAK)",
    )
    epochs: int | None = option(
        None,
        "training epochs of the retrained models (None: as many optimiser steps as the original model)",
    )

    def __post_init__(self) -> None:
        require_positive_int(self.m, "m")
        if self.m < 3:
            raise ConfigError(f"LDS needs m >= 3 subsets for a rank correlation, got {self.m}")
        if isinstance(self.alpha, bool) or not (isinstance(self.alpha, int | float) and 0 < self.alpha < 1):
            raise ConfigError(f"alpha must lie strictly between 0 and 1 (paper: 0.5), got {self.alpha!r}")
        if self.output not in ("log_softmax", "margin"):
            raise ConfigError(f"output must be 'log_softmax' or 'margin', got {self.output!r}")
        if self.epochs is not None:
            require_positive_int(self.epochs, "epochs")

    @classmethod
    def paper(cls) -> LDSConfig:
        """m = 100 subsets of 50% (the paper)."""
        return cls()

    @classmethod
    def quick(cls) -> LDSConfig:
        """m = 20 subsets of 50%: 20 retrainings instead of 100 for the 2-core CPU suite.

        The LDS of each test point is then a Spearman correlation over 20 pairs (standard error
        about 0.2 per point; the mean over test points is far steadier).
        """
        return cls(m=20)


class LDS(Metric):
    """Mean Spearman correlation between summed attributions and retrained models' outputs."""

    Config = LDSConfig
    version = "2"
    direction = "higher"

    config: LDSConfig

    def reader(self, ctx: MetricContext) -> SubsetSums:
        """The subsets of this config, drawn as quanda draws them, and the attributions summed over each."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            from quanda.metrics.ground_truth import LinearDatamodelingMetric

        cfg = self.config
        n_train = len(ctx.data.train)
        if int(cfg.alpha * n_train) < 1:
            raise DataError(f"alpha {cfg.alpha} of {n_train} training points leaves an empty subset")
        subset_ids = LinearDatamodelingMetric.generate_subsets(
            LengthOnly(n_train, "lds"),
            alpha=cfg.alpha,
            m=cfg.m,
            generator=torch.Generator().manual_seed(cfg.seed),
        )
        return SubsetSums(subset_ids, len(ctx.data.test))

    def compute(self, ctx: MetricContext) -> MetricResult:
        """LDS over the explained test points.

        Parameters
        ----------
        ctx:
            The explanations ``(n_test, n_train)`` (read through :meth:`reader`), ``targets``
            ``(n_test,)`` the original model's predictions, ``data.test.inputs`` the test inputs,
            ``retrain`` the harness' retraining service.

        Returns
        -------
        MetricResult
            ``value`` in [-1, 1]; ``details``: ``m``, ``alpha``, ``subset_size``, ``output``,
            ``constant_rows``; ``per_point``: the n_test correlations.
        """
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            from quanda.utils.functions import correlation_functions

        targets = ctx.targets
        n_test = len(ctx.data.test)
        if tuple(targets.shape) != (n_test,):
            raise DataError(f"LDS needs targets ({n_test},); got {tuple(targets.shape)}")
        if ctx.retrain is None:
            raise DataError(
                "LDS retrains models on subsets: run it through the harness (ctx.retrain is None)"
            )
        cfg = self.config
        sums = ctx.read(self, SubsetSums)
        test_x = ctx.data.test.inputs

        def output(model: nn.Module) -> Tensor:
            return _model_output(model, test_x, targets, cfg.output)

        outputs = ctx.retrain.evaluate(
            [torch.tensor(ids) for ids in sums.subset_ids], output, purpose="lds", epochs=cfg.epochs
        )
        predicted = sums.sums  # (n_test, m)
        actual = torch.stack([o.to(predicted.device) for o in outputs], dim=1)  # (n_test, m)
        per_point = correlation_functions["spearman"](actual, predicted).cpu()
        constant = int(((predicted.std(dim=1) == 0) | (actual.std(dim=1) == 0)).sum())
        return MetricResult(
            value=float(per_point.mean()),
            details={
                "m": cfg.m,
                "alpha": cfg.alpha,
                "subset_size": len(sums.subset_ids[0]),
                "output": cfg.output,
                "constant_rows": constant,
            },
            per_point=[float(v) for v in per_point],
        )


class SubsetSums(Reader):
    """``g_j(S_k) = sum_{i in S_k} A[j, i]`` for every test point ``j`` and subset ``S_k``, chunk by chunk.

    Each chunk is summed as quanda's ``LinearDatamodelingMetric.update`` sums the whole matrix
    (``A.float()[:, S_k].sum(dim=1)``, row by row), so the sums are quanda's.

    Attributes
    ----------
    subset_ids:
        ``m`` lists of training indices (in draw order).
    sums:
        ``(n_test, m)`` float32.
    """

    def __init__(self, subset_ids: list[list[int]], n_test: int) -> None:
        self.subset_ids = subset_ids
        self._index = [torch.tensor(ids) for ids in subset_ids]
        self.sums = torch.zeros(n_test, len(subset_ids))

    def update(self, rows: slice, chunk: Tensor) -> None:
        chunk = chunk.float()
        self.sums[rows] = torch.stack([chunk[:, index].sum(dim=1) for index in self._index], dim=1)

    def kept(self) -> str:
        return f"the sum over each of the {len(self.subset_ids)} training subsets, per test point"

    def nbytes(self) -> int:
        return self.sums.element_size() * self.sums.nelement()


def _model_output(
    model: nn.Module, x: Tensor | Inputs, targets: Tensor, kind: str, batch_size: int = 512
) -> Tensor:
    """``(n,)`` log-softmax of class ``targets`` (or the logit margin) of ``model`` on ``x``."""
    device = next(model.parameters()).device
    parts = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            logits = model(x[start : start + batch_size].to(device)).double().cpu()
            c = targets[start : start + batch_size].cpu().long()[:, None]
            if kind == "log_softmax":
                parts.append(torch.log_softmax(logits, dim=1).gather(1, c).squeeze(1))
            else:
                others = logits.scatter(1, c, float("-inf"))
                parts.append(logits.gather(1, c).squeeze(1) - torch.logsumexp(others, dim=1))
    return torch.cat(parts)
