"""The pipeline shared by the image tasks (MNIST, CIFAR-10, AwA2): variant, fixed subset, normalisation.

A concrete task supplies its raw splits in [0, 1] pixel space (training set in the dataset's fixed
source order) and its normalisation; :meth:`ImageTask.load` does the rest, the same way for every
dataset:

1. :meth:`ImageTask.raw_splits`: ``(train, val, test)`` in pixel space, every split carrying
   ``meta["indices"]`` (the position of each point in its source);
2. :func:`tasks.variants.apply_variant` (std, group, corrupt, mark) on the three splits, still in
   pixel space and with the training set in source order, so that a variant is the same images and
   labels for every ``--n-train``;
3. the training set is put in the order of ``torch.randperm(n, generator=torch.Generator().
   manual_seed(0))`` and ``--n-train N`` keeps its first ``N`` points: a fixed subset, the same for
   every run seed, class-balanced in expectation; ``--n-test N`` keeps the first ``N`` test points;
4. :meth:`ImageTask.normalise` on all three splits.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from harness.config import ConfigError, option
from harness.protocols import DataError, Split, Task, TaskConfig, TaskData
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
        """``(train, val, test)`` in [0, 1] pixel space, train in source order, ``meta["indices"]`` set.

        Fresh tensors (callers may modify them). Raises :class:`DataError` naming the fix when the
        data are missing.
        """

    @abstractmethod
    def normalise(self, x: Tensor) -> Tensor:
        """Images ``x`` ``(n, *input_shape)`` in pixel space -> the model's input scale."""

    def load(self) -> TaskData:
        """The three splits, variant applied, cut to ``n_train``/``n_test`` and normalised.

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
            cfg.variant, *self.raw_splits(), num_classes=self.dataset_classes, corrupt_rate=float(rate)
        )
        check_size(cfg.n_train, len(train), "--n-train", f"{self.name} training set")
        check_size(cfg.n_test, len(test), "--n-test", f"{self.name} test split")
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(TRAIN_SUBSET_SEED))
        if cfg.n_train is not None:
            order = order[: cfg.n_train]
        train = take(train, order)
        if cfg.n_test is not None:
            test = test.subset(cfg.n_test)
        train, val, test = (Split(s.name, self.normalise(s.x), s.y, s.meta) for s in (train, val, test))
        return TaskData(
            train=train,
            val=val,
            test=test,
            num_classes=self.num_classes,
            variant=cfg.variant,
            input_shape=tuple(self.input_shape),
        )


def take(split: Split, index: Tensor) -> Split:
    """The points ``index`` ``(k,)`` of ``split``, in that order; per-point meta entries follow.

    A meta entry is per-point when it has a ``shape`` whose first dimension equals ``len(split)``
    (as in :meth:`harness.protocols.Split.subset`); other entries are copied as they are.
    """
    n = len(split)
    meta = {
        key: value[index] if getattr(value, "shape", None) is not None and value.shape[:1] == (n,) else value
        for key, value in split.meta.items()
    }
    return Split(split.name, split.x[index], split.y[index], meta)


def check_size(n: int | None, available: int, flag: str, what: str) -> None:
    """Raise :class:`DataError` when ``n`` exceeds ``available`` points."""
    if n is not None and n > available:
        raise DataError(
            f"{flag} {n} is larger than the {what} ({available:,} points); use {flag} <= {available}"
        )
