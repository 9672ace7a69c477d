"""Numbers computed from tensors that more than one part of the project needs.

- :func:`sparsity_per_row` / :func:`sparsity_rows` / :func:`sparsity_summary`: sparsity of an
  attribution matrix (the DualXDA paper's l0_eps share and Hoyer measure, plus the share of exact
  zeros). The runner puts the summary in every record; the ``sparsity`` metric reports the same
  numbers and the per-row l0_eps.
- :func:`model_fingerprint`: content hash of a model's weights, the key of caches built on a model.
"""

from __future__ import annotations

import hashlib
import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from torch import Tensor, nn

ROWS_PER_CHUNK = 256


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


def sparsity_rows(
    explanations: Tensor, eps: float = 1e-6, device: torch.device | None = None
) -> dict[str, Tensor]:
    """:func:`sparsity_per_row` of the whole matrix, computed in chunks of rows (bounded memory).

    Returns
    -------
    dict[str, Tensor]
        ``"l0_eps"``, ``"hoyer"``, ``"exact_zero_share"``, each ``(n_rows,)`` float64 on the CPU.

    Raises
    ------
    ValueError
        When the matrix is empty or holds NaN or infinite values.
    """
    if explanations.ndim != 2 or 0 in explanations.shape:
        raise ValueError(
            f"sparsity needs a non-empty (n_test, n_train) matrix, got {tuple(explanations.shape)}"
        )
    device = device if device is not None else explanations.device
    parts: dict[str, list[Tensor]] = {key: [] for key in ("l0_eps", "hoyer", "exact_zero_share")}
    for start in range(0, explanations.shape[0], ROWS_PER_CHUNK):
        per_row = sparsity_per_row(explanations[start : start + ROWS_PER_CHUNK].to(device), eps)
        if not torch.isfinite(per_row.pop("row_max")).all():
            raise ValueError("sparsity: the explanations contain NaN or infinite values")
        for key, values in per_row.items():
            parts[key].append(values.cpu())
    return {key: torch.cat(values) for key, values in parts.items()}


def sparsity_summary(
    explanations: Tensor, eps: float = 1e-6, device: torch.device | None = None
) -> dict[str, float]:
    """Means over rows of :func:`sparsity_rows` (same errors)."""
    rows = sparsity_rows(explanations, eps, device)
    return {key: math.fsum(values.tolist()) / len(values) for key, values in rows.items()}


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
