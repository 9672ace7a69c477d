"""CIFAR-10 with the paper's ResNet-18, read from torchvision's on-disk format under ``--data-root``.

DualXDA (Yolcu et al., arXiv 2402.12118; ../shared/reference/dualxda-paper.md, section "Datasets,
models, variants") trains a ResNet-18 from scratch on the official 50,000 CIFAR-10 training images
and splits the official 10,000 test images like MNIST's: a seed-42 permutation, 2,000 validation
and 8,000 test points. The model is :func:`tasks.resnets.resnet18_cifar` (first convolution 3x3,
stride 1, padding 2; ``phi(x)`` has 512 dimensions).

Source: no CIFAR-10 ships offline here, so the task reads the user's copy in the format that
``torchvision.datasets.CIFAR10(root, download=True)`` leaves on disk (the "python version" of
https://www.cs.toronto.edu/~kriz/cifar.html, ``cifar-10-python.tar.gz``, unpacked)::

    DATA_ROOT/cifar-10-batches-py/
        data_batch_1 ... data_batch_5   training images, 10,000 each, read in this order
        test_batch                      the official 10,000 test images
        batches.meta                    class names (not read)

Each batch file is a pickle of a dict with ``data``: a ``(n, 3072)`` uint8 array whose rows hold
one 32x32 image as 1,024 red, then 1,024 green, then 1,024 blue values, each plane row-major; and
``labels``: ``n`` ints in 0..9 (the keys are ``bytes`` in files written by Python 3 and ``str`` in
the original Python 2 files read with ``encoding="latin1"``; both are accepted). The files are read
here directly, not through torchvision's ``CIFAR10`` class, because that class checks the files'
md5 sums, which only the full official files pass. Pickle files can run code when read: point
``--data-root`` only at a copy you trust.

Pipeline of :meth:`CIFAR10Task.load` (:class:`tasks.image_task.ImageTask`): the batches kept as uint8
``(n, 3, 32, 32)`` (decoded once per process; 150 MB for the 50,000 training images instead of
600 MB of float32), read in [0, 1] pixel space as ``uint8 / 255.0``; the official test set
split by ``perm = torch.randperm(n_test_file, generator=torch.Generator().manual_seed(42))`` into
``val = test[perm[:n_val]]`` and ``test = test[perm[n_val:]]`` (``n_val`` = 2,000 by default: the
paper's split on the full file); the variant (:mod:`tasks.variants`; the watermark is red, drawn
into the uint8 images); the fixed seed-0 order of the training set, whose head ``--n-train N``
keeps; normalisation per channel with the usual CIFAR-10 training-set statistics, mean ``(0.4914,
0.4822, 0.4465)`` and standard deviation ``(0.2470, 0.2435, 0.2616)``, per batch where the inputs are
read (:class:`~harness.protocols.Normaliser`), bitwise the former whole-tensor normalisation. Sizes
are checked against the files' actual contents (50,000 / 10,000 for the official files).

Every split carries ``meta["indices"]`` ``(n,)`` long: the position of each point in its source
(0..49,999 over data_batch_1..5 in order for ``train``; 0..9,999 in test_batch for ``val`` and
``test``).
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from harness.config import option
from harness.protocols import DataError, Normaliser, Split, TaskData, TrainedModel
from tasks.image_task import ImageTask
from tasks.resnets import ResNetTaskConfig, resnet18_cifar
from tasks.training import OptimizerName, check_recipe, train_task_model

log = logging.getLogger(__name__)

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGE_SHAPE = (3, 32, 32)
NUM_CLASSES = 10
#: The official sizes (documentation; the code checks against what the files hold).
N_TRAIN_PAPER = 50_000
N_OFFICIAL_TEST = 10_000
N_VAL = 2_000
VAL_TEST_SEED = 42

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
#: Stored uint8 -> [0, 1] pixel space (what the raw splits read).
PIXELS = Normaliser(divisor=255.0)
#: Stored uint8 -> the model's inputs.
NORMALISER = Normaliser(divisor=255.0, mean=CIFAR10_MEAN, std=CIFAR10_STD)


# =============================================================================================
# Raw data
# =============================================================================================
def _layout(root: str) -> str:
    return (
        f"{os.path.join(root, FOLDER)}{os.sep} holding {', '.join(TRAIN_FILES)} and {TEST_FILE} "
        "(torchvision's CIFAR-10 format: run `python -c \"import torchvision; "
        f"torchvision.datasets.CIFAR10('{root}', download=True)\"` on a machine with internet, or "
        "unpack cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html there, and "
        "copy the folder here)"
    )


def batches_dir(data_root: str | os.PathLike[str] | None) -> Path:
    """``DATA_ROOT/cifar-10-batches-py`` after checking that every batch file is there.

    Raises
    ------
    DataError
        When ``data_root`` is None or a file is missing; the message gives the layout and how to
        obtain it.
    """
    if data_root is None:
        raise DataError(
            "the cifar10 task reads CIFAR-10 from disk: pass --data-root DIR, where DIR is a folder "
            f"with {_layout('DIR')}"
        )
    root = os.fspath(data_root)
    folder = Path(root, FOLDER)
    if not folder.is_dir():
        raise DataError(
            f"CIFAR-10 not found: {folder} does not exist. --data-root {root} must contain {_layout(root)}"
        )
    missing = [name for name in (*TRAIN_FILES, TEST_FILE) if not (folder / name).is_file()]
    if missing:
        raise DataError(
            f"CIFAR-10 files missing in {folder}: {', '.join(missing)}. --data-root {root} must contain "
            f"{_layout(root)}"
        )
    return folder


def read_batch(path: str | os.PathLike[str]) -> tuple[Tensor, Tensor]:
    """One CIFAR-10 batch file (format in the module docstring).

    Returns
    -------
    (x, y):
        ``x`` ``(n, 3, 32, 32)`` uint8, ``y`` ``(n,)`` long in 0..9.

    Raises
    ------
    DataError
        When the file is not a CIFAR-10 batch.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            batch = pickle.load(handle, encoding="latin1")
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's data problem
        raise DataError(f"cannot read CIFAR-10 batch {path!r} ({type(err).__name__}: {err})") from err
    if not isinstance(batch, dict):
        raise DataError(f"{path!r} is not a CIFAR-10 batch (a pickled dict with 'data' and 'labels')")
    entries = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data, labels = entries.get("data"), entries.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{type(data).__name__} {getattr(data, 'dtype', '')} {getattr(data, 'shape', '')}"
        raise DataError(f"{path!r}: 'data' must be an (n, 3072) uint8 array, got {got.strip()}")
    y = torch.as_tensor(np.asarray(labels if labels is not None else [], dtype=np.int64))
    if y.shape != (data.shape[0],):
        raise DataError(f"{path!r}: {data.shape[0]} images but {y.numel()} labels")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= NUM_CLASSES):
        raise DataError(f"{path!r}: labels must lie in 0..{NUM_CLASSES - 1}")
    x = torch.from_numpy(np.ascontiguousarray(data)).reshape(-1, *IMAGE_SHAPE)
    return x, y


def load_official(data_root: str | os.PathLike[str] | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The batch files under ``data_root``, decoded once per process (and again if a file changes).

    Returns
    -------
    (x_train, y_train, x_test, y_test):
        ``x`` ``(n, 3, 32, 32)`` uint8, ``y`` ``(n,)`` long; train = data_batch_1..5 concatenated in
        order. Shared by every caller: never modify them in place.

    Raises
    ------
    DataError
        When files are missing or malformed (see :func:`batches_dir`, :func:`read_batch`).
    """
    folder = batches_dir(data_root)
    stamp = tuple((name, *_stat(folder / name)) for name in (*TRAIN_FILES, TEST_FILE))
    return _read_all(str(folder.resolve()), stamp)


def _stat(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_size, info.st_mtime_ns


@functools.lru_cache(maxsize=2)
def _read_all(folder: str, stamp: tuple[Any, ...]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    del stamp  # part of the memo key only
    start = time.perf_counter()
    parts = [read_batch(os.path.join(folder, name)) for name in TRAIN_FILES]
    x_train = torch.cat([x for x, _ in parts])
    y_train = torch.cat([y for _, y in parts])
    x_test, y_test = read_batch(os.path.join(folder, TEST_FILE))
    if len(y_train) == 0 or len(y_test) == 0:
        raise DataError(f"the CIFAR-10 batches in {folder} hold no training or no test images")
    log.info(
        "read CIFAR-10 from %s: %d train, %d test images in %.1f s",
        folder,
        len(y_train),
        len(y_test),
        time.perf_counter() - start,
    )
    return x_train, y_train, x_test, y_test


def val_test_permutation(n: int) -> Tensor:
    """``(n,)`` the seed-42 permutation of the official test set (its first ``n_val``: validation)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(VAL_TEST_SEED))


def raw_splits(data_root: str | os.PathLike[str] | None, n_val: int = N_VAL) -> tuple[Split, Split, Split]:
    """Train (file order), val and test, read in [0, 1] pixel space, with ``meta["indices"]``.

    Returns
    -------
    (train, val, test):
        ``stored`` ``(n, 3, 32, 32)`` uint8 (the splits' normaliser reads ``uint8 / 255.0``), ``y``
        ``(n,)`` long; n = 50,000 / 2,000 / 8,000 for the official files. Fresh tensors: callers
        may modify them.

    Raises
    ------
    DataError
        When files are missing or malformed, or ``n_val`` leaves no test images.
    """
    x_train, y_train, x_test, y_test = load_official(data_root)
    n_test_file = len(y_test)
    if n_val >= n_test_file:
        raise DataError(
            f"test_batch holds {n_test_file} images, too few for {n_val} validation images plus a test "
            f"split; pass --task-option n_val=K with K < {n_test_file}"
        )
    perm = val_test_permutation(n_test_file)
    val_idx, test_idx = perm[:n_val], perm[n_val:]
    train = Split("train", x_train.clone(), y_train.clone(), {"indices": torch.arange(len(y_train))}, PIXELS)
    val = Split("val", x_test[val_idx], y_test[val_idx], {"indices": val_idx}, PIXELS)
    test = Split("test", x_test[test_idx], y_test[test_idx], {"indices": test_idx}, PIXELS)
    return train, val, test


def normalise(x: Tensor) -> Tensor:
    """``(x - mean) / std`` per channel (CIFAR-10 statistics) for float ``x`` ``(n, 3, H, W)`` in
    [0, 1] (the step of :data:`NORMALISER` after ``uint8 / 255.0``)."""
    return Normaliser(mean=CIFAR10_MEAN, std=CIFAR10_STD)(x)


# =============================================================================================
# Task
# =============================================================================================
@dataclass(frozen=True, kw_only=True)
class CIFAR10Config(ResNetTaskConfig):
    """Options of the CIFAR-10 task (see :class:`~tasks.resnets.ResNetTaskConfig` for the training ones).

    The paper's summary gives no recipe for the ResNet-18; the defaults are ours and were not
    measured on the full data here (no CIFAR-10 offline): SGD with momentum 0.9, constant learning
    rate 0.05, weight decay 5e-4, batch 128, 30 epochs, no augmentation, a checkpoint every 5
    epochs. ``paper()`` returns them. ``quick()`` (Adam, lr 1e-3, batch 32, 2 epochs, a checkpoint
    after each) is for small subsets and tests: on 2 CPU cores a ResNet-18 step costs about 0.15 s
    per 32x32 image, so 300 images take about 45 s per epoch there. Neither preset stops early
    (``patience=None``): without the data offline no plateau could be measured; set ``patience`` (and
    raise ``epochs``, now the maximum) to train until the training loss stops improving.
    """

    epochs: int = option(30, "training epochs (the maximum when patience is set)")
    lr: float = option(0.05, "learning rate (constant)")
    batch_size: int = option(128, "mini-batch size")
    optimizer: OptimizerName = option("sgd", "optimizer: sgd or adam")
    momentum: float = option(0.9, "momentum of SGD (unused by adam)")
    weight_decay: float = option(5e-4, "weight decay (L2) of the optimizer")
    checkpoint_every: int = option(5, "keep a checkpoint (for TracIn) every N epochs and after the last")
    n_val: int = option(N_VAL, "validation images drawn from test_batch (the rest are the test split)")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_recipe(self)

    @classmethod
    def paper(cls) -> CIFAR10Config:
        """Our full recipe (the paper's summary states none): the defaults."""
        return cls()

    @classmethod
    def quick(cls) -> CIFAR10Config:
        """Adam at lr 1e-3, batch 32, 2 epochs, a checkpoint per epoch: for small subsets.

        Sizes are left to the suite and the command line.
        """
        return replace(cls(), optimizer="adam", lr=1e-3, batch_size=32, epochs=2, checkpoint_every=1)


class CIFAR10Task(ImageTask):
    """CIFAR-10 from ``--data-root`` (50,000 train, 2,000 val, 8,000 test) with the paper's ResNet-18."""

    needs_data_root = True
    Config = CIFAR10Config
    version = "2"
    architecture = "resnet18_cifar"
    dataset_classes = NUM_CLASSES
    input_shape: ClassVar[tuple[int, ...]] = IMAGE_SHAPE

    config: CIFAR10Config

    def raw_splits(self) -> tuple[Split, Split, Split]:
        return raw_splits(self.config.data_root, self.config.n_val)

    @property
    def normaliser(self) -> Normaliser:
        return NORMALISER

    def build_model(self) -> nn.Module:
        return resnet18_cifar(num_classes=self.num_classes)

    def train_model(self, model: nn.Module, data: TaskData, *, device: torch.device) -> TrainedModel:
        """See :func:`tasks.training.train_task_model`."""
        return train_task_model(
            model, data, self.config, device=device, label=f"cifar10/{self.config.variant}"
        )
