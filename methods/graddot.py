"""GradDot and GradCos: inner product and cosine of per-sample parameter gradients.

Papers: Charpiat, Girard, Felardos, Tarabalka, "Input Similarity from the Neural Network
Perspective" (NeurIPS 2019), the gradient-similarity baselines; settings from Yolcu, Weckbecker,
Wiegand, Samek, Lapuschkin, "DualXDA: Towards Sparse, Efficient and Explainable Data Attribution in
Large AI Models" (arXiv 2402.12118, TMLR 2025), facts in ../shared/reference/dualxda-paper.md: "best
checkpoint, same 128-dim projection [as TracIn]; TRAINING gradients are the CE-loss gradients at the
training label (shared with TracIn's cache); the TEST gradient is that of the predicted logit,
unit-normalised; GradCos also divides by the training-gradient norms". Notation, paper -> code:

- ``theta``: ALL parameters of the model AS GIVEN (the harness hands over the final model, which is
  the benchmark's "best checkpoint" and TracIn's last checkpoint; the other checkpoints are unused);
- ``g_train(x_i, y_i)``: gradient of the training objective at training point ``i`` and the label
  it was trained on (``train.y``): ``train_gradient="loss"`` (the paper's):
  ``d CE(f(x_i), y_i) / d theta``, the very vector TracIn takes at its final checkpoint (the
  authors' code reads it from TracIn's cache; here both methods compute it with the same function,
  projector and batching, but each keeps its own cache entry, so each method's cold fit is its own
  cost); ``"logit"``: ``d f_{y_i}(x_i) / d theta``;
- ``g_test(x, c)``: the same for test input ``x`` and target ``c`` (the model's predicted class):
  ``test_gradient="logit"`` (the paper's): ``d f_c(x) / d theta``; ``"loss"``:
  ``d CE(f(x), c) / d theta``;
- ``R``: the Gaussian projection ``(P, proj_dim)`` of :mod:`methods._gradients` (``N(0, 1/d)``
  entries, seed ``seed``); ``proj_dim=None`` (or 0) means ``R = I`` (exact gradients);
- ``u(x) = R^T g_test(x, c) / ||R^T g_test(x, c)||`` with ``normalise_test=True`` (the paper's, as
  the authors' code does by default), else ``R^T g_test(x, c)``. The norm is one number per test
  point: it keeps each test point's ranking but sets the scale ACROSS test points, which matters
  for metrics that add scores over test points (coreset selection sums ``|a_i(x)|``);
- GradDot: ``a_i(x) = s <u(x), R^T g_train(x_i, y_i)>``;
- GradCos: ``a_i(x) = s <R^T g_test, R^T g_train> / (||R^T g_test|| ||R^T g_train||)`` (0 where a
  gradient vanishes; ``normalise_test`` changes nothing here);
- the sign ``s`` is ``+1`` when both sides use the same kind of gradient and ``-1`` when one is a
  loss and the other a logit gradient (so ``-1`` in the paper's setting). A gradient step on
  ``CE(x_i, y_i)`` moves ``theta`` along ``-g_loss(x_i, y_i)``, which to first order RAISES the test
  logit by ``-eta <g_logit(x, c), g_loss(x_i, y_i)>`` and LOWERS the test loss by
  ``eta <g_loss(x, c), g_loss(x_i, y_i)>``: with ``s`` positive scores are proponents in every
  combination (TracIn's convention). The authors' code returns the unsigned product, i.e. ours
  times ``-1`` in the paper's setting;
- self-influence (GradDot only): ``||R^T g_train(x_i, y_i)||^2``, the squared norm of the projected
  training loss gradient (the authors' code ranks by the norm itself: the same order). A point whose
  label the model contradicts has a large loss gradient, so wrong labels rank high; with
  ``train_gradient="logit"`` the norm does not see whether the label is right. GradCos'
  self-attribution is the constant 1, so GradCos declares none.

Cost. ``fit`` = one per-sample gradient pass over the training set (``torch.func`` vmap, batches of
``batch_size``), each batch projected at once; the projected gradients ``(N, proj_dim)`` are
cached by content hash (method name, model weights, training data, proj_dim, seed, train_gradient,
batch size, device type of the projection generator). ``explain`` = one gradient pass over the test
points and one ``(n_test, d) x (d, N)`` matmul.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from harness.cache import Artefact
from harness.config import ConfigError, option
from harness.protocols import DataError, Method, Split
from methods._gradients import (
    GRADIENT_KINDS,
    PAPER_PROJ_DIM,
    GaussianProjector,
    GradientKind,
    ProjectedGradientOptions,
    check_classes,
    make_projector,
    model_state,
    num_outputs,
    per_sample_gradients,
    unit_rows,
)

if TYPE_CHECKING:
    from torch import Tensor, nn

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class GradDotConfig(ProjectedGradientOptions):
    """Configuration of :class:`GradDot`; :meth:`paper` holds the DualXDA paper's settings."""

    test_gradient: GradientKind = option(
        "logit", "test-side gradient: logit = d f_c(x)/d theta (paper), loss = d CE(f(x), c)/d theta"
    )
    train_gradient: GradientKind = option(
        "loss",
        "train-side gradient: loss = d CE(f(x_i), y_i)/d theta (paper; TracIn's at the final checkpoint), "
        "logit = d f_{y_i}(x_i)/d theta",
    )
    normalise_test: bool = option(
        True,
        "divide each projected test gradient by its norm (paper: True): keeps each test point's ranking, "
        "sets the scale across test points",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        defaults = {"test_gradient": "logit", "train_gradient": "loss"}
        for key, paper in defaults.items():
            if getattr(self, key) not in GRADIENT_KINDS:
                raise ConfigError(
                    f"{key} must be one of {list(GRADIENT_KINDS)} (paper: {paper!r}), "
                    f"got {getattr(self, key)!r}"
                )
        if not isinstance(self.normalise_test, bool):
            raise ConfigError(
                f"normalise_test must be True or False (paper: True), got {self.normalise_test!r}"
            )

    @classmethod
    def paper(cls) -> GradDotConfig:
        """The paper's settings: 128-dim projection, CE-loss train and unit predicted-logit test gradients."""
        return cls(proj_dim=PAPER_PROJ_DIM, test_gradient="logit", train_gradient="loss", normalise_test=True)

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
    version = "2"
    supports = frozenset({"self_influence", "cache"})
    attributes_through = (  # the paper's settings; load sets the string for the config in use
        "all parameters of the final model (per-sample train CE-loss and unit test logit gradients, "
        "random projection to 128)"
    )
    self_influence_definition = (
        "||R^T g_train(x_i, y_i)||^2, the squared norm of the projected training CE-loss gradient "
        "(the reference ranks by the norm: same order)"
    )
    #: Divide by both gradient norms (GradCos).
    normalise = False
    #: Names the cache entries: GradDot and GradCos keep their own (each cold fit is its own cost).
    cache_name = "graddot"
    #: Not in the key: the test-side options and the memory budget (the same matrix whatever it is).
    cache_ignores = frozenset({"test_gradient", "normalise_test", "projection_memory_mb"})

    config: GradDotConfig

    def __init__(self, config: GradDotConfig | None = None) -> None:
        super().__init__(config)
        self.train_grads_: Tensor | None = None  # (N, d) projected train gradients, model dtype
        self.train_sq_norms_: Tensor | None = None  # (N,) ||R^T g_train||^2
        self.num_classes_: int | None = None
        self._params: dict[str, Tensor] | None = None
        self._buffers: dict[str, Tensor] | None = None
        self._projector: GaussianProjector | None = None

    # ----- lifecycle --------------------------------------------------------------------------
    def setup(self, model: nn.Module, train: Split) -> None:
        """Check the inputs; keep the number of classes, the weights and the projector.

        Raises
        ------
        DataError
            When the training set is empty, the model has no parameters, or a label is not one of
            the model's outputs.
        """
        name = self.name or type(self).__name__
        if len(train) == 0:
            raise DataError(f"{name}: the training set is empty")
        if next(model.parameters(), None) is None:
            raise DataError(f"{name}: the model has no parameters to take gradients of")
        self.num_classes_ = num_outputs(model, train.inputs)
        check_classes(train.y, len(train), self.num_classes_, "training labels", name)
        self._params, self._buffers = model_state(model)
        self._projector = make_projector(self._params, self.config)

    def cache_key_extra(self, model: nn.Module, train: Split) -> dict[str, Any]:
        """The device type of the projection's generator (a CUDA generator draws other numbers)."""
        assert self.device_ is not None
        return {"generator_device": self.device_.type if self.config.projection else None}

    def compute(self, model: nn.Module, train: Split) -> Artefact:
        """Projected training gradients ``R^T g_train(x_i, y_i)`` ``(N, d)`` in the model's dtype, on the CPU.

        Cached under the method's own name (never TracIn's entry, even where the gradients are
        equal), the config without the test-side options, the data, the model and the generator's
        device type.
        """
        assert self._params is not None and self._buffers is not None
        cfg = self.config
        name = self.name or type(self).__name__
        log.info("%s: per-sample gradients of %d training points", name, len(train))
        grads = per_sample_gradients(
            model,
            self._params,
            self._buffers,
            train.inputs,
            train.y,
            kind=cfg.train_gradient,
            batch_size=cfg.batch_size,
            projector=self._projector,
            desc=f"{name} train gradients",
        )
        return Artefact(tensors={"grads": grads.cpu()}, meta={"n_train": len(train)})

    def load(self, artefact: Artefact, model: nn.Module, train: Split) -> None:
        """Keep the projected training gradients ``(N, d)`` and their squared norms on the model's device."""
        assert self._params is not None and self.device_ is not None
        # clone: tensors read from the cache may sit at unaligned addresses (BLAS rounding)
        dtype = next(iter(self._params.values())).dtype
        self.train_grads_ = artefact.tensors["grads"].to(device=self.device_, dtype=dtype).clone()
        self.train_sq_norms_ = (self.train_grads_ * self.train_grads_).sum(dim=1)
        self.attributes_through = _through(self.config, cosine=self.normalise)

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
        assert self.model_ is not None and self.train_grads_ is not None and self.num_classes_ is not None
        assert self._params is not None and self._buffers is not None
        cfg = self.config
        check_classes(targets, x.shape[0], self.num_classes_, "targets", self.name or type(self).__name__)
        test = per_sample_gradients(
            self.model_,
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
        if self.normalise or cfg.normalise_test:
            test = unit_rows(test)
        if self.normalise:
            train = unit_rows(train)
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
            "normalise_test": self.config.normalise_test,
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
    attributes_through = (
        "all parameters of the final model (cosine of per-sample train CE-loss and test logit gradients, "
        "random projection to 128)"
    )
    self_influence_definition = ""
    normalise = True
    cache_name = "gradcos"

    config: GradCosConfig


def _through(cfg: GradDotConfig, *, cosine: bool) -> str:
    """``attributes_through`` for the gradients ``cfg`` actually takes (known in full at fit)."""
    kinds = {"loss": "CE-loss", "logit": "logit"}
    test = f"{'unit ' if cfg.normalise_test and not cosine else ''}test {kinds[cfg.test_gradient]}"
    projection = f"random projection to {cfg.projection}" if cfg.projection else "exact, no projection"
    what = "cosine of per-sample" if cosine else "per-sample"
    return (
        f"all parameters of the final model ({what} train {kinds[cfg.train_gradient]} and {test} "
        f"gradients, {projection})"
    )
