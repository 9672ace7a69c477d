"""Representer Points: attributions from an L2-regularised softmax surrogate of the last layer.

Paper: Yeh, Kim, Yen, Ravikumar, "Representer Point Selection for Explaining Deep Neural Networks"
(NeurIPS 2018); settings as in the DualXDA paper's table of methods
(../shared/reference/dualxda-paper.md): softmax regression refit on the penultimate features,
``lambda = 3e-3``, up to 3000 epochs of full-batch gradient descent with a backtracking line search.
Notation, paper -> code:

- ``phi(x)`` (Yeh: ``f_i``): penultimate features = ``model.features(x)`` (eval mode, no grad,
  flattened) -> ``phi``; computed once on the training set in :meth:`RepresenterPoints.compute` and
  only on the test inputs in :meth:`RepresenterPoints.explain`;
- ``Theta`` (Yeh: the last layer's weights) -> ``W`` ``(k, d)``, WITHOUT a bias: Yeh et al.'s
  representer theorem (their Theorem 3.1) is stated for ``Phi(x_i, Theta) = Theta f_i``; with a
  bias the decomposition would only cover ``W`` and leave the bias unexplained. So the surrogate
  is ``z(x) = W phi(x)``, initialised from ``model.classifier.weight`` (its bias is dropped) and
  refit by minimising (in float64)

      L(W) = (1/N) sum_i CE(W phi_i, T_i) + lam ||W||_F^2 ,   CE(z, t) = logsumexp(z) - <t, z>,

  with ``lam`` = Yeh's ``lambda`` (config ``lam``; ``lambda`` is a Python keyword);
- the targets ``T`` ``(N, k)`` (config ``targets``): ``"model"`` (paper(), quick()) = the ORIGINAL
  model's softmax outputs on the training features, ``T_i = softmax(model.classifier(phi_i))``
  (with the classifier's bias), as the paper's reference code refits; ``"labels"`` = one-hot
  training labels ``onehot(y_i)`` (Yeh et al.'s training loss);
- ``alpha_ij = -1/(2 lam N) dCE(z_i, T_i)/dz_ij = (softmax(z_i)_j - T_ij) / (-2 lam N)`` ->
  ``alpha`` ``(n_train, k)``. Since ``grad L(W) = (1/N) sum_i (softmax(z_i) - T_i) phi_i^T + 2 lam W``,
  at a stationary point ``W = sum_i alpha_i phi_i^T`` (the representer theorem), exactly; away from
  it ``||W - alpha^T Phi||_F = ||grad L(W)||_F / (2 lam)`` (diagnostic ``representer_residual``,
  relative to ``||W||_F``);
- attribution of training point i for test input x and target class c (the model's PREDICTED
  class): ``a_i(x) = alpha_i^c <phi(x), phi(x_i)>``; summed over i it is ``W_c . phi(x)``, the
  surrogate's pre-softmax output for class c;
- self-influence: the self-attribution ``a_i(x_i)`` with target ``y_i`` (the TRAINING label),
  ``alpha_i^{y_i} ||phi_i||^2``, with the same ``alpha`` the attributions use, as the reference
  code ranks by (its ``coefficients[i, labels[i]]`` times a feature norm): mislabel detection
  then measures the explanations the method gives, like every other method's. What it ranks
  depends on the targets. With ``"labels"`` it is ``(1 - softmax(z_i)_{y_i}) ||phi_i||^2 / (2 lam N)
  >= 0``: large where the surrogate misfits the training label. With ``"model"`` it is
  ``(T_{i y_i} - softmax(z_i)_{y_i}) ||phi_i||^2 / (2 lam N)``, of either sign: large where the
  model fits the label better than the regularised surrogate does (labels the model memorised),
  about 0 or negative where the model never fitted the label. So it finds flipped labels only
  once the model fits them. Mislabel detection on MNIST corrupt (1,000 points, seed 0): with a
  3-epoch model that fits 4.8% of the flipped labels 0.30 (model targets) vs 0.89 (labels);
  with a 30-epoch model that fits all of them 0.73 vs 0.74.

Solver. Full-batch gradient descent: every step moves along ``-grad L(W)``; the step length is
found by Armijo backtracking (halving until ``L(W - t g) <= L(W) - c t ||g||^2``, ``c = 1e-4``).
Two choices make it reach a stationary point within the paper's epoch budget; both change the
path, not the optimum (``L`` is strictly convex for ``lam > 0``):

- the first trial step of each line search is the Barzilai–Borwein step
  ``<s, s> / <s, r>`` (``s``, ``r``: the last change of ``W`` and of the gradient). Doubling the
  last accepted step instead leaves a gradient norm of about 2e-4 after 3000 epochs on 2,000 MNIST
  features (condition number about 1e5), so ``W`` and ``alpha^T Phi`` differ by about 3e-2;
  with the BB trial step the gradient norm is below 1e-10 after about 800 epochs;
- the decrease ``L(W - t g) - L(W)`` is evaluated without cancellation (``log1p`` / ``expm1`` of
  the logit change, the regulariser's change in closed form), so the line search keeps deciding
  correctly when the decrease is far below the rounding error of ``L`` itself.

It stops after ``epochs`` steps or when ``||grad L(W)||_F <= tol``. ``epochs`` counts gradient
steps (one full pass over the training features each); line-search trials reuse that pass's
``Phi g^T`` and cost ``O(N k)`` each.

The attribution form, its explanations, feature relevance (XDA) and cache plumbing are shared with
DualDA (:class:`methods._feature_kernel.FeatureKernelMethod`); this module solves ``alpha`` (the
refit) and defines self-influence.

Surrogate faithfulness is measured on the training features at fit time and put in the record
(:func:`methods._feature_kernel.surrogate_faithfulness`): argmax agreement and Pearson correlation
of the logits of the model's classifier (with its bias) and the surrogate, and the mean cosine
between their per-class weight vectors.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from harness.cache import Artefact
from harness.config import Config, ConfigError, option
from harness.protocols import DataError, Split, feature_split
from methods._feature_kernel import FeatureKernelMethod

if TYPE_CHECKING:
    from torch import Tensor, nn

log = logging.getLogger(__name__)

#: Armijo's sufficient-decrease constant.
ARMIJO_C = 1e-4
#: Halvings of the trial step before a line search gives up (the step is then below 2^-60 of the trial).
MAX_BACKTRACKS = 60
#: What the surrogate can be refit to (config ``targets``); the first is the paper's.
TARGETS: tuple[str, ...] = ("model", "labels")


@dataclass(frozen=True, kw_only=True)
class RepresenterConfig(Config):
    """Configuration of :class:`RepresenterPoints`."""

    lam: float = option(3e-3, "L2 regularisation lambda of the softmax surrogate (paper: 3e-3)")
    epochs: int = option(3000, "most full-batch gradient steps of the surrogate's refit (paper: 3000)")
    tol: float = option(1e-10, "stop once the gradient's Frobenius norm is at most this (0: run all epochs)")
    targets: str = option(
        "model",
        "what the surrogate is refit to: 'model' (the model's softmax outputs on the training features, "
        "the paper's reference code) or 'labels' (one-hot training labels, Yeh et al.'s loss)",
    )
    batch_size: int = option(512, "points per forward pass when computing features")

    def __post_init__(self) -> None:
        if isinstance(self.lam, bool) or not (
            isinstance(self.lam, int | float) and math.isfinite(self.lam) and self.lam > 0
        ):
            raise ConfigError(f"lam must be a finite number > 0 (paper: 3e-3), got {self.lam!r}")
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ConfigError(f"epochs must be a positive integer (paper: 3000), got {self.epochs!r}")
        if isinstance(self.tol, bool) or not (
            isinstance(self.tol, int | float) and math.isfinite(self.tol) and self.tol >= 0
        ):
            raise ConfigError(f"tol must be a finite number >= 0, got {self.tol!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if self.targets not in TARGETS:
            raise ConfigError(f"targets must be one of {list(TARGETS)}, got {self.targets!r}")

    @classmethod
    def paper(cls) -> RepresenterConfig:
        """lambda 3e-3, up to 3000 epochs, the model's softmax outputs as targets (the paper's code).

        Stops early at a gradient norm of 1e-10.
        """
        return cls()

    @classmethod
    def quick(cls) -> RepresenterConfig:
        """Unchanged from :meth:`paper`.

        The refit stops at the gradient tolerance long before the epoch cap (about 800 steps on
        2,000 MNIST features, a few seconds on a CPU), so fewer epochs would save nothing on the
        quick suite's sizes and would only risk stopping short of the stationary point, where the
        representer theorem (and thus the attributions' meaning) does not hold.
        """
        return cls()


@dataclass
class SurrogateFit:
    """Result of :func:`fit_softmax_surrogate`.

    Attributes
    ----------
    weights: (k, d) float64: the surrogate ``W``.
    alpha: (n, k) float64: ``(softmax(phi W^T) - T) / (-2 lam N)``, ``T`` the targets.
    epochs: gradient steps taken.
    grad_norm: ``||grad L(W)||_F`` at the returned ``W``.
    converged: ``grad_norm <= tol``.
    objective: ``L(W)`` at the returned ``W``.
    initial_objective: ``L(W0)``.
    line_search_trials: objective-decrease evaluations over all line searches.
    """

    weights: Tensor
    alpha: Tensor
    epochs: int
    grad_norm: float
    converged: bool
    objective: float
    initial_objective: float
    line_search_trials: int


def fit_softmax_surrogate(
    phi: Tensor, targets: Tensor, init: Tensor, *, lam: float, epochs: int, tol: float
) -> SurrogateFit:
    """Minimise ``(1/N) sum_i CE(W phi_i, T_i) + lam ||W||_F^2`` by gradient descent with Armijo backtracking.

    ``CE(z, t) = logsumexp(z) - <t, z>``: the cross-entropy against a target distribution ``t``
    (a one-hot row gives the usual loss at a label). Runs in float64 on ``phi``'s device (see the
    module docstring for the step rule).

    Parameters
    ----------
    phi:
        ``(N, d)`` features.
    targets:
        ``(N, k)`` target distributions (non-negative rows summing to 1): the model's softmax
        outputs, or one-hot labels.
    init:
        ``(k, d)`` starting ``W``.
    lam, epochs, tol:
        As in :class:`RepresenterConfig`.

    Returns
    -------
    SurrogateFit
    """
    phi = phi.to(torch.float64)
    n = phi.shape[0]
    w = init.to(device=phi.device, dtype=torch.float64).clone()
    t_mat = targets.to(device=phi.device, dtype=torch.float64)
    if t_mat.shape != (n, w.shape[0]):
        raise DataError(f"targets must have shape {(n, w.shape[0])}, got {tuple(t_mat.shape)}")

    def gradient(w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logits = phi @ w.T
        probs = torch.softmax(logits, dim=1)
        return (probs - t_mat).T @ phi / n + 2 * lam * w, logits, probs

    def objective(logits: Tensor, w: Tensor) -> float:
        ce = torch.logsumexp(logits, dim=1) - (t_mat * logits).sum(dim=1)
        return float(ce.mean() + lam * (w * w).sum())

    grad, logits, probs = gradient(w)
    initial_objective = objective(logits, w)
    step, trials, steps = 1.0, 0, 0
    grad_norm = float(grad.norm())
    while steps < epochs and grad_norm > tol:
        u = phi @ grad.T  # (N, k): the logits change by -t u along the step
        gg, wg = float((grad * grad).sum()), float((w * grad).sum())
        t = step
        for _ in range(MAX_BACKTRACKS):
            trials += 1
            dz = -t * u
            # L(W - t g) - L(W), cancellation-free: CE_i changes by log(sum_j p_ij e^{dz_ij}) - <T_i, dz_i>
            d_ce = torch.log1p((probs * torch.expm1(dz)).sum(dim=1)) - (t_mat * dz).sum(dim=1)
            decrease = float(d_ce.mean()) + lam * (t * t * gg - 2 * t * wg)
            if math.isfinite(decrease) and decrease <= -ARMIJO_C * t * gg:
                break
            t *= 0.5
        else:
            log.warning(
                "representer: line search found no decrease at gradient norm %.3g after %d steps; "
                "stopping (rounding floor reached?)",
                grad_norm,
                steps,
            )
            break
        w_new = w - t * grad
        grad_new, logits, probs = gradient(w_new)
        s, r = w_new - w, grad_new - grad
        sr = float((s * r).sum())
        bb = float((s * s).sum()) / sr if sr > 0 else math.inf
        step = bb if math.isfinite(bb) and bb > 0 else 2 * t  # next trial: Barzilai-Borwein step
        w, grad, steps = w_new, grad_new, steps + 1
        grad_norm = float(grad.norm())
    alpha = (probs - t_mat) / (-2 * lam * n)
    return SurrogateFit(
        weights=w,
        alpha=alpha,
        epochs=steps,
        grad_norm=grad_norm,
        converged=grad_norm <= tol,
        objective=objective(logits, w),
        initial_objective=initial_objective,
        line_search_trials=trials,
    )


def surrogate_targets(model: nn.Module, phi: Tensor, labels: Tensor, kind: str, num_classes: int) -> Tensor:
    """``(N, k)`` float64 CPU targets of the refit: the model's softmax outputs or one-hot labels.

    Parameters
    ----------
    phi:
        ``(N, d)`` training features, on the model's device.
    labels:
        ``(N,)`` long training labels (used for ``kind="labels"``).
    kind:
        ``"model"``: ``softmax(model.classifier(phi))`` (with the classifier's bias; the softmax in
        float64); ``"labels"``: ``onehot(labels)``.
    """
    if kind == "labels":
        return torch.nn.functional.one_hot(labels.cpu().long(), num_classes).to(torch.float64)
    _, classifier = feature_split(model)
    with torch.no_grad():
        logits = classifier(phi).double().cpu()
    if logits.shape != (phi.shape[0], num_classes):
        raise DataError(
            f"Representer Points: the classifier gives {tuple(logits.shape)} outputs on the features, "
            f"expected {(phi.shape[0], num_classes)}"
        )
    return torch.softmax(logits, dim=1)


class RepresenterPoints(FeatureKernelMethod):
    """Representer Points (Yeh et al. 2018): ``a_i(x) = alpha_i^c <phi(x), phi(x_i)>``.

    Explanations, feature relevance and the cache are :class:`~methods._feature_kernel.FeatureKernelMethod`'s;
    this class solves ``alpha`` by the softmax refit (:meth:`solve`) and defines self-influence.
    """

    Config = RepresenterConfig
    version = "2"
    supports = FeatureKernelMethod.supports | {"self_influence"}
    attributes_through = "last layer (surrogate of the classifier on penultimate features)"
    self_influence_definition = (
        "alpha_i^{y_i} ||phi_i||^2, y_i the training label: the self-attribution a_i(x_i) with the alpha "
        "the attributions use (the reference code's ranking); with the model's softmax outputs as "
        "targets it is large where the model fits y_i better than the regularised surrogate"
    )
    cheap = True
    label = "Representer Points"

    config: RepresenterConfig

    # ----- lifecycle --------------------------------------------------------------------------
    def solve(self, model: nn.Module, train: Split, phi: Tensor) -> Artefact:
        """The softmax surrogate's refit on ``phi`` and its ``alpha``.

        Parameters
        ----------
        phi:
            ``(n_train, d)`` float32 training features on the model's device.

        Returns
        -------
        Artefact
            ``alpha`` ``(n_train, k)``, ``weights`` ``(k, d)`` (the surrogate ``W``, no bias) and
            ``targets`` ``(n_train, k)``, float64 on the CPU; meta: the refit's diagnostics.
        """
        cfg = self.config
        assert self.device_ is not None
        device = self.device_
        labels = train.y.detach().cpu().long()
        init = _initial_weights(model, labels, phi.shape[1])
        # float64 is slow or missing on some accelerators (MPS): solve on the CPU there
        solve_device = device if device.type in ("cpu", "cuda") else torch.device("cpu")
        targets = surrogate_targets(model, phi, labels, cfg.targets, init.shape[0])
        log.info(
            "representer: %d training features of dimension %d, %d classes; refitting to the %s "
            "targets with lam=%g",
            *phi.shape,
            init.shape[0],
            cfg.targets,
            cfg.lam,
        )
        fit = fit_softmax_surrogate(
            phi.to(solve_device), targets, init, lam=cfg.lam, epochs=cfg.epochs, tol=cfg.tol
        )
        if not fit.converged:
            log.warning(
                "representer: gradient norm %.3g > tol %.3g after %d epochs; the representer theorem "
                "holds only up to %.3g (relative)",
                fit.grad_norm,
                cfg.tol,
                fit.epochs,
                fit.grad_norm / (2 * cfg.lam * max(float(fit.weights.norm()), 1e-300)),
            )
        weights, alpha = fit.weights.cpu(), fit.alpha.cpu()
        phi64 = phi.double().cpu()
        residual = float((weights - alpha.T @ phi64).norm()) / max(float(weights.norm()), 1e-300)
        # how far the surrogate's softmax is from its targets: alpha is this gap, scaled by -1/(2 lam N)
        target_gap = float((torch.softmax(phi64 @ weights.T, dim=1) - targets).abs().mean())
        meta = {
            "targets": cfg.targets,
            "target_mean_abs_error": target_gap,
            "num_classes": int(weights.shape[0]),
            "epochs_run": fit.epochs,
            "converged": fit.converged,
            "grad_norm": fit.grad_norm,
            "objective": fit.objective,
            "initial_objective": fit.initial_objective,
            "line_search_trials": fit.line_search_trials,
            "representer_residual": residual,
        }
        return Artefact(
            tensors={
                "alpha": alpha.contiguous(),
                "weights": weights.contiguous(),
                "targets": targets.contiguous(),
            },
            meta=meta,
        )

    # ----- explanations -----------------------------------------------------------------------
    def explain_features(self, phi: Tensor, targets: Tensor) -> Tensor:
        """Attributions from already computed test features ``phi`` ``(n_test, d)``.

        Returns ``(n_test, n_train)`` with ``[j, i] = alpha_i^{c_j} <phi_j, phi(x_i)>``, in float64
        when ``phi`` is float64 (exact checks) and float32 otherwise, on the model's device.
        """
        return self.explain_phi(phi, targets)

    def self_influence(self) -> Tensor:
        """``(n_train,)`` float32: ``alpha_i^{y_i} ||phi_i||^2``, the self-attribution (module docstring)."""
        own = self.own_alpha()
        assert self.train_sq_norms_ is not None
        return (own * self.train_sq_norms_).to(torch.float32)

    def diagnostics(self) -> dict[str, Any]:
        return {"lam": self.config.lam, **super().diagnostics()}


def _initial_weights(model: nn.Module, labels: Tensor, dim: int) -> Tensor:
    """``(k, d)`` float64 start of the refit: the classifier's weight (bias dropped), else zeros."""
    _, classifier = feature_split(model)
    weight = getattr(classifier, "weight", None)
    out = getattr(classifier, "out_features", None)
    if isinstance(weight, torch.Tensor) and weight.ndim == 2 and weight.shape[1] == dim:
        init = weight.detach().double().cpu().clone()
    else:
        k = int(out) if out is not None else int(labels.max()) + 1
        log.warning("representer: classifier is not a (k, %d) linear layer; starting the refit at W = 0", dim)
        init = torch.zeros(k, dim, dtype=torch.float64)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= init.shape[0]):
        raise DataError(
            f"Representer Points: labels must lie in 0..{init.shape[0] - 1} (the model's outputs), "
            f"got {int(labels.min())}..{int(labels.max())}"
        )
    return init
