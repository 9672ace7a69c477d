"""Animals with Attributes 2 (AwA2) with the paper's ResNet-50, read from an image folder on disk.

DualXDA (Yolcu et al., arXiv 2402.12118; ../shared/reference/dualxda-paper.md, section "Datasets,
models, variants") fine-tunes an ImageNet-pretrained ResNet-50 (first convolution replaced by a
3x3, stride 1, padding 2 one; ``phi(x)`` has 2048 dimensions) on 29,870 AwA2 images of 50 classes
and splits the other 7,452 into 2,000 validation and 5,452 test points. The model is
:func:`tasks.resnets.resnet50_awa2`.

Source: the official release (``AwA2-data.zip`` from https://cvml.ista.ac.at/AwA2/), unpacked
into ``--data-root``::

    DATA_ROOT/Animals_with_Attributes2/
        classes.txt                 "1\\tantelope" ... "50\\tzebra": id (1..K, in order) and name
        JPEGImages/<name>/*.jpg     the images of each class (37,322 in all)

Class ``id`` gets label ``id - 1``. The images of a class are the files in its folder ending in
``.jpg``, ``.jpeg`` or ``.png`` (any case), in sorted file-name order; the source order of the
whole set is class by class in classes.txt order (:func:`list_images`), and ``meta["indices"]``
are positions in it.

**Train/held-out split (ours; AwA2 has no official one).** The paper's sizes, 29,870 train and
7,452 held out of 37,322, are reproduced by a stratified, seeded rule (:func:`split_indices`):

1. ``H = round(N * 7452 / 37322)`` of the ``N`` images are held out (7,452 when ``N = 37,322``);
2. class ``c`` with ``n_c`` images holds out ``q_c`` of them, the largest-remainder apportionment
   of ``H`` proportional to ``n_c`` (``floor(H n_c / N)`` each, plus one for the classes with the
   largest remainders ``H n_c mod N``, ties to the lower class id), so ``sum q_c = H`` exactly;
3. one ``torch.Generator().manual_seed(42)`` draws ``torch.randperm(n_c)`` for each class in
   order; the first ``q_c`` positions are held out, the rest train (both kept in source order);
4. the held-out images (source order) are split like MNIST's test set: ``perm =
   torch.randperm(H, generator=torch.Generator().manual_seed(42))``, validation ``perm[:n_val]``
   (``n_val`` = 2,000 by default), test ``perm[n_val:]`` (5,452 on the full set).

The split depends on the file names and the class list only, never on the run seed.

**Images** are decoded with Pillow (JPEG draft mode, then RGB), resized so the shorter side is
``image_size`` pixels (bilinear) and centre-cropped to ``image_size x image_size`` (default 224),
each split straight into its own uint8 tensor, and kept so; they are normalised with the ImageNet
mean ``(0.485, 0.456, 0.406)`` and standard deviation ``(0.229, 0.224, 0.225)`` per batch where
they are read (:class:`~harness.protocols.Normaliser`, after ``uint8 / 255.0``), bitwise as the
former whole float32 tensor. Every load decodes the images again: no other copy is kept in the
process (the harness loads a task's data once per process and configuration).

**Memory.** The splits hold the images as decoded, uint8: 29,870 x 3 x 224 x 224 bytes = 4.5 GB for
the training split and 1.1 GB for validation and test, 5.6 GB for all 37,322 images at 224 (the
float32 splits of before took 18 GB + 4.5 GB, and loading peaked near twice the training split).
Loading copies no split: each split is decoded straight into its own tensor, the mark variant draws
its watermark into it and the fixed order permutes the training images in place. Peak RSS of a
fresh process that loads the task, measured with ``python -m harness.load_memory`` on a fake AwA2 in
the official layout (JPEGs of 1,000 x 700 px): 1.1 GiB for 4,000 images and 2.8 GiB for 16,000,
0.146-0.149 MiB per image above the 0.5 GiB of the imports, so 5.8-6.0 GiB for all 37,322 (std and
mark alike; the training split's fingerprint, which the harness computes next, streams 16 MiB
batches and adds 30-85 MiB). The float32 splits of commit 328fa84 peaked at 6.9 GiB for 4,000
images, 1.64 MiB per image: about 60 GiB at full size. ``--n-train N`` below the full size copies its
N training images out of the decoded ones, so the peak is then the full training split plus those N
images. A batch is normalised on the CPU where it is read (about 9 ms of one core here for 32 images
at 224).

**Pretrained weights** are never downloaded: pass a local torchvision-format ResNet-50
``state_dict`` with ``--task-option pretrained_weights=PATH`` (e.g. ``resnet50-0676ba61.pth`` or
``resnet50-11ad3fa6.pth`` from ``~/.cache/torch/hub/checkpoints/`` of a machine with internet), or
train from scratch with ``--task-option pretrained=false``; with neither the task stops with a
:class:`~harness.protocols.DataError` that says so. The model cache is keyed by the weights file's
content, not its path.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from harness.config import ConfigError, option
from harness.protocols import DataError, Normaliser, Split, TaskData, TrainedModel
from tasks.image_task import ImageTask, check_size
from tasks.resnets import (
    RESNET50_WEIGHT_FILES,
    ResNetTaskConfig,
    check_resnet50_weights,
    resnet50_awa2,
)
from tasks.training import OptimizerName, check_recipe, train_task_model

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The paper's sizes (documentation and the split ratio; the code counts the actual files).
N_IMAGES_PAPER = 37_322
N_TRAIN_PAPER = 29_870
N_HELDOUT_PAPER = 7_452
N_CLASSES_PAPER = 50
N_VAL = 2_000
SPLIT_SEED = 42
VAL_TEST_SEED = 42
MIN_IMAGE_SIZE = 8  # the mark variant's 6x6 square and 2-pixel frame must fit

FOLDER = "Animals_with_Attributes2"
IMAGES = "JPEGImages"
CLASSES_FILE = "classes.txt"
SUFFIXES = (".jpg", ".jpeg", ".png")
#: Stored uint8 -> [0, 1] pixel space (what the raw splits read).
PIXELS = Normaliser(divisor=255.0)
#: Stored uint8 -> the model's inputs.
NORMALISER = Normaliser(divisor=255.0, mean=IMAGENET_MEAN, std=IMAGENET_STD)


# =============================================================================================
# Files and the split
# =============================================================================================
def _layout(root: str) -> str:
    base = os.path.join(root, FOLDER)
    return (
        f"{os.path.join(base, CLASSES_FILE)} (one line per class: id and name, e.g. '1\\tantelope') and "
        f"{os.path.join(base, IMAGES, '<name>', '<image>.jpg')} (one folder per class of classes.txt); "
        "unpacking the official AwA2-data.zip (https://cvml.ista.ac.at/AwA2/) into the folder gives "
        "this layout"
    )


def dataset_dir(data_root: str | os.PathLike[str] | None) -> Path:
    """``DATA_ROOT/Animals_with_Attributes2`` after checking it has classes.txt and JPEGImages/.

    Raises
    ------
    DataError
        When ``data_root`` is None or the layout is missing; the message describes the layout.
    """
    if data_root is None:
        raise DataError(
            "the awa2 task reads AwA2 from disk: pass --data-root DIR, where DIR holds " + _layout("DIR")
        )
    root = os.fspath(data_root)
    base = Path(root, FOLDER)
    for needed in (base / CLASSES_FILE, base / IMAGES):
        if not needed.exists():
            raise DataError(
                f"AwA2 not found: {needed} is missing. --data-root {root} must hold {_layout(root)}"
            )
    return base


def read_classes(data_root: str | os.PathLike[str] | None) -> list[str]:
    """Class names in label order from classes.txt (ids must run 1..K in order).

    Raises
    ------
    DataError
        When the file is missing or a line is not ``<id> <name>``.
    """
    path = dataset_dir(data_root) / CLASSES_FILE
    names: list[str] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) != len(names) + 1:
            raise DataError(
                f"{path}, line {number}: expected '<id>\\t<name>' with ids 1, 2, ... in order, got {line!r}"
            )
        names.append(parts[1])
    if len(names) < 2:
        raise DataError(f"{path} lists {len(names)} classes; a classification task needs at least 2")
    return names


def list_images(data_root: str | os.PathLike[str] | None) -> tuple[list[Path], Tensor, list[str]]:
    """Every image in source order (class by class, sorted file names) with its label.

    Returns
    -------
    (paths, labels, class_names):
        ``labels`` ``(N,)`` long; ``paths[i]`` is the file of source index ``i``.

    Raises
    ------
    DataError
        When a class folder is missing or empty.
    """
    names = read_classes(data_root)
    images = dataset_dir(data_root) / IMAGES
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(names):
        folder = images / name
        if not folder.is_dir():
            raise DataError(f"AwA2 class folder {folder} (class {label + 1} of {CLASSES_FILE}) is missing")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES and p.is_file())
        if not files:
            raise DataError(f"AwA2 class folder {folder} holds no {'/'.join(SUFFIXES)} images")
        paths.extend(files)
        labels.extend([label] * len(files))
    return paths, torch.tensor(labels, dtype=torch.long), names


def heldout_quota(counts: list[int]) -> list[int]:
    """Held-out images per class: the largest-remainder apportionment of ``round(N * 7452 / 37322)``.

    Parameters
    ----------
    counts:
        Images per class (``N = sum(counts)``).

    Returns
    -------
    list[int]
        ``q_c`` per class, summing to ``round(N * 7452 / 37322)`` (half rounds up); see the module
        docstring. Integer arithmetic throughout, so the result has no floating-point ties.
    """
    total = sum(counts)
    held = (2 * total * N_HELDOUT_PAPER + N_IMAGES_PAPER) // (2 * N_IMAGES_PAPER)
    base = [held * n // total for n in counts]
    remainders = [held * n % total for n in counts]
    extra = held - sum(base)
    for c in sorted(range(len(counts)), key=lambda c: (-remainders[c], c))[:extra]:
        base[c] += 1
    return base


def split_indices(labels: Tensor, num_classes: int, n_val: int = N_VAL) -> tuple[Tensor, Tensor, Tensor]:
    """``(train, val, test)`` source indices of the split rule in the module docstring.

    Parameters
    ----------
    labels:
        ``(N,)`` long labels in source order.
    num_classes:
        Number of classes (every one must have images).
    n_val:
        Validation images drawn from the held-out ones.

    Returns
    -------
    (train, val, test):
        ``(n,)`` long tensors of source indices; train in source order.

    Raises
    ------
    DataError
        When ``n_val`` leaves no test image.
    """
    counts = torch.bincount(labels, minlength=num_classes).tolist()
    quota = heldout_quota(counts)
    generator = torch.Generator().manual_seed(SPLIT_SEED)
    held = torch.zeros(len(labels), dtype=torch.bool)
    for c in range(num_classes):
        members = torch.nonzero(labels == c).flatten()
        pick = torch.randperm(len(members), generator=generator)[: quota[c]]
        held[members[pick]] = True
    heldout = torch.nonzero(held).flatten()
    if n_val >= len(heldout):
        raise DataError(
            f"the {len(labels)} AwA2 images leave {len(heldout)} held out, too few for {n_val} validation "
            f"images plus a test split; pass --task-option n_val=K with K < {len(heldout)}"
        )
    perm = torch.randperm(len(heldout), generator=torch.Generator().manual_seed(VAL_TEST_SEED))
    train = torch.nonzero(~held).flatten()
    return train, heldout[perm[:n_val]], heldout[perm[n_val:]]


# =============================================================================================
# Images
# =============================================================================================
def decode_image(path: str | os.PathLike[str], image_size: int) -> np.ndarray:
    """One image as ``(image_size, image_size, 3)`` uint8 RGB: shorter side resized, centre crop.

    Raises
    ------
    DataError
        When Pillow cannot read the file.
    """
    from PIL import Image

    try:
        with Image.open(path) as opened:
            opened.draft("RGB", (image_size, image_size))  # JPEG: decode at a reduced scale >= the size
            img = opened.convert("RGB")
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's data problem
        raise DataError(f"cannot read image {os.fspath(path)!r} ({type(err).__name__}: {err})") from err
    width, height = img.size
    scale = image_size / min(width, height)
    size = (max(image_size, round(width * scale)), max(image_size, round(height * scale)))
    img = img.resize(size, Image.Resampling.BILINEAR)
    left, top = (size[0] - image_size) // 2, (size[1] - image_size) // 2
    img = img.crop((left, top, left + image_size, top + image_size))
    return np.array(img, dtype=np.uint8)  # a writable copy


def decode_images(paths: list[Path], image_size: int, desc: str = "awa2: decode") -> Tensor:
    """``(n, 3, image_size, image_size)`` uint8 images of ``paths``, a fresh tensor.

    Decoded straight into the result by a thread pool (Pillow releases the GIL while decoding) with
    a progress bar; the result is the same for any number of threads. Not memoised: the caller owns
    (and may modify) the result.
    """
    start = time.perf_counter()
    out = torch.empty((len(paths), 3, image_size, image_size), dtype=torch.uint8)

    def work(i: int) -> None:
        out[i] = torch.from_numpy(decode_image(paths[i], image_size)).permute(2, 0, 1)

    workers = max(1, min(8, os.cpu_count() or 1))
    with (
        ThreadPoolExecutor(max_workers=workers) as pool,
        tqdm(total=len(paths), desc=desc, unit="img", disable=None, leave=False) as bar,
    ):
        for _ in pool.map(work, range(len(paths))):
            bar.update(1)
    log.info("decoded %d AwA2 images at %d px in %.1f s", len(paths), image_size, time.perf_counter() - start)
    return out


def normalise(x: Tensor) -> Tensor:
    """``(x - mean) / std`` per channel (ImageNet statistics) for float ``x`` ``(n, 3, H, W)`` in
    [0, 1] (the step of :data:`NORMALISER` after ``uint8 / 255.0``)."""
    return Normaliser(mean=IMAGENET_MEAN, std=IMAGENET_STD)(x)


@functools.lru_cache(maxsize=4)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    del size, mtime_ns  # part of the memo key only
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_digest(path: str | os.PathLike[str]) -> str:
    """Content hash of a weights file (memoised per path, size and modification time)."""
    resolved = os.path.realpath(path)
    info = os.stat(resolved)
    return _file_digest(resolved, info.st_size, info.st_mtime_ns)


# =============================================================================================
# Task
# =============================================================================================
@dataclass(frozen=True, kw_only=True)
class AwA2Config(ResNetTaskConfig):
    """Options of the AwA2 task (see :class:`~tasks.resnets.ResNetTaskConfig` for the training ones).

    The paper's summary gives no fine-tuning recipe; the defaults are ours and were not measured
    here (no AwA2 offline): SGD with momentum 0.9, constant learning rate 0.01, weight decay 1e-4,
    batch 32, 10 epochs, no augmentation, a checkpoint every 2 epochs. ``paper()`` returns them.
    ``quick()`` (Adam at lr 1e-4, batch 16, 2 epochs, a checkpoint after each) is for small subsets
    and tests. Both keep ``pretrained=True``: the weights file must be given (or ``pretrained=false``
    chosen) explicitly. Neither preset stops early (``patience=None``): without the data offline no
    plateau could be measured; set ``patience`` (and raise ``epochs``, now the maximum) to train until
    the training loss stops improving.
    """

    epochs: int = option(10, "training epochs (the maximum when patience is set)")
    lr: float = option(0.01, "learning rate (constant)")
    batch_size: int = option(32, "mini-batch size")
    optimizer: OptimizerName = option("sgd", "optimizer: sgd or adam")
    momentum: float = option(0.9, "momentum of SGD (unused by adam)")
    weight_decay: float = option(1e-4, "weight decay (L2) of the optimizer")
    checkpoint_every: int = option(2, "keep a checkpoint (for TracIn) every N epochs and after the last")
    n_val: int = option(N_VAL, "validation images drawn from the held-out images (the rest: test split)")
    image_size: int = option(224, "images are resized and centre-cropped to image_size x image_size")
    pretrained: bool = option(True, "start from ImageNet weights (needs pretrained_weights=PATH)")
    pretrained_weights: str | None = option(
        None, "local torchvision ResNet-50 state_dict, e.g. resnet50-0676ba61.pth (never downloaded)"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_recipe(self)
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int):
            raise ConfigError(f"AwA2Config: image_size must be an integer, got {self.image_size!r}")
        if self.image_size < MIN_IMAGE_SIZE:
            raise ConfigError(f"AwA2Config: image_size must be >= {MIN_IMAGE_SIZE}, got {self.image_size}")
        if not isinstance(self.pretrained, bool):
            raise ConfigError(f"AwA2Config: pretrained must be true or false, got {self.pretrained!r}")
        if not self.pretrained and self.pretrained_weights is not None:
            raise ConfigError(
                "AwA2Config: pretrained=false contradicts pretrained_weights="
                f"{self.pretrained_weights!r}; drop one of the two options"
            )

    @classmethod
    def paper(cls) -> AwA2Config:
        """Our fine-tuning recipe (the paper's summary states none): the defaults."""
        return cls()

    @classmethod
    def quick(cls) -> AwA2Config:
        """Adam at lr 1e-4, batch 16, 2 epochs, a checkpoint per epoch: for small subsets."""
        return replace(cls(), optimizer="adam", lr=1e-4, batch_size=16, epochs=2, checkpoint_every=1)


class AwA2Task(ImageTask):
    """AwA2 from ``--data-root`` (29,870 train, 2,000 val, 5,452 test) with the paper's ResNet-50.

    Raises :class:`~harness.protocols.DataError` at construction when ``pretrained`` is set
    without a usable ``pretrained_weights`` file (see the module docstring).
    """

    needs_data_root = True
    Config = AwA2Config
    version = "2"
    architecture = "resnet50_awa2"

    config: AwA2Config

    def __init__(self, config: AwA2Config | None = None) -> None:
        super().__init__(config)
        cfg = self.config
        if cfg.pretrained and cfg.pretrained_weights is None:
            raise DataError(
                "the awa2 task fine-tunes an ImageNet-pretrained ResNet-50 and never downloads weights: "
                "pass a local torchvision state_dict with --task-option pretrained_weights=PATH (e.g. "
                f"{' or '.join(RESNET50_WEIGHT_FILES)} from ~/.cache/torch/hub/checkpoints/ of a machine "
                "with internet), or train from scratch with --task-option pretrained=false"
            )
        if cfg.pretrained_weights is not None:
            check_resnet50_weights(cfg.pretrained_weights)

    # ----- dataset facts read from disk --------------------------------------------------------
    @property
    def dataset_classes(self) -> int:  # type: ignore[override]
        """Classes listed in classes.txt (50 for AwA2)."""
        return len(read_classes(self.config.data_root))

    @property
    def input_shape(self) -> tuple[int, ...]:  # type: ignore[override]
        return (3, self.config.image_size, self.config.image_size)

    # ----- data -----------------------------------------------------------------------------
    def raw_splits(self) -> tuple[Split, Split, Split]:
        """Train, val and test, uint8 read in [0, 1] pixel space (see the module docstring), with
        ``meta["indices"]``; each split decoded straight into its own fresh tensor."""
        paths, labels, names = list_images(self.config.data_root)
        train_idx, val_idx, test_idx = split_indices(labels, len(names), self.config.n_val)

        def split(name: str, index: Tensor) -> Split:
            files = [paths[i] for i in index.tolist()]
            images = decode_images(files, self.config.image_size, f"awa2: {name}")
            return Split(name, images, labels[index], {"indices": index}, PIXELS)

        return split("train", train_idx), split("val", val_idx), split("test", test_idx)

    @property
    def normaliser(self) -> Normaliser:
        return NORMALISER

    def load(self) -> TaskData:
        """See :meth:`tasks.image_task.ImageTask.load`; checks the sizes before decoding any image."""
        cfg = self.config
        _, labels, names = list_images(cfg.data_root)
        train_idx, _, test_idx = split_indices(labels, len(names), cfg.n_val)
        check_size(cfg.n_train, len(train_idx), "--n-train", "AwA2 training set")
        check_size(cfg.n_test, len(test_idx), "--n-test", "AwA2 test split")
        return super().load()

    # ----- model ----------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        weights = self.config.pretrained_weights if self.config.pretrained else None
        return resnet50_awa2(num_classes=self.num_classes, weights_path=weights)

    def train_model(self, model: nn.Module, data: TaskData, *, device: torch.device) -> TrainedModel:
        """See :func:`tasks.training.train_task_model`."""
        return train_task_model(model, data, self.config, device=device, label=f"awa2/{self.config.variant}")

    def training_config(self) -> dict[str, Any]:
        """The base's, with the weights file's path replaced by a hash of its content."""
        values = super().training_config()
        path = values.pop("pretrained_weights", None)
        values["pretrained_weights_digest"] = None if path is None else weights_digest(path)
        return values
