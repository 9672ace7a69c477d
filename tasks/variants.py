"""The four dataset variants of DualXDA: std, group, corrupt, mark.

DualXDA (Yolcu et al., arXiv 2402.12118; ../shared/reference/dualxda-paper.md, "Datasets, models,
variants") trains one model per variant; each variant exists for one evaluation metric:

- ``std``: unmodified (class detection, LDS, coreset selection, data pruning);
- ``group``: superclasses from pairs of consecutive classes ``{2i, 2i+1}`` (class ``c`` -> ``c // 2``);
  the model is trained on superclass labels, the fine label is kept (subclass detection);
- ``corrupt``: each training label is flipped with probability ``p = 0.3`` to a uniformly drawn OTHER
  class (seed 42); the flipped points are the ground truth of mislabel detection;
- ``mark``: a watermark (a filled 6x6 square at the centre plus a 2-pixel frame on all four borders;
  channel 0 set to full intensity (pixel value 1), the other channels to 0, before normalisation) on
  30% of the class-2 training images (seed 420) and on ALL test images (shortcut detection).

The tasks call :func:`apply_variant` on their raw splits, before ``--n-train`` cuts the training set,
so that a variant is the same set of images and labels for every training-set size. Labels change
as labels only. The watermark is drawn into the stored images as they are (uint8 pixels as
decoded, see :class:`harness.protocols.Split`), with the stored value of pixel 1.0
(``split.normaliser.full_scale``: 255 for CIFAR-10 and AwA2, 256 for MNIST, whose file holds k/256,
so its marked images are widened to int16); since ``255 / 255.0`` and ``256 / 256.0`` are exactly
1.0 in float32, the normalised inputs are bitwise those of the former float-space watermark. With
``in_place=True`` (the tasks' raw splits, fresh tensors) the images are drawn into where they lie,
so that marking AwA2's training set costs no copy of it; otherwise the inputs are left untouched.
Per-point facts land in ``Split.meta`` as ``(n,)`` tensors (they follow later reordering and cutting):

==========  =========================================================================================
variant     ``meta`` entries (train; val and test where stated)
==========  =========================================================================================
group       ``fine_labels`` (n,) long: the original class (train, val, test); ``y`` = ``fine // 2``
corrupt     ``true_labels`` (n,) long and ``flipped`` (n,) bool (train only; val/test unchanged)
mark        ``marked`` (n,) bool (train: the chosen class-2 images; val and test: all True)
==========  =========================================================================================
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from harness.protocols import DataError, Split

VARIANTS: tuple[str, ...] = ("std", "group", "corrupt", "mark")

#: The paper's constants.
CORRUPT_P = 0.3
CORRUPT_SEED = 42
MARK_CLASS = 2
MARK_SHARE = 0.3
MARK_SEED = 420
MARK_SQUARE = 6
MARK_FRAME = 2


def group_labels(y: Tensor, num_classes: int) -> Tensor:
    """Superclass ``y // 2`` of each label ``y`` ``(n,)``: pairs ``{2i, 2i+1}`` -> ``i``.

    Raises
    ------
    DataError
        When ``num_classes`` is odd (the pairs would leave one class alone).
    """
    if num_classes % 2:
        raise DataError(
            f"the group variant pairs classes {{2i, 2i+1}}; {num_classes} classes cannot be paired"
        )
    return torch.div(y, 2, rounding_mode="floor")


def corrupt_labels(
    y: Tensor, num_classes: int, *, p: float = CORRUPT_P, seed: int = CORRUPT_SEED
) -> tuple[Tensor, Tensor]:
    """Flip each label with probability ``p`` to a uniformly drawn other class.

    Parameters
    ----------
    y:
        ``(n,)`` long labels in ``0..num_classes-1``.
    num_classes:
        Number of classes (at least 2).
    p, seed:
        Flip probability and the seed of the :class:`torch.Generator` that draws, in this order,
        ``n`` uniform numbers (point ``i`` flips when its number is below ``p``) and ``n`` offsets in
        ``1..num_classes-1`` (a flipped label becomes ``(y + offset) % num_classes``: every other
        class equally likely, never the original).

    Returns
    -------
    (labels, flipped):
        ``(n,)`` long new labels and ``(n,)`` bool flags of the flipped points.
    """
    if num_classes < 2:
        raise DataError("the corrupt variant needs at least two classes")
    if not 0.0 <= p <= 1.0:
        raise DataError(f"flip probability must lie in [0, 1], got {p}")
    generator = torch.Generator().manual_seed(seed)
    n = int(y.shape[0])
    flipped = torch.rand(n, generator=generator) < p
    offsets = torch.randint(1, num_classes, (n,), generator=generator)
    labels = torch.where(flipped, (y + offsets) % num_classes, y)
    return labels, flipped


def mark_choice(
    y: Tensor, *, cls: int = MARK_CLASS, share: float = MARK_SHARE, seed: int = MARK_SEED
) -> Tensor:
    """``(n,)`` bool: ``round(share * n_cls)`` of the points labelled ``cls``, drawn without replacement.

    The class members are taken in index order and a seeded :func:`torch.randperm` of their count
    picks which ones; so the choice depends on the labels and the seed only.
    """
    members = torch.nonzero(y == cls).flatten()
    if members.numel() == 0:
        raise DataError(f"the mark variant watermarks class {cls}, but no training point has that label")
    count = int(round(share * members.numel()))
    pick = torch.randperm(members.numel(), generator=torch.Generator().manual_seed(seed))[:count]
    chosen = torch.zeros(y.shape[0], dtype=torch.bool)
    chosen[members[pick]] = True
    return chosen


def watermark_mask(height: int, width: int, *, square: int = MARK_SQUARE, frame: int = MARK_FRAME) -> Tensor:
    """``(height, width)`` bool: a ``square x square`` block at the centre plus a ``frame``-pixel border.

    The block starts at ``(height - square) // 2`` and ``(width - square) // 2`` (centred exactly
    for even sizes such as 28 and 32).
    """
    if height < max(square, 2 * frame) or width < max(square, 2 * frame):
        raise DataError(f"images of {height}x{width} pixels are too small for the watermark")
    mask = torch.zeros(height, width, dtype=torch.bool)
    top, left = (height - square) // 2, (width - square) // 2
    mask[top : top + square, left : left + square] = True
    mask[:frame, :] = mask[-frame:, :] = True
    mask[:, :frame] = mask[:, -frame:] = True
    return mask


def draw_watermark_(x: Tensor, full_scale: float = 1.0) -> Tensor:
    """Draw the watermark into images ``x`` ``(n, C, H, W)`` in place: channel 0 = ``full_scale``
    (the stored value of pixel 1.0), the other channels 0; returns ``x``.

    Raises
    ------
    DataError
        When ``x`` is not a batch of images, or its dtype cannot hold ``full_scale`` (see
        :func:`watermark_dtype`).
    """
    if x.dim() != 4:
        raise DataError(f"the watermark is drawn on images (n, C, H, W), got shape {tuple(x.shape)}")
    if watermark_dtype(x.dtype, full_scale) != x.dtype:
        raise DataError(f"{x.dtype} images cannot hold the watermark's value {full_scale}")
    mask = watermark_mask(x.shape[-2], x.shape[-1])
    colour = torch.zeros(x.shape[1], dtype=x.dtype)
    colour[0] = full_scale
    x[:, :, mask] = colour[None, :, None]
    return x


def add_watermark(x: Tensor, full_scale: float = 1.0) -> Tensor:
    """Images ``x`` ``(n, C, H, W)`` with the watermark drawn: channel 0 = ``full_scale``, others 0.

    ``full_scale`` is the value of pixel 1.0 where ``x`` is stored (1.0 for [0, 1] floats, 255 for
    uint8). Returns a new tensor, widened (:func:`watermark_dtype`) where ``x``'s dtype cannot hold
    ``full_scale``; ``x`` is not modified.
    """
    if x.dim() != 4:
        raise DataError(f"the watermark is drawn on images (n, C, H, W), got shape {tuple(x.shape)}")
    return draw_watermark_(x.to(watermark_dtype(x.dtype, full_scale), copy=True), full_scale)


def watermark_dtype(dtype: torch.dtype, full_scale: float) -> torch.dtype:
    """``dtype``, or the smallest signed integer type that holds ``full_scale`` when it does not
    (uint8 cannot hold MNIST's 256: int16)."""
    if dtype.is_floating_point or dtype == torch.bool:
        return dtype
    if full_scale <= torch.iinfo(dtype).max:
        return dtype
    for wider in (torch.int16, torch.int32, torch.int64):
        if full_scale <= torch.iinfo(wider).max:
            return wider
    raise DataError(f"no integer dtype holds the watermark's value {full_scale}")


def _watermarked(stored: Tensor, rows: Tensor | None, full_scale: float, in_place: bool) -> Tensor:
    """``stored`` with the watermark on ``rows`` (``(n,)`` bool; None: every image).

    In place where allowed and the dtype holds ``full_scale``; otherwise a (widened) copy.
    """
    dtype = watermark_dtype(stored.dtype, full_scale)
    out = stored if in_place and dtype == stored.dtype else stored.to(dtype, copy=True)
    if rows is None:
        draw_watermark_(out, full_scale)
    elif bool(rows.any()):
        out[rows] = draw_watermark_(out[rows], full_scale)
    return out


def apply_variant(
    variant: str,
    train: Split,
    val: Split,
    test: Split,
    num_classes: int,
    *,
    corrupt_rate: float = CORRUPT_P,
    in_place: bool = False,
) -> tuple[Split, Split, Split]:
    """The three splits under ``variant``; see the module docstring for ``meta``.

    ``train`` must be in the dataset's fixed source order: the seeded draws (flips, watermarked
    images) index it. ``corrupt_rate`` is the flip probability of the corrupt variant (the paper:
    0.3; the reference code's committed index files flip 4.8% of CIFAR-10 and 2.0% of AwA2).
    ``in_place``: the mark variant draws into the given splits' stored images (where their dtype
    holds the watermark) instead of copies; only for splits nobody else holds.

    Raises
    ------
    DataError
        For an unknown variant name or data the variant cannot apply to.
    """
    if variant == "std":
        return train, val, test
    if variant == "group":
        return tuple(  # type: ignore[return-value]
            replace(s, y=group_labels(s.y, num_classes), meta={**s.meta, "fine_labels": s.y.clone()})
            for s in (train, val, test)
        )
    if variant == "corrupt":
        labels, flipped = corrupt_labels(train.y, num_classes, p=corrupt_rate)
        meta = {**train.meta, "true_labels": train.y.clone(), "flipped": flipped}
        return replace(train, y=labels, meta=meta), val, test
    if variant == "mark":
        chosen = mark_choice(train.y)
        marked_train = replace(
            train,
            stored=_watermarked(train.stored, chosen, train.normaliser.full_scale, in_place),
            meta={**train.meta, "marked": chosen},
        )
        marked = [
            replace(
                s,
                stored=_watermarked(s.stored, None, s.normaliser.full_scale, in_place),
                meta={**s.meta, "marked": torch.ones(len(s), dtype=torch.bool)},
            )
            for s in (val, test)
        ]
        return marked_train, marked[0], marked[1]
    raise DataError(f"unknown dataset variant {variant!r}; choose one of {list(VARIANTS)}")


def variant_num_classes(variant: str, num_classes: int) -> int:
    """Classes the model is trained on under ``variant`` (``num_classes // 2`` for group)."""
    return num_classes // 2 if variant == "group" else num_classes
