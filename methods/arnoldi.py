"""Arnoldi influence functions (Schioppa, Zablotskaia, Vilar, Sokolov 2022) through captum.

Paper: Schioppa et al., "Scaling Up Influence Functions" (AAAI 2022); implementation:
``captum.influence.ArnoldiInfluenceFunction`` (captum 0.8.0). Settings from the DualXDA paper
(../shared/reference/dualxda-paper.md): projection dim 128, Arnoldi dim 150, tol 0.1, Hessian
regularisation 1e-3, 10,000 random training points for the Hessian. The paper names no layer
subset and captum's default is all parameters, so ``layers=None`` (all parameters) is the default.

Notation, paper -> code:

- ``theta``: the parameters of ``config.layers`` (all of the model's when None);
- ``H_h``: the Hessian of the SUMMED cross-entropy over ``hessian_points`` random training points
  (captum sums per-batch losses); the Arnoldi iteration (``arnoldi_dim`` steps, stopping when a new
  Krylov vector's norm falls below ``arnoldi_tol``) finds its top ``projection_dim`` eigenpairs
  ``(lambda_j, u_j)`` after ``hessian_reg`` is added to the Krylov restriction's diagonal;
  eigenvalues below ``hessian_inverse_tol`` are dropped -> captum's ``R = U diag(lambda)^{-1/2}``;
- embedding ``e(x, c) = R^T g(x, c)`` (``g`` the CE gradient at label ``c``) -> ``train_emb_``
  ``(N, k)`` for ``(x_i, y_i)`` and the test embeddings for ``(x, target)``;
- captum's score ``e(x, c) . e(x_i, y_i) ~ g^T (H_h + hessian_reg I)^{-1} g_i``, positive when
  up-weighting i lowers the test loss: captum's sign is already the project's (proponents positive;
  checked against the closed form in tests/test_influence_methods.py);
- our attribution rescales it to the project's ``/ N`` normalisation on the MEAN Hessian:
  ``a_i(x) = (N_h / N) e(x, c) . e(x_i, y_i) ~ g^T (H_mean + (hessian_reg / N_h) I)^{-1} g_i / N``,
  with ``N_h`` the number of Hessian points (a positive constant: ranks are captum's).

Cost. ``fit`` runs the Arnoldi iteration (``arnoldi_dim`` HVPs over the Hessian points) and the
training embeddings (one per-sample gradient per training point); both are cached by content hash
(model weights, training data, every option), and a cache hit rebuilds captum's object from the
stored ``R`` without rerunning the iteration. ``explain`` = per-sample gradients of the test points
plus a ``(n_test, k) x (k, N)`` matmul. The embeddings are computed from vmapped per-sample
gradients (torch.func) times ``R`` by default; captum's own per-example loop (``embeddings="captum"``)
gives the same numbers and stays as the reference path (captum with its sample-wise trick took 89.6 ms
per MNIST test point for BasicConv on 2 CPU cores, this path 11.4 ms).

Self-influence (captum's ``||e(x_i, y_i)||^2``, rescaled like the attributions) comes for free from
the cached embeddings.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from harness.cache import Artefact
from harness.config import Config, ConfigError, option, require_finite, require_positive_int
from harness.protocols import DataError, Inputs, Method, Split
from methods._gradients import per_sample_gradients

if TYPE_CHECKING:
    from torch import Tensor, nn

log = logging.getLogger(__name__)

#: The paper's modules on AwA2: ``classifier`` and ``features.7.2.conv2`` (reference naming, ``features``
#: a Sequential of the ResNet's stages, so index 7 is ``layer4``); our ResNet wrapper (tasks/resnets.py)
#: keeps torchvision's stage names, so the same convolution is ``features.layer4.2.conv2``. On MNIST and
#: CIFAR-10 the paper goes through all parameters (:meth:`ArnoldiConfig.paper`).
AWA2_LAYERS = ("classifier", "features.layer4.2.conv2")

#: How the embeddings R^T g are computed (ArnoldiConfig.embeddings).
EMBEDDING_PATHS = ("func", "captum")


@dataclass(frozen=True, kw_only=True)
class ArnoldiConfig(Config):
    """Configuration of :class:`ArnoldiIF`; :meth:`paper` holds the DualXDA paper's settings."""

    projection_dim: int = option(128, "top Hessian eigenpairs kept (paper: 128)")
    arnoldi_dim: int = option(150, "Arnoldi iterations, i.e. Krylov subspace size (paper: 150)")
    arnoldi_tol: float = option(0.1, "stop when a new Krylov vector's norm falls below this (paper: 0.1)")
    hessian_reg: float = option(1e-3, "added to the summed Hessian's Krylov restriction (paper: 1e-3)")
    hessian_inverse_tol: float = option(1e-4, "eigenvalues below this are dropped (captum's default)")
    hessian_points: int | None = option(
        10_000, "random training points whose summed loss defines the Hessian (paper: 10,000; None: all)"
    )
    layers: tuple[str, ...] | None = option(
        None, "module names whose parameters are attributed through (None: all parameters, as captum)"
    )
    embeddings: str = option(
        "func",
        "how R^T g is computed: 'func' (vmapped per-sample gradients, torch.func) or 'captum' "
        "(captum's per-example loop, the slow reference path); same scores",
    )
    batch_size: int = option(64, "points per batch for HVPs and gradients (changes cost, not scores)")
    seed: int = option(0, "seeds the Hessian subset and Arnoldi's start vector (global RNG restored)")

    def __post_init__(self) -> None:
        for name in ("projection_dim", "arnoldi_dim", "batch_size"):
            require_positive_int(getattr(self, name), name)
        if self.arnoldi_dim < 2:
            raise ConfigError(
                f"arnoldi_dim must be >= 2 (captum keeps arnoldi_dim - 1 vectors), got {self.arnoldi_dim}"
            )
        if self.embeddings not in EMBEDDING_PATHS:
            raise ConfigError(f"embeddings must be one of {list(EMBEDDING_PATHS)}, got {self.embeddings!r}")
        if self.hessian_points is not None:
            require_positive_int(self.hessian_points, "hessian_points")
        require_finite(self.arnoldi_tol, "arnoldi_tol")
        require_finite(self.hessian_reg, "hessian_reg", allow_zero=True)
        require_finite(self.hessian_inverse_tol, "hessian_inverse_tol", allow_zero=True)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        if self.layers is not None:
            if isinstance(self.layers, str) or not all(isinstance(n, str) and n for n in self.layers):
                raise ConfigError(f"layers must be a tuple of module names or None, got {self.layers!r}")
            if len(self.layers) == 0:
                raise ConfigError("layers must name at least one module (None: all parameters)")

    @classmethod
    def paper(cls) -> ArnoldiConfig:
        """Projection dim 128, Arnoldi dim 150, tol 0.1, Hessian reg 1e-3, 10,000 Hessian points."""
        return cls()

    @classmethod
    def for_dataset(cls, dataset: str) -> dict[str, Any]:
        """The paper's modules on AwA2 (:data:`AWA2_LAYERS`); all parameters (:meth:`paper`) elsewhere."""
        return {"layers": AWA2_LAYERS} if dataset == "awa2" else {}

    @classmethod
    def quick(cls) -> ArnoldiConfig:
        """Projection dim 32, Arnoldi dim 40, 1,000 Hessian points.

        The Arnoldi iteration costs ``arnoldi_dim`` HVPs over the Hessian points through all of
        BasicConv's 1.2M parameters and holds ``arnoldi_dim`` parameter-sized vectors: the paper's
        150 x 10,000 takes tens of minutes on 2 CPU cores, 40 x 1,000 well under one.
        """
        return cls(projection_dim=32, arnoldi_dim=40, hessian_points=1000)


class ArnoldiIF(Method):
    """Arnoldi influence functions (captum's ``ArnoldiInfluenceFunction``), proponents positive."""

    Config = ArnoldiConfig
    version = "1"
    supports = frozenset({"cache", "self_influence"})
    attributes_through = "all parameters (or config.layers), projected on the top Hessian eigenvectors"
    self_influence_definition = (
        "(N_h / N) ||R^T g(x_i, y_i)||^2 ~ g_i^T (H + (hessian_reg / N_h) I)^{-1} g_i / N "
        "(captum's self_influence, rescaled)"
    )

    config: ArnoldiConfig

    def __init__(self, config: ArnoldiConfig | None = None) -> None:
        super().__init__(config)
        self.train_emb_: Tensor | None = None  # (N, k) training embeddings R^T g_i, model device
        self.hessian_indices_: Tensor | None = None  # (N_h,) training points of the Hessian
        self.info_: dict[str, Any] = {}
        self._captum: Any = None
        self._factor: float = 1.0  # N_h / N
        self._n_hessian: int = 0  # N_h
        self._layers: list[str] | None = None  # captum's layer list (None: all parameters)
        self._projection: _Projection | None = None  # captum's R as (P, k), for embeddings="func"

    # ----- lifecycle --------------------------------------------------------------------------
    def warm_up(self, device: torch.device) -> None:
        """Import captum's influence module (seconds on the first import: not the method's cost)."""
        import captum.influence._core.arnoldi_influence_function  # noqa: F401

    def setup(self, model: nn.Module, train: Split) -> None:
        """Check the data and ``config.layers``; keep captum's layer list and the Hessian size ``N_h``.

        Parameters
        ----------
        model:
            The trained model, on its device.
        train:
            ``x`` ``(N, *input_shape)``; ``y`` ``(N,)`` the labels the model was trained on.

        Raises
        ------
        ConfigError
            When ``config.layers`` names a module the model lacks (the message lists its modules).
        DataError
            When the training set is empty or the model has no parameters.
        """
        if len(train) == 0:
            raise DataError("Arnoldi: the training set is empty")
        self._layers = _check_layers(model, self.config.layers)
        _params(model, self._layers)  # raises DataError for a model without parameters
        hessian_points = self.config.hessian_points
        self._n_hessian = len(train) if hessian_points is None else min(hessian_points, len(train))

    def compute(self, model: nn.Module, train: Split) -> Artefact:
        """Arnoldi iteration and training embeddings, on the CPU.

        Returns captum's ``R`` (one flat ``(k, P)`` tensor), the training embeddings ``(N, k)`` and
        the Hessian subset ``(N_h,)``; cached under every config option (each changes them).
        """
        cfg = self.config
        n, n_h = len(train), self._n_hessian
        gen = torch.Generator().manual_seed(cfg.seed)
        indices = torch.arange(n) if n_h == n else torch.randperm(n, generator=gen)[:n_h].sort().values
        inst = self._build(model, train, indices, self._layers, R=None)
        r_flat = torch.stack([torch.cat([t.reshape(-1) for t in vec]) for vec in inst.R])
        emb = self._embed(inst, train.inputs, train.y, test=False)
        log.info("arnoldi: kept %d eigenpairs of %d requested", len(inst.R), cfg.projection_dim)
        return Artefact(
            tensors={"R": r_flat.cpu(), "train_emb": emb.cpu(), "hessian_indices": indices},
            meta={"n_eigenpairs": len(inst.R), "n_params": int(r_flat.shape[1]), "n_hessian": n_h},
        )

    def load(self, artefact: Artefact, model: nn.Module, train: Split) -> None:
        """Rebuild captum's object from the stored ``R`` (no iteration); embeddings to the model's device."""
        t = artefact.tensors
        params = _params(model, self._layers)
        device = params[0].device
        shapes = [p.shape for p in params]
        sizes = [p.numel() for p in params]
        if int(t["R"].shape[1]) != sum(sizes):
            raise DataError("Arnoldi: the cached projection does not match the model's parameters")
        r_list = [
            tuple(c.view(s).to(device).clone() for c, s in zip(torch.split(row, sizes), shapes, strict=True))
            for row in t["R"]
        ]
        self._captum = self._build(model, train, t["hessian_indices"], self._layers, R=r_list)
        self.train_emb_ = t["train_emb"].to(device).clone()  # aligned memory: same BLAS rounding as cold
        self.hessian_indices_ = t["hessian_indices"]
        self._factor = self._n_hessian / len(train)
        self.info_ = dict(artefact.meta) | {"effective_damping": self.config.hessian_reg / self._n_hessian}

    def _build(
        self, model: nn.Module, train: Split, indices: Tensor, layers: list[str] | None, R: Any
    ) -> Any:
        """captum's ArnoldiInfluenceFunction; with ``R`` given, its iteration is skipped (cache hit)."""
        from captum.influence._core.arnoldi_influence_function import ArnoldiInfluenceFunction

        class _Arnoldi(ArnoldiInfluenceFunction):
            def _retrieve_projections_arnoldi_influence_function(self, *args: Any, **kwargs: Any) -> Any:
                if R is not None:
                    return R
                return super()._retrieve_projections_arnoldi_influence_function(*args, **kwargs)

        cfg = self.config
        device = _params(model, layers)[0].device
        # DataLoaders of whole batches, read from the split as captum iterates (the batches its own
        # DataLoader would make of a TensorDataset of the whole split, without materialising it)
        train_set = _batch_loader(train, None, cfg.batch_size, device)
        hessian_set = _batch_loader(train, indices, cfg.batch_size, device)
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # captum calls torch.manual_seed(seed), DataLoaders
            return _Arnoldi(
                model,
                train_set,
                checkpoint="",
                checkpoints_load_func=lambda _model, _path: 1.0,  # the model is already loaded
                layers=layers,
                loss_fn=torch.nn.CrossEntropyLoss(reduction="none"),
                batch_size=cfg.batch_size,
                hessian_dataset=hessian_set,
                sample_wise_grads_per_batch=False,
                projection_dim=cfg.projection_dim,
                seed=cfg.seed,
                arnoldi_dim=cfg.arnoldi_dim,
                arnoldi_tol=cfg.arnoldi_tol,
                hessian_reg=cfg.hessian_reg,
                hessian_inverse_tol=cfg.hessian_inverse_tol,
                projection_on_cpu=False,
                show_progress=False,
            )

    def _embed(self, inst: Any, x: Tensor | Inputs, y: Tensor, *, test: bool) -> Tensor:
        """``(n, k)`` embeddings ``R^T g(x, y)`` in batches, on the model's device.

        ``embeddings="func"``: per-sample CE gradients of the attributed parameters, vmapped with
        torch.func over a batch, times captum's ``R`` (``(P, k)``); ``"captum"``: captum's own
        ``compute_intermediate_quantities`` (one backward pass per example). Both give the same
        numbers (tests).
        """
        if self.config.embeddings == "func":
            return self._embed_func(inst.model, self._projection_of(inst), x, y)
        device = next(inst.model.parameters()).device
        bs = self.config.batch_size
        # captum iterates DataLoaders, which draw a base seed from the global RNG: restore it
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            parts = [
                inst.compute_intermediate_quantities(
                    (x[i : i + bs].to(device), y[i : i + bs].to(device).long()),
                    return_on_cpu=False,
                    test=test,
                )
                for i in range(0, len(x), bs)
            ]
        return torch.cat(parts)

    def _projection_of(self, inst: Any) -> _Projection:
        """captum's ``R`` as one ``(P, k)`` matrix, built once per fitted captum object."""
        if self._projection is None or self._projection.owner is not inst:
            r_flat = torch.stack([torch.cat([t.reshape(-1) for t in vec]) for vec in inst.R])
            self._projection = _Projection(r_flat.T.contiguous(), owner=inst)
        return self._projection

    def _embed_func(self, model: nn.Module, projection: _Projection, x: Tensor | Inputs, y: Tensor) -> Tensor:
        name_of = {id(p): n for n, p in model.named_parameters()}
        attributed = _params(model, self._layers)  # captum's order, the order of R's columns
        params = {name_of[id(p)]: p.detach() for p in attributed}
        frozen = {n: p.detach() for n, p in model.named_parameters() if n not in params}
        buffers = {n: b.detach() for n, b in model.named_buffers()} | frozen
        return per_sample_gradients(
            model,
            params,
            buffers,
            x,
            y,
            kind="loss",
            batch_size=self.config.batch_size,
            projector=projection,
            desc="arnoldi embeddings",
        )

    # ----- explanations -----------------------------------------------------------------------
    def explain(self, x: Tensor, targets: Tensor) -> Tensor:
        """``(n_test, N)`` float32 attributions ``(N_h / N) e(x, c) . e(x_i, y_i)``.

        Parameters
        ----------
        x:
            ``(n_test, *input_shape)`` test inputs.
        targets:
            ``(n_test,)`` target classes (the model's predicted classes in this benchmark).
        """
        self._require_fitted()
        assert self.train_emb_ is not None
        targets = targets.reshape(-1)
        if targets.shape[0] != x.shape[0]:
            raise DataError(f"Arnoldi: {x.shape[0]} test points but {targets.shape[0]} targets")
        if x.shape[0] == 0:
            return torch.zeros(0, self.train_emb_.shape[0], device=self.device_)
        test_emb = self._embed(self._captum, x, targets, test=True)
        return (self._factor * (test_emb @ self.train_emb_.T)).to(torch.float32)

    def self_influence(self) -> Tensor:
        """``(N,)`` float32: ``(N_h / N) ||e(x_i, y_i)||^2`` (captum's self-influence, rescaled)."""
        self._require_fitted()
        assert self.train_emb_ is not None
        return (self._factor * (self.train_emb_**2).sum(dim=1)).to(torch.float32)

    def diagnostics(self) -> dict[str, Any]:
        return dict(self.info_)


class _Projection:
    """The ``project`` hook of :func:`per_sample_gradients` for a fixed ``(P, k)`` matrix."""

    def __init__(self, matrix: Tensor, owner: Any = None) -> None:
        self.matrix = matrix
        self.proj_dim = int(matrix.shape[1])
        self.owner = owner  # the captum object whose R this is

    def project(self, flat: Tensor) -> Tensor:
        return flat @ self.matrix.to(flat.dtype)


def _check_layers(model: nn.Module, layers: tuple[str, ...] | None) -> list[str] | None:
    """``layers`` as captum's list, after checking that each names a module with parameters."""
    if layers is None:
        return None
    modules = dict(model.named_modules())
    with_params = [name for name, m in modules.items() if name and any(True for _ in m.parameters())]
    for name in layers:
        if name not in modules or not any(True for _ in modules[name].parameters()):
            raise ConfigError(
                f"Arnoldi: layer {name!r} is not a module with parameters of {type(model).__name__}; "
                f"choose from {with_params}"
            )
    return list(layers)


def _params(model: nn.Module, layers: list[str] | None) -> list[Tensor]:
    """The parameters captum differentiates, in captum's order."""
    if layers is None:
        params = list(model.parameters())
    else:
        modules = dict(model.named_modules())
        params = [p for name in layers for p in modules[name].parameters()]
    if not params:
        raise DataError(f"Arnoldi: model {type(model).__name__} has no parameters")
    return params


class _Batches(torch.utils.data.Dataset):
    """Batch ``k`` of a split's points ``rows`` (all: None), normalised and on ``device``: ``(x, y)``."""

    def __init__(self, train: Split, rows: Tensor | None, batch_size: int, device: torch.device) -> None:
        self.inputs, self.y, self.batch_size, self.device = train.inputs, train.y, batch_size, device
        self.rows = None if rows is None else rows.detach().cpu().long()
        self.n = len(train) if self.rows is None else int(self.rows.numel())

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def __getitem__(self, k: int) -> tuple[Tensor, Tensor]:
        if not 0 <= k < len(self):
            raise IndexError(f"batch {k} is out of range for {len(self)} batches")
        part = slice(k * self.batch_size, (k + 1) * self.batch_size)
        index = part if self.rows is None else self.rows[part]
        return self.inputs[index].to(self.device), self.y[index].to(self.device).long()


def _batch_loader(train: Split, rows: Tensor | None, batch_size: int, device: torch.device) -> Any:
    """A DataLoader that yields :class:`_Batches` as they are (``batch_size=None``: no collation)."""
    return torch.utils.data.DataLoader(_Batches(train, rows, batch_size, device), batch_size=None)
