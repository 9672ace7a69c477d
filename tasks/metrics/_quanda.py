"""Datasets in the shape quanda's metric classes read (the harness holds the data as tensors)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from harness.protocols import DataError

if TYPE_CHECKING:
    from torch import Tensor


class LabelledTensors(torch.utils.data.Dataset):
    """``(x_i, y_i)`` items with ``y_i`` a Python int: what quanda reads labels from.

    Indexing is O(1) (a tensor view and a list lookup), so quanda's per-index label lookups stay
    cheap for 60,000 training points.
    """

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x = x
        self.labels: list[int] = [int(v) for v in y.detach().cpu().tolist()]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.x[index], self.labels[index]


class LengthOnly(torch.utils.data.Dataset):
    """``n`` placeholders: for quanda metrics that need the training set's length, not its items."""

    def __init__(self, n: int, metric: str) -> None:
        self.n, self.metric = n, metric

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> Any:
        raise DataError(f"{self.metric} reads no training items through quanda (the harness holds them)")
