"""TRAK: attributions from projected, whitened per-sample gradients, computed with ``traker``.

Paper: Park, Georgiev, Ilyas, Leclerc, Madry, "TRAK: Attributing Model Behavior at Scale" (ICML
2023, arXiv 2303.14186); library: ``traker`` 0.3.2 (MadryLab). Benchmark settings from Yolcu et
al., "DualXDA" (arXiv 2402.12118), facts in ../shared/reference/dualxda-paper.md: proj_dim 2048,
one checkpoint (the final model), no ensemble. Notation, paper -> code:

- ``f(z; theta)``: the model output function, traker's ``ImageClassificationModelOutput``: the
  margin ``log(p_c / (1 - p_c)) = logit_c - logsumexp_{k != c} logit_k`` of class ``c``. For a
  training point ``c = y_i`` (``train.y``, the label the model was TRAINED on); for a test point
  ``c`` is the given target (the model's PREDICTED class): traker reads the class from the label
  slot of the batch, so :meth:`TRAK.explain` passes ``(x, targets)``;
- ``theta``: ALL parameters of the model as given (``grad_wrt=None``);
- ``P``: the random projection ``(n_params, proj_dim)``, traker's ``BasicProjector`` (Gaussian
  entries by default, as traker picks on CPU; seed ``seed``, model id 0);
- ``phi_i = P^T grad_theta f(z_i) / sqrt(n_params)``: projected training gradients, rows of
  ``Phi`` ``(n_train, proj_dim)`` (traker's ``grads``; the division is traker's normaliser);
- ``Phi (Phi^T Phi + lambda I)^{-1}``: traker's ``features`` ``(n_train, proj_dim)``
  (``lambda = lambda_reg``; traker rescales the inverse by the mean of its absolute entries);
- ``Q = diag(1 - p_i)``: traker's ``out_to_loss`` ``(n_train, 1)``, the out-to-loss gradient
  (softmax probability of the training label, temperature 1);
- the score of training point ``i`` for test point ``x`` and target ``c``:
  ``tau(x)_i = [Phi (Phi^T Phi + lambda I)^{-1} phi(x, c)]_i Q_ii`` with
  ``phi(x, c) = P^T grad_theta f((x, c)) / sqrt(n_params)``; with one checkpoint traker's average
  over models is the identity and no soft-thresholding is applied (traker does none);
- self-influence: ``tau(x_i)_i`` with target ``y_i``, i.e. the diagonal that traker's scoring of
  the training set against itself gives: ``(features_i . phi_i) Q_ii``.

``out_to_loss=False`` drops ``Q_ii`` from both (an ablation, not the paper's TRAK; the default and
both presets keep it, as traker and the DualXDA reference code do).

Why TRAK's top-5 rarely share the predicted class (class detection near chance on MNIST, while
its mislabel detection is the best): on a model that fits its training set, ``Q_ii = 1 - p_i``
spans many orders of magnitude (MNIST, 1,000 points, quick model: 1e-7 at the median, 2e-3 at
most; 44% of the points get exactly 0 in float32, so their scores are 0), while the whitened
scores ``[Phi (Phi^T Phi)^{-1} phi(x)]_i`` are positive on other classes about as often as on the
predicted one. The product puts the few least confident training points on top for most test
points, whatever their class: class detection 0.20 with Q, 0.85 without it (proj_dim 512; 0.31
against 0.86 with exact, unprojected gradients), the rest unchanged. The same factor in the
self-influence is what makes it a mislabel detector (0.71 with Q, 0.52 without). The tests check
the scores against a float64 reference of the formula; the README has the measurements.

Computation. :meth:`TRAK.compute` (the cold fit) runs traker's own pipeline
(``TRAKer.load_checkpoint``, ``featurize``, ``finalize_features``) with ``save_dir`` in a scratch
folder, then returns traker's ``features`` and ``out_to_loss`` (and the self-scores
``features_i . phi_i`` before Q) as tensors of one cache artefact, keyed by content hash (model,
data, traker version, device type, every option but ``out_to_loss``, which only decides whether Q
multiplies them); the scratch folder is removed. A second fit with the same model, data and options
reads them back and does not featurize; :meth:`TRAK.load` sets the fitted state on both paths.
:meth:`TRAK.explain` repeats traker's scoring step (``TRAKer.score`` + ``finalize_scores``) with
traker's own components (its ``FunctionalGradientComputer``, a fresh ``BasicProjector`` with the
same seed, its ``BasicScoreComputer``) without writing to disk; the tests check it against a plain
TRAKer run.

CPU notes (../shared/reference/environment.md): traker's default device is ``"cuda"``, so the
model's device is always passed; arrays are float32 (traker's float16 default is for GPUs).
traker 0.3.2 frees the projection matrix in ``finalize_features`` and its ``BasicProjector``
cannot regenerate it when ``proj_dim <= 100`` (one block), so scoring then fails: such a
``proj_dim`` is rejected. ``Phi^T Phi`` has rank at most ``min(n_train, n_params)``; when that is
below ``proj_dim`` the inverse does not exist and ``lambda_reg`` must be positive.

Cost. ``fit`` = per-sample gradients of all parameters for the training set (``torch.func`` vmap
in batches of ``batch_size``), each batch projected block-wise by traker's ``BasicProjector``
(``2 n_params proj_dim`` flops per point), then one ``proj_dim x proj_dim`` inverse. traker redraws
every ``(n_params, 100)`` block of the matrix for every batch; our subclass draws each block once
and keeps it (up to ``KEEP_BLOCKS_MB``; same numbers, bitwise), so a fit or a scorer draws the
``n_params x proj_dim`` normals once instead of once per batch. ``explain`` = the same
gradient pass over the test points and one ``(n_train, proj_dim) x (proj_dim, n_test)`` matmul.
"""

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import torch

from harness.cache import Artefact
from harness.config import Config, ConfigError, option
from harness.protocols import DataError, Method, Split

if TYPE_CHECKING:
    from torch import Tensor, nn

log = logging.getLogger(__name__)

#: traker 0.3.2's BasicProjector block size: a proj_dim at or below it breaks scoring.
TRAKER_BLOCK_SIZE = 100
#: MiB of projection blocks a TRAK projector keeps instead of redrawing them per batch (the rest are
#: redrawn, as traker does); BasicConv at proj_dim 512 needs 6 blocks of 482 MiB.
KEEP_BLOCKS_MB = 4096
PROJECTIONS = ("normal", "rademacher")
MODEL_OUTPUTS = ("image_classification",)


@dataclass(frozen=True, kw_only=True)
class TRAKConfig(Config):
    """Configuration of :class:`TRAK`. ``paper()``: proj_dim 2048, one checkpoint."""

    proj_dim: int = option(2048, "dimension of the random projection of the gradients (paper: 2048)")
    seed: int = option(0, "seed of the projection matrix (traker's projector_seed)")
    projection: Literal["normal", "rademacher"] = option(
        "normal", "entries of the projection matrix: normal (traker's choice on CPU) or rademacher"
    )
    lambda_reg: float = option(
        0.0, "ridge term added to Phi^T Phi before inverting (traker's lambda_reg; paper: 0)"
    )
    model_output: Literal["image_classification"] = option(
        "image_classification", "traker model output function: image_classification = class margin"
    )
    batch_size: int = option(128, "points per per-sample-gradient batch (featurizing and scoring)")
    out_to_loss: bool = option(
        True,
        "multiply each score by Q_ii = 1 - p_i, the training point's out-to-loss weight (TRAK, traker "
        "and the paper); false drops Q: an ablation, not the paper's TRAK",
    )

    def __post_init__(self) -> None:
        if isinstance(self.proj_dim, bool) or not isinstance(self.proj_dim, int):
            raise ConfigError(f"proj_dim must be an integer > {TRAKER_BLOCK_SIZE}, got {self.proj_dim!r}")
        if self.proj_dim <= TRAKER_BLOCK_SIZE:
            raise ConfigError(
                f"proj_dim={self.proj_dim} is too small for traker 0.3.2: with proj_dim <= "
                f"{TRAKER_BLOCK_SIZE} its BasicProjector frees its only projection block in "
                f"finalize_features and scoring fails; use proj_dim >= {TRAKER_BLOCK_SIZE + 1} "
                "(paper: 2048)"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be an integer >= 0, got {self.seed!r}")
        if self.projection not in PROJECTIONS:
            raise ConfigError(f"projection must be one of {list(PROJECTIONS)}, got {self.projection!r}")
        if isinstance(self.lambda_reg, bool) or not (
            isinstance(self.lambda_reg, int | float)
            and math.isfinite(self.lambda_reg)
            and self.lambda_reg >= 0
        ):
            raise ConfigError(f"lambda_reg must be a finite number >= 0, got {self.lambda_reg!r}")
        if self.model_output not in MODEL_OUTPUTS:
            raise ConfigError(f"model_output must be one of {list(MODEL_OUTPUTS)}, got {self.model_output!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not isinstance(self.out_to_loss, bool):
            raise ConfigError(f"out_to_loss must be true or false, got {self.out_to_loss!r}")

    @classmethod
    def paper(cls) -> TRAKConfig:
        """The DualXDA paper's TRAK: proj_dim 2048, one checkpoint (the final model), no ensemble."""
        return cls(proj_dim=2048)

    @classmethod
    def quick(cls) -> TRAKConfig:
        """proj_dim 512 for 2-core CPUs.

        On CPU traker's BasicProjector regenerates the ``n_params x proj_dim`` matrix for every
        batch (1.26M x 2048 for the paper's MNIST net), so the cost of featurizing grows linearly
        with proj_dim; 512 stays well above traker's 100 limit and below the quick suite's 6,000
        training points (so ``Phi^T Phi`` is invertible without ``lambda_reg``). Batches of 256
        amortise the regeneration (their per-sample gradients take about 1.3 GB for that net).
        """
        return cls(proj_dim=512, batch_size=256)

    @classmethod
    def smoke(cls) -> TRAKConfig:
        """quick() with ``lambda_reg=1e-3``, for the 48-point toy task of ``dabench check``.

        There ``Phi^T Phi`` (512 x 512) has rank at most 48, so quick()'s ``lambda_reg`` 0 cannot invert
        it (fit raises a DataError that says so); a small ridge makes it invertible.
        """
        return replace(cls.quick(), lambda_reg=1e-3)


class TRAK(Method):
    """TRAK (Park et al. 2023) through ``traker``: one checkpoint, all parameters, class margin."""

    Config = TRAKConfig
    version = "1"
    supports = frozenset({"self_influence", "cache"})
    attributes_through = "all parameters"
    self_influence_definition = (
        "TRAK score of training point i for itself with target y_i: "
        "[Phi (Phi^T Phi + lambda I)^{-1}]_i . phi_i * (1 - p_i) (without the factor when out_to_loss=false)"
    )
    # out_to_loss only decides whether Q multiplies the scores: both settings share one entry
    cache_ignores = frozenset({"out_to_loss"})

    config: TRAKConfig

    def __init__(self, config: TRAKConfig | None = None) -> None:
        super().__init__(config)
        self.features_: Tensor | None = None  # (n_train, proj_dim) float32, model device
        self.out_to_loss_: Tensor | None = None  # (n_train, 1) float32, model device
        self.self_influence_: Tensor | None = None  # (n_train,) float32, model device
        self.info_: dict[str, Any] = {}
        self._scorer: _Scorer | None = None

    def cache_key_extra(self, model: nn.Module, train: Split) -> dict[str, Any]:
        """traker's version and the device type (the projection's random numbers depend on it)."""
        assert self.device_ is not None, "cache_key is called by fit(), after device_ is set"
        return {"traker": _traker_version(), "device": self.device_.type}

    # ----- lifecycle --------------------------------------------------------------------------
    def warm_up(self, device: torch.device) -> None:
        """Import traker (seconds on the first import in a process: not the method's cost)."""
        import trak  # noqa: F401

    def setup(self, model: nn.Module, train: Split) -> None:
        """Check that the training set is not empty and that ``Phi^T Phi`` can be inverted.

        Raises
        ------
        DataError
            When the training set is empty, or ``Phi^T Phi`` cannot be inverted (fewer training points
            or parameters than ``proj_dim``) and ``lambda_reg`` is 0.
        """
        n_train = len(train)
        if n_train == 0:
            raise DataError("TRAK: the training set is empty")
        n_params = sum(p.numel() for p in model.parameters())
        rank = min(n_train, n_params)
        if rank < self.config.proj_dim and self.config.lambda_reg == 0:
            raise DataError(
                f"TRAK: Phi^T Phi ({self.config.proj_dim} x {self.config.proj_dim}) has rank at most "
                f"min(n_train={n_train}, n_params={n_params}) = {rank} and cannot be inverted; "
                f"set lambda_reg > 0 or proj_dim <= {rank}"
            )
        self._scorer = None  # built on first explain (it generates the first projection block)

    def _traker(self, model: nn.Module, n_train: int, device: torch.device, save_dir: str) -> Any:
        """A ``TRAKer`` set up as this config says (float32, explicit device and projector)."""
        from trak import TRAKer

        cfg = self.config
        return TRAKer(
            model=model,
            task=cfg.model_output,
            train_set_size=n_train,
            save_dir=save_dir,
            load_from_save_dir=False,
            device=str(device),
            projector=_projector(model, cfg, device),
            proj_dim=cfg.proj_dim,
            projector_seed=cfg.seed,
            use_half_precision=False,
            lambda_reg=float(cfg.lambda_reg),
            logging_level=logging.WARNING,
        )

    def compute(self, model: nn.Module, train: Split) -> Artefact:
        """traker's featurize + finalize_features on the whole training set (a cache miss).

        traker's ``save_dir`` is a scratch folder (:meth:`scratch_dir`), removed once its arrays are
        copied into the returned artefact: the artefact holds tensors, not traker's store.

        Returns
        -------
        Artefact
            ``features`` ``(n_train, proj_dim)`` float32, ``out_to_loss`` ``(n_train, 1)`` float32 and
            the self-scores before Q, ``self_score`` = ``features_i . phi_i`` ``(n_train,)`` float64;
            ``meta`` with ``n_train``, ``n_params``, ``proj_dim`` and ``mean_out_to_loss``.
        """
        import numpy as np

        cfg = self.config
        device = self.device_
        assert device is not None
        n_train = len(train)
        save_dir = self.scratch_dir()
        was_training = model.training
        try:
            traker = self._traker(model, n_train, device, str(save_dir))
            log.info(
                "trak: featurizing %d training points (%d parameters -> proj_dim %d)",
                n_train,
                traker.num_params_for_grad,
                cfg.proj_dim,
            )
            traker.load_checkpoint(model.state_dict(), model_id=0)
            for x, y in train.batches(cfg.batch_size):
                traker.featurize(batch=(x.to(device), y.to(device).long()), num_samples=len(y))
            traker.finalize_features(model_ids=[0])
            store = traker.saver.current_store
            features = torch.from_numpy(np.array(store["features"], dtype=np.float32))
            grads = torch.from_numpy(np.array(store["grads"], dtype=np.float32))
            out_to_loss = torch.from_numpy(np.array(store["out_to_loss"], dtype=np.float32))
            n_params = int(traker.num_params_for_grad)
            del traker, store
        finally:
            model.train(was_training)
            shutil.rmtree(save_dir, ignore_errors=True)
        # traker scores a training point against itself as (features_i . phi_i) * Q_ii; Q is applied in load
        self_score = (features.double() * grads.double()).sum(dim=1)
        meta = {
            "n_train": n_train,
            "n_params": n_params,
            "proj_dim": cfg.proj_dim,
            "mean_out_to_loss": float(out_to_loss.mean()),
        }
        return Artefact(
            tensors={
                "features": features,
                "out_to_loss": out_to_loss,
                "self_score": self_score,  # float64: times Q in load, then rounded once
            },
            meta=meta,
        )

    def load(self, artefact: Artefact, model: nn.Module, train: Split) -> None:
        """Keep traker's features and Q on the model's device; self-influence = self-score (times Q)."""
        device = self.device_
        assert device is not None
        t = artefact.tensors
        # fresh copies: a tensor read from the cache file may sit at another memory alignment, and
        # BLAS kernels round differently on differently aligned inputs (a hit must equal a miss)
        self.features_ = t["features"].to(device, copy=True)
        self.out_to_loss_ = t["out_to_loss"].to(device, copy=True)
        self_score = t["self_score"].to(device, dtype=torch.float64, copy=True)
        if self.config.out_to_loss:
            self_score = self_score * self.out_to_loss_[:, 0].double()
        self.self_influence_ = self_score.float()
        self.info_ = dict(artefact.meta)

    # ----- explanations -----------------------------------------------------------------------
    def explain(self, x: Tensor, targets: Tensor) -> Tensor:
        """``(n_test, n_train)`` float32 TRAK scores on the model's device.

        Parameters
        ----------
        x:
            ``(n_test, *input_shape)`` test inputs, any device.
        targets:
            ``(n_test,)`` classes whose margin is attributed (the model's predicted classes).

        Returns
        -------
        Tensor
            ``A[j, i] = tau(x_j)_i``: traker's score of training point i for test point j, target
            ``targets[j]`` (the transpose of traker's ``(n_train, n_test)`` score matrix).
        """
        self._require_fitted()
        model, device = self.model_, self.device_
        assert model is not None and device is not None
        assert self.features_ is not None and self.out_to_loss_ is not None
        targets = targets.to(device).long().reshape(-1)
        if targets.shape[0] != x.shape[0]:
            raise DataError(f"TRAK: {x.shape[0]} test points but {targets.shape[0]} targets")
        if self._scorer is None:
            self._scorer = _Scorer(model, self.config, device)
        n_train = self.features_.shape[0]
        if x.shape[0] == 0:
            return torch.zeros(0, n_train, dtype=torch.float32, device=device)
        k = _num_outputs(model, x[:1].to(device))
        if targets.min() < 0 or targets.max() >= k:
            raise DataError(f"TRAK: targets must be classes in 0..{k - 1}, got {targets.unique().tolist()}")
        bs = self.config.batch_size
        was_training = model.training
        model.eval()
        try:  # traker's score(): the margin of targets[j] at x[j], projected and normalised
            parts = [
                self._scorer.project(x[i : i + bs].to(device), targets[i : i + bs])
                for i in range(0, x.shape[0], bs)
            ]
            target_grads = torch.cat(parts)  # (n_test, proj_dim)
        finally:
            model.train(was_training)
        scores = self._scorer.scores(self.features_, target_grads)  # (n_train, n_test), CPU
        scores = scores.to(device)
        if self.config.out_to_loss:
            scores = scores * self.out_to_loss_  # times Q_ii, as traker's finalize_scores
        return scores.T.contiguous().to(torch.float32)

    def self_influence(self) -> Tensor:
        """``(n_train,)`` float32: each training point's TRAK score for itself (target ``y_i``)."""
        self._require_fitted()
        assert self.self_influence_ is not None
        return self.self_influence_.clone()

    def diagnostics(self) -> dict[str, Any]:
        """proj_dim, lambda_reg, out_to_loss, the featurizing meta and whether it came from the cache."""
        out: dict[str, Any] = {
            "proj_dim": self.config.proj_dim,
            "lambda_reg": self.config.lambda_reg,
            "out_to_loss": self.config.out_to_loss,
            **self.info_,
        }
        if self._fitted:
            out["features_from_cache"] = self.from_cache_
        return out


class _Scorer:
    """traker's scoring step (``TRAKer.score`` + ``finalize_scores``) without its on-disk store.

    Uses traker's ``FunctionalGradientComputer`` (the same model output function), a fresh
    ``BasicProjector`` built exactly as for featurizing, traker's normaliser ``sqrt(n_params)`` and
    its ``BasicScoreComputer``.
    """

    def __init__(self, model: nn.Module, cfg: TRAKConfig, device: torch.device) -> None:
        from trak.gradient_computers import FunctionalGradientComputer
        from trak.modelout_functions import TASK_TO_MODELOUT
        from trak.score_computers import BasicScoreComputer

        n_params = sum(p.numel() for p in model.parameters())
        self.gradient_computer = FunctionalGradientComputer(
            model=model,
            task=TASK_TO_MODELOUT[cfg.model_output](),
            grad_dim=n_params,
            dtype=torch.float32,
            device=str(device),
        )
        self.projector = _projector(model, cfg, device)
        self.normalize_factor = torch.sqrt(torch.tensor(n_params, dtype=torch.float32))
        self.score_computer = BasicScoreComputer(
            dtype=torch.float32,
            device=str(device),
            logging_level=logging.WARNING,
            lambda_reg=float(cfg.lambda_reg),
        )

    def project(self, x: Tensor, targets: Tensor) -> Tensor:
        """``(n, proj_dim)`` float32 projected, normalised gradients of the margin of ``targets``."""
        self.gradient_computer.load_model_params(self.gradient_computer.model)
        grads = self.gradient_computer.compute_per_sample_grad(batch=(x, targets))
        grads = self.projector.project(grads, model_id=0)
        grads /= self.normalize_factor
        return grads.to(torch.float32).detach()

    def scores(self, features: Tensor, target_grads: Tensor) -> Tensor:
        """``(n_train, n_test)`` float32 on the CPU: ``features @ target_grads.T`` (traker's matmul)."""
        accumulator = torch.zeros(features.shape[0], target_grads.shape[0], dtype=torch.float32)
        self.score_computer.get_scores(features, target_grads, accumulator=accumulator)
        return accumulator


def _projector(model: nn.Module, cfg: TRAKConfig, device: torch.device) -> Any:
    """traker's ``BasicProjector`` over all parameters, its blocks kept (:func:`_kept_blocks_projector`)."""
    from trak.projectors import ProjectionType

    return _kept_blocks_projector()(
        grad_dim=sum(p.numel() for p in model.parameters()),
        proj_dim=cfg.proj_dim,
        seed=cfg.seed,
        proj_type=ProjectionType(cfg.projection),
        device=str(device),
        dtype=torch.float32,
    )


def _kept_blocks_projector() -> type:
    """traker's ``BasicProjector`` that keeps the blocks it generates (up to :data:`KEEP_BLOCKS_MB`).

    traker 0.3.2's ``BasicProjector.project`` redraws every ``(n_params, 100)`` block of the matrix
    from its generator state for EVERY batch (``proj_dim / 100`` blocks: for BasicConv at proj_dim
    512, 6 x 1.26 M normals per batch, most of a CPU featurize or explain call). This subclass draws
    each block once, with traker's own ``generate_sketch_matrix`` and generator states (so the same
    numbers), and keeps it; the per-block product ``grads @ block[:, :width]`` and the batch layout
    are traker's, so the projections are bitwise the same (tests/test_fit_waste.py). Blocks beyond
    the memory budget are redrawn per batch, as traker does. The per-sample gradients are flattened
    into one reused buffer instead of a fresh ``(batch, n_params)`` array per batch (same values).
    """
    global _KEPT_BLOCKS_CLASS
    if _KEPT_BLOCKS_CLASS is not None:
        return _KEPT_BLOCKS_CLASS
    from trak.projectors import BasicProjector
    from trak.utils import vectorize

    class KeptBlocksProjector(BasicProjector):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)  # draws block 0 into self.proj_matrix
            block_mb = self.grad_dim * self.block_size * self.proj_matrix.element_size() / 2**20
            self.keep_blocks = min(self.num_blocks, int(KEEP_BLOCKS_MB // block_mb))
            self._kept: dict[int, Tensor] = {}
            if self.keep_blocks > 0 and self.num_blocks > 1:
                self._kept[0] = self.proj_matrix
            self._flat: Tensor | None = None  # reused (batch, n_params) buffer of flat gradients

        def free_memory(self) -> None:
            super().free_memory()
            self._kept.clear()
            self._flat = None

        def _block(self, index: int) -> Tensor:
            kept = self._kept.get(index)
            if kept is not None:
                return kept
            kept_buffer = any(self.proj_matrix is block for block in self._kept.values())
            if index < self.keep_blocks or kept_buffer:  # draw into a fresh tensor, never a kept one
                self.proj_matrix_available = False
            self.generate_sketch_matrix(self.generator_states[index])
            if index < self.keep_blocks:
                self._kept[index] = self.proj_matrix
            return self.proj_matrix

        def project(self, grads: Any, model_id: int) -> Tensor:
            if self.num_blocks == 1:
                return super().project(grads, model_id)
            if isinstance(grads, dict):
                n = next(iter(grads.values())).shape[0]
                if self._flat is None or self._flat.shape[0] < n:
                    dtype = next(iter(grads.values())).dtype
                    self._flat = torch.empty(n, self.grad_dim, dtype=dtype, device=self.device)
                grads = vectorize(grads, arr=self._flat[:n], device=self.device)
            grads = grads.to(dtype=self.dtype)
            sketch = torch.zeros(size=(grads.size(0), self.proj_dim), dtype=self.dtype, device=self.device)
            if model_id != self.model_id:
                self.model_id = model_id
                self.get_generator_states()  # new seeds: the kept blocks are stale
                self._kept.clear()
            for ind in range(self.num_blocks):
                block = self._block(ind)
                st = ind * self.block_size
                ed = min((ind + 1) * self.block_size, self.proj_dim)
                sketch[:, st:ed] = grads.type(self.dtype) @ block[:, : (ed - st)]
            return sketch.type(grads.dtype)

    _KEPT_BLOCKS_CLASS = KeptBlocksProjector
    return KeptBlocksProjector


_KEPT_BLOCKS_CLASS: type | None = None


def _num_outputs(model: nn.Module, x: Tensor) -> int:
    with torch.no_grad():
        return int(model(x).shape[-1])


def _traker_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("traker")
    except PackageNotFoundError:  # pragma: no cover - traker installed from source
        return "unknown"
