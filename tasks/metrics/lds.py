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

Computed by quanda 0.5.0's ``LinearDatamodelingMetric`` (subsets drawn by its own
``generate_subsets`` with ``torch.randperm`` under ``seed``; per-point Spearman by torchmetrics):
we hand it the subsets and, as ``subset_logits``, the retrained models' outputs as ``(n_test,)``
vectors, which it uses unchanged. quanda's default output for multi-column logits is the margin
``z_c - logsumexp_{j != c} z_j`` (Park et al.'s Eq. 19); the DualXDA paper uses the log-softmax of
the predicted class, our default (``output="log_softmax"``); ``output="margin"`` gives Park et al.'s.
A test point whose predicted outputs or attributions are constant across subsets has an undefined
Spearman correlation; torchmetrics returns 0 for it (counted in ``details["constant_rows"]``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

from harness.config import Config, ConfigError, option, require_positive_int
from harness.protocols import DataError, Metric, MetricContext, MetricResult
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

    def compute(self, ctx: MetricContext) -> MetricResult:
        """LDS over the explained test points.

        Parameters
        ----------
        ctx:
            ``explanations`` ``(n_test, n_train)``, ``targets`` ``(n_test,)`` the original model's
            predictions, ``data.test.x`` the test inputs, ``retrain`` the harness' retraining
            service.

        Returns
        -------
        MetricResult
            ``value`` in [-1, 1]; ``details``: ``m``, ``alpha``, ``subset_size``, ``output``,
            ``constant_rows``; ``per_point``: the n_test correlations.
        """
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            from quanda.metrics.ground_truth import LinearDatamodelingMetric

        explanations, targets = _checked(ctx)
        if ctx.retrain is None:
            raise DataError(
                "LDS retrains models on subsets: run it through the harness (ctx.retrain is None)"
            )
        cfg = self.config
        n_train = explanations.shape[1]
        subset_size = int(cfg.alpha * n_train)
        if subset_size < 1:
            raise DataError(f"alpha {cfg.alpha} of {n_train} training points leaves an empty subset")
        train = LengthOnly(n_train, "lds")
        subset_ids = LinearDatamodelingMetric.generate_subsets(
            train, alpha=cfg.alpha, m=cfg.m, generator=torch.Generator().manual_seed(cfg.seed)
        )
        test_x = ctx.data.test.x

        def output(model: nn.Module) -> Tensor:
            return _model_output(model, test_x, targets, cfg.output)

        outputs = ctx.retrain.evaluate(
            [torch.tensor(ids) for ids in subset_ids], output, purpose="lds", epochs=cfg.epochs
        )
        metric = LinearDatamodelingMetric(
            model=ctx.model,
            train_dataset=train,
            m=cfg.m,
            alpha=cfg.alpha,
            seed=cfg.seed,
            subset_ids=subset_ids,
            subset_ckpt_filenames=[f"counterfactual-{k}" for k in range(cfg.m)],  # never loaded
            cache_dir=str(ctx.cache.root),
        )
        device = explanations.device
        metric.update(
            explanations=explanations.float(),
            test_targets=targets.to(device),
            test_data=test_x,
            subset_logits={k: out.to(device) for k, out in enumerate(outputs)},
        )
        value = float(metric.compute()["score"])
        per_point = metric._per_sample_scores().cpu()
        predicted = torch.stack([explanations[:, torch.tensor(ids)].sum(dim=1) for ids in subset_ids], dim=1)
        actual = torch.stack([o.cpu() for o in outputs], dim=1)
        constant = int(((predicted.std(dim=1) == 0) | (actual.std(dim=1) == 0)).sum())
        return MetricResult(
            value=value,
            details={
                "m": cfg.m,
                "alpha": cfg.alpha,
                "subset_size": subset_size,
                "output": cfg.output,
                "constant_rows": constant,
            },
            per_point=[float(v) for v in per_point],
        )


def _model_output(model: nn.Module, x: Tensor, targets: Tensor, kind: str, batch_size: int = 512) -> Tensor:
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


def _checked(ctx: MetricContext) -> tuple[Tensor, Tensor]:
    explanations, targets = ctx.explanations, ctx.targets
    expected = (len(ctx.data.test), len(ctx.data.train))
    if tuple(explanations.shape) != expected or tuple(targets.shape) != expected[:1]:
        raise DataError(
            f"LDS needs explanations (n_test, n_train) = {expected} and targets ({expected[0]},); got "
            f"{tuple(explanations.shape)} and {tuple(targets.shape)}"
        )
    return explanations, targets
