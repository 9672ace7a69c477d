"""TracIn (TracInCP): learning-rate-weighted gradient inner products summed over checkpoints.

Paper: Pruthi, Liu, Kale, Sundararajan, "Estimating Training Data Influence by Tracing Gradient
Descent" (NeurIPS 2020), the checkpoint approximation TracInCP. Settings from the DualXDA paper
(Yolcu et al., arXiv 2402.12118; ../shared/reference/dualxda-paper.md): "all saved checkpoints,
CE-loss gradients of all parameters, random projection to 128 dims, weighted by the learning rate
of each checkpoint". Notation, paper -> code:

- checkpoints ``theta_t``, ``t = 1..T``: :func:`harness.protocols.training_checkpoints` (weights
  saved after each epoch, oldest first, the last equal to the final model), each with the learning
  rate ``eta_t`` then in force (``Checkpoint.lr``);
- ``g_t(x, c) = d CE(f_{theta_t}(x), c) / d theta`` over ALL parameters (test side: ``c`` the
  target, the model's predicted class; train side: ``y_i``, the label the model was trained on);
- ``R``: the Gaussian projection ``(P, proj_dim)`` of :mod:`methods._gradients`, the same matrix
  for every checkpoint; ``proj_dim=None`` (or 0) means exact gradients;
- attribution ``a_i(x) = sum_t eta_t <R^T g_t(x, c), R^T g_t(x_i, y_i)>``, positive for proponents
  (a gradient step on ``x_i`` at ``theta_t`` lowers the test loss to first order);
- self-influence ``sum_t eta_t ||R^T g_t(x_i, y_i)||^2`` (Pruthi et al.'s self-influence, used to
  find mislabelled points).

Cost. ``fit`` = one per-sample gradient pass over the training set PER CHECKPOINT; the projected
gradients are stored side by side as ``(N, T * d)`` and cached by content hash (model weights,
training data, every checkpoint's fingerprint, epoch and learning rate, proj_dim, seed, batch size,
device type of the projection generator). ``explain`` = one gradient pass over the test points per
checkpoint, each block scaled by ``eta_t``, then one ``(n_test, T d) x (T d, N)`` matmul.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from harness.cache import Artefact
from harness.config import ConfigError, option
from harness.measures import model_fingerprint
from harness.protocols import CapabilityError, Checkpoint, DataError, Method, Split, training_checkpoints
from methods._gradients import (
    PAPER_PROJ_DIM,
    GaussianProjector,
    ProjectedGradientOptions,
    check_classes,
    model_device,
    model_state,
    num_outputs,
    per_sample_gradients,
    state_fingerprint,
)

if TYPE_CHECKING:
    from torch import Tensor, nn

    from harness.cache import Cache

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class TracInConfig(ProjectedGradientOptions):
    """Configuration of :class:`TracIn`; :meth:`paper` holds the DualXDA paper's settings."""

    min_checkpoints: int = option(1, "fail unless the model carries at least this many checkpoints")

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.min_checkpoints, bool) or not isinstance(self.min_checkpoints, int):
            raise ConfigError(f"min_checkpoints must be an integer >= 1, got {self.min_checkpoints!r}")
        if self.min_checkpoints < 1:
            raise ConfigError(f"min_checkpoints must be >= 1, got {self.min_checkpoints}")

    @classmethod
    def paper(cls) -> TracInConfig:
        """The paper's settings: all checkpoints, CE-loss gradients, 128-dim projection."""
        return cls(proj_dim=PAPER_PROJ_DIM)

    @classmethod
    def quick(cls) -> TracInConfig:
        """Unchanged: the tasks keep one checkpoint per epoch (3-4 for MNIST), so nothing is scaled."""
        return cls.paper()


class TracIn(Method):
    """TracInCP over the model's training checkpoints, learning-rate weighted (Pruthi et al. 2020)."""

    Config = TracInConfig
    version = "1"
    supports = frozenset({"self_influence", "cache"})
    attributes_through = "all parameters (per-sample CE gradients at every checkpoint, random projection)"
    self_influence_definition = "sum_t eta_t ||R^T g_t(x_i, y_i)||^2 (Pruthi et al.)"

    config: TracInConfig

    def __init__(self, config: TracInConfig | None = None) -> None:
        super().__init__(config)
        self.train_grads_: Tensor | None = None  # (N, T * d) projected train gradients, side by side
        self.self_influence_: Tensor | None = None  # (N,)
        self.lrs_: list[float] = []
        self.epochs_: list[int] = []
        self.num_classes_: int | None = None
        self._model: nn.Module | None = None
        self._states: list[tuple[dict[str, Tensor], dict[str, Tensor]]] = []
        self._projector: GaussianProjector | None = None

    # ----- lifecycle --------------------------------------------------------------------------
    def fit(self, model: nn.Module, train: Split, *, cache: Cache) -> None:
        """Projected training gradients at every checkpoint ``(N, T * d)`` (cached by content hash).

        Parameters
        ----------
        model:
            The trained model on its device, carrying its training checkpoints
            (:func:`harness.protocols.training_checkpoints`).
        train:
            ``x`` ``(N, *input_shape)``; ``y`` ``(N,)`` the labels the model was trained on.
        cache:
            Stores the projected training gradients ``(N, T * d)`` (in the model's dtype).

        Raises
        ------
        CapabilityError
            When the model carries no training checkpoints.
        DataError
            When it carries fewer than ``min_checkpoints``, a checkpoint does not fit the model or
            has a learning rate that is not a finite number > 0, or the training data are unusable.
        """
        cfg = self.config
        name = self.name or type(self).__name__
        checkpoints = _checkpoints(model, cfg.min_checkpoints, name)
        if len(train) == 0:
            raise DataError(f"{name}: the training set is empty")
        device = model_device(model)
        self.num_classes_ = num_outputs(model, train.x)
        check_classes(train.y, len(train), self.num_classes_, "training labels", name)
        self._states = [model_state(model, ck.state) for ck in checkpoints]
        self.lrs_ = [float(ck.lr) for ck in checkpoints]
        self.epochs_ = [int(ck.epoch) for ck in checkpoints]
        params0 = self._states[0][0]
        first = next(iter(params0.values()))
        n_params = sum(p.numel() for p in params0.values())
        self._projector = (
            GaussianProjector(
                n_params,
                cfg.projection,
                seed=cfg.seed,
                device=first.device,
                dtype=first.dtype,
                memory_mb=cfg.projection_memory_mb,
            )
            if cfg.projection
            else None
        )
        key = {
            "method": "tracin",
            "version": self.version,
            "train": train.fingerprint(),
            "model": model_fingerprint(model),
            "checkpoints": [
                {"epoch": ck.epoch, "lr": float(ck.lr), "state": state_fingerprint(ck.state)}
                for ck in checkpoints
            ],
            "proj_dim": cfg.projection,
            "seed": cfg.seed if cfg.projection else None,
            "batch_size": cfg.batch_size,
            "generator_device": device.type if cfg.projection else None,
        }

        def compute() -> Artefact:
            log.info(
                "%s: per-sample gradients of %d training points at %d checkpoints",
                name,
                len(train),
                len(checkpoints),
            )
            blocks = [
                per_sample_gradients(
                    model,
                    params,
                    buffers,
                    train.x,
                    train.y,
                    kind="loss",
                    batch_size=cfg.batch_size,
                    projector=self._projector,
                    desc=f"{name} train gradients, checkpoint {t + 1}/{len(checkpoints)}",
                ).cpu()
                for t, (params, buffers) in enumerate(self._states)
            ]
            return Artefact(
                tensors={"grads": torch.cat(blocks, dim=1)},
                meta={"n_train": len(train), "n_checkpoints": len(checkpoints)},
            )

        artefact = cache.get_or_create(key, compute)
        # clone: tensors read from the cache may sit at unaligned addresses (BLAS rounding)
        self.train_grads_ = artefact.tensors["grads"].to(device=device, dtype=first.dtype).clone()
        blocks = self.train_grads_.reshape(len(train), len(checkpoints), -1)  # (N, T, d)
        lrs = torch.tensor(self.lrs_, device=device, dtype=first.dtype)
        self.self_influence_ = ((blocks * blocks).sum(dim=2) * lrs).sum(dim=1)
        self._model = model
        self._fitted = True

    def explain(self, x: Tensor, targets: Tensor) -> Tensor:
        """``sum_t eta_t <R^T g_t(x, c), R^T g_t(x_i, y_i)>`` for every test input and training point.

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
        check_classes(targets, x.shape[0], self.num_classes_, "targets", self.name or type(self).__name__)
        blocks = [
            lr
            * per_sample_gradients(
                self._model,
                params,
                buffers,
                x,
                targets,
                kind="loss",
                batch_size=self.config.batch_size,
                projector=self._projector,
                desc=f"test gradients, checkpoint {t + 1}/{len(self._states)}",
            )
            for t, ((params, buffers), lr) in enumerate(zip(self._states, self.lrs_, strict=True))
        ]
        test = torch.cat(blocks, dim=1)  # (n_test, T * d)
        return (test @ self.train_grads_.T).to(torch.float32)

    def self_influence(self) -> Tensor:
        """``(N,)`` float32 ``sum_t eta_t ||R^T g_t(x_i, y_i)||^2`` on the model's device."""
        self._require_fitted()
        assert self.self_influence_ is not None
        return self.self_influence_.to(torch.float32)

    def diagnostics(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "proj_dim": self.config.projection,
            "n_checkpoints": len(self.lrs_),
            "checkpoint_epochs": self.epochs_,
            "checkpoint_lrs": self.lrs_,
        }
        if self._states:
            info["n_params"] = sum(p.numel() for p in self._states[0][0].values())
        if self._projector is not None:
            info["projection_chunks_regenerated"] = self._projector.regenerated
        return info


def _checkpoints(model: nn.Module, minimum: int, name: str) -> list[Checkpoint]:
    """The model's training checkpoints, checked: at least ``minimum``, learning rates finite > 0."""
    try:
        checkpoints = training_checkpoints(model)
    except CapabilityError as err:
        raise CapabilityError(
            f"{name} needs the model's training checkpoints: {err}. To attribute with the final model "
            "only, use graddot (TracIn with one checkpoint and learning rate 1)"
        ) from err
    if len(checkpoints) < minimum:
        raise DataError(
            f"{name}: the model carries {len(checkpoints)} training checkpoint(s) but min_checkpoints is "
            f"{minimum}; the tasks keep one checkpoint per epoch, so train the model for at least "
            f"{minimum} epochs (e.g. --task-option epochs={minimum}) or lower min_checkpoints"
        )
    for ck in checkpoints:
        lr = ck.lr
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0:
            raise DataError(
                f"{name}: checkpoint of epoch {ck.epoch} has learning rate {lr!r}; TracIn weights each "
                "checkpoint by its learning rate, which must be a finite number > 0 (set Checkpoint.lr)"
            )
    return checkpoints
