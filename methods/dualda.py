"""DualDA: data attribution from the dual of a Crammer–Singer SVM on the model's features.

Paper: Yolcu, Weckbecker, Wiegand, Samek, Lapuschkin, "DualXDA: Towards Sparse, Efficient and
Explainable Data Attribution in Large AI Models" (arXiv 2402.12118, TMLR 2025); facts in
../shared/reference/dualxda-paper.md. Notation, paper -> code:

- ``phi(x)``: penultimate features = ``model.features(x)`` (eval mode, no grad, un-augmented
  training set, no normalisation) -> ``phi``;
- the surrogate: a multi-class linear SVM (Crammer–Singer, bias appended as a constant feature 1
  and regularised) fitted on ``(phi(x_i), y_i)`` with ``y_i`` the labels the model was TRAINED on
  (flipped ones in the corrupt variant) -> :func:`methods.cs_dual.solve_cs_dual`;
- ``alpha_i^m``: its dual variables -> ``alpha`` ``(n_train, k)``; a training point with
  ``alpha_i = 0`` is not a support vector;
- attribution of training point i for test input x and target class c (the model's PREDICTED
  class): ``a_i(x) = alpha_i^c <phi(x), phi(x_i)>``. Summed over i it is ``w_c . phi(x)``, the
  surrogate's logit without its bias. Non-support vectors get exactly 0;
- self-influence: ``||phi_i||^2 alpha_i^{y_i}`` (the self-attribution; ``self_influence="sq_norm"``),
  the reference code's ``||phi_i|| alpha_i^{y_i}`` (``"norm"``) or ``alpha_i^{y_i}`` (``"alpha"``).

Cost. ``fit`` = one forward pass over the training set plus the solver, cached by content hash
(model weights, training data, every solver option). ``explain`` = one forward pass of the test
points plus a matmul against the SUPPORT VECTORS only (``n_test x d x n_support``);
:meth:`DualDA.explain` scatters that into the harness' dense ``(n_test, n_train)`` matrix,
:meth:`DualDA.explain_sparse` and :meth:`DualDA.explain_topk` do not.

Surrogate faithfulness (the paper's appendix) is measured on the training features at fit time and
put in the record: cosine between the model's and the SVM's class weight vectors, Pearson
correlation of their logits, and argmax agreement.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import torch

from harness.cache import Artefact
from harness.config import Config, ConfigError, option
from harness.measures import model_fingerprint
from harness.protocols import DataError, Method, Split, feature_split, penultimate_features

if TYPE_CHECKING:
    from torch import Tensor, nn

    from harness.cache import Cache

log = logging.getLogger(__name__)

#: The paper's C grid (its Figure 1 and tables).
C_GRID = (1e-5, 1e-3, 1e-1)
SELF_INFLUENCE = ("sq_norm", "norm", "alpha")


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


class DualDA(Method):
    """DualDA (DualXDA paper): sparse attributions from the SVM surrogate's dual variables."""

    Config = DualDAConfig
    version = "1"
    supports = frozenset({"self_influence", "sparse", "cache", "feature_decomposition"})
    attributes_through = "penultimate features (an SVM surrogate of the classifier on phi)"
    self_influence_definition = "||phi_i||^2 alpha_i^{y_i} (options: ||phi_i|| alpha_i^{y_i}, alpha_i^{y_i})"

    config: DualDAConfig

    def __init__(self, config: DualDAConfig | None = None) -> None:
        super().__init__(config)
        self.alpha_: Tensor | None = None  # (n_train, k) float64, CPU
        self.support_: Tensor | None = None  # (n_support,) long, model device
        self.support_features_: Tensor | None = None  # (n_support, d) float32, model device
        self.support_alpha_: Tensor | None = None  # (k, n_support) float32, model device
        self.train_sq_norms_: Tensor | None = None  # (n_train,) float64, CPU
        self.train_labels_: Tensor | None = None  # (n_train,) long, CPU
        self.weights_: Tensor | None = None  # (k, d) float64, CPU: W = alpha^T phi
        self.bias_: Tensor | None = None  # (k,) float64, CPU
        self.solver_info_: dict[str, Any] = {}
        self._model: nn.Module | None = None
        self._device: torch.device | None = None

    # ----- features ---------------------------------------------------------------------------
    def _features(self, model: nn.Module, x: Tensor, device: torch.device) -> Tensor:
        """``(n, d)`` float32 penultimate features of ``x``, in batches, eval mode, no grad."""
        return penultimate_features(model, x, self.config.batch_size, device)

    def _cache_key(self, model: nn.Module, train: Split) -> dict[str, Any]:
        solver = {k: v for k, v in self.config.to_dict().items() if k != "self_influence"}
        return {
            "method": "DualDA",
            "version": self.version,
            "train": train.fingerprint(),
            "model": model_fingerprint(model),
            **solver,
        }

    # ----- lifecycle --------------------------------------------------------------------------
    def warm_up(self, device: torch.device) -> None:
        """Compile the solver's numba kernels on a tiny problem (the first solve in a process would
        otherwise pay it inside the timed fit: about 0.5-1 s against 0.01 s for a warm solve)."""
        from methods.cs_dual import compile_kernels

        compile_kernels()

    def fit(self, model: nn.Module, train: Split, *, cache: Cache) -> None:
        """Features of the training set, then the Crammer–Singer dual; cached by content hash.

        Parameters
        ----------
        model:
            The trained model (with a ``features``/``classifier`` split), on its device.
        train:
            ``x`` ``(n_train, *input_shape)``; ``y`` ``(n_train,)`` the labels the model was trained on.
        cache:
            Stores alpha, the support vectors' features, all squared feature norms, the SVM
            weights and the solver's diagnostics.
        """
        device = _model_device(model)
        if len(train) == 0:
            raise DataError("DualDA: the training set is empty; it needs points of at least two classes")
        artefact = cache.get_or_create(
            self._cache_key(model, train), lambda: self._solve(model, train, device)
        )
        t = artefact.tensors
        self.alpha_ = t["alpha"]
        self.support_ = t["support"].to(device)
        self.support_features_ = t["support_features"].to(device=device, dtype=torch.float32)
        # (k, n_support): row c holds alpha_S^c, so picking one row per test point is contiguous
        self.support_alpha_ = t["alpha"][t["support"]].T.contiguous().to(device=device, dtype=torch.float32)
        self.train_sq_norms_ = t["sq_norms"]
        self.train_labels_ = t["labels"]
        self.weights_, self.bias_ = t["weights"], t["bias"]
        self.solver_info_ = dict(artefact.meta)
        self._model = model
        self._device = device
        self._fitted = True

    def _solve(self, model: nn.Module, train: Split, device: torch.device) -> Artefact:
        from methods.cs_dual import solve_cs_dual

        cfg = self.config
        phi = self._features(model, train.x, device)
        log.info("dualda: %d training features of dimension %d; solving with C=%g", *phi.shape, cfg.C)
        phi_np = phi.cpu().numpy()
        labels = train.y.detach().cpu().long()
        num_classes = _num_classes(model, labels)
        solution = solve_cs_dual(
            phi_np,
            labels.numpy(),
            C=cfg.C,
            num_classes=num_classes,
            tol=cfg.tol,
            max_iter=cfg.max_iter,
            shrinking=cfg.shrinking,
            bias_scale=cfg.bias_scale,
            seed=cfg.seed,
        )
        alpha = torch.from_numpy(solution.alpha)
        support = torch.nonzero(alpha.abs().sum(dim=1) > 0).flatten()
        meta = {
            "n_train": len(train),
            "feature_dim": int(phi.shape[1]),
            "n_support": int(support.numel()),
            "support_share": support.numel() / len(train),
            "solver_seconds": solution.seconds,
            "iterations": solution.iterations,
            "converged": solution.converged,
            "max_kkt_violation": solution.max_violation,
            "primal_objective": solution.primal_objective,
            "dual_objective": solution.dual_objective,
            "duality_gap": solution.duality_gap,
            **surrogate_faithfulness(model, phi, solution.weights, solution.bias),
        }
        return Artefact(
            tensors={
                "alpha": alpha,
                "support": support,
                "support_features": phi[support.to(phi.device)].cpu().contiguous(),
                "sq_norms": (phi.double() ** 2).sum(dim=1).cpu(),
                "labels": labels,
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
        assert self.support_features_ is not None and self.support_alpha_ is not None
        assert self.support_ is not None and self.alpha_ is not None
        targets = targets.to(self.support_alpha_.device).long().reshape(-1)
        if targets.shape[0] != phi.shape[0]:
            raise DataError(f"DualDA: {phi.shape[0]} test points but {targets.shape[0]} targets")
        k = self.support_alpha_.shape[0]
        if targets.numel() and (targets.min() < 0 or targets.max() >= k):
            raise DataError(f"DualDA: targets must be classes in 0..{k - 1}, got {targets.unique().tolist()}")
        values = phi.float() @ self.support_features_.T  # (n_test, n_support) inner products
        values.mul_(self.support_alpha_[targets])  # times alpha_S^{c_j}, in place (one pass less)
        return SparseAttributions(self.support_, values, int(self.alpha_.shape[0]))

    def explain_sparse(self, x: Tensor, targets: Tensor) -> SparseAttributions:
        """Attributions of test inputs ``x`` ``(n_test, *input_shape)`` on the support vectors only."""
        self._require_fitted()
        assert self._model is not None and self._device is not None
        return self.explain_features(self._features(self._model, x, self._device), targets)

    def explain(self, x: Tensor, targets: Tensor) -> Tensor:
        """``(n_test, n_train)`` float32 attributions; exactly zero outside the support vectors."""
        return self.explain_sparse(x, targets).to_dense()

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

    def feature_relevance(self, x: Tensor, target: int | Tensor, train_indices: Tensor) -> Tensor:
        """XDA's per-feature terms ``alpha_i^c phi_k(x) phi_k(x_i)``: ``(m, d)`` float64 (:class:`Method`).

        ``x`` ``(1, *input_shape)``; rows of training points that are not support vectors are 0.
        """
        self._require_fitted()
        assert self._model is not None and self._device is not None and self.alpha_ is not None
        assert self.support_ is not None and self.support_features_ is not None
        n_train, k = self.alpha_.shape
        index, c = _check_decomposition_input(x, target, train_indices, n_train, k)
        phi = self._features(self._model, x, self._device).double()  # (1, d)
        position = torch.full((n_train,), -1, dtype=torch.long)
        position[self.support_.cpu()] = torch.arange(self.support_.numel())
        pos = position[index]
        rows = torch.zeros(len(index), phi.shape[1], dtype=torch.float64, device=self._device)
        hit = pos >= 0
        if hit.any():
            alpha = self.alpha_[index[hit], c].to(self._device)
            support = self.support_features_[pos[hit].to(self._device)].double()
            rows[hit.to(self._device)] = alpha[:, None] * phi * support
        return rows

    def self_influence(self) -> Tensor:
        """``(n_train,)`` float32 self-influence (``config.self_influence`` chooses the definition)."""
        self._require_fitted()
        assert self.alpha_ is not None and self.train_labels_ is not None and self.train_sq_norms_ is not None
        own = self.alpha_[torch.arange(len(self.train_labels_)), self.train_labels_]
        kind = self.config.self_influence
        if kind == "sq_norm":
            scores = self.train_sq_norms_ * own
        elif kind == "norm":
            scores = self.train_sq_norms_.sqrt() * own
        else:
            scores = own
        return scores.to(torch.float32)

    def diagnostics(self) -> dict[str, Any]:
        return {"C": self.config.C, **self.solver_info_}


def surrogate_faithfulness(model: nn.Module, phi: Tensor, weights: Any, bias: Any) -> dict[str, float | None]:
    """How closely the SVM surrogate follows the model's own classifier on features ``phi``.

    Returns the mean cosine between the model's and the SVM's per-class weight vectors (None when
    the classifier is not a single linear layer), the Pearson correlation of all logits, and the
    share of points where the two argmax predictions agree.
    """
    _, classifier = feature_split(model)
    svm_w = torch.as_tensor(weights, dtype=torch.float64)
    svm_b = torch.as_tensor(bias, dtype=torch.float64)
    cosine = None
    if isinstance(classifier, torch.nn.Linear) and tuple(classifier.weight.shape) == tuple(svm_w.shape):
        model_w = classifier.weight.detach().double().cpu()
        cosine = float(torch.nn.functional.cosine_similarity(model_w, svm_w, dim=1).mean())
    with torch.no_grad():
        model_logits = classifier(phi).double().cpu()
    svm_logits = phi.double().cpu() @ svm_w.T + svm_b
    if model_logits.shape != svm_logits.shape:
        return {"weight_cosine": cosine, "logit_correlation": None, "argmax_agreement": None}
    stacked = torch.stack([model_logits.flatten(), svm_logits.flatten()])
    correlation = float(torch.corrcoef(stacked)[0, 1])
    agreement = float((model_logits.argmax(dim=1) == svm_logits.argmax(dim=1)).double().mean())
    return {"weight_cosine": cosine, "logit_correlation": correlation, "argmax_agreement": agreement}


def _num_classes(model: nn.Module, labels: Tensor) -> int:
    """Classes of the model's output layer (labels may miss some classes in a small subset)."""
    _, classifier = feature_split(model)
    out = getattr(classifier, "out_features", None)
    k = int(out) if out is not None else int(labels.max()) + 1
    if labels.numel() and int(labels.max()) >= k:
        raise DataError(f"DualDA: labels reach {int(labels.max())} but the model has {k} outputs")
    return k


def _check_decomposition_input(
    x: Tensor, target: int | Tensor, train_indices: Tensor, n_train: int, k: int
) -> tuple[Tensor, int]:
    """``(m,)`` long CPU training indices and the int class, checked (DataError on bad input)."""
    if x.dim() < 2 or x.shape[0] != 1:
        raise DataError(
            f"DualDA: feature_relevance explains one input (1, *input_shape), got {tuple(x.shape)}"
        )
    c = int(target)
    if not 0 <= c < k:
        raise DataError(f"DualDA: target must be a class in 0..{k - 1}, got {c}")
    index = torch.as_tensor(train_indices).detach().cpu().long().reshape(-1)
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n_train):
        raise DataError(f"DualDA: training indices must lie in 0..{n_train - 1}")
    return index, c


def _model_device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")
