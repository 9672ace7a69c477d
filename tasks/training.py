"""The training loop shared by the benchmark tasks.

One plain mini-batch loop with cross-entropy loss (the setting of the models in DualXDA, Yolcu et
al., arXiv 2402.12118): no augmentation, no learning-rate schedule; optional early stopping on the
per-epoch training loss (so a model is trained until it fits its training set), or a fixed number
of optimiser steps (counterfactual models get as many steps as the full model). The only
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
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from harness.config import Config, ConfigError, option
from harness.protocols import Checkpoint, Inputs, TaskData, TrainedModel

log = logging.getLogger(__name__)

OptimizerName = Literal["adam", "sgd"]
OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")


@dataclass(frozen=True, kw_only=True)
class StoppingOptions(Config):
    """How long a task's model trains, beyond its ``epochs``: early stopping and an exact step budget.

    Every task config inherits these (:func:`check_recipe` checks them); the defaults train all
    ``epochs`` epochs.
    """

    patience: int | None = option(
        None,
        "early stopping: end after this many epochs without the training loss falling by more than "
        "min_delta below its best (None: train all epochs)",
    )
    min_delta: float = option(1e-3, "early stopping: the smallest training-loss decrease (nats) that counts")
    steps: int | None = option(
        None,
        "train for exactly this many optimiser steps (overrides epochs and early stopping; the harness "
        "sets it for counterfactual models)",
    )


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
    x: Tensor | Inputs,
    y: Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    weight_decay: float = 0.0,
    optimizer: OptimizerName = "adam",
    momentum: float = 0.0,
    patience: int | None = None,
    min_delta: float = 0.0,
    max_steps: int | None = None,
    device: torch.device | str,
    generator_seed: int,
    progress_desc: str | None = None,
    on_epoch_end: Callable[[int, nn.Module], None] | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place with mini-batch cross-entropy; return the training history.

    Three ways to end: after ``epochs`` epochs; earlier, when the per-epoch training loss has not
    fallen by more than ``min_delta`` below its best value for ``patience`` epochs in a row (early
    stopping, when ``patience`` is set); or after exactly ``max_steps`` optimiser steps (then
    ``epochs`` and early stopping are ignored and the last epoch may be partial).

    Parameters
    ----------
    model:
        The classifier, ``(n, *input_shape) -> (n, num_classes)`` logits. Moved to ``device``.
    x:
        ``(n, *input_shape)`` float training inputs: a tensor (any device) or a split's
        :class:`~harness.protocols.Inputs`; each batch is read (normalised) and moved to ``device``
        as it is needed, so the inputs never sit on ``device`` whole.
    y:
        ``(n,)`` long training labels.
    epochs:
        The maximum number of epochs (the exact number without early stopping).
    lr, batch_size, weight_decay:
        The usual; the last batch of an epoch may be smaller than ``batch_size``.
    optimizer:
        ``"adam"`` or ``"sgd"`` (with ``momentum``, ignored by Adam).
    patience:
        Early stopping: end after this many epochs in a row without an improvement of the mean
        training loss by more than ``min_delta`` (absolute, in nats) over the best epoch so far.
        ``None``: no early stopping. The model of the last epoch is kept (not the best one).
    min_delta:
        The smallest loss decrease that counts as an improvement (>= 0).
    max_steps:
        Train for exactly this many optimiser steps, crossing epoch boundaries as needed (each
        epoch a fresh order of all points); overrides ``epochs`` and ``patience``.
    device:
        Where to train.
    generator_seed:
        Seed of the :class:`torch.Generator` that draws each epoch's order of the training points.
    progress_desc:
        Label of the progress bar (one bar over all batches of all epochs; silent when stderr is not
        a terminal).
    on_epoch_end:
        Called as ``on_epoch_end(epoch, model)`` after each epoch, partial last one included
        (``epoch`` counts from 1), e.g. to keep checkpoints. The model is in train mode then.

    Returns
    -------
    dict
        ``loss`` and ``train_accuracy``: per-epoch means over the points of that epoch of the loss
        and of the accuracy of the running model on each batch before its update (one float per
        epoch run); ``epoch_seconds`` (list); ``seconds`` (total wall time); ``epochs_run``;
        ``steps`` (optimiser steps taken); ``stopped_early`` (bool); and the settings ``epochs``,
        ``lr``, ``batch_size``, ``weight_decay``, ``optimizer``, ``patience``, ``min_delta``,
        ``max_steps``.

    Raises
    ------
    ValueError
        For non-positive ``epochs``, ``batch_size``, ``lr``, ``patience`` or ``max_steps``, a
        negative ``min_delta``, an unknown optimiser, or ``x`` and ``y`` of different lengths.
    """
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(
            f"epochs and batch_size must be >= 1 and lr > 0 (got epochs={epochs}, "
            f"batch_size={batch_size}, lr={lr})"
        )
    if patience is not None and patience < 1:
        raise ValueError(f"patience must be >= 1 or None, got {patience}")
    if not min_delta >= 0:
        raise ValueError(f"min_delta must be >= 0, got {min_delta}")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1 or None, got {max_steps}")
    n = int(y.shape[0])
    if x.shape[0] != n or n == 0:
        raise ValueError(f"x has {x.shape[0]} rows and y {n} labels; need equal, non-zero counts")
    device = torch.device(device)
    model.to(device)
    labels = y.detach().cpu().long()
    opt = make_optimizer(optimizer, model.parameters(), lr=lr, weight_decay=weight_decay, momentum=momentum)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(generator_seed)
    batches_per_epoch = math.ceil(n / batch_size)
    total_steps = max_steps if max_steps is not None else epochs * batches_per_epoch
    early_stopping = patience is not None and max_steps is None

    history: dict[str, Any] = {
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "weight_decay": weight_decay,
        "optimizer": optimizer,
        "patience": patience,
        "min_delta": min_delta,
        "max_steps": max_steps,
        "loss": [],
        "train_accuracy": [],
        "epoch_seconds": [],
    }
    label = progress_desc or "train"
    steps, epoch, best, stale, stopped_early = 0, 0, math.inf, 0, False
    model.train()
    start = time.perf_counter()
    with tqdm(total=total_steps, desc=label, unit="batch", disable=None, leave=False) as bar:
        while steps < total_steps:
            epoch += 1
            epoch_start = time.perf_counter()
            order = torch.randperm(n, generator=generator)
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            correct = torch.zeros((), dtype=torch.long, device=device)
            seen = 0
            for first in range(0, n, batch_size):
                if steps == total_steps:
                    break
                idx = order[first : first + batch_size]
                xb, yb = x[idx].to(device), labels[idx].to(device)
                logits = model(xb)
                loss = loss_fn(logits, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                steps += 1
                seen += int(yb.shape[0])
                loss_sum += loss.detach().double() * yb.shape[0]
                correct += (logits.detach().argmax(dim=1) == yb).sum()
                bar.update(1)
            epoch_loss = float(loss_sum) / seen
            history["loss"].append(epoch_loss)
            history["train_accuracy"].append(int(correct) / seen)
            history["epoch_seconds"].append(time.perf_counter() - epoch_start)
            bar.set_postfix(epoch=epoch, loss=f"{epoch_loss:.4f}")
            log.debug(
                "%s epoch %d: loss %.4f, train accuracy %.4f",
                label,
                epoch,
                epoch_loss,
                history["train_accuracy"][-1],
            )
            if on_epoch_end is not None:
                on_epoch_end(epoch, model)
            if early_stopping:
                assert patience is not None
                if epoch_loss < best - min_delta:
                    best, stale = epoch_loss, 0
                else:
                    stale += 1
                if stale >= patience and steps < total_steps:
                    stopped_early = True
                    break
    history["seconds"] = time.perf_counter() - start
    history["steps"] = steps
    history["epochs_run"] = epoch
    history["stopped_early"] = stopped_early
    model.eval()
    log.info(
        "%s: %d epochs (%d steps%s) in %.1f s, final loss %.4f, train accuracy %.4f",
        label,
        epoch,
        steps,
        ", stopped early" if stopped_early else "",
        history["seconds"],
        history["loss"][-1],
        history["train_accuracy"][-1],
    )
    return history


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor | Inputs, y: Tensor, *, batch_size: int = 1024) -> float:
    """Share of ``(x, y)`` that ``model`` classifies correctly, evaluated on the model's device.

    Parameters
    ----------
    model:
        A classifier; its train/eval mode is left as it is.
    x:
        ``(n, *input_shape)`` inputs (a tensor or a split's :class:`~harness.protocols.Inputs`).
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


class CheckpointKeeper:
    """Keeps a :class:`~harness.protocols.Checkpoint` (weights on CPU, learning rate ``lr``) every
    ``every`` epochs; :meth:`finish` adds the final model unless the last kept one is it.

    Pass the keeper as ``on_epoch_end`` of :func:`train_classifier`, then call :meth:`finish` with
    the epochs run; ``checkpoints`` then ends with the final model. ``every=0`` keeps the final
    model only.
    """

    def __init__(self, lr: float, *, every: int = 1) -> None:
        if every < 0:
            raise ValueError(f"checkpoint interval must be >= 0 epochs, got {every}")
        self.lr, self.every = lr, every
        self.checkpoints: list[Checkpoint] = []

    def __call__(self, epoch: int, model: nn.Module) -> None:
        if self.every and epoch % self.every == 0:
            self._keep(epoch, model)

    def finish(self, epoch: int, model: nn.Module) -> None:
        """Keep the final model (trained for ``epoch`` epochs) if the last checkpoint is not it."""
        if not self.checkpoints or self.checkpoints[-1].epoch != epoch:
            self._keep(epoch, model)

    def _keep(self, epoch: int, model: nn.Module) -> None:
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        self.checkpoints.append(Checkpoint(epoch=epoch, lr=self.lr, state=state))


@torch.no_grad()
def predicted_labels(model: nn.Module, x: Tensor | Inputs, *, batch_size: int = 1024) -> Tensor:
    """``(n,)`` long, on CPU: ``model``'s predicted class of each row of ``x`` (mode left as it is)."""
    device = next(model.parameters()).device
    parts = [
        model(x[i : i + batch_size].to(device)).argmax(dim=1).cpu() for i in range(0, len(x), batch_size)
    ]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def final_fit(model: nn.Module, data: TaskData, *, batch_size: int = 1024) -> dict[str, float | None]:
    """How well the trained ``model`` (put in eval mode) fits its training set; its validation accuracy.

    Returns
    -------
    dict
        ``train_accuracy_final``: share of the whole training split predicted as its training label
        (the label the model was trained on: the flipped one in the corrupt variant);
        ``val_accuracy`` (None for an empty validation split); where ``data.train.meta`` has
        ``flipped`` (``(n,)`` bool, the corrupt variant): ``flipped_fitted``, the share of flipped
        points predicted as their (flipped) training label, and ``clean_fitted``, the same share
        among the other points (None when there are none).
    """
    model.eval()
    train = data.train
    fitted = predicted_labels(model, train.inputs, batch_size=batch_size) == train.y.cpu()
    result: dict[str, float | None] = {
        "train_accuracy_final": float(fitted.double().mean()),
        "val_accuracy": accuracy(model, data.val.inputs, data.val.y, batch_size=batch_size)
        if len(data.val)
        else None,
    }
    flipped = train.meta.get("flipped")
    if flipped is not None:
        flipped = flipped.cpu().bool()
        result["flipped_fitted"] = float(fitted[flipped].double().mean()) if flipped.any() else None
        result["clean_fitted"] = float(fitted[~flipped].double().mean()) if (~flipped).any() else None
    return result


class TrainingRecipe(Protocol):
    """The training options a task config carries (see :func:`train_task_model`)."""

    epochs: int
    lr: float
    batch_size: int
    optimizer: OptimizerName
    momentum: float
    weight_decay: float
    patience: int | None
    min_delta: float
    steps: int | None
    checkpoint_every: int


def check_recipe(config: TrainingRecipe) -> None:
    """Validate the early-stopping, step and checkpoint options of a task config.

    Raises
    ------
    ConfigError
        For ``patience`` not None and < 1, a negative or non-finite ``min_delta``, ``steps`` not
        None and < 1, or ``checkpoint_every`` < 1.
    """
    name = type(config).__name__
    for key in ("patience", "steps"):
        value = getattr(config, key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{name}: {key} must be an integer >= 1 or None, got {value!r}")
    every = config.checkpoint_every
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ConfigError(f"{name}: checkpoint_every must be an integer >= 1, got {every!r}")
    delta = config.min_delta
    if isinstance(delta, bool) or not isinstance(delta, int | float) or not math.isfinite(delta) or delta < 0:
        raise ConfigError(f"{name}: min_delta must be a finite number >= 0, got {delta!r}")


def train_task_model(
    model: nn.Module, data: TaskData, config: TrainingRecipe, *, device: torch.device, label: str
) -> TrainedModel:
    """Train ``model`` on ``data.train`` with a task config's recipe: the ``train_model`` of every task.

    The order of the training points is drawn from torch's global generator (which the harness
    seeded with the run seed). Without ``config.steps``: at most ``config.epochs`` epochs, early
    stopping on the training loss when ``config.patience`` is set, a checkpoint every
    ``config.checkpoint_every`` epochs and always the final model as the last checkpoint. With
    ``config.steps`` (set by the harness for counterfactual models): exactly that many optimiser
    steps, no early stopping, and the final model as the only checkpoint (counterfactual models
    keep none; a checkpoint per epoch of a small subset trained for many epochs would only cost
    memory).

    Returns
    -------
    TrainedModel
        The model in eval mode, its checkpoints, and the history of :func:`train_classifier` plus
        ``checkpoint_epochs`` and the entries of :func:`final_fit`.
    """
    generator_seed = int(torch.randint(0, 2**62, ()).item())
    keeper = CheckpointKeeper(config.lr, every=0 if config.steps is not None else config.checkpoint_every)
    history = train_classifier(
        model,
        data.train.inputs,
        data.train.y,
        epochs=config.epochs,
        lr=config.lr,
        batch_size=config.batch_size,
        weight_decay=config.weight_decay,
        optimizer=config.optimizer,
        momentum=config.momentum,
        patience=config.patience,
        min_delta=config.min_delta,
        max_steps=config.steps,
        device=device,
        generator_seed=generator_seed,
        progress_desc=label,
        on_epoch_end=keeper,
    )
    keeper.finish(history["epochs_run"], model)
    history["checkpoint_epochs"] = [c.epoch for c in keeper.checkpoints]
    history.update(final_fit(model, data, batch_size=config.batch_size))
    log.info(
        "%s: final train accuracy %.4f, validation accuracy %s%s",
        label,
        history["train_accuracy_final"],
        "n/a" if history["val_accuracy"] is None else f"{history['val_accuracy']:.4f}",
        ""
        if history.get("flipped_fitted") is None
        else f", flipped labels fitted {history['flipped_fitted']:.4f}",
    )
    return TrainedModel(model=model, history=history, checkpoints=keeper.checkpoints)
