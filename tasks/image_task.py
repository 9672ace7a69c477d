"""The pipeline shared by the image tasks (MNIST, CIFAR-10, AwA2): variant, fixed subset, normaliser.

A concrete task supplies its raw splits, images stored as decoded (uint8, with a
:class:`~harness.protocols.Normaliser` that reads them in [0, 1] pixel space; training set in the
dataset's fixed source order), and its normaliser; :meth:`ImageTask.load` does the rest, the same
way for every dataset:

1. :meth:`ImageTask.raw_splits`: ``(train, val, test)``, fresh tensors, every split carrying
   ``meta["indices"]`` (the position of each point in its source);
2. :func:`tasks.variants.apply_variant` (std, group, corrupt, mark) on the three splits, on the
   stored images (the watermark drawn in place) and with the training set in source order, so that
   a variant is the same images and labels for every ``--n-train``;
3. the training set is put in the order of ``torch.randperm(n, generator=torch.Generator().
   manual_seed(0))`` and ``--n-train N`` keeps its first ``N`` points: a fixed subset, the same for
   every run seed, class-balanced in expectation; ``--n-test N`` keeps the first ``N`` test points;
4. :attr:`ImageTask.normaliser` is attached to all three splits: the inputs are normalised per
   batch where they are read, bitwise as the former whole-tensor normalisation.

Memory: the images are held once, as decoded. Step 2 draws the watermark in place and step 3 permutes
the full training set in place (one image of extra memory); ``--n-train N`` below the full size
copies its N images out (so the full set and the N images are briefly held together), and
``--n-test`` copies its test images likewise.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import Tensor

from harness.config import ConfigError, option
from harness.protocols import DataError, Normaliser, Split, Task, TaskConfig, TaskData
from tasks.variants import CORRUPT_P, VARIANTS, apply_variant, variant_num_classes


@dataclass(frozen=True, kw_only=True)
class ImageTaskConfig(TaskConfig):
    """Options every image task has, on top of :class:`~harness.protocols.TaskConfig`."""

    corrupt_rate: float = option(
        CORRUPT_P,
        "flip probability of the corrupt variant (paper: 0.3; the reference code's committed index files "
        "flip 29.8% of MNIST, 4.8% of CIFAR-10 and 2.0% of AwA2 training labels)",
    )


#: Seed of the fixed order of every training set; ``--n-train N`` keeps its head.
TRAIN_SUBSET_SEED = 0


class ImageTask(Task):
    """Base of the image-classification tasks: subclasses give the raw data and normalisation."""

    Config: ClassVar[type[ImageTaskConfig]] = ImageTaskConfig
    variants = VARIANTS
    #: Classes of the dataset itself (before the group variant pairs them).
    dataset_classes: ClassVar[int] = 0
    #: ``(C, H, W)`` of the model's inputs.
    input_shape: ClassVar[tuple[int, ...]] = ()

    @property
    def num_classes(self) -> int:
        """Classes the model is trained on under the configured variant (halved by ``group``)."""
        return variant_num_classes(self.config.variant, self.dataset_classes)

    @abstractmethod
    def raw_splits(self) -> tuple[Split, Split, Split]:
        """``(train, val, test)``, train in source order, ``meta["indices"]`` set.

        Images stored as decoded (integers) with a normaliser that reads them in [0, 1] pixel space
        (``Normaliser(divisor=255.0)``, say). Fresh tensors: :meth:`load` modifies them in place.
        Raises :class:`DataError` naming the fix when the data are missing.
        """

    @property
    @abstractmethod
    def normaliser(self) -> Normaliser:
        """Stored images -> the model's inputs (per batch, see :class:`~harness.protocols.Normaliser`)."""

    def normalise(self, x: Tensor) -> Tensor:
        """Stored images ``x`` ``(n, *input_shape)`` -> the model's inputs (what the splits read)."""
        return self.normaliser(x)

    def load(self) -> TaskData:
        """The three splits, variant applied, cut to ``n_train``/``n_test``, the normaliser attached.

        Raises
        ------
        DataError
            When the data are missing or ``n_train``/``n_test`` exceeds what exists.
        """
        cfg = self.config
        rate = cfg.corrupt_rate
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 <= rate <= 1.0:
            raise ConfigError(f"corrupt_rate must be a probability in [0, 1], got {rate!r}")
        train, val, test = apply_variant(
            cfg.variant,
            *self.raw_splits(),
            num_classes=self.dataset_classes,
            corrupt_rate=float(rate),
            in_place=True,
        )
        check_size(cfg.n_train, len(train), "--n-train", f"{self.name} training set")
        check_size(cfg.n_test, len(test), "--n-test", f"{self.name} test split")
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(TRAIN_SUBSET_SEED))
        if cfg.n_train is not None and cfg.n_train < len(train):
            train = train.take(order[: cfg.n_train])
        else:
            train = permute_in_place(train, order)
        if cfg.n_test is not None and cfg.n_test < len(test):
            test = test.take(torch.arange(cfg.n_test))
        normaliser = self.normaliser
        train, val, test = (replace(s, normaliser=normaliser) for s in (train, val, test))
        return TaskData(
            train=train,
            val=val,
            test=test,
            num_classes=self.num_classes,
            variant=cfg.variant,
            input_shape=tuple(self.input_shape),
        )


def take(split: Split, index: Tensor) -> Split:
    """The points ``index`` ``(k,)`` of ``split``, in that order (:meth:`harness.protocols.Split.take`)."""
    return split.take(index)


def permute_in_place(split: Split, order: Tensor) -> Split:
    """``split.take(order)`` for a permutation ``order`` of all its points, without a copy of the
    stored inputs: their rows are permuted where they lie (one row of extra memory), so ``split``'s
    stored tensor changes too. Labels and meta are indexed as usual.

    Raises
    ------
    DataError
        When ``order`` is not a permutation of ``0..len(split)-1``.
    """
    n = len(split)
    order = order.detach().cpu().long()
    if order.shape != (n,) or not torch.equal(torch.sort(order).values, torch.arange(n)):
        raise DataError(f"permute_in_place needs a permutation of 0..{n - 1}")
    permute_rows_(split.stored, order)
    meta = {
        key: value[order] if getattr(value, "shape", None) is not None and value.shape[:1] == (n,) else value
        for key, value in split.meta.items()
    }
    return Split(split.name, split.stored, split.y[order], meta, split.normaliser)


def permute_rows_(x: Tensor, order: Tensor) -> None:
    """``x[:] = x[order]`` in place for a permutation ``order`` of ``x``'s rows (CPU, contiguous).

    Follows each cycle of the permutation, holding one row aside: no second copy of ``x``.
    """
    if not x.is_contiguous() or x.device.type != "cpu":
        raise DataError("permute_rows_ needs a contiguous CPU tensor")
    rows = x.numpy()  # the same memory
    perm = order.tolist()
    done = bytearray(len(perm))
    for start, target in enumerate(perm):
        if done[start] or target == start:
            continue
        held = rows[start].copy()
        j = start
        while True:
            done[j] = 1
            k = perm[j]
            if k == start:
                rows[j] = held
                break
            rows[j] = rows[k]
            j = k


def check_size(n: int | None, available: int, flag: str, what: str) -> None:
    """Raise :class:`DataError` when ``n`` exceeds ``available`` points."""
    if n is not None and n > available:
        raise DataError(
            f"{flag} {n} is larger than the {what} ({available:,} points); use {flag} <= {available}"
        )
