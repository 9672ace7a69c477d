"""The training loop shared by the benchmark tasks.

One plain mini-batch loop with cross-entropy loss (the setting of the models in DualXDA, Yolcu et
al., arXiv 2402.12118): no augmentation, no learning-rate schedule, no early stopping. The only
randomness the loop itself draws is the order of the training points, taken from a
:class:`torch.Generator` seeded with ``generator_seed``; the model's initial weights come from
whoever built it (the harness seeds torch globally before it calls ``Task.build_model`` and
``Task.train_model``). Nothing here seeds global state.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from harness.protocols import Checkpoint

log = logging.getLogger(__name__)

OptimizerName = Literal["adam", "sgd"]
OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")


def make_optimizer(
    name: str, params: Any, *, lr: float, weight_decay: float, momentum: float = 0.0
) -> torch.optim.Optimizer:
    """``torch.optim.Adam`` or ``torch.optim.SGD`` over ``params``.

    Raises
    ------
    ValueError
        For an optimiser name other than ``"adam"`` or ``"sgd"``.
    """
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {list(OPTIMIZERS)}")


def train_classifier(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    weight_decay: float = 0.0,
    optimizer: OptimizerName = "adam",
    momentum: float = 0.0,
    device: torch.device | str,
    generator_seed: int,
    progress_desc: str | None = None,
    on_epoch_end: Callable[[int, nn.Module], None] | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place with mini-batch cross-entropy; return the training history.

    Parameters
    ----------
    model:
        The classifier, ``(n, *input_shape) -> (n, num_classes)`` logits. Moved to ``device``.
    x:
        ``(n, *input_shape)`` float training inputs (any device; moved to ``device`` once).
    y:
        ``(n,)`` long training labels.
    epochs, lr, batch_size, weight_decay:
        The usual; the last batch of an epoch may be smaller than ``batch_size``.
    optimizer:
        ``"adam"`` or ``"sgd"`` (with ``momentum``, ignored by Adam).
    device:
        Where to train.
    generator_seed:
        Seed of the :class:`torch.Generator` that draws each epoch's order of the training points.
    progress_desc:
        Label of the progress bar (one bar over all batches of all epochs; silent when stderr is not
        a terminal).
    on_epoch_end:
        Called as ``on_epoch_end(epoch, model)`` after each epoch (``epoch`` counts from 1), e.g. to
        keep checkpoints. The model is in train mode when it is called.

    Returns
    -------
    dict
        ``loss`` and ``train_accuracy``: per-epoch means over the training points of the loss and of
        the accuracy of the running model on each batch before its update (lists of ``epochs``
        floats); ``epoch_seconds`` (list); ``seconds`` (total wall time); ``steps``; and the
        settings ``epochs``, ``lr``, ``batch_size``, ``weight_decay``, ``optimizer``.

    Raises
    ------
    ValueError
        For non-positive ``epochs``, ``batch_size`` or ``lr``, an unknown optimiser, or ``x`` and
        ``y`` of different lengths.
    """
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(
            f"epochs and batch_size must be >= 1 and lr > 0 (got epochs={epochs}, "
            f"batch_size={batch_size}, lr={lr})"
        )
    n = int(y.shape[0])
    if x.shape[0] != n or n == 0:
        raise ValueError(f"x has {x.shape[0]} rows and y {n} labels; need equal, non-zero counts")
    device = torch.device(device)
    model.to(device)
    x_dev, y_dev = x.to(device), y.to(device=device, dtype=torch.long)
    opt = make_optimizer(optimizer, model.parameters(), lr=lr, weight_decay=weight_decay, momentum=momentum)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(generator_seed)
    batches_per_epoch = math.ceil(n / batch_size)

    history: dict[str, Any] = {
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "weight_decay": weight_decay,
        "optimizer": optimizer,
        "loss": [],
        "train_accuracy": [],
        "epoch_seconds": [],
    }
    model.train()
    start = time.perf_counter()
    with tqdm(
        total=epochs * batches_per_epoch,
        desc=progress_desc or "train",
        unit="batch",
        disable=None,
        leave=False,
    ) as bar:
        for epoch in range(1, epochs + 1):
            epoch_start = time.perf_counter()
            order = torch.randperm(n, generator=generator).to(device)
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            correct = torch.zeros((), dtype=torch.long, device=device)
            for first in range(0, n, batch_size):
                idx = order[first : first + batch_size]
                xb, yb = x_dev[idx], y_dev[idx]
                logits = model(xb)
                loss = loss_fn(logits, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.detach().double() * yb.shape[0]
                correct += (logits.detach().argmax(dim=1) == yb).sum()
                bar.update(1)
            epoch_loss = float(loss_sum) / n
            history["loss"].append(epoch_loss)
            history["train_accuracy"].append(int(correct) / n)
            history["epoch_seconds"].append(time.perf_counter() - epoch_start)
            bar.set_postfix(epoch=epoch, loss=f"{epoch_loss:.4f}")
            log.debug(
                "%s epoch %d/%d: loss %.4f, train accuracy %.4f",
                progress_desc or "train",
                epoch,
                epochs,
                epoch_loss,
                history["train_accuracy"][-1],
            )
            if on_epoch_end is not None:
                on_epoch_end(epoch, model)
    history["seconds"] = time.perf_counter() - start
    history["steps"] = epochs * batches_per_epoch
    model.eval()
    log.info(
        "%s: %d epochs in %.1f s, final loss %.4f, train accuracy %.4f",
        progress_desc or "train",
        epochs,
        history["seconds"],
        history["loss"][-1],
        history["train_accuracy"][-1],
    )
    return history


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 1024) -> float:
    """Share of ``(x, y)`` that ``model`` classifies correctly, evaluated on the model's device.

    Parameters
    ----------
    model:
        A classifier; its train/eval mode is left as it is.
    x:
        ``(n, *input_shape)`` inputs.
    y:
        ``(n,)`` labels.
    """
    if y.shape[0] == 0:
        raise ValueError("accuracy of an empty split is undefined")
    device = next(model.parameters()).device
    correct = 0
    for first in range(0, int(y.shape[0]), batch_size):
        xb = x[first : first + batch_size].to(device)
        pred = model(xb).argmax(dim=1).cpu()
        correct += int((pred == y[first : first + batch_size].cpu()).sum())
    return correct / int(y.shape[0])


def checkpoint_keeper(lr: float) -> tuple[list[Checkpoint], Callable[[int, nn.Module], None]]:
    """``(checkpoints, on_epoch_end)``: pass the callback to :func:`train_classifier` and the list
    fills with a :class:`~harness.protocols.Checkpoint` (weights on CPU, learning rate ``lr``) after
    every epoch; the last one equals the final model."""
    checkpoints: list[Checkpoint] = []

    def keep(epoch: int, model: nn.Module) -> None:
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        checkpoints.append(Checkpoint(epoch=epoch, lr=lr, state=state))

    return checkpoints, keep
