"""TracIn (TracInCP): learning-rate-weighted gradient inner products averaged over checkpoints.

Paper: Pruthi, Liu, Kale, Sundararajan, "Estimating Training Data Influence by Tracing Gradient
Descent" (NeurIPS 2020), the checkpoint approximation TracInCP. Settings from the DualXDA paper
(Yolcu et al., arXiv 2402.12118; ../shared/reference/dualxda-paper.md): "all saved checkpoints,
CE-loss gradients of all parameters, random projection to 128 dims, weighted by the learning rate
of each checkpoint". Notation, paper -> code:

- checkpoints ``theta_t``, ``t = 1..T``: those of :func:`harness.protocols.training_checkpoints`
  that :func:`select_checkpoints` keeps (all of them in :meth:`TracInConfig.paper`), oldest first,
  the last always the final model; each with the learning rate ``eta_t`` then in force
  (``Checkpoint.lr``);
- ``g_t(x, c) = d CE(f_{theta_t}(x), c) / d theta`` over ALL parameters (test side: ``c`` the
  target, the model's predicted class; train side: ``y_i``, the label the model was trained on);
  at the final checkpoint ``R^T g_T(x_i, y_i)`` is exactly GradDot's training gradient (same
  function, projector and batching; separate cache entries);
- ``R``: the Gaussian projection ``(P, proj_dim)`` of :mod:`methods._gradients`, the same matrix
  for every checkpoint; ``proj_dim=None`` (or 0) means exact gradients;
- attribution ``a_i(x) = (1/T) sum_t eta_t <R^T g_t(x, c), R^T g_t(x_i, y_i)>``, positive for
  proponents (a gradient step on ``x_i`` at ``theta_t`` lowers the test loss to first order). The
  test gradient is NOT normalised (the authors' code calls its GradDot with ``normalize_test=False``
  here);
- self-influence ``(1/T) sum_t eta_t ||R^T g_t(x_i, y_i)||^2`` (Pruthi et al.'s self-influence,
  used to find mislabelled points). The authors' code adds the norms ``||R^T g_t||`` instead of
  their squares (it reuses GradDot's cached norms); with ``T > 1`` the two orders can differ.

Which checkpoints. The reference (gumityolcu/DualXDA, ``src/train.py`` and
``src/explainers/tracin.py``) trains with ``save_each = 2``: it saves the model every 2 epochs and,
whenever the validation loss improves, a copy of that save as ``best_val_score_...``; TracIn loads
EVERY file of the model's checkpoint folder (the periodic saves and the best copy), weights each by
the learning rate in its saved optimiser state and DIVIDES the sum by the number of files. Here a
task keeps a checkpoint every ``checkpoint_every`` epochs and always one after the last epoch (the
final model, the one the benchmark explains: the reference's "best" model); ``paper()`` uses all of
them and divides by their number, as the reference does. Two differences: the reference's best
file duplicates one periodic save (that state counts twice there, once here), and our explained
model is the last epoch's rather than the best-validation one. ``max_checkpoints=k`` keeps ``k`` of
the ``T0`` checkpoints, evenly spaced counting back from the final model (stride ``T0 / k``), so a
long training run does not make the fit ``T0`` gradient passes; :meth:`TracInConfig.quick` keeps 3.

Cost. ``fit`` = one per-sample gradient pass over the training set PER USED CHECKPOINT; the projected
gradients are stored side by side as ``(N, T * d)`` and cached by content hash (model weights,
training data, every used checkpoint's fingerprint, epoch and learning rate, proj_dim, seed, batch
size, device type of the projection generator). ``explain`` = one gradient pass over the test points
per checkpoint, each block scaled by ``eta_t / T``, then one ``(n_test, T d) x (T d, N)`` matmul.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch

from harness.cache import Artefact
from harness.config import ConfigError, option, require_positive_int
from harness.protocols import CapabilityError, Checkpoint, DataError, Method, Split, training_checkpoints
from methods._gradients import (
    PAPER_PROJ_DIM,
    GaussianProjector,
    ProjectedGradientOptions,
    check_classes,
    make_projector,
    model_state,
    num_outputs,
    per_sample_gradients,
    state_fingerprint,
)

if TYPE_CHECKING:
    from torch import Tensor, nn

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class TracInConfig(ProjectedGradientOptions):
    """Configuration of :class:`TracIn`; :meth:`paper` holds the DualXDA paper's settings."""

    min_checkpoints: int = option(1, "fail unless the model carries at least this many checkpoints")
    max_checkpoints: int | None = option(
        None,
        "use at most this many checkpoints, evenly spaced back from the final model (paper: None = all; "
        "the fit costs one gradient pass per checkpoint)",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.min_checkpoints, bool) or not isinstance(self.min_checkpoints, int):
            raise ConfigError(f"min_checkpoints must be an integer >= 1, got {self.min_checkpoints!r}")
        if self.min_checkpoints < 1:
            raise ConfigError(f"min_checkpoints must be >= 1, got {self.min_checkpoints}")
        require_positive_int(self.max_checkpoints, "max_checkpoints", allow_none=True)

    @classmethod
    def paper(cls) -> TracInConfig:
        """The paper's settings: every checkpoint, CE-loss gradients, 128-dim projection."""
        return cls(proj_dim=PAPER_PROJ_DIM, max_checkpoints=None)

    @classmethod
    def quick(cls) -> TracInConfig:
        """The paper's method on at most 3 checkpoints (evenly spaced, the final model included)."""
        return replace(cls.paper(), max_checkpoints=3)


def select_checkpoints(n: int, limit: int | None) -> list[int]:
    """Indices of the checkpoints to use out of ``n`` (oldest first), at most ``limit`` of them.

    ``limit`` None or ``>= n``: all. Otherwise ``n - 1 - floor(j n / limit)`` for ``j < limit``:
    evenly spaced with stride ``n / limit`` counting back from the final model (index ``n - 1``),
    which is always kept, e.g. 3 of 10 -> ``[3, 6, 9]``, 3 of 4 -> ``[1, 2, 3]``.
    """
    if limit is None or limit >= n:
        return list(range(n))
    return sorted({n - 1 - (j * n) // limit for j in range(limit)})


class TracIn(Method):
    """TracInCP over the model's training checkpoints, learning-rate weighted and averaged."""

    Config = TracInConfig
    version = "2"
    supports = frozenset({"self_influence", "cache"})
    attributes_through = (
        "all parameters (per-sample CE-loss gradients at every kept checkpoint, learning-rate weighted and "
        "averaged, random projection to 128)"
    )
    self_influence_definition = (
        "(1/T) sum_t eta_t ||R^T g_t(x_i, y_i)||^2 over the T used checkpoints (Pruthi et al.; the "
        "reference sums norms, not squares)"
    )

    #: Not in the key: the minimum only guards, the memory budget leaves the matrix as it is, and the
    #: checkpoints that ``max_checkpoints`` selects are in the key themselves (:meth:`cache_key_extra`).
    cache_ignores = frozenset({"min_checkpoints", "max_checkpoints", "projection_memory_mb"})

    config: TracInConfig

    def __init__(self, config: TracInConfig | None = None) -> None:
        super().__init__(config)
        self.train_grads_: Tensor | None = None  # (N, T * d) projected train gradients, side by side
        self.self_influence_: Tensor | None = None  # (N,)
        self.lrs_: list[float] = []  # eta_t of the used checkpoints
        self.epochs_: list[int] = []
        self.n_available_: int | None = None  # checkpoints the model carries
        self.num_classes_: int | None = None
        self._checkpoints: list[Checkpoint] = []  # the used checkpoints, oldest first
        self._states: list[tuple[dict[str, Tensor], dict[str, Tensor]]] = []
        self._projector: GaussianProjector | None = None

    # ----- lifecycle --------------------------------------------------------------------------
    def setup(self, model: nn.Module, train: Split) -> None:
        """Check the checkpoints and data; keep the used checkpoints' weights, learning rates and projector.

        Parameters
        ----------
        model:
            The trained model on its device, carrying its training checkpoints
            (:func:`harness.protocols.training_checkpoints`).
        train:
            ``x`` ``(N, *input_shape)``; ``y`` ``(N,)`` the labels the model was trained on.

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
        available = _checkpoints(model, cfg.min_checkpoints, name)
        self.n_available_ = len(available)
        self._checkpoints = [available[i] for i in select_checkpoints(len(available), cfg.max_checkpoints)]
        if len(train) == 0:
            raise DataError(f"{name}: the training set is empty")
        self.num_classes_ = num_outputs(model, train.inputs)
        check_classes(train.y, len(train), self.num_classes_, "training labels", name)
        self._states = [model_state(model, ck.state) for ck in self._checkpoints]
        self.lrs_ = [float(ck.lr) for ck in self._checkpoints]
        self.epochs_ = [int(ck.epoch) for ck in self._checkpoints]
        self._projector = make_projector(self._states[0][0], cfg)

    def cache_key_extra(self, model: nn.Module, train: Split) -> dict[str, Any]:
        """Every used checkpoint (epoch, learning rate, weights' fingerprint) and the generator's device type.

        The checkpoints stand in for ``max_checkpoints`` (which selects them) in the key.
        """
        assert self.device_ is not None
        return {
            "checkpoints": [
                {"epoch": ck.epoch, "lr": float(ck.lr), "state": state_fingerprint(ck.state)}
                for ck in self._checkpoints
            ],
            "generator_device": self.device_.type if self.config.projection else None,
        }

    def compute(self, model: nn.Module, train: Split) -> Artefact:
        """Projected training gradients at every used checkpoint, side by side: ``(N, T * d)`` on the CPU.

        In the model's dtype and unweighted: block ``t`` is ``R^T g_t(x_i, y_i)``.
        """
        name = self.name or type(self).__name__
        n_checkpoints = len(self._states)
        log.info(
            "%s: per-sample gradients of %d training points at %d checkpoints",
            name,
            len(train),
            n_checkpoints,
        )
        blocks = [
            per_sample_gradients(
                model,
                params,
                buffers,
                train.inputs,
                train.y,
                kind="loss",
                batch_size=self.config.batch_size,
                projector=self._projector,
                desc=f"{name} train gradients, checkpoint {t + 1}/{n_checkpoints}",
            ).cpu()
            for t, (params, buffers) in enumerate(self._states)
        ]
        return Artefact(
            tensors={"grads": torch.cat(blocks, dim=1)},
            meta={"n_train": len(train), "n_checkpoints": n_checkpoints},
        )

    def load(self, artefact: Artefact, model: nn.Module, train: Split) -> None:
        """Keep the training gradients ``(N, T * d)`` on the model's device; self-influence ``(N,)``."""
        assert self.device_ is not None
        cfg = self.config
        device = self.device_
        first = next(iter(self._states[0][0].values()))
        n_checkpoints = len(self._states)
        # clone: tensors read from the cache may sit at unaligned addresses (BLAS rounding)
        self.train_grads_ = artefact.tensors["grads"].to(device=device, dtype=first.dtype).clone()
        blocks = self.train_grads_.reshape(len(train), n_checkpoints, -1)  # (N, T, d)
        self.self_influence_ = ((blocks * blocks).sum(dim=2) * self._weights(first.dtype, device)).sum(dim=1)
        self.attributes_through = (
            f"all parameters (per-sample CE-loss gradients at {n_checkpoints} of {self.n_available_} "
            f"checkpoints, epochs {self.epochs_}, learning-rate weighted and averaged, "
            + (f"random projection to {cfg.projection})" if cfg.projection else "exact, no projection)")
        )

    def explain(self, x: Tensor, targets: Tensor) -> Tensor:
        """``(1/T) sum_t eta_t <R^T g_t(x, c), R^T g_t(x_i, y_i)>`` for every test input and training point.

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
        check_classes(targets, x.shape[0], self.num_classes_, "targets", self.name or type(self).__name__)
        weights = self._weights(torch.float64, torch.device("cpu")).tolist()
        blocks = [
            weight
            * per_sample_gradients(
                self.model_,
                params,
                buffers,
                x,
                targets,
                kind="loss",
                batch_size=self.config.batch_size,
                projector=self._projector,
                desc=f"test gradients, checkpoint {t + 1}/{len(self._states)}",
            )
            for t, ((params, buffers), weight) in enumerate(zip(self._states, weights, strict=True))
        ]
        test = torch.cat(blocks, dim=1)  # (n_test, T * d)
        return (test @ self.train_grads_.T).to(torch.float32)

    def self_influence(self) -> Tensor:
        """``(N,)`` float32 ``(1/T) sum_t eta_t ||R^T g_t(x_i, y_i)||^2`` on the model's device."""
        self._require_fitted()
        assert self.self_influence_ is not None
        return self.self_influence_.to(torch.float32)

    def _weights(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        """``(T,)`` the checkpoint weights ``eta_t / T`` (the reference's learning-rate-weighted mean)."""
        lrs = torch.tensor(self.lrs_, dtype=dtype, device=device)
        return lrs / len(self.lrs_)

    def diagnostics(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "proj_dim": self.config.projection,
            "n_checkpoints": len(self.lrs_),
            "n_checkpoints_available": self.n_available_,
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
            "only, use graddot with test_gradient=loss and normalise_test=False (TracIn with one checkpoint "
            "and learning rate 1)"
        ) from err
    if len(checkpoints) < minimum:
        raise DataError(
            f"{name}: the model carries {len(checkpoints)} training checkpoint(s) but min_checkpoints is "
            f"{minimum}; the tasks keep a checkpoint every checkpoint_every epochs (where they have the "
            f"option; otherwise every epoch) and after the last, so train the model for at least {minimum} "
            f"epochs (e.g. --task-option epochs={minimum} --task-option checkpoint_every=1) or lower "
            "min_checkpoints"
        )
    for ck in checkpoints:
        lr = ck.lr
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0:
            raise DataError(
                f"{name}: checkpoint of epoch {ck.epoch} has learning rate {lr!r}; TracIn weights each "
                "checkpoint by its learning rate, which must be a finite number > 0 (set Checkpoint.lr)"
            )
    return checkpoints
