"""Per-sample parameter gradients and a seeded Gaussian random projection (a support module).

Shared by :mod:`methods.graddot` (GradDot, GradCos) and :mod:`methods.tracin` (TracIn); it is not a
method and registers nothing. Notation (DualXDA paper, ../shared/reference/dualxda-paper.md):

- ``theta``: ALL parameters of the model, flattened in ``named_parameters`` order (each tensor
  row-major), ``P`` numbers in all;
- ``g(x, c)``: the per-sample gradient ``d/d theta`` of either the cross-entropy ``CE(f(x), c)``
  (``kind="loss"``) or the logit ``f_c(x)`` (``kind="logit"``), computed with ``torch.func``
  (``functional_call`` + ``vmap`` + ``grad``) in batches, the model in eval mode;
- ``R``: a Gaussian random matrix ``(P, d)`` with i.i.d. ``N(0, 1/d)`` entries, so that
  ``E[<R^T u, R^T v>] = <u, v>`` (Johnson–Lindenstrauss); the projected gradient is ``R^T g``.

The projection matrix is held whole only when it fits the memory budget. Its rows are cut into fixed chunks of
:func:`chunk_rows` rows (a function of ``d`` only, about 32 MiB of float32 each); chunk ``k`` is
drawn by ``torch.randn`` from its own ``torch.Generator`` seeded with a hash of ``(seed, k)``, so any
chunk can be regenerated on its own and the matrix is the same whatever the batch size or memory
budget. Chunks are kept in memory up to ``memory_mb`` and regenerated for every batch beyond that
(for the MNIST BasicConv, 1.26 M parameters x 128 = 645 MB: kept whole with the methods'
default budget of 1024 MiB; at 256 MiB, 60% of it is regenerated for every batch of gradients: on
6,000 MNIST points on 2 CPU cores GradDot's explain took 39.9 ms per test point against 13.0 ms
with the whole matrix kept). Generation happens on the model's device with that device's generator: a CUDA
generator gives other numbers than the CPU one for the same seed, so callers put the device type
in their cache keys. The values are drawn in float32 and then cast, so a float64 model sees the
same matrix as a float32 one.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

from harness.config import Config, ConfigError, option, require_positive_int
from harness.protocols import DataError, Inputs

if TYPE_CHECKING:
    from torch import Tensor, nn

log = logging.getLogger(__name__)

GradientKind = Literal["loss", "logit"]
GRADIENT_KINDS = ("loss", "logit")

#: The DualXDA paper's projection dimension for TracIn, GradDot and GradCos.
PAPER_PROJ_DIM = 128

#: Bytes of float32 in one chunk of the projection matrix.
CHUNK_BYTES = 32 * 2**20


def chunk_rows(proj_dim: int) -> int:
    """Rows of the projection matrix per chunk (at least 1): ``CHUNK_BYTES / (4 * proj_dim)``."""
    return max(1, CHUNK_BYTES // (4 * proj_dim))


def _chunk_seed(seed: int, index: int) -> int:
    """A 63-bit seed for chunk ``index`` of the matrix with seed ``seed`` (no overlap across seeds)."""
    digest = hashlib.blake2b(f"gaussian-projection:{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class GaussianProjector:
    """``u -> R^T u`` with ``R`` ``(n_params, proj_dim)``, entries i.i.d. ``N(0, 1 / proj_dim)``.

    Parameters
    ----------
    n_params:
        ``P``, the length of the vectors to project.
    proj_dim:
        ``d``, the length of the projected vectors.
    seed:
        Seed of the matrix; chunk ``k`` is drawn from a generator seeded with a hash of ``(seed, k)``.
    device:
        Where chunks are generated and multiplied (its generator type fixes the numbers).
    dtype:
        Dtype of the products (the chunks are drawn in float32, then cast).
    memory_mb:
        Chunks are kept in memory while their total stays within this many MiB; the others are
        regenerated on every call of :meth:`project`.
    """

    def __init__(
        self,
        n_params: int,
        proj_dim: int,
        *,
        seed: int,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        memory_mb: float = 1024.0,
    ) -> None:
        self.n_params = int(n_params)
        self.proj_dim = int(proj_dim)
        self.seed = int(seed)
        self.device = torch.device(device)
        self.dtype = dtype
        self.rows = chunk_rows(self.proj_dim)
        self.n_chunks = math.ceil(self.n_params / self.rows)
        bytes_per_chunk = self.rows * self.proj_dim * torch.empty(0, dtype=dtype).element_size()
        self.kept_chunks = min(self.n_chunks, int(memory_mb * 2**20 // bytes_per_chunk))
        self._kept: dict[int, Tensor] = {}
        self.regenerated = 0  # chunks generated beyond the budget so far (diagnostics)

    def chunk(self, index: int) -> Tensor:
        """Rows ``[index * rows, (index + 1) * rows)`` of ``R``: ``(rows_k, proj_dim)``."""
        kept = self._kept.get(index)
        if kept is not None:
            return kept
        start = index * self.rows
        n_rows = min(self.rows, self.n_params - start)
        generator = torch.Generator(device=self.device).manual_seed(_chunk_seed(self.seed, index))
        block = torch.randn(n_rows, self.proj_dim, generator=generator, device=self.device)
        block = (block / math.sqrt(self.proj_dim)).to(self.dtype)
        if index < self.kept_chunks:
            self._kept[index] = block
        else:
            self.regenerated += 1
        return block

    def matrix(self) -> Tensor:
        """The whole ``R`` ``(n_params, proj_dim)`` (tests and small models only)."""
        return torch.cat([self.chunk(k) for k in range(self.n_chunks)])

    def project(self, flat: Tensor) -> Tensor:
        """``flat @ R``: ``(n, n_params) -> (n, proj_dim)``, one chunk of ``R`` at a time."""
        if flat.shape[-1] != self.n_params:
            raise ValueError(f"projector expects vectors of length {self.n_params}, got {flat.shape[-1]}")
        out = flat.new_zeros(flat.shape[0], self.proj_dim, dtype=self.dtype)
        for k in range(self.n_chunks):
            start = k * self.rows
            out += flat[:, start : start + self.rows].to(self.dtype) @ self.chunk(k)
        return out


def model_state(
    model: nn.Module, state: dict[str, Tensor] | None = None
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``(params, buffers)`` for ``torch.func.functional_call``, detached, on the model's device/dtype.

    Parameters
    ----------
    model:
        The module whose parameter and buffer names are used.
    state:
        A ``state_dict`` to take the values from (e.g. a training checkpoint, possibly on CPU);
        ``None``: the model's own current values.

    Raises
    ------
    DataError
        When ``state`` misses a parameter or buffer of ``model`` or holds one of another shape.
    """
    params, buffers = {}, {}
    for target, items in ((params, model.named_parameters()), (buffers, model.named_buffers())):
        for name, ref in items:
            value = ref if state is None else state.get(name)
            if value is None or tuple(value.shape) != tuple(ref.shape):
                raise DataError(
                    f"checkpoint state does not fit model {type(model).__name__}: entry {name!r} is "
                    f"{'missing' if value is None else f'of shape {tuple(value.shape)}'}, the model has "
                    f"{tuple(ref.shape)}; keep checkpoints of this very architecture"
                )
            dtype = ref.dtype if value.is_floating_point() else value.dtype
            target[name] = value.detach().to(device=ref.device, dtype=dtype)
    return params, buffers


def state_fingerprint(state: dict[str, Tensor]) -> str:
    """Content hash of a ``state_dict`` (names, dtypes, shapes, bytes): a cache key of a checkpoint."""
    digest = hashlib.blake2b(digest_size=16)
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def per_sample_gradients(
    model: nn.Module,
    params: dict[str, Tensor],
    buffers: dict[str, Tensor],
    x: Tensor | Inputs,
    classes: Tensor,
    *,
    kind: GradientKind,
    batch_size: int,
    projector: GaussianProjector | None = None,
    desc: str = "gradients",
) -> Tensor:
    """Per-sample gradients ``g(x_j, c_j)`` over all parameters, flattened, optionally projected.

    Parameters
    ----------
    model:
        The architecture (``functional_call`` runs it with ``params`` and ``buffers``); it is put
        in eval mode for the call and its mode restored after.
    params, buffers:
        From :func:`model_state`: the weights the gradients are taken at.
    x:
        ``(n, *input_shape)`` inputs, on any device, or a split's :class:`~harness.protocols.Inputs`
        (read a batch at a time).
    classes:
        ``(n,)`` long: the label of the cross-entropy (``kind="loss"``) or the logit's index
        (``kind="logit"``).
    kind:
        ``"loss"``: ``d CE(f(x), c) / d theta``; ``"logit"``: ``d f_c(x) / d theta``.
    batch_size:
        Points per vmapped batch.
    projector:
        When given, each batch of flat gradients is multiplied by its matrix.

    Returns
    -------
    Tensor
        ``(n, d)`` with ``d = projector.proj_dim``, or ``(n, P)`` without a projector, in the
        parameters' dtype, on their device.
    """
    from tqdm.auto import tqdm

    if kind not in GRADIENT_KINDS:
        raise ValueError(f"gradient kind must be one of {list(GRADIENT_KINDS)}, got {kind!r}")
    names = list(params)
    n_params = sum(p.numel() for p in params.values())
    first = next(iter(params.values()))
    device, dtype = first.device, first.dtype
    width = projector.proj_dim if projector is not None else n_params

    def objective(p: dict[str, Tensor], xi: Tensor, ci: Tensor) -> Tensor:
        logits = torch.func.functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        if kind == "loss":
            return torch.nn.functional.cross_entropy(logits, ci.unsqueeze(0))
        return torch.gather(logits, 1, ci.reshape(1, 1)).sum()

    batched = torch.func.vmap(torch.func.grad(objective), in_dims=(None, 0, 0))
    classes = classes.reshape(-1).long()
    parts = []
    # With a projector the flat gradients of a batch are only an intermediate: one buffer serves
    # every batch (a fresh (batch, P) array per batch costs its page faults: 0.1 s per 64 points
    # of BasicConv, as much as the gradients themselves). Same values, same layout.
    buffer = None
    if projector is not None and len(x):
        buffer = torch.empty(min(batch_size, len(x)), n_params, device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        starts = range(0, len(x), batch_size)
        for start in tqdm(starts, desc=desc, disable=None, leave=False):
            xb = x[start : start + batch_size].to(device=device, dtype=dtype)
            cb = classes[start : start + batch_size].to(device)
            grads = batched(params, xb, cb)
            pieces = [grads[name].reshape(len(xb), -1) for name in names]
            if buffer is None:
                parts.append(torch.cat(pieces, dim=1))
                continue
            flat = torch.cat(pieces, dim=1, out=buffer[: len(xb)])
            del grads, pieces
            parts.append(projector.project(flat))
    finally:
        model.train(was_training)
    if not parts:
        return torch.zeros(0, width, device=device, dtype=dtype)
    return torch.cat(parts)


def make_projector(params: dict[str, Tensor], options: ProjectedGradientOptions) -> GaussianProjector | None:
    """The projector of ``options`` for gradients over ``params``, on their device and dtype.

    GradDot, GradCos and TracIn all build theirs here, so the same options give the same matrix
    (the basis of TracIn's last block equalling GradDot's training gradients); ``None`` when
    ``options.projection`` is ``None`` (exact gradients).
    """
    if not options.projection:
        return None
    first = next(iter(params.values()))
    n_params = sum(p.numel() for p in params.values())
    return GaussianProjector(
        n_params,
        options.projection,
        seed=options.seed,
        device=first.device,
        dtype=first.dtype,
        memory_mb=options.projection_memory_mb,
    )


def unit_rows(v: Tensor) -> Tensor:
    """Rows of ``v`` ``(n, d)`` divided by their norms (a zero row stays zero)."""
    norms = torch.linalg.vector_norm(v, dim=1, keepdim=True)
    return v / torch.where(norms > 0, norms, torch.ones_like(norms))


def check_classes(classes: Tensor, n: int, num_classes: int, what: str, method: str) -> None:
    """Raise :class:`DataError` unless ``classes`` is ``(n,)`` with values in ``0..num_classes-1``."""
    if classes.reshape(-1).shape[0] != n:
        raise DataError(f"{method}: {n} inputs but {classes.reshape(-1).shape[0]} {what}")
    if n and (int(classes.min()) < 0 or int(classes.max()) >= num_classes):
        raise DataError(
            f"{method}: {what} must be classes in 0..{num_classes - 1} (the model's outputs), "
            f"got values from {int(classes.min())} to {int(classes.max())}"
        )


def num_outputs(model: nn.Module, x: Tensor | Inputs) -> int:
    """Number of logits of ``model`` (one forward pass of the first input, no grad)."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return int(model(x[:1].to(device=device, dtype=dtype)).shape[-1])
    finally:
        model.train(was_training)


@dataclass(frozen=True, kw_only=True)
class ProjectedGradientOptions(Config):
    """The options every projected-gradient method shares (GradDot, GradCos, TracIn)."""

    proj_dim: int | None = option(
        PAPER_PROJ_DIM, "random projection dimension (paper: 128); None or 0 = exact gradients"
    )
    seed: int = option(0, "seed of the Gaussian projection matrix (one matrix for every checkpoint)")
    batch_size: int = option(32, "points per vmapped per-sample gradient batch")
    projection_memory_mb: float = option(
        1024.0,
        "MiB of projection-matrix chunks kept in memory, the rest regenerated per batch (same matrix "
        "whatever the budget; BasicConv at proj_dim 128 needs 645 MiB to keep it whole)",
    )

    def __post_init__(self) -> None:
        proj_dim, memory_mb = self.proj_dim, self.projection_memory_mb
        if proj_dim is not None and (
            isinstance(proj_dim, bool) or not isinstance(proj_dim, int) or proj_dim < 0
        ):
            raise ConfigError(
                f"proj_dim must be a positive integer (paper: 128), or None / 0 for exact gradients "
                f"without projection, got {proj_dim!r}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer (it seeds the projection matrix), got {self.seed!r}")
        require_positive_int(self.batch_size, "batch_size")
        if isinstance(memory_mb, bool) or not isinstance(memory_mb, int | float) or not memory_mb >= 0:
            raise ConfigError(f"projection_memory_mb must be a number >= 0 (MiB), got {memory_mb!r}")

    @property
    def projection(self) -> int | None:
        """The projection dimension, ``None`` for exact gradients (``proj_dim`` None or 0)."""
        return self.proj_dim or None
