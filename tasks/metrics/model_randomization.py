"""Model randomization: do the attributions change when the model's weights are randomized?

A sanity check from the evaluation toolkit of the DualXDA authors' group (quanda; Hanawa et al.,
"Evaluation of Similarity-based Explanations", ICLR 2021; Adebayo et al., "Sanity Checks for
Saliency Maps", NeurIPS 2018); listed beside the paper's seven metrics in
../shared/reference/dualxda-paper.md::

    theta'   = every parameter of the model re-initialised (each module's reset_parameters, seed s)
    A'       = the same method, same config, fitted on theta' and explaining the same test points
               for the same targets (the ORIGINAL model's predictions)
    score    = mean_j Spearman(A[j, :], A'[j, :])          lower is better

A method whose attributions hardly change under a random model does not explain the model: the
``random`` baseline, seeded by its own config and blind to the model, scores 1.0 here. (quanda
passes ``seed + 1`` to explainers that take a seed, which would give the random baseline about 0,
the best score; our adapter takes no seed, so a method's own seed is kept and such a method fails
the check, as it should.) A necessary check, not a ranking of quality.

Computed by quanda 0.5.0's ``ModelRandomizationMetric``: it copies the model, randomizes every
parameter and calls the explainer class it is given; that class is a thin adapter here which asks
the harness (``ctx.explain_with``) to fit a fresh instance of the run's method on the randomized
model. The training checkpoints the model carries (TracIn sums over them) are replaced by the
randomized weights, each checkpoint keeping its learning rate.

The one metric of the catalogue that keeps the whole ``(n_test, n_train)`` matrix (its reader is
:class:`~harness.protocols.WholeMatrix`): each row is correlated with the row of the refit, which
is computed after the run's explanations, from a fresh fit. Keeping less would need the two fits to
explain each chunk side by side, with the refit inside the run's timed and measured explain pass.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from harness.config import Config, ConfigError, option
from harness.protocols import (
    CHECKPOINTS_ATTR,
    Checkpoint,
    DataError,
    Metric,
    MetricContext,
    MetricResult,
    WholeMatrix,
)
from tasks.metrics._quanda import LengthOnly

if TYPE_CHECKING:
    from collections.abc import Callable

    from torch import Tensor, nn


@dataclass(frozen=True, kw_only=True)
class ModelRandomizationConfig(Config):
    """Configuration of :class:`ModelRandomization`."""

    seed: int = option(42, "seed of the re-initialisation (quanda's default)")
    correlation: str = option("spearman", "rank correlation per test point: spearman or kendall")

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        if self.correlation not in ("spearman", "kendall"):
            raise ConfigError(f"correlation must be 'spearman' or 'kendall', got {self.correlation!r}")


class ModelRandomization(Metric):
    """Mean rank correlation between attributions of the trained and of a randomized model."""

    Config = ModelRandomizationConfig
    version = "1"
    direction = "lower"

    config: ModelRandomizationConfig

    def reader(self, ctx: MetricContext) -> WholeMatrix:
        """The whole matrix (see the module docstring)."""
        return WholeMatrix(len(ctx.data.test))

    def compute(self, ctx: MetricContext) -> MetricResult:
        """The mean correlation over the explained test points.

        Returns
        -------
        MetricResult
            ``value`` in [-1, 1]; ``details``: ``correlation``, ``seed``, ``per_point``.
        """
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            from quanda.metrics.heuristics import ModelRandomizationMetric

        if ctx.explain_with is None:
            raise DataError(
                "model_randomization refits the method on a randomized model: run it through the "
                "harness (ctx.explain_with is None)"
            )
        explain_with = ctx.explain_with
        explanations = ctx.read(self, WholeMatrix).matrix
        original_checkpoints = list(getattr(ctx.model, CHECKPOINTS_ATTR, None) or [])

        def explain_randomized(model: nn.Module) -> Tensor:
            state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            setattr(
                model,
                CHECKPOINTS_ATTR,
                [Checkpoint(epoch=c.epoch, lr=c.lr, state=state) for c in original_checkpoints],
            )
            return explain_with(model)

        with tempfile.TemporaryDirectory(dir=_scratch(ctx)) as scratch:
            weights = os.path.join(scratch, "model.pt")
            torch.save(ctx.model.state_dict(), weights)  # quanda reloads the model from a file
            metric = ModelRandomizationMetric(
                model=ctx.model,
                model_id="run",
                cache_dir=scratch,
                train_dataset=LengthOnly(len(ctx.data.train), "model_randomization"),
                checkpoints=[weights],
                explainer_cls=_Refit,
                expl_kwargs={"explain_randomized": explain_randomized},
                correlation_fn=self.config.correlation,
                seed=self.config.seed,
            )
            device = metric.device
            metric.update(
                explanations=explanations.float().to(device),
                # _Refit reads only how many test points there are: n_test empty rows, not the inputs
                test_data=torch.empty(len(ctx.data.test), 0, device=device),
                test_targets=ctx.targets.to(device),
            )
            value = float(metric.compute()["score"])
            per_point = [float(v) for v in metric._per_sample_scores().cpu()]
        return MetricResult(
            value=value,
            details={
                "correlation": self.config.correlation,
                "seed": self.config.seed,
                "per_point": per_point,
            },
        )


class _Refit:
    """quanda's explainer interface over the harness: fit the run's method on the model given."""

    def __init__(
        self,
        model: nn.Module,
        checkpoints: Any,
        train_dataset: Any,
        explain_randomized: Callable[[nn.Module], Tensor],
    ) -> None:
        self._explanations = explain_randomized(model)

    def explain(self, test_data: Tensor, targets: Tensor) -> Tensor:
        if self._explanations.shape[0] != len(test_data):
            raise DataError(
                f"model_randomization: {len(test_data)} test points asked, "
                f"{self._explanations.shape[0]} explained"
            )
        return self._explanations


def _scratch(ctx: MetricContext) -> str:
    path = ctx.cache.root / "scratch"
    path.mkdir(parents=True, exist_ok=True)
    return str(path)
