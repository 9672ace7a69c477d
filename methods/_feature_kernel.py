"""The feature-kernel form shared by DualDA and Representer Points.

Both attribute through the penultimate features ``phi(x) = model.features(x)`` (DualXDA paper,
../shared/reference/dualxda-paper.md; Yeh et al., "Representer Point Selection", NeurIPS 2018)::

    a_i^c(x) = alpha_i^c <phi(x), phi(x_i)>          (training point i, target class c)

and differ only in how ``alpha`` ``(n_train, k)`` is solved: the dual variables of a Crammer–Singer
SVM (:mod:`methods.dualda`) or the representer coefficients of an L2-regularised softmax refit
(:mod:`methods.representer`). Summed over ``i`` the attribution is ``w_c . phi(x)`` with
``W = alpha^T Phi`` the surrogate's weights (``(k, d)``, no bias).

:class:`FeatureKernelMethod` owns the shared plumbing; a subclass writes :meth:`~FeatureKernelMethod.solve`
(``alpha`` and the surrogate's ``W`` from the training features), its config, its self-influence
and its extras. Code names, paper -> code:

- ``phi(x_i)`` of the training set -> computed once in :meth:`~FeatureKernelMethod.compute`
  (batched, ``config.batch_size`` points per forward pass) and kept as ``support_features_``
  ``(n_kept, d)`` float32 on the model's device: all training points, or with
  ``keep_support_only`` only those with ``alpha_i != 0`` (the support vectors, ``support_``);
- ``alpha`` -> ``alpha_`` ``(n_train, k)`` float64 on the CPU, and ``support_alpha_``
  ``(k, n_kept)`` float32 on the model's device (row ``c`` holds ``alpha^c`` of the kept points, so
  picking one row per test point is contiguous);
- ``||phi(x_i)||^2`` -> ``train_sq_norms_`` ``(n_train,)`` float64 on the CPU (self-influence);
- the per-feature terms ``alpha_i^c phi_k(x) phi_k(x_i)`` -> :meth:`~FeatureKernelMethod.feature_relevance`
  (XDA, :mod:`xda`, propagates them into the input images).

Surrogate faithfulness (the DualXDA paper's appendix) is measured on the training features at fit
time and put in the record (:func:`surrogate_faithfulness`).
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from harness.cache import Artefact
from harness.protocols import DataError, Method, Split, feature_split, penultimate_features

if TYPE_CHECKING:
    from torch import Tensor, nn

log = logging.getLogger(__name__)


class FeatureKernelMethod(Method):
    """A method with attributions ``a_i^c(x) = alpha_i^c <phi(x), phi(x_i)>`` (module docstring).

    A subclass sets ``Config`` (with a ``batch_size`` field), ``label`` and ``keep_support_only``,
    and writes :meth:`solve`; :meth:`compute`, :meth:`load`, :meth:`explain` and
    :meth:`feature_relevance` are this class'.
    """

    supports: ClassVar[frozenset[str]] = frozenset({"cache", "feature_decomposition"})
    attributes_through = "penultimate features"
    #: Names the method in error messages ("DualDA", "Representer Points").
    label: ClassVar[str] = ""
    #: Keep the features of the support vectors (``alpha_i != 0``) only: explanations are then
    #: exactly zero elsewhere and cost ``n_test x d x n_support``.
    keep_support_only: ClassVar[bool] = False

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.alpha_: Tensor | None = None  # (n_train, k) float64, CPU
        self.weights_: Tensor | None = None  # (k, d) float64, CPU: the surrogate's W
        self.bias_: Tensor | None = None  # (k,) float64, CPU (None: the surrogate has no bias)
        self.train_labels_: Tensor | None = None  # (n_train,) long, CPU
        self.train_sq_norms_: Tensor | None = None  # (n_train,) float64, CPU
        self.support_: Tensor | None = None  # (n_support,) long, model device (None: all points kept)
        self.support_features_: Tensor | None = None  # (n_kept, d) float32, model device
        self.support_alpha_: Tensor | None = None  # (k, n_kept) float32, model device
        self.fit_info_: dict[str, Any] = {}

    # ----- what a subclass writes ---------------------------------------------------------------
    @abstractmethod
    def solve(self, model: nn.Module, train: Split, phi: Tensor) -> Artefact:
        """``alpha`` and the surrogate from the training features (called by :meth:`compute`).

        Parameters
        ----------
        model:
            The trained model.
        train:
            The training split; ``train.y`` ``(n_train,)`` the labels the model was trained on.
        phi:
            ``(n_train, d)`` float32 training features on the model's device (finite).

        Returns
        -------
        Artefact
            ``tensors`` with ``"alpha"`` ``(n_train, k)`` float64, ``"weights"`` ``(k, d)`` float64
            (the surrogate's ``W``), optionally ``"bias"`` ``(k,)`` float64 and any extras, all on
            the CPU; ``meta``: the solver's diagnostics (JSON-able).
        """

    # ----- lifecycle --------------------------------------------------------------------------
    def setup(self, model: nn.Module, train: Split) -> None:
        """CapabilityError without a ``features``/``classifier`` split, DataError for no training points."""
        feature_split(model)
        if len(train) == 0:
            raise DataError(f"{self.label}: the training set is empty")

    def features_of(self, x: Tensor) -> Tensor:
        """``(n, d)`` float32 penultimate features of ``x`` ``(n, *input_shape)`` on the model's device.

        Batched (``config.batch_size``), eval mode, no grad.
        """
        assert self.model_ is not None and self.device_ is not None
        return penultimate_features(self.model_, x, self._batch_size(), self.device_)

    def compute(self, model: nn.Module, train: Split) -> Artefact:
        """Training features, then :meth:`solve`; the cacheable artefact.

        Tensors: ``alpha`` ``(n_train, k)``, ``weights`` ``(k, d)`` (and ``bias`` ``(k,)``) float64,
        ``labels`` ``(n_train,)`` long, ``features`` ``(n_kept, d)`` float32, with
        ``keep_support_only`` also ``support`` ``(n_support,)`` long and ``sq_norms`` ``(n_train,)``
        float64 (the norms of the dropped points are needed for self-influence), and the solver's
        extras. Meta: sizes, the solver's diagnostics and :func:`surrogate_faithfulness`.
        """
        assert self.device_ is not None
        batch_size = self._batch_size()
        phi = torch.cat(
            [penultimate_features(model, x, batch_size, self.device_) for x, _ in train.batches(batch_size)]
        )
        if not torch.isfinite(phi).all():
            bad = torch.nonzero(~torch.isfinite(phi).all(dim=1)).flatten().cpu()
            raise DataError(
                f"{self.label}: the training features contain NaN or inf in {bad.numel()} row(s) "
                f"(first: {bad[:5].tolist()}); check the inputs and the model's weights"
            )
        solved = self.solve(model, train, phi)
        tensors = dict(solved.tensors)
        alpha = tensors["alpha"]
        meta: dict[str, Any] = {"n_train": len(train), "feature_dim": int(phi.shape[1])}
        if self.keep_support_only:
            support = torch.nonzero(alpha.abs().sum(dim=1) > 0).flatten()
            tensors["support"] = support
            tensors["features"] = phi[support.to(phi.device)].cpu().contiguous()
            tensors["sq_norms"] = (phi.double() ** 2).sum(dim=1).cpu()
            meta |= {"n_support": int(support.numel()), "support_share": support.numel() / len(train)}
        else:
            tensors["features"] = phi.cpu().contiguous()
        tensors["labels"] = train.y.detach().cpu().long()
        meta |= solved.meta
        meta |= surrogate_faithfulness(model, phi, tensors["weights"], tensors.get("bias"))
        return Artefact(tensors=tensors, meta=meta)

    def load(self, artefact: Artefact, model: nn.Module, train: Split) -> None:
        """Alpha, the kept features and the surrogate; the features and alpha go to the model's device."""
        assert self.device_ is not None
        device = self.device_
        t = artefact.tensors
        self.alpha_ = t["alpha"]
        self.weights_ = t["weights"]
        self.bias_ = t.get("bias")
        self.train_labels_ = t["labels"]
        self.support_features_ = t["features"].to(device=device, dtype=torch.float32)
        if "support" in t:
            self.support_ = t["support"].to(device)
            kept_alpha = t["alpha"][t["support"]]
            self.train_sq_norms_ = t["sq_norms"]
        else:
            self.support_ = None
            kept_alpha = t["alpha"]
            self.train_sq_norms_ = (t["features"].double() ** 2).sum(dim=1)
        self.support_alpha_ = kept_alpha.T.contiguous().to(device=device, dtype=torch.float32)
        self.fit_info_ = dict(artefact.meta)

    # ----- explanations -----------------------------------------------------------------------
    def kernel_values(self, phi: Tensor, targets: Tensor) -> Tensor:
        """``alpha_i^{c_j} <phi_j, phi(x_i)>`` for the kept training points i (all, or the support).

        Parameters
        ----------
        phi:
            ``(n_test, d)`` test features (any device).
        targets:
            ``(n_test,)`` classes explained.

        Returns
        -------
        Tensor
            ``(n_test, n_kept)`` on the model's device; float64 when ``phi`` is float64 (exact
            checks), float32 otherwise. Column ``s`` is training point ``support_[s]`` (point ``s``
            when ``support_`` is None).
        """
        self._require_fitted()
        assert self.support_features_ is not None and self.support_alpha_ is not None
        assert self.alpha_ is not None and self.device_ is not None
        phi = phi.to(self.device_).flatten(start_dim=1)
        targets = targets.to(self.device_).long().reshape(-1)
        if targets.shape[0] != phi.shape[0]:
            raise DataError(f"{self.label}: {phi.shape[0]} test points but {targets.shape[0]} targets")
        k = self.support_alpha_.shape[0]
        if targets.numel() and (targets.min() < 0 or targets.max() >= k):
            raise DataError(
                f"{self.label}: targets must be classes in 0..{k - 1}, got {targets.unique().tolist()}"
            )
        if phi.shape[1] != self.support_features_.shape[1]:
            raise DataError(
                f"{self.label}: test features have {phi.shape[1]} dimensions, the training "
                f"features {self.support_features_.shape[1]}"
            )
        if phi.dtype == torch.float64:
            alpha = self.alpha_ if self.support_ is None else self.alpha_[self.support_.cpu()]
            kept, class_alpha = self.support_features_.double(), alpha.T.to(self.device_)
        else:
            phi, kept, class_alpha = phi.float(), self.support_features_, self.support_alpha_
        values = phi @ kept.T  # (n_test, n_kept) inner products
        values.mul_(class_alpha[targets])  # times alpha^{c_j}, in place (one pass less)
        return values

    def explain_phi(self, phi: Tensor, targets: Tensor) -> Tensor:
        """Dense ``(n_test, n_train)`` attributions from test features ``phi`` ``(n_test, d)``.

        Exactly zero outside the kept points; dtype as :meth:`kernel_values`.
        """
        values = self.kernel_values(phi, targets)
        if self.support_ is None:
            return values
        assert self.alpha_ is not None
        dense = values.new_zeros(values.shape[0], int(self.alpha_.shape[0]))
        dense[:, self.support_] = values
        return dense

    def explain(self, x: Tensor, targets: Tensor) -> Tensor:
        """Attributions of test inputs to every training point.

        Parameters
        ----------
        x:
            ``(n_test, *input_shape)`` test inputs.
        targets:
            ``(n_test,)`` the class explained per test point (the model's prediction).

        Returns
        -------
        Tensor
            ``(n_test, n_train)`` float32 on the model's device: ``alpha_i^{c_j} <phi(x_j), phi(x_i)>``.
        """
        self._require_fitted()
        return self.explain_phi(self.features_of(x), targets)

    def feature_relevance(self, x: Tensor, target: int | Tensor, train_indices: Tensor) -> Tensor:
        """XDA's per-feature terms ``alpha_i^c phi_k(x) phi_k(x_i)`` (:meth:`Method.feature_relevance`).

        Parameters
        ----------
        x:
            ``(1, *input_shape)``: one test input.
        target:
            The class explained.
        train_indices:
            ``(m,)`` long positions in the training split.

        Returns
        -------
        Tensor
            ``(m, d)`` float64 on the model's device; row ``j`` sums to ``explain(x, target)[0, i_j]``
            (rows of points that were not kept, i.e. not support vectors, are 0).
        """
        self._require_fitted()
        assert self.alpha_ is not None and self.support_features_ is not None and self.device_ is not None
        n_train, k = self.alpha_.shape
        index, c = check_decomposition_input(self.label, x, target, train_indices, n_train, k)
        phi = self.features_of(x).double()  # (1, d)
        if self.support_ is None:
            alpha = self.alpha_[index, c].to(self.device_)
            return alpha[:, None] * phi * self.support_features_[index.to(self.device_)].double()
        position = torch.full((n_train,), -1, dtype=torch.long)
        position[self.support_.cpu()] = torch.arange(self.support_.numel())
        pos = position[index]
        rows = torch.zeros(len(index), phi.shape[1], dtype=torch.float64, device=self.device_)
        hit = pos >= 0
        if hit.any():
            alpha = self.alpha_[index[hit], c].to(self.device_)
            kept = self.support_features_[pos[hit].to(self.device_)].double()
            rows[hit.to(self.device_)] = alpha[:, None] * phi * kept
        return rows

    def _batch_size(self) -> int:
        return int(self.config.batch_size)  # type: ignore[attr-defined]

    def own_alpha(self) -> Tensor:
        """``(n_train,)`` float64 CPU: ``alpha_i^{y_i}``, each point's alpha at its training label."""
        self._require_fitted()
        assert self.alpha_ is not None and self.train_labels_ is not None
        return self.alpha_[torch.arange(len(self.train_labels_)), self.train_labels_]

    def diagnostics(self) -> dict[str, Any]:
        """The fit's sizes, the solver's diagnostics and the surrogate's faithfulness."""
        return dict(self.fit_info_)


def surrogate_faithfulness(
    model: nn.Module, phi: Tensor, weights: Any, bias: Any = None
) -> dict[str, float | None]:
    """How closely a linear surrogate ``phi W^T (+ b)`` follows the model's classifier on ``phi``.

    Parameters
    ----------
    model:
        The model (its ``classifier`` gives the reference logits, with its bias).
    phi:
        ``(n, d)`` features (the training set's), on the classifier's device.
    weights:
        ``(k, d)`` the surrogate's ``W`` (tensor or array).
    bias:
        ``(k,)`` the surrogate's bias, or None for a surrogate without one.

    Returns
    -------
    dict
        ``argmax_agreement`` (share of points where both predict the same class),
        ``logit_correlation`` (Pearson, over all logits) and ``weight_cosine`` (mean over classes
        of the cosine between the model's and the surrogate's weight vectors; None unless the
        classifier is one linear layer of the same shape). The first two are None when the logits'
        shapes differ or there are fewer than two.
    """
    _, classifier = feature_split(model)
    w = torch.as_tensor(weights).to(dtype=torch.float64, device="cpu")
    cosine = None
    if isinstance(classifier, torch.nn.Linear) and tuple(classifier.weight.shape) == tuple(w.shape):
        model_w = classifier.weight.detach().double().cpu()
        cosine = float(torch.nn.functional.cosine_similarity(model_w, w, dim=1).mean())
    with torch.no_grad():
        model_logits = classifier(phi).double().cpu()
    logits = phi.double().cpu() @ w.T
    if bias is not None:
        logits = logits + torch.as_tensor(bias).to(dtype=torch.float64, device="cpu")
    if model_logits.shape != logits.shape or logits.numel() < 2:
        return {"argmax_agreement": None, "logit_correlation": None, "weight_cosine": cosine}
    correlation = float(torch.corrcoef(torch.stack([model_logits.flatten(), logits.flatten()]))[0, 1])
    agreement = float((model_logits.argmax(dim=1) == logits.argmax(dim=1)).double().mean())
    return {"argmax_agreement": agreement, "logit_correlation": correlation, "weight_cosine": cosine}


def check_decomposition_input(
    label: str, x: Tensor, target: int | Tensor, train_indices: Tensor, n_train: int, k: int
) -> tuple[Tensor, int]:
    """``(m,)`` long CPU training indices and the int class of a feature_relevance call, checked.

    Raises :class:`DataError` (prefixed by ``label``) for more than one input, a class outside
    ``0..k-1`` or an index outside ``0..n_train-1``.
    """
    if x.dim() < 2 or x.shape[0] != 1:
        raise DataError(
            f"{label}: feature_relevance explains one input (1, *input_shape), got {tuple(x.shape)}"
        )
    c = int(target)
    if not 0 <= c < k:
        raise DataError(f"{label}: target must be a class in 0..{k - 1}, got {c}")
    index = torch.as_tensor(train_indices).detach().cpu().long().reshape(-1)
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n_train):
        raise DataError(f"{label}: training indices must lie in 0..{n_train - 1}")
    return index, c
