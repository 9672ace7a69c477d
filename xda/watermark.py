"""The watermark (shortcut) case: the region a watermark occupies, and how much relevance lies in it.

The mark variant puts a watermark on the training images of one class; a model that learns the
shortcut predicts that class for any watermarked image. :func:`mark_facts` reads the watermark's
region and the shortcut class off the data alone (the training split's ``meta["marked"]`` flags),
without importing the task that drew the mark; :func:`positive_share` measures how much of a
heatmap's positive relevance falls inside that region.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from harness.protocols import DataError

if TYPE_CHECKING:
    from torch import Tensor

    from harness.protocols import Split, TaskData

#: Images read at a time from a split (its inputs are never materialised whole).
_BATCH = 512


def watermark_region(marked: Tensor, unmarked: Tensor) -> Tensor:
    """The pixels a watermark occupies, read off the data: ``(*spatial)`` bool.

    A pixel belongs to the watermark when every marked image has the same value there (in every
    channel) and fewer than half of the unmarked images have that value. (The second condition
    drops background pixels that happen to be constant in the marked images, such as the empty
    margins of MNIST digits.)

    Parameters
    ----------
    marked:
        ``(n, C, *spatial)`` images known to carry the watermark (n >= 2).
    unmarked:
        ``(m, C, *spatial)`` images known not to carry it (m >= 1).
    """
    return _region_of_batches([marked], [unmarked])


def _region_of_batches(marked: Iterable[Tensor], unmarked: Iterable[Tensor]) -> Tensor:
    """:func:`watermark_region` of images given as batches ``(k, C, *spatial)`` (read once, in order)."""
    first: Tensor | None = None
    same_marked: Tensor | None = None
    n_marked = 0
    for batch in marked:
        if not len(batch):
            continue
        first = batch[:1] if first is None else first
        same = (batch == first).all(dim=1).all(dim=0)
        same_marked = same if same_marked is None else same_marked & same
        n_marked += len(batch)
    equal: Tensor | None = None
    n_unmarked = 0
    if first is not None:
        for batch in unmarked:
            if not len(batch):
                continue
            count = (batch == first).all(dim=1).sum(dim=0)
            equal = count if equal is None else equal + count
            n_unmarked += len(batch)
    if n_marked < 2 or n_unmarked < 1 or first is None or same_marked is None or equal is None:
        raise DataError("finding the watermark needs at least two marked images and one unmarked image")
    return same_marked & (equal.double() / n_unmarked < 0.5)


def mark_facts(data: TaskData) -> tuple[Tensor, int]:
    """``(region, shortcut_class)`` of the mark variant, read off ``meta["marked"]`` of the splits.

    The region is :func:`watermark_region` of the watermarked training (and test) images against
    the clean training images; the shortcut class is the label every watermarked training image
    carries.

    Raises
    ------
    DataError
        When the training split does not flag both watermarked and clean images, or the
        watermarked images carry several labels.
    """
    import torch

    train, test = data.train, data.test
    marked = train.meta.get("marked")
    if marked is None or int(marked.sum()) < 1 or bool(marked.all()):
        raise DataError(
            "the mark variant's training split must flag watermarked and clean images in meta['marked']; "
            "use a larger --n-train"
        )
    labels = train.y[marked].unique()
    if labels.numel() != 1:
        raise DataError(f"watermarked training images carry several labels {labels.tolist()}; expected one")
    test_marked = test.meta.get("marked", torch.zeros(len(test), dtype=torch.bool))

    def rows(split: Split, flags: Tensor) -> Iterator[Tensor]:  # the flagged inputs, a batch at a time
        positions = torch.nonzero(flags).flatten()
        for start in range(0, len(positions), _BATCH):
            yield split.inputs[positions[start : start + _BATCH]]

    with_mark = itertools.chain(rows(train, marked), rows(test, test_marked))
    return _region_of_batches(with_mark, rows(train, ~marked)), int(labels[0])


def positive_share(heatmap: Tensor, region: Tensor) -> float | None:
    """Share of the positive relevance of ``heatmap`` that lies inside ``region``.

    Parameters
    ----------
    heatmap:
        ``(*lead, *spatial)`` relevance; leading dimensions (channels) are summed first.
    region:
        ``(*spatial)`` bool.

    Returns
    -------
    float or None
        ``sum(max(h, 0)[region]) / sum(max(h, 0))``; None when no relevance is positive.
    """
    import torch

    if tuple(heatmap.shape[heatmap.dim() - region.dim() :]) != tuple(region.shape):
        raise DataError(
            f"region of shape {tuple(region.shape)} does not match the heatmap's trailing dimensions "
            f"{tuple(heatmap.shape)}"
        )
    per_pixel = heatmap.detach().double().cpu()
    while per_pixel.dim() > region.dim():
        per_pixel = per_pixel.sum(dim=0)
    positive = per_pixel.clamp(min=0)
    total = float(positive.sum())
    if total <= 0:
        return None
    return float(positive[region.cpu().to(torch.bool)].sum()) / total
