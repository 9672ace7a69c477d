"""DualDA: data attribution from the dual of a Crammer–Singer SVM on the model's features.

Paper: Yolcu, Weckbecker, Wiegand, Samek, Lapuschkin, "DualXDA: Towards Sparse, Efficient and
Explainable Data Attribution in Large AI Models" (arXiv 2402.12118, TMLR 2025); facts in
../shared/reference/dualxda-paper.md. Notation, paper -> code:

- ``phi(x)``: penultimate features = ``model.features(x)`` (eval mode, no grad, un-augmented
  training set, no normalisation) -> ``phi``;
- the surrogate: a multi-class linear SVM (Crammer–Singer, bias appended as a constant feature 1
  and regularised) fitted on ``(phi(x_i), y_i)`` with ``y_i`` the labels the model was TRAINED on
  (flipped ones in the corrupt variant) -> :func:`methods.cs_dual.solve_cs_dual` (numba, CPU) or
  :func:`methods.cs_dual_torch.solve_cs_dual_torch` (torch, on the features' device; see Solver);
- ``alpha_i^m``: its dual variables -> ``alpha`` ``(n_train, k)``; a training point with
  ``alpha_i = 0`` is not a support vector;
- attribution of training point i for test input x and target class c (the model's PREDICTED
  class): ``a_i(x) = alpha_i^c <phi(x), phi(x_i)>``. Summed over i it is ``w_c . phi(x)``, the
  surrogate's logit without its bias. Non-support vectors get exactly 0;
- self-influence: ``||phi_i||^2 alpha_i^{y_i}`` (the self-attribution; ``self_influence="sq_norm"``),
  the reference code's ``||phi_i|| alpha_i^{y_i}`` (``"norm"``) or ``alpha_i^{y_i}`` (``"alpha"``).

The attribution form, its explanations, feature relevance (XDA) and cache plumbing are shared with
Representer Points (:class:`methods._feature_kernel.FeatureKernelMethod`); this module solves
``alpha`` and adds self-influence and the sparse forms.

Cost. ``fit`` = one forward pass over the training set plus the solver, cached by content hash
(model weights, training data, every solver option; not ``self_influence``, which only chooses
among scores of one solution). ``explain`` = one forward pass of the test
points plus a matmul against the SUPPORT VECTORS only (``n_test x d x n_support``);
:meth:`DualDA.explain` scatters that into the harness' dense ``(n_test, n_train)`` matrix,
:meth:`DualDA.explain_sparse` and :meth:`DualDA.explain_topk` do not.

Solver. Where the features are on a CUDA device the dual is solved there by the torch solver,
elsewhere by the numba solver; ``DABENCH_CS_SOLVER=numba|torch`` forces one (tests, benchmarks).
Both stop on the same KKT test at the same ``tol``, so they reach the same optimum to that
tolerance: the choice is not a config field and changes no run id or cache key (an entry solved by
one is a hit for the other). ``diagnostics()["solver"]`` names the solver that computed alpha.

Surrogate faithfulness (the paper's appendix) is measured on the training features at fit time and
put in the record (:func:`methods._feature_kernel.surrogate_faithfulness`): cosine between the
model's and the SVM's class weight vectors, Pearson correlation of their logits (the SVM's with its
bias), and argmax agreement.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import torch

from harness.cache import Artefact
from harness.config import Config, ConfigError, option
from harness.protocols import DataError, Split, feature_split
from methods._feature_kernel import FeatureKernelMethod

if TYPE_CHECKING:
    from torch import Tensor, nn

log = logging.getLogger(__name__)

#: The paper's C grid (its Figure 1 and tables).
C_GRID = (1e-5, 1e-3, 1e-1)
SELF_INFLUENCE = ("sq_norm", "norm", "alpha")
#: Forces the Crammer–Singer solver: "numba" or "torch"; unset, empty or "auto": :func:`cs_solver`.
SOLVER_ENV = "DABENCH_CS_SOLVER"
SOLVERS = ("numba", "torch")


def cs_solver(device: torch.device) -> str:
    """The solver DualDA runs for features on ``device``: ``$DABENCH_CS_SOLVER`` if set, else
    "torch" on a CUDA device and "numba" elsewhere."""
    value = os.environ.get(SOLVER_ENV, "").strip().lower() or "auto"
    if value == "auto":
        return "torch" if torch.device(device).type == "cuda" else "numba"
    if value not in SOLVERS:
        raise ConfigError(f"{SOLVER_ENV} must be one of auto, {', '.join(SOLVERS)} (or unset), got {value!r}")
    return value


@dataclass(frozen=True, kw_only=True)
class DualDAConfig(Config):
    """Configuration of :class:`DualDA`. The paper's grid of C is :data:`C_GRID` (:meth:`grid`)."""

    C: float = option(1e-3, "SVM regularisation C (paper grid: 1e-5, 1e-3, 1e-1)")
    tol: float = option(1e-4, "solver stops when the largest KKT violation is below this (paper: 1e-4)")
    max_iter: int = option(1_000_000, "most passes of the solver over the data (paper: 1e6)")
    shrinking: bool = option(True, "solver drops settled points and classes from passes (same optimum)")
    bias_scale: float = option(1.0, "constant feature appended for the bias (liblinear intercept_scaling)")
    seed: int = option(0, "seeds the solver's visiting order")
    self_influence: Literal["sq_norm", "norm", "alpha"] = option(
        "sq_norm", "self-influence: sq_norm = ||phi_i||^2 alpha_i^y, norm = ||phi_i|| alpha_i^y, alpha"
    )
    batch_size: int = option(512, "points per forward pass when computing features")

    def __post_init__(self) -> None:
        if isinstance(self.C, bool) or not (
            isinstance(self.C, int | float) and math.isfinite(self.C) and self.C > 0
        ):
            raise ConfigError(f"C must be a finite number > 0 (paper grid: {list(C_GRID)}), got {self.C!r}")
        if not (isinstance(self.tol, int | float) and self.tol > 0):
            raise ConfigError(f"tol must be > 0, got {self.tol!r}")
        if not (isinstance(self.max_iter, int) and self.max_iter >= 1):
            raise ConfigError(f"max_iter must be a positive integer, got {self.max_iter!r}")
        if not (isinstance(self.bias_scale, int | float) and self.bias_scale >= 0):
            raise ConfigError(f"bias_scale must be >= 0 (0 = no bias), got {self.bias_scale!r}")
        if self.self_influence not in SELF_INFLUENCE:
            raise ConfigError(
                f"self_influence must be one of {list(SELF_INFLUENCE)}, got {self.self_influence!r}"
            )
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {self.batch_size!r}")

    @classmethod
    def paper(cls) -> DualDAConfig:
        """The paper's solver settings (tol 1e-4, max_iter 1e6) at the middle of its C grid."""
        return cls()

    @classmethod
    def quick(cls) -> DualDAConfig:
        """Unchanged: the solver takes seconds on the quick suite's sizes, so nothing is scaled."""
        return cls()

    @classmethod
    def grid(cls, base: DualDAConfig | None = None) -> list[DualDAConfig]:
        """``base`` (default: :meth:`paper`) at each C of the paper's grid."""
        base = base if base is not None else cls.paper()
        return [replace(base, C=c) for c in C_GRID]

    @classmethod
    def sweep(cls) -> tuple[dict[str, Any], ...]:
        """The paper's C grid, one run per C: ``({"C": 1e-5}, {"C": 1e-3}, {"C": 1e-1})``."""
        return tuple({"C": c} for c in C_GRID)


@dataclass
class SparseAttributions:
    """Attributions restricted to the support vectors: every other column is exactly zero.

    Attributes
    ----------
    indices: (n_support,) long: training indices of the support vectors, increasing.
    values: (n_test, n_support) float32: ``values[j, s]`` is the attribution of training point
        ``indices[s]`` for test point j.
    n_train: number of training points (columns of the dense form).
    """

    indices: Tensor
    values: Tensor
    n_train: int

    def to_dense(self) -> Tensor:
        """``(n_test, n_train)`` float32 with exact zeros outside the support."""
        dense = self.values.new_zeros(self.values.shape[0], self.n_train)
        dense[:, self.indices] = self.values
        return dense


class DualDA(FeatureKernelMethod):
    """DualDA (DualXDA paper): sparse attributions from the SVM surrogate's dual variables.

    Explanations, feature relevance and the cache are :class:`~methods._feature_kernel.FeatureKernelMethod`'s;
    this class solves ``alpha`` (:meth:`solve`), defines self-influence and adds the sparse forms
    (:meth:`explain_sparse`, :meth:`explain_topk`).
    """

    Config = DualDAConfig
    version = "1"
    supports = FeatureKernelMethod.supports | {"self_influence", "sparse"}
    attributes_through = "penultimate features (an SVM surrogate of the classifier on phi)"
    self_influence_definition = "||phi_i||^2 alpha_i^{y_i} (options: ||phi_i|| alpha_i^{y_i}, alpha_i^{y_i})"
    cache_ignores = frozenset({"self_influence"})  # chooses among scores of one solution
    cheap = True
    label = "DualDA"
    keep_support_only = True

    config: DualDAConfig

    # ----- lifecycle --------------------------------------------------------------------------
    def warm_up(self, device: torch.device) -> None:
        """Prepare the solver that will run (:func:`cs_solver`) on a tiny problem: compile the numba
        kernels (the first solve in a process would otherwise pay it inside the timed fit: about
        0.5-1 s against 0.01 s for a warm solve), or run the torch solver's kernels once on ``device``."""
        if cs_solver(device) == "torch":
            from methods.cs_dual_torch import prepare

            prepare(device)
        else:
            from methods.cs_dual import compile_kernels

            compile_kernels()

    def solve(self, model: nn.Module, train: Split, phi: Tensor) -> Artefact:
        """The Crammer–Singer dual on ``(phi, train.y)``: alpha, the SVM's weights and bias, diagnostics.

        Parameters
        ----------
        phi:
            ``(n_train, d)`` float32 training features on the model's device.

        Returns
        -------
        Artefact
            ``alpha`` ``(n_train, k)``, ``weights`` ``(k, d)``, ``bias`` ``(k,)`` (float64, CPU);
            meta: the solver's name, time, iterations, convergence, KKT violation and objectives.
        """
        cfg = self.config
        solver = cs_solver(phi.device)
        log.info(
            "dualda: %d training features of dimension %d; solving with C=%g (%s solver)",
            *phi.shape,
            cfg.C,
            solver,
        )
        labels = train.y.detach().cpu().long()
        options: dict[str, Any] = {
            "C": cfg.C,
            "num_classes": _num_classes(model, labels),
            "tol": cfg.tol,
            "max_iter": cfg.max_iter,
            "shrinking": cfg.shrinking,
            "bias_scale": cfg.bias_scale,
            "seed": cfg.seed,
        }
        if solver == "torch":
            from methods.cs_dual_torch import solve_cs_dual_torch

            solution = solve_cs_dual_torch(phi, labels.to(phi.device), **options)
        else:
            from methods.cs_dual import solve_cs_dual

            solution = solve_cs_dual(phi.cpu().numpy(), labels.numpy(), **options)
        meta = {
            "solver": solver,
            "solver_seconds": solution.seconds,
            "iterations": solution.iterations,
            "converged": solution.converged,
            "max_kkt_violation": solution.max_violation,
            "primal_objective": solution.primal_objective,
            "dual_objective": solution.dual_objective,
            "duality_gap": solution.duality_gap,
        }
        return Artefact(
            tensors={
                "alpha": torch.from_numpy(solution.alpha),
                "weights": torch.from_numpy(solution.weights),
                "bias": torch.from_numpy(solution.bias),
            },
            meta=meta,
        )

    # ----- explanations -----------------------------------------------------------------------
    def explain_features(self, phi: Tensor, targets: Tensor) -> SparseAttributions:
        """Attributions from already computed test features ``phi`` ``(n_test, d)``.

        ``values[j, s] = alpha_{S_s}^{c_j} <phi_j, phi(x_{S_s})>`` over the support vectors S only.
        """
        self._require_fitted()
        assert self.support_ is not None and self.alpha_ is not None
        return SparseAttributions(self.support_, self.kernel_values(phi, targets), int(self.alpha_.shape[0]))

    def explain_sparse(self, x: Tensor, targets: Tensor) -> SparseAttributions:
        """Attributions of test inputs ``x`` ``(n_test, *input_shape)`` on the support vectors only."""
        self._require_fitted()
        return self.explain_features(self.features_of(x), targets)

    def explain_topk(
        self, x: Tensor, targets: Tensor, k: int, *, largest: bool = True
    ) -> tuple[Tensor, Tensor]:
        """The ``k`` strongest proponents (``largest=False``: opponents) per test point.

        Returns ``(values, indices)``, each ``(n_test, k)``, computed without the dense matrix when
        ``k`` does not exceed the number of support vectors.
        """
        sparse = self.explain_sparse(x, targets)
        if not 1 <= k <= sparse.n_train:
            raise ValueError(f"k must lie in 1..{sparse.n_train} (the training set size), got {k}")
        if k > sparse.indices.numel():  # fewer support vectors than asked for: zeros fill the rest
            values, columns = torch.topk(sparse.to_dense(), k, dim=1, largest=largest)
            return values, columns
        values, columns = torch.topk(sparse.values, k, dim=1, largest=largest)
        return values, sparse.indices[columns]

    def self_influence(self) -> Tensor:
        """``(n_train,)`` float32 self-influence (``config.self_influence`` chooses the definition)."""
        own = self.own_alpha()
        assert self.train_sq_norms_ is not None
        kind = self.config.self_influence
        if kind == "sq_norm":
            scores = self.train_sq_norms_ * own
        elif kind == "norm":
            scores = self.train_sq_norms_.sqrt() * own
        else:
            scores = own
        return scores.to(torch.float32)

    def diagnostics(self) -> dict[str, Any]:
        info = {"C": self.config.C, **super().diagnostics()}
        if self._fitted and "solver" not in info:
            info["solver"] = "numba"  # cached before the torch solver existed: numba solved it
        return info


def _num_classes(model: nn.Module, labels: Tensor) -> int:
    """Classes of the model's output layer (labels may miss some classes in a small subset)."""
    _, classifier = feature_split(model)
    out = getattr(classifier, "out_features", None)
    k = int(out) if out is not None else int(labels.max()) + 1
    if labels.numel() and int(labels.max()) >= k:
        raise DataError(f"DualDA: labels reach {int(labels.max())} but the model has {k} outputs")
    return k
