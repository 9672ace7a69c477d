"""The toy task: Gaussian blobs and a two-layer MLP, small enough that tests train it in a blink.

Not part of the DualXDA paper (Yolcu et al., arXiv 2402.12118); it exercises the same pipeline as
its MNIST task (train a model, split it as ``classifier . features``, explain its predictions) on
tens of points. Class ``c`` draws ``x ~ N(mu_c, I)`` in ``dim`` dimensions; the class means are
``separation / sqrt(2)`` times orthonormal directions drawn from ``data_seed``, so every pair of
means lies ``separation`` apart: with the default 4.0 a point lies beyond the midpoint towards a
given other class with probability Phi(-2) ~ 2.3%, so the blobs are well separated but do overlap.
Everything is generated from ``data_seed`` alone (never from the run seed), so the data are the
same for every run.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from harness.config import ConfigError, option
from harness.protocols import DataError, Split, Task, TaskConfig, TaskData, TrainedModel
from tasks.architectures import TinyMLP
from tasks.training import OPTIMIZERS, OptimizerName, StoppingOptions, check_recipe, train_task_model

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ToyConfig(TaskConfig, StoppingOptions):
    """Options of the toy task (see :class:`~harness.protocols.TaskConfig` for the common ones)."""

    n_points_train: int = option(48, "number of generated training points")
    n_points_test: int = option(24, "number of generated test points")
    n_val: int = option(8, "number of generated validation points")
    dim: int = option(8, "input dimension")
    num_classes: int = option(3, "number of classes (at most dim)")
    separation: float = option(4.0, "distance between any two class means (noise std is 1)")
    hidden: int = option(16, "width of the MLP's hidden layer (= feature dimension)")
    epochs: int = option(20, "training epochs (the maximum when patience is set)")
    lr: float = option(0.01, "learning rate")
    batch_size: int = option(16, "mini-batch size")
    optimizer: OptimizerName = option("adam", "optimizer: adam or sgd")
    momentum: float = option(0.0, "momentum of SGD (unused by adam)")
    weight_decay: float = option(0.0, "weight decay (L2) of the optimizer")
    checkpoint_every: int = option(1, "keep a checkpoint (for TracIn) every N epochs and the final model")
    data_seed: int = option(0, "seed of the generated data (independent of the run seed)")

    def __post_init__(self) -> None:
        for key in ("n_points_train", "n_points_test", "n_val", "dim", "hidden", "epochs", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"toy config: {key} must be >= 1, got {getattr(self, key)}")
        if not 2 <= self.num_classes <= self.dim:
            raise ConfigError(
                f"toy config: num_classes must lie in [2, dim={self.dim}] (the class means are "
                f"orthogonal directions), got {self.num_classes}"
            )
        if not self.lr > 0 or self.optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"toy config: need lr > 0 and optimizer in {list(OPTIMIZERS)}, got lr={self.lr}, "
                f"optimizer={self.optimizer!r}"
            )
        check_recipe(self)


def make_blobs(config: ToyConfig) -> tuple[Split, Split, Split]:
    """Generate the train, validation and test splits of the toy task from ``config.data_seed``.

    Returns
    -------
    (train, val, test):
        Splits with ``x`` ``(n, dim)`` float32, ``y`` ``(n,)`` long (classes as balanced as ``n``
        allows, in random order) and ``meta["indices"]`` ``(n,)`` long, the position of each point
        in its generated split.
    """
    generator = torch.Generator().manual_seed(config.data_seed)
    # Orthonormal directions: QR of a Gaussian matrix; the sign fix makes Q unique.
    q, r = torch.linalg.qr(torch.randn(config.dim, config.dim, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    means = (config.separation / math.sqrt(2.0)) * q[:, : config.num_classes].T  # (classes, dim)

    def draw(name: str, n: int) -> Split:
        labels = torch.arange(n) % config.num_classes
        labels = labels[torch.randperm(n, generator=generator)]
        noise = torch.randn(n, config.dim, generator=generator, dtype=torch.float64)
        x = (means[labels] + noise).to(torch.float32)
        return Split(name, x, labels.long(), {"indices": torch.arange(n)})

    return (
        draw("train", config.n_points_train),
        draw("val", config.n_val),
        draw("test", config.n_points_test),
    )


class ToyTask(Task):
    """Gaussian blobs classified by a :class:`~tasks.architectures.TinyMLP` (tests and smoke runs)."""

    Config = ToyConfig
    version = "2"
    variants = ("std",)
    architecture = "tiny_mlp"

    config: ToyConfig

    def load(self) -> TaskData:
        """The three splits, cut to ``n_train`` / ``n_test``.

        Raises
        ------
        DataError
            When ``n_train`` or ``n_test`` exceeds the generated split.
        """
        cfg = self.config
        train, val, test = make_blobs(cfg)
        train = _cut(train, cfg.n_train, "--n-train", "n_points_train")
        test = _cut(test, cfg.n_test, "--n-test", "n_points_test")
        return TaskData(
            train=train,
            val=val,
            test=test,
            num_classes=cfg.num_classes,
            variant=cfg.variant,
            input_shape=(cfg.dim,),
        )

    def build_model(self) -> nn.Module:
        return TinyMLP(self.config.dim, self.config.hidden, self.config.num_classes)

    def train_model(self, model: nn.Module, data: TaskData, *, device: torch.device) -> TrainedModel:
        """See :func:`tasks.training.train_task_model`."""
        return train_task_model(model, data, self.config, device=device, label="toy")


def _cut(split: Split, n: int | None, flag: str, size_key: str) -> Split:
    """The first ``n`` points of ``split``; :class:`DataError` when ``n`` exceeds its size."""
    if n is None:
        return split
    if n > len(split):
        raise DataError(
            f"{flag} {n} is larger than the toy {split.name} split ({len(split)} points); use "
            f"{flag} <= {len(split)} or raise the task's {size_key}"
        )
    return split.subset(n)
