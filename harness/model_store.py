"""Trained models: the run's model and the counterfactual models that retraining metrics need.

Both are content-addressed in the cache (``cache/models/<task>/`` and
``cache/counterfactuals/<task>/``) and trained with fixed seeds, so a grid trains each model once
and every method of the grid reads the same weights.

- :func:`get_or_train_model`: the model of a (task, variant, training config, seed), with the
  checkpoints TracIn needs.
- :class:`Retrainer`: models retrained on subsets of the training set (LDS, coreset selection, data
  pruning), keyed by the full model's key plus the subset (as a set) and the training length;
  missing ones are trained in worker processes when ``workers > 1`` (the cache's atomic writes make
  concurrent writers safe), with a progress bar. By default a counterfactual model takes as many
  optimiser steps as the full model (the task's ``steps`` option), whatever the size of its
  subset: trained for the same number of epochs, a 10% subset would see a tenth of the steps and
  the curves would measure under-training.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import random
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TYPE_CHECKING, Any

from harness.cache import Artefact, Cache
from harness.config import ConfigError, stable_hash
from harness.protocols import (
    CHECKPOINTS_ATTR,
    Checkpoint,
    Counterfactuals,
    DataError,
    Inputs,
    Task,
    TaskData,
    TrainedModel,
)
from harness.timing import timed

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

log = logging.getLogger(__name__)

_DATA_MEMO: dict[str, TaskData] = {}


def load_task_data(task: Task) -> TaskData:
    """The task's data, loaded once per process and configuration."""
    key = stable_hash([task.name, task.version, task.config.to_dict()])
    if key not in _DATA_MEMO:
        _DATA_MEMO[key] = task.load()
    return _DATA_MEMO[key]


def select_device() -> torch.device:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch. Only the harness seeds; library code never does."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def model_key(task: Task, data: TaskData, seed: int) -> dict[str, Any]:
    return {
        "task": task.name,
        "task_version": task.version,
        "architecture": task.architecture,
        "variant": data.variant,
        "train_data": data.train.fingerprint(),
        "training": task.training_config(),
        "seed": seed,
        "stored": "weights+checkpoints",
    }


def train_artefact(
    task: Task, data: TaskData, seed: int, device: torch.device, *, keep_checkpoints: bool = True
) -> Artefact:
    """Seed, build and train the task's model on ``data.train``; weights (and checkpoints) as tensors."""
    seed_everything(seed)
    model = task.build_model().to(device)
    trained: TrainedModel = task.train_model(model, data, device=device)
    tensors = {f"model.{k}": v.detach().cpu().clone() for k, v in trained.model.state_dict().items()}
    checkpoints = trained.checkpoints if keep_checkpoints else []
    for i, checkpoint in enumerate(checkpoints):
        tensors.update({f"checkpoint{i}.{k}": v.detach().cpu().clone() for k, v in checkpoint.state.items()})
    meta = {"history": trained.history, "checkpoints": [{"epoch": c.epoch, "lr": c.lr} for c in checkpoints]}
    return Artefact(tensors=tensors, meta=meta)


def get_or_train_model(
    task: Task, data: TaskData, seed: int, cache: Cache, device: torch.device
) -> tuple[nn.Module, dict[str, Any]]:
    """The trained model for (data, variant, architecture, training config, seed); cached on disk."""
    key = model_key(task, data, seed)
    store = cache.scope("models", task.name)
    cached = store.contains(key)
    (artefact, timing) = timed(
        lambda: store.get_or_create(key, lambda: train_artefact(task, data, seed, device))
    )
    model = _load(task, artefact, device)
    setattr(
        model,
        CHECKPOINTS_ATTR,
        [
            Checkpoint(epoch=c["epoch"], lr=c["lr"], state=_with_prefix(artefact.tensors, f"checkpoint{i}."))
            for i, c in enumerate(artefact.meta.get("checkpoints", []))
        ],
    )
    info = {
        "key": stable_hash(key, length=24),
        "cached": cached,
        "seconds": timing.seconds,
        "history": artefact.meta.get("history", {}),
    }
    return model, info


def _load(task: Task, artefact: Artefact, device: torch.device) -> nn.Module:
    model = task.build_model()
    model.load_state_dict(_with_prefix(artefact.tensors, "model."))
    return model.to(device).eval()


def _with_prefix(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def predict(model: nn.Module, x: Tensor | Inputs, batch_size: int) -> Tensor:
    """``(n,)`` long on the CPU: ``model``'s predicted class of each row of ``x`` (a tensor or a split's
    :class:`~harness.protocols.Inputs`, read ``batch_size`` rows at a time)."""
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        return torch.cat(
            [
                model(x[i : i + batch_size].to(device)).argmax(dim=1).cpu()
                for i in range(0, len(x), batch_size)
            ]
        )


# =============================================================================================
# Counterfactual models
# =============================================================================================
class Retrainer(Counterfactuals):
    """Counterfactual models of one run's task, data and seed (see the module docstring).

    The training length of a counterfactual model: with ``epochs`` given to :meth:`evaluate`, the
    task's recipe for exactly that many epochs (early stopping off); without, exactly as many
    optimiser steps as the full model took (``full_steps``), set through the task config's
    ``steps`` option. A task whose config has no ``steps`` option keeps its own recipe (with a
    warning).

    Parameters
    ----------
    task, data, seed:
        The run's task (its config gives the training recipe), its loaded data and its seed; every
        counterfactual model starts from the same seeded initialisation as the run's model.
    cache:
        The run's cache root; entries go under ``counterfactuals/<task>/``.
    device:
        Where models are trained (in this process) and evaluated.
    workers:
        Processes that train missing models in parallel (1: in this process). Each worker uses
        ``os.cpu_count() // workers`` torch threads.
    full_steps:
        Optimiser steps of the full model. ``None``: read from the full model's training history
        (``history["steps"]``) in the models cache, training and caching the full model first if
        it is not there yet (the runner has always trained it before the metrics run).
    """

    def __init__(
        self,
        task: Task,
        data: TaskData,
        seed: int,
        cache: Cache,
        device: torch.device,
        workers: int = 1,
        *,
        full_steps: int | None = None,
    ) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"retraining workers must be a positive integer, got {workers!r}")
        if full_steps is not None and (
            isinstance(full_steps, bool) or not isinstance(full_steps, int) or full_steps < 1
        ):
            raise ConfigError(f"full_steps must be a positive integer or None, got {full_steps!r}")
        self.task, self.data, self.seed, self.device, self.workers = task, data, seed, device, workers
        self.cache = cache
        self.store = cache.scope("counterfactuals", task.name)
        self._parent = stable_hash(model_key(task, data, seed), length=24)
        self._full_steps = full_steps
        self.trained = 0  # models trained by this instance (the rest came from the cache)

    @property
    def full_steps(self) -> int:
        """Optimiser steps of the full model (looked up once, see the class docstring)."""
        if self._full_steps is None:
            store = self.cache.scope("models", self.task.name)
            key = model_key(self.task, self.data, self.seed)
            artefact = store.get_or_create(
                key, lambda: train_artefact(self.task, self.data, self.seed, self.device)
            )
            steps = artefact.meta.get("history", {}).get("steps")
            if not isinstance(steps, int) or steps < 1:
                raise DataError(
                    f"the cached full model of task {self.task.name!r} records no step count "
                    f"(history['steps'] = {steps!r}); pass full_steps to the Retrainer"
                )
            self._full_steps = steps
        return self._full_steps

    def _steps(self, epochs: int | None) -> int | None:
        """The ``steps`` option of the counterfactual models (None: not set)."""
        if epochs is not None or not self._has_option("steps"):
            return None
        return self.full_steps

    def key(self, subset: Tensor, epochs: int | None, steps: int | None = None) -> dict[str, Any]:
        """Cache key of the model trained on ``train[subset]`` (a set: order is ignored)."""
        import torch

        index = torch.unique(subset.detach().cpu().long())  # sorted, duplicates dropped
        digest = stable_hash(index.tolist(), length=32)
        return {
            "model": self._parent,
            "subset": digest,
            "subset_size": int(index.numel()),
            "epochs": epochs,
            "steps": steps,
            "stored": "weights",
        }

    def evaluate(
        self,
        subsets: Sequence[Tensor],
        evaluate: Callable[[nn.Module], Tensor],
        *,
        purpose: str,
        epochs: int | None = None,
    ) -> list[Tensor]:
        """See :meth:`harness.protocols.Counterfactuals.evaluate`; ``epochs=None``: the full model's steps."""
        from tqdm.auto import tqdm

        for subset in subsets:
            self._check_subset(subset)
        steps = self._steps(epochs)
        task = self._task(epochs, steps)
        keys = [self.key(s, epochs, steps) for s in subsets]
        missing = {
            stable_hash(k): (k, s) for k, s in zip(keys, subsets, strict=True) if not self.store.contains(k)
        }
        if missing and self.workers > 1:
            self._train_in_workers(task, list(missing.values()), purpose)
        results = []
        with tqdm(
            total=len(subsets), desc=f"{purpose}: retrain", unit="model", disable=None, leave=False
        ) as bar:
            for key, subset in zip(keys, subsets, strict=True):
                artefact = self.store.get_or_create(key, functools.partial(self._train, task, subset))
                model = _load(task, artefact, self.device)
                results.append(evaluate(model))
                bar.update(1)
        log.info(
            "%s: %d counterfactual models (%d trained, the rest cached), %s",
            purpose,
            len(subsets),
            len(missing),
            f"{steps} optimiser steps each (as the full model)"
            if steps is not None
            else (f"{epochs} epochs each" if epochs is not None else "the task's own recipe"),
        )
        return results

    # ----- internals --------------------------------------------------------------------------
    def _has_option(self, name: str) -> bool:
        return any(f.name == name for f in dataclasses.fields(self.task.config))

    def _task(self, epochs: int | None, steps: int | None) -> Task:
        if epochs is None:
            if steps is None:
                log.warning(
                    "task %r has no 'steps' option: counterfactual models follow its own recipe, so a "
                    "small subset gets fewer optimiser steps than the full model",
                    self.task.name,
                )
                return self.task
            config: Any = self.task.config  # a task config with a "steps" option (checked above)
            return type(self.task)(dataclasses.replace(config, steps=steps))
        if not self._has_option("epochs"):
            raise ConfigError(
                f"task {self.task.name!r} has no 'epochs' option, so retraining cannot change it; "
                "leave the metric's epochs unset to use the task's recipe"
            )
        # The old rule: exactly that many epochs, so early stopping is switched off where it exists.
        changes: dict[str, Any] = {"epochs": epochs}
        if self._has_option("patience"):
            changes["patience"] = None
        return type(self.task)(dataclasses.replace(self.task.config, **changes))

    def _check_subset(self, subset: Tensor) -> None:
        n = len(self.data.train)
        if subset.dim() != 1 or subset.numel() == 0:
            raise DataError(
                f"a retraining subset must be a non-empty (m,) index tensor, got {tuple(subset.shape)}"
            )
        if int(subset.min()) < 0 or int(subset.max()) >= n:
            raise DataError(
                f"retraining subset indices must lie in 0..{n - 1} (positions in the training set)"
            )

    def _subset_data(self, subset: Tensor) -> TaskData:
        import torch

        index = torch.unique(subset.detach().cpu().long())
        # the subset's stored (compact) rows are copied, never normalised: it pickles small to workers
        return dataclasses.replace(self.data, train=self.data.train.take(index))

    def _train(self, task: Task, subset: Tensor) -> Artefact:
        self.trained += 1
        return train_artefact(task, self._subset_data(subset), self.seed, self.device, keep_checkpoints=False)

    def _train_in_workers(self, task: Task, jobs: list[tuple[dict[str, Any], Tensor]], purpose: str) -> None:
        import multiprocessing

        from tqdm.auto import tqdm

        threads = max(1, (os.cpu_count() or 1) // self.workers)
        context = multiprocessing.get_context("spawn")
        with (
            ProcessPoolExecutor(max_workers=self.workers, mp_context=context) as pool,
            tqdm(
                total=len(jobs), desc=f"{purpose}: train x{self.workers}", unit="model", disable=None
            ) as bar,
        ):
            futures = [
                pool.submit(
                    _train_and_store,
                    task,
                    self._subset_data(subset),
                    self.seed,
                    str(self.store.root),
                    self.store.scope_parts,
                    key,
                    threads,
                    str(self.device),
                )
                for key, subset in jobs
            ]
            for future in futures:
                future.result()  # re-raises a worker's error here
                bar.update(1)
        self.trained += len(jobs)


def _train_and_store(
    task: Task,
    data: TaskData,
    seed: int,
    root: str,
    scope: tuple[str, ...],
    key: dict[str, Any],
    threads: int,
    device: str,
) -> None:
    """Worker entry point: train one counterfactual model on ``device`` and write it to the cache."""
    import torch

    torch.set_num_threads(threads)
    store = Cache(root, scope)
    store.get_or_create(
        key, lambda: train_artefact(task, data, seed, torch.device(device), keep_checkpoints=False)
    )
