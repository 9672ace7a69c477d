"""Numbers computed from tensors that more than one part of the project needs.

- :func:`sparsity_per_row` / :class:`SparsityRows` / :func:`sparsity_summary`: sparsity of an
  attribution matrix (the DualXDA paper's l0_eps share and Hoyer measure, plus the share of exact
  zeros). :class:`SparsityRows` takes the matrix chunk by chunk of rows, as a run streams it; the
  runner puts its summary in every record, and the ``sparsity`` metric reports the same numbers and
  the per-row l0_eps.
- :func:`tensor_bytes`: bytes held by the tensors of a nested structure (what a reader keeps).
- :func:`model_fingerprint`: content hash of a model's weights, the key of caches built on a model.
"""

from __future__ import annotations

import hashlib
import math
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from torch import Tensor, nn

ROWS_PER_CHUNK = 256
SPARSITY_KEYS = ("l0_eps", "hoyer", "exact_zero_share")


def sparsity_per_row(a: Tensor, eps: float) -> dict[str, Tensor]:
    """Per-row sparsity measures of an attribution matrix.

    Parameters
    ----------
    a:
        ``(n_rows, n)`` attributions (any float dtype, any device).
    eps:
        Relative threshold of ``l0_eps``.

    Returns
    -------
    dict[str, Tensor]
        ``"l0_eps"``, ``"hoyer"``, ``"exact_zero_share"`` and ``"row_max"`` (``max_i |a_i|``,
        NaN or infinite where the row holds a non-finite value), each ``(n_rows,)`` float64.
    """
    a = a.detach().to(torch.float64).abs()
    n = a.shape[1]
    row_max = a.amax(dim=1)  # propagates NaN and inf: the caller checks finiteness here
    zero_row = row_max == 0
    ones = torch.ones_like(row_max)
    l0 = torch.where(zero_row, ones, (a < eps * row_max[:, None]).to(torch.float64).mean(dim=1))
    if n > 1:
        l1, l2 = a.sum(dim=1), torch.linalg.vector_norm(a, dim=1)
        hoyer = (math.sqrt(n) - l1 / torch.where(zero_row, ones, l2)) / (math.sqrt(n) - 1.0)
        hoyer = torch.where(zero_row, ones, hoyer)
    else:
        hoyer = ones
    exact = (a == 0).to(torch.float64).mean(dim=1)
    return {"l0_eps": l0, "hoyer": hoyer, "exact_zero_share": exact, "row_max": row_max}


class SparsityRows:
    """:func:`sparsity_per_row` of every row of an attribution matrix given chunk by chunk of rows.

    Each chunk is taken in blocks of :data:`ROWS_PER_CHUNK` rows (bounded float64 temporaries), on
    ``device`` when given. Every row's numbers depend on that row alone, so they do not depend on
    how the matrix is cut into chunks (except that torch sums a block of one row in another order:
    its Hoyer may move in the last bit of float64). It has the methods of a :class:`harness.protocols.Reader`
    (this module imports no protocol: the ``sparsity`` metric's reader subclasses both).

    Raises
    ------
    ValueError
        From :meth:`update`, when a chunk holds NaN or infinite values.
    """

    def __init__(self, eps: float = 1e-6, device: torch.device | None = None) -> None:
        self.eps, self.device = eps, device
        self._parts: dict[str, list[Tensor]] = {key: [] for key in SPARSITY_KEYS}

    def update(self, rows: slice, chunk: Tensor) -> None:
        for start in range(0, chunk.shape[0], ROWS_PER_CHUNK):
            block = chunk[start : start + ROWS_PER_CHUNK]
            per_row = sparsity_per_row(
                block.to(self.device if self.device is not None else block.device), self.eps
            )
            if not torch.isfinite(per_row.pop("row_max")).all():
                raise ValueError("sparsity: the explanations contain NaN or infinite values")
            for key, values in per_row.items():
                self._parts[key].append(values.cpu())

    def rows(self) -> dict[str, Tensor]:
        """``"l0_eps"``, ``"hoyer"``, ``"exact_zero_share"``: each ``(n_rows,)`` float64 on the CPU."""
        if not self._parts["l0_eps"]:
            raise ValueError("sparsity needs a non-empty (n_test, n_train) matrix; no row was given")
        return {key: torch.cat(values) for key, values in self._parts.items()}

    def summary(self) -> dict[str, float]:
        """The mean over rows of each of :meth:`rows` (``math.fsum``: exact up to the last rounding)."""
        return {key: math.fsum(values.tolist()) / len(values) for key, values in self.rows().items()}

    def kept(self) -> str:
        return f"l0_eps (eps={self.eps:g}), Hoyer and exact-zero share per test point"

    def nbytes(self) -> int:
        return tensor_bytes(self._parts)


def sparsity_summary(
    explanations: Tensor, eps: float = 1e-6, device: torch.device | None = None
) -> dict[str, float]:
    """:meth:`SparsityRows.summary` of a whole ``(n_rows, n)`` matrix.

    Raises
    ------
    ValueError
        When the matrix is empty or holds NaN or infinite values.
    """
    if explanations.ndim != 2 or 0 in explanations.shape:
        raise ValueError(
            f"sparsity needs a non-empty (n_test, n_train) matrix, got {tuple(explanations.shape)}"
        )
    reader = SparsityRows(eps, device)
    reader.update(slice(0, len(explanations)), explanations)
    return reader.summary()


def tensor_bytes(held: Any) -> int:
    """Bytes of the tensors in ``held``: a tensor, or lists, tuples and dicts of them (other values: 0)."""
    if isinstance(held, torch.Tensor):
        return held.element_size() * held.nelement()
    if isinstance(held, dict):
        held = list(held.values())
    if isinstance(held, list | tuple):
        return sum(tensor_bytes(item) for item in held)
    return 0


def model_fingerprint(model: nn.Module) -> str:
    """Content hash of a model's ``state_dict`` (names, dtypes, shapes and bytes of all tensors).

    Parameters
    ----------
    model:
        Any module; parameters and buffers (e.g. batch-norm statistics) are hashed.

    Returns
    -------
    str
        32 hex characters.
    """
    digest = hashlib.blake2b(digest_size=16)
    for key, value in model.state_dict().items():
        t = value.detach().cpu().contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
