"""Adapters to quanda's metric classes: datasets in the shape they read (the harness holds the data as
tensors), and :class:`QuandaStream`, which feeds a quanda metric the explanations chunk by chunk."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from harness.measures import tensor_bytes
from harness.protocols import DataError, Inputs, Reader

if TYPE_CHECKING:
    from collections.abc import Callable

    from torch import Tensor


class LabelledTensors(torch.utils.data.Dataset):
    """``(x_i, y_i)`` items with ``y_i`` a Python int: what quanda reads labels from.

    ``x`` is a tensor or a split's :class:`~harness.protocols.Inputs` (then ``x_i`` is normalised
    when an item is read; the metrics here read labels only). Indexing is O(1) (one row and a list
    lookup), so quanda's per-index label lookups stay cheap for 60,000 training points.
    """

    def __init__(self, x: Tensor | Inputs, y: Tensor) -> None:
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


class QuandaStream(Reader):
    """A quanda metric as a reader: each chunk of explanations goes to its ``update``.

    quanda's metrics are streaming (``update`` per batch of test points, then ``compute``) and keep
    a summary per test point (e.g. the top-k share), so the chunks need not be held.

    Parameters
    ----------
    metric:
        The quanda metric (``metric.compute()`` after the last chunk).
    arguments:
        ``(rows, chunk) -> keyword arguments of metric.update`` for the test points ``rows``, or
        None to skip the chunk (e.g. none of its rows is selected).
    kept:
        What the metric keeps, in words (:meth:`Reader.kept`).
    """

    def __init__(
        self, metric: Any, arguments: Callable[[slice, Tensor], dict[str, Any] | None], kept: str
    ) -> None:
        self.metric, self._arguments, self._kept = metric, arguments, kept

    def update(self, rows: slice, chunk: Tensor) -> None:
        arguments = self._arguments(rows, chunk)
        if arguments is not None:
            self.metric.update(**arguments)

    def kept(self) -> str:
        return self._kept

    def nbytes(self) -> int:
        return tensor_bytes(self.metric.state_dict())
