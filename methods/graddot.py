"""GradDot and GradCos: inner product and cosine of per-sample parameter gradients.

Papers: Charpiat, Girard, Felardos, Tarabalka, "Input Similarity from the Neural Network
Perspective" (NeurIPS 2019), the gradient-similarity baselines; settings from Yolcu, Weckbecker,
Wiegand, Samek, Lapuschkin, "DualXDA: Towards Sparse, Efficient and Explainable Data Attribution in
Large AI Models" (arXiv 2402.12118, TMLR 2025), facts in ../shared/reference/dualxda-paper.md: "best
checkpoint, same 128-dim projection [as TracIn]; test gradient of the predicted logit; GradCos
divides by norms". Notation, paper -> code:

- ``theta``: ALL parameters of the model AS GIVEN (the harness hands over the final model, which is
  the benchmark's "best checkpoint"; the training checkpoints are not used);
- ``g_test(x, c)``: gradient of the test objective at test input ``x`` and target ``c`` (the
  model's predicted class): ``test_gradient="logit"``: ``d f_c(x) / d theta`` (the paper's choice);
  ``"loss"``: ``d CE(f(x), c) / d theta`` (TracIn's);
- ``g_train(x_i, y_i)``: the same for training point ``i`` and the label it was trained on
  (``train.y``): ``train_gradient="logit"``: ``d f_{y_i}(x_i) / d theta``; ``"loss"``:
  ``d CE(f(x_i), y_i) / d theta``. The paper's table names only the test side; its authors'
  reference code (GradDotExplainer, ``loss=False``) takes the logit on BOTH sides, so
  :meth:`GradDotConfig.paper` does too;
- ``R``: the Gaussian projection ``(P, proj_dim)`` of :mod:`methods._gradients` (``N(0, 1/d)``
  entries, seed ``seed``); ``proj_dim=None`` (or 0) means ``R = I`` (exact gradients);
- GradDot: ``a_i(x) = s <R^T g_test(x, c), R^T g_train(x_i, y_i)>``;
- GradCos: ``a_i(x) = s <R^T g_test, R^T g_train> / (||R^T g_test|| ||R^T g_train||)`` (0 where a
  gradient vanishes);
- the sign ``s`` is ``+1`` when both sides use the same kind of gradient and ``-1`` when one is a
  loss and the other a logit gradient: a gradient step on ``CE(x_i, y_i)`` moves ``theta`` along
  ``-g_train``, which RAISES the logit where ``<g_logit, g_loss> < 0``, so the sign keeps positive
  scores for proponents in every combination (TracIn's convention);
- self-influence (GradDot only): ``||R^T g_train(x_i, y_i)||^2``, the self-attribution (the
  reference code ranks by the norm itself: the same order). GradCos' self-attribution is the
  constant 1, so GradCos declares none.

Cost. ``fit`` = one per-sample gradient pass over the training set (``torch.func`` vmap, batches of
``batch_size``), each batch projected at once; the projected gradients ``(N, proj_dim)`` are
cached by content hash (model weights, training data, proj_dim, seed, train_gradient, batch size,
device type of the projection generator). ``explain`` = one gradient pass over the test points and
one ``(n_test, d) x (d, N)`` matmul.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from harness.cache import Artefact
from harness.config import ConfigError, option
from harness.measures import model_fingerprint
from harness.protocols import DataError, Method, Split
from methods._gradients import (
    GRADIENT_KINDS,
    PAPER_PROJ_DIM,
    GaussianProjector,
    GradientKind,
    ProjectedGradientOptions,
    check_classes,
    model_device,
    model_state,
    num_outputs,
    per_sample_gradients,
)

if TYPE_CHECKING:
    from torch import Tensor, nn

    from harness.cache import Cache

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class GradDotConfig(ProjectedGradientOptions):
    """Configuration of :class:`GradDot`; :meth:`paper` holds the DualXDA paper's settings."""

    test_gradient: GradientKind = option(
        "logit", "test-side gradient: logit = d f_c(x)/d theta (paper), loss = d CE(f(x), c)/d theta"
    )
    train_gradient: GradientKind = option(
        "logit",
        "train-side gradient: logit = d f_{y_i}(x_i)/d theta (the authors' code), loss = d CE/d theta",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("test_gradient", "train_gradient"):
            if getattr(self, key) not in GRADIENT_KINDS:
                raise ConfigError(
                    f"{key} must be one of {list(GRADIENT_KINDS)} (paper: 'logit'), "
                    f"got {getattr(self, key)!r}"
                )

    @classmethod
    def paper(cls) -> GradDotConfig:
        """The paper's settings: 128-dim projection, predicted-logit test gradient (logit train side)."""
        return cls(proj_dim=PAPER_PROJ_DIM, test_gradient="logit", train_gradient="logit")

    @classmethod
    def quick(cls) -> GradDotConfig:
        """Unchanged: one gradient pass over the training set already fits the quick suite."""
        return cls.paper()


@dataclass(frozen=True, kw_only=True)
class GradCosConfig(GradDotConfig):
    """Configuration of :class:`GradCos` (its own class: the registry names its owner)."""


class GradDot(Method):
    """GradDot: inner products of (projected) per-sample gradients at the final model."""

    Config = GradDotConfig
    version = "1"
    supports = frozenset({"self_influence", "cache"})
    attributes_through = "all parameters (per-sample gradients, random projection)"
    self_influence_definition = "||R^T g_train(x_i, y_i)||^2 (the self-attribution)"
    #: Divide by both gradient norms (GradCos).
    normalise = False

    config: GradDotConfig

    def __init__(self, config: GradDotConfig | None = None) -> None:
        super().__init__(config)
        self.train_grads_: Tensor | None = None  # (N, d) projected train gradients, model dtype
        self.train_sq_norms_: Tensor | None = None  # (N,) ||R^T g_train||^2
        self.num_classes_: int | None = None
        self._model: nn.Module | None = None
        self._params: dict[str, Tensor] | None = None
        self._buffers: dict[str, Tensor] | None = None
        self._projector: GaussianProjector | None = None

    # ----- lifecycle --------------------------------------------------------------------------
    def fit(self, model: nn.Module, train: Split, *, cache: Cache) -> None:
        """Projected training gradients ``(N, d)`` at the model as given (cached by content hash).

        Parameters
        ----------
        model:
            The trained model on its device (all its parameters are differentiated).
        train:
            ``x`` ``(N, *input_shape)``; ``y`` ``(N,)`` the labels the model was trained on.
        cache:
            Stores the projected training gradients ``(N, d)`` (in the model's dtype).

        Raises
        ------
        DataError
            When the training set is empty, the model has no parameters, or a label is not one of
            the model's outputs.
        """
        cfg = self.config
        name = self.name or type(self).__name__
        if len(train) == 0:
            raise DataError(f"{name}: the training set is empty")
        if next(model.parameters(), None) is None:
            raise DataError(f"{name}: the model has no parameters to take gradients of")
        device = model_device(model)
        self.num_classes_ = num_outputs(model, train.x)
        check_classes(train.y, len(train), self.num_classes_, "training labels", name)
        self._params, self._buffers = model_state(model)
        self._projector = _projector(self._params, cfg.projection, cfg.seed, cfg.projection_memory_mb)
        key = {
            "method": "graddot",  # GradDot and GradCos share the training gradients
            "version": self.version,
            "train": train.fingerprint(),
            "model": model_fingerprint(model),
            "proj_dim": cfg.projection,
            "seed": cfg.seed if cfg.projection else None,
            "train_gradient": cfg.train_gradient,
            "batch_size": cfg.batch_size,
            "generator_device": device.type if cfg.projection else None,
        }

        def compute() -> Artefact:
            log.info("%s: per-sample gradients of %d training points", name, len(train))
            grads = per_sample_gradients(
                model,
                self._params,
                self._buffers,
                train.x,
                train.y,
                kind=cfg.train_gradient,
                batch_size=cfg.batch_size,
                projector=self._projector,
                desc=f"{name} train gradients",
            )
            return Artefact(tensors={"grads": grads.cpu()}, meta={"n_train": len(train)})

        artefact = cache.get_or_create(key, compute)
        # clone: tensors read from the cache may sit at unaligned addresses (BLAS rounding)
        dtype = next(iter(self._params.values())).dtype
        self.train_grads_ = artefact.tensors["grads"].to(device=device, dtype=dtype).clone()
        self.train_sq_norms_ = (self.train_grads_ * self.train_grads_).sum(dim=1)
        self._model = model
        self._fitted = True

    def explain(self, x: Tensor, targets: Tensor) -> Tensor:
        """GradDot (or GradCos) scores of every training point for each test input.

        Parameters
        ----------
        x:
            ``(n_test, *input_shape)`` test inputs.
        targets:
            ``(n_test,)`` target classes ``c`` (the model's predicted classes).

        Returns
        -------
        Tensor
            ``(n_test, N)`` float32 on the model's device.
        """
        self._require_fitted()
        assert self._model is not None and self.train_grads_ is not None and self.num_classes_ is not None
        assert self._params is not None and self._buffers is not None
        cfg = self.config
        check_classes(targets, x.shape[0], self.num_classes_, "targets", self.name or type(self).__name__)
        test = per_sample_gradients(
            self._model,
            self._params,
            self._buffers,
            x,
            targets,
            kind=cfg.test_gradient,
            batch_size=cfg.batch_size,
            projector=self._projector,
            desc="test gradients",
        )  # (n_test, d)
        train = self.train_grads_
        if self.normalise:
            test = _unit_rows(test)
            train = _unit_rows(train)
        scores = test @ train.T
        if cfg.test_gradient != cfg.train_gradient:
            scores = -scores
        return scores.to(torch.float32)

    def self_influence(self) -> Tensor:
        """``(N,)`` float32 ``||R^T g_train(x_i, y_i)||^2`` on the model's device."""
        if self.normalise:
            return super().self_influence()
        self._require_fitted()
        assert self.train_sq_norms_ is not None
        return self.train_sq_norms_.to(torch.float32)

    def diagnostics(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "proj_dim": self.config.projection,
            "test_gradient": self.config.test_gradient,
            "train_gradient": self.config.train_gradient,
        }
        if self._params is not None:
            info["n_params"] = sum(p.numel() for p in self._params.values())
        if self._projector is not None:
            info["projection_chunks_regenerated"] = self._projector.regenerated
        return info


class GradCos(GradDot):
    """GradCos: cosine similarity of (projected) per-sample gradients at the final model."""

    Config = GradCosConfig
    supports = frozenset({"cache"})
    self_influence_definition = ""
    normalise = True

    config: GradCosConfig


def _unit_rows(v: Tensor) -> Tensor:
    """Rows of ``v`` ``(n, d)`` divided by their norms (a zero row stays zero)."""
    norms = torch.linalg.vector_norm(v, dim=1, keepdim=True)
    return v / torch.where(norms > 0, norms, torch.ones_like(norms))


def _projector(
    params: dict[str, Tensor], proj_dim: int | None, seed: int, memory_mb: float
) -> GaussianProjector | None:
    if not proj_dim:
        return None
    first = next(iter(params.values()))
    n_params = sum(p.numel() for p in params.values())
    return GaussianProjector(
        n_params, proj_dim, seed=seed, device=first.device, dtype=first.dtype, memory_mb=memory_mb
    )
