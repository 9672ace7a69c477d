"""Coreset selection and data pruning: retrain on the most / least important training points.

Metrics 6 and 7 of DualXDA (Yolcu et al., arXiv 2402.12118; ../shared/reference/dualxda-paper.md)::

    g_i        = sum_j |A[j, i]|                          global importance of training point i
    top_f      = the ceil(f * N) points of largest g      (coreset selection)
    bottom_f   = the ceil(f * N) points of smallest g     (data pruning: the top ones are pruned)
    CE(S)      = mean over test points j of cross-entropy(model trained on S)(x_j, c_j)
    coreset    = mean_{f in 10%, 20%, ..., 100%} CE(top_f)      lower is better
    pruning    = mean_{f in 10%, 20%, ..., 100%} CE(bottom_f)   HIGHER is better

``c_j`` is the ORIGINAL model's predicted class of test point j (``ctx.targets``, the class the
attributions explain), as in the paper's evaluation, which wraps the test set with the model's
predictions; the accuracy against ``c_j`` and, as a detail, against the true labels are recorded
beside the loss. Data pruning is "higher is better" because an informative ranking prunes the
training points that matter for these predictions first, so the models trained on what is left
predict them worse than after pruning a random share (a random ranking is the floor).

Ties in ``g`` are broken by training index (a stable sort), so a method with many exact zeros
(DualDA) gets a deterministic order. The models come from the harness' retraining service
(``ctx.retrain``), cached by content hash, so equal subsets (every method's 100%, and methods that
rank alike) share a model. Training length: unless the metric's ``epochs`` option is set, every
retrained model takes as many optimiser steps as the original model (a 10% subset is trained for
about ten times as many epochs), so a small share is not merely under-trained; with ``epochs`` set,
each model is trained for exactly that many epochs. quanda 0.5.0 has no metric for either, so this
module computes them directly.

Streamed: while a run streams the explanations, :class:`AbsColumnSums` keeps ``g`` alone
(``n_train`` float64), adding each chunk's ``sum_j |A[j, i]|`` in float64. Cut into chunks, the sum
is taken in another order than over the whole matrix at once: ``g`` may differ in the last bits
(about 1e-16 relative), which reorders two training points only if their importances are that
close without being equal (equal columns, and the exact zeros of a sparse method, give equal sums
either way).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from harness.config import Config, ConfigError, option, require_positive_int
from harness.protocols import DataError, Inputs, Metric, MetricContext, MetricResult, Reader

if TYPE_CHECKING:
    from torch import Tensor, nn

PAPER_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@dataclass(frozen=True, kw_only=True)
class RetrainCurveConfig(Config):
    """Configuration of :class:`CoresetSelection` and :class:`DataPruning`."""

    fractions: tuple[float, ...] = option(
        PAPER_FRACTIONS, "shares of the training set retrained on (paper: 0.1, 0.2, ..., 1.0)"
    )
    epochs: int | None = option(
        None,
        "training epochs of the retrained models (None: as many optimiser steps as the original model)",
    )

    def __post_init__(self) -> None:
        fractions = self.fractions
        if isinstance(fractions, str):
            fractions = (fractions,)
        if any(isinstance(f, str) for f in fractions):  # from the command line: fractions=0.1;0.5;1.0
            text = " ".join(str(f) for f in fractions).replace(";", " ")
            try:
                fractions = tuple(float(v) for v in text.split())
            except ValueError as err:
                raise ConfigError(
                    f"fractions: write numbers separated by ';', got {self.fractions!r}"
                ) from err
        if not fractions or not all(isinstance(f, int | float) and 0 < f <= 1 for f in fractions):
            raise ConfigError(f"fractions must be numbers in (0, 1], got {self.fractions!r}")
        object.__setattr__(self, "fractions", tuple(float(f) for f in fractions))
        if self.epochs is not None:
            require_positive_int(self.epochs, "epochs")

    @classmethod
    def paper(cls) -> RetrainCurveConfig:
        """10%, 20%, ..., 100% (the paper)."""
        return cls()

    @classmethod
    def quick(cls) -> RetrainCurveConfig:
        """10%, 30%, 50%, 70%, 100%: five retrainings per method instead of ten for the CPU suite."""
        return cls(fractions=(0.1, 0.3, 0.5, 0.7, 1.0))


class _RetrainCurve(Metric):
    """Mean test cross-entropy (against the original model's predictions) of models retrained on the
    top or bottom shares by importance."""

    Config = RetrainCurveConfig
    version = "2"
    direction = "lower"
    #: True: keep the most important points (coreset); False: keep the least important (pruning).
    keep_top: ClassVar[bool] = True

    config: RetrainCurveConfig

    def reader(self, ctx: MetricContext) -> AbsColumnSums:
        """The global importance ``g`` alone: one float64 per training point."""
        return AbsColumnSums()

    def compute(self, ctx: MetricContext) -> MetricResult:
        """The mean cross-entropy over the configured fractions.

        Returns
        -------
        MetricResult
            ``value`` the mean test cross-entropy (nats) against the original model's predictions
            ``ctx.targets``; ``details``: ``fractions``, ``sizes``, and per fraction (the curve)
            ``cross_entropy`` and ``accuracy`` (both against ``ctx.targets``) and
            ``accuracy_true_labels`` (against ``data.test.y``); ``mean_accuracy`` and
            ``mean_accuracy_true_labels`` over the fractions; ``class_counts``: per fraction, the
            number of retained training points of each class (training labels), the evidence when a
            class-imbalanced share loses to a class-balanced random one. ``per_point``: each test
            point's cross-entropy averaged over the fractions (their mean is ``value``; a bootstrap
            over them resamples test points for fixed retrained models, not the retraining).
        """
        _check_targets(ctx, self.name)
        if ctx.retrain is None:
            raise DataError(f"{self.name} retrains models: run it through the harness (ctx.retrain is None)")
        order = _order(ctx.read(self, AbsColumnSums).sums, descending=self.keep_top)
        n = order.numel()
        sizes = [max(1, math.ceil(f * n - 1e-9)) for f in self.config.fractions]
        test = ctx.data.test
        targets = ctx.targets.detach().cpu().long()

        def evaluate(model: nn.Module) -> Tensor:  # (n_test + 2,): per-point losses, two accuracies
            losses, accuracies = _per_point_loss_and_accuracy(model, test.inputs, targets, test.y)
            return torch.cat([losses, accuracies])

        results = ctx.retrain.evaluate(
            [order[:size] for size in sizes], evaluate, purpose=self.name, epochs=self.config.epochs
        )
        labels = ctx.data.train.y.detach().cpu().long()
        num_classes = max(int(labels.max()) + 1, int(targets.max()) + 1) if len(labels) else 0
        class_counts = [
            torch.bincount(labels[order[:size]], minlength=num_classes).tolist() for size in sizes
        ]
        n_test = len(test)
        point_losses = torch.stack([r[:n_test] for r in results])  # (n_fractions, n_test)
        losses = [float(row.mean()) for row in point_losses]
        accuracies = [float(r[n_test]) for r in results]
        true_accuracies = [float(r[n_test + 1]) for r in results]
        return MetricResult(
            value=sum(losses) / len(losses),
            per_point=point_losses.mean(dim=0).tolist(),
            details={
                "fractions": list(self.config.fractions),
                "sizes": sizes,
                "cross_entropy": losses,
                "accuracy": accuracies,
                "accuracy_true_labels": true_accuracies,
                "mean_accuracy": sum(accuracies) / len(accuracies),
                "mean_accuracy_true_labels": sum(true_accuracies) / len(true_accuracies),
                "class_counts": class_counts,
            },
        )


class CoresetSelection(_RetrainCurve):
    """Retrain on the most important 10%..100% (by summed |attribution|); mean test CE, lower is better."""

    keep_top = True


class DataPruning(_RetrainCurve):
    """Retrain on the least important 10%..100% (the top ones pruned); mean test CE, HIGHER is better.

    An informative ranking prunes what the original model's predictions rest on, so the retrained
    models predict them worse than after pruning at random: a higher loss is the better ranking.
    """

    direction = "higher"
    keep_top = False


class AbsColumnSums(Reader):
    """``g_i = sum_j |A[j, i]|`` (float64, on the CPU) of the chunks given, summed chunk by chunk."""

    def __init__(self) -> None:
        self.sums: Tensor | None = None

    def update(self, rows: slice, chunk: Tensor) -> None:
        sums = chunk.detach().abs().double().sum(dim=0).cpu()
        self.sums = sums if self.sums is None else self.sums + sums

    def kept(self) -> str:
        return "the sum of |attribution| per training point"

    def nbytes(self) -> int:
        return 0 if self.sums is None else self.sums.element_size() * self.sums.nelement()


def importance_order(explanations: Tensor, *, descending: bool) -> Tensor:
    """``(n_train,)`` training indices sorted by ``sum_j |A[j, i]|``, ties by index (stable)."""
    reader = AbsColumnSums()
    reader.update(slice(0, len(explanations)), explanations)
    return _order(reader.sums, descending=descending)


def _order(importance: Tensor | None, *, descending: bool) -> Tensor:
    if importance is None:
        raise DataError("no explanations were read (no chunk was given to the reader)")
    return torch.sort(importance, descending=descending, stable=True).indices


def test_loss_and_accuracy(
    model: nn.Module, x: Tensor | Inputs, targets: Tensor, labels: Tensor | None = None, batch_size: int = 512
) -> Tensor:
    """Mean cross-entropy and accuracy of ``model`` on ``x`` against ``targets``, and its accuracy
    against ``labels``.

    Parameters
    ----------
    x:
        ``(n, *input_shape)`` inputs.
    targets:
        ``(n,)`` long: the classes the loss and the first accuracy are measured against (the
        original model's predictions in the metrics above).
    labels:
        ``(n,)`` long, optional: a second set of labels (the true ones) for a second accuracy.

    Returns
    -------
    Tensor
        ``(2,)`` float64 ``[cross-entropy, accuracy]``, or ``(3,)`` with the accuracy against
        ``labels`` appended when they are given.
    """
    losses, values = _per_point_loss_and_accuracy(model, x, targets, labels, batch_size)
    return torch.cat([(losses.sum() / len(x)).reshape(1), values])


def _per_point_loss_and_accuracy(
    model: nn.Module, x: Tensor | Inputs, targets: Tensor, labels: Tensor | None = None, batch_size: int = 512
) -> tuple[Tensor, Tensor]:
    """``(n,)`` float64 cross-entropy per point against ``targets``, and ``(1,)`` or ``(2,)`` the
    accuracies of :func:`test_loss_and_accuracy`."""
    device = next(model.parameters()).device
    losses, correct, correct_labels = [], 0, 0
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            logits = model(x[start : start + batch_size].to(device)).double()
            tb = targets[start : start + batch_size].to(device).long()
            losses.append(torch.nn.functional.cross_entropy(logits, tb, reduction="none").cpu())
            predicted = logits.argmax(dim=1)
            correct += int((predicted == tb).sum())
            if labels is not None:
                correct_labels += int(
                    (predicted == labels[start : start + batch_size].to(device).long()).sum()
                )
    accuracies = [correct / len(x)]
    if labels is not None:
        accuracies.append(correct_labels / len(x))
    return torch.cat(losses), torch.tensor(accuracies, dtype=torch.float64)


def _check_targets(ctx: MetricContext, name: str) -> None:
    n_test = len(ctx.data.test)
    if tuple(ctx.targets.shape) != (n_test,):
        raise DataError(
            f"{name} needs targets ({n_test},) (the original model's predictions); got "
            f"{tuple(ctx.targets.shape)}"
        )
    if n_test == 0:
        raise DataError(f"{name} needs at least one test point")
