"""Tests of the shared training loop: early stopping, a fixed step budget, checkpoints, and the final
model's fit (train/val accuracy, flipped labels fitted) that every task writes into its history."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch
from torch import nn

from harness.config import ConfigError
from harness.protocols import Split, TaskData
from tasks.architectures import TinyMLP
from tasks.awa2 import AwA2Config
from tasks.cifar10 import CIFAR10Config
from tasks.mnist import MNISTConfig
from tasks.toy import ToyConfig, ToyTask
from tasks.training import CheckpointKeeper, final_fit, train_classifier, train_task_model

CPU = torch.device("cpu")


def _blobs(n: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    data = ToyTask().load()
    return data.train.inputs[:n], data.train.y[:n]


def _train(**kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
    x, y = _blobs()
    torch.manual_seed(0)
    model = TinyMLP(8, 16, 3)
    args: dict[str, Any] = {"epochs": 20, "lr": 0.01, "batch_size": 16, "device": CPU, "generator_seed": 1}
    history = train_classifier(model, x, y, **{**args, **kwargs})
    return model, history


def test_without_patience_all_epochs_run() -> None:
    _, history = _train(epochs=6)
    assert history["epochs_run"] == 6 and len(history["loss"]) == 6
    assert history["steps"] == 6 * 3  # 48 points, batches of 16
    assert history["stopped_early"] is False


def test_early_stopping_ends_after_patience_epochs_without_improvement() -> None:
    # min_delta larger than any possible decrease: only epoch 1 counts as an improvement, so the
    # loop stops after 1 + patience epochs.
    _, history = _train(epochs=20, patience=2, min_delta=100.0)
    assert history["epochs_run"] == 3 and len(history["loss"]) == len(history["train_accuracy"]) == 3
    assert history["stopped_early"] is True
    assert history["steps"] == 3 * 3
    assert history["patience"] == 2 and history["epochs"] == 20


def test_early_stopping_follows_the_loss_trajectory() -> None:
    # The same run without early stopping, then the rule applied by hand to its losses: the
    # early-stopped run must end exactly where the rule says (training is deterministic).
    _, full = _train(epochs=30)
    patience, min_delta = 3, 0.01
    best, stale, stop = float("inf"), 0, len(full["loss"])
    for epoch, loss in enumerate(full["loss"], start=1):
        if loss < best - min_delta:
            best, stale = loss, 0
        else:
            stale += 1
        if stale >= patience:
            stop = epoch
            break
    assert stop < 30  # the toy loss does plateau within 30 epochs
    _, stopped = _train(epochs=30, patience=patience, min_delta=min_delta)
    assert stopped["epochs_run"] == stop and stopped["stopped_early"] is True
    assert stopped["loss"] == pytest.approx(full["loss"][:stop], rel=1e-6)


def test_max_steps_crosses_epoch_boundaries_and_overrides_epochs_and_patience() -> None:
    _, history = _train(epochs=1, max_steps=7, patience=1, min_delta=100.0)
    assert history["steps"] == 7
    assert history["epochs_run"] == 3  # 3 + 3 + 1 steps: the last epoch is partial
    assert history["stopped_early"] is False and history["max_steps"] == 7
    assert len(history["loss"]) == 3


def test_max_steps_of_whole_epochs_equals_training_for_those_epochs() -> None:
    a, _ = _train(epochs=4)
    b, history = _train(epochs=1, max_steps=4 * 3)
    assert history["epochs_run"] == 4
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"patience": 0}, "patience"), ({"max_steps": 0}, "max_steps"), ({"min_delta": -1.0}, "min_delta")],
)
def test_bad_early_stopping_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _train(**kwargs)


def test_checkpoint_keeper_keeps_every_nth_epoch_and_the_final_model() -> None:
    model = nn.Linear(2, 2)
    keeper = CheckpointKeeper(0.1, every=2)
    for epoch in range(1, 6):
        with torch.no_grad():
            model.weight.fill_(float(epoch))
        keeper(epoch, model)
    keeper.finish(5, model)
    assert [c.epoch for c in keeper.checkpoints] == [2, 4, 5]
    assert float(keeper.checkpoints[-1].state["weight"][0, 0]) == 5.0
    keeper.finish(5, model)  # the final model is kept once
    assert len(keeper.checkpoints) == 3
    only_final = CheckpointKeeper(0.1, every=0)
    for epoch in range(1, 4):
        only_final(epoch, model)
    only_final.finish(3, model)
    assert [c.epoch for c in only_final.checkpoints] == [3]


def _one_hot_data(train_y: list[int], predicted: list[int], flipped: list[bool] | None) -> TaskData:
    """Inputs are one-hot codes of ``predicted``: an identity layer then predicts exactly those."""
    x = nn.functional.one_hot(torch.tensor(predicted), 3).float()
    meta: dict[str, Any] = {"indices": torch.arange(len(train_y))}
    if flipped is not None:
        meta["flipped"] = torch.tensor(flipped)
    train = Split("train", x, torch.tensor(train_y), meta)
    val = Split("val", x[:4], torch.tensor(predicted[:2] + [0, 0]), {})
    return TaskData(train=train, val=val, test=val, num_classes=3, variant="corrupt", input_shape=(3,))


def test_final_fit_counts_flipped_and_clean_points_against_the_training_labels() -> None:
    model = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3))
    predicted = [0, 1, 2, 0, 1, 2, 0, 1]
    train_y = [0, 1, 2, 1, 1, 0, 0, 2]  # wrong at 3, 5, 7
    flipped = [False, False, True, True, True, False, False, True]  # flipped: 2, 3, 4, 7
    data = _one_hot_data(train_y, predicted, flipped)
    model.train()
    fit = final_fit(model, data)
    assert not model.training  # evaluated in eval mode
    assert fit["train_accuracy_final"] == pytest.approx(5 / 8)
    assert fit["flipped_fitted"] == pytest.approx(2 / 4)  # 2 and 4 fitted, 3 and 7 not
    assert fit["clean_fitted"] == pytest.approx(3 / 4)  # 0, 1, 6 fitted, 5 not
    assert fit["val_accuracy"] == pytest.approx(3 / 4)  # val labels: 0, 1, 0, 0 vs predicted 0, 1, 2, 0
    plain = final_fit(model, _one_hot_data(train_y, predicted, None))
    assert "flipped_fitted" not in plain and "clean_fitted" not in plain


def test_toy_task_history_reports_the_final_fit_and_checkpoints() -> None:
    task = ToyTask(ToyConfig(epochs=40, patience=3, min_delta=0.01, checkpoint_every=4))
    data = task.load()
    torch.manual_seed(0)
    trained = task.train_model(task.build_model(), data, device=CPU)
    history = trained.history
    run = history["epochs_run"]
    assert history["stopped_early"] is True and run < 40
    assert len(history["loss"]) == run
    epochs = [c.epoch for c in trained.checkpoints]
    assert epochs == [*range(4, run + 1, 4), *([run] if run % 4 else [])]
    assert history["checkpoint_epochs"] == epochs
    final = trained.model.state_dict()
    assert all(torch.equal(trained.checkpoints[-1].state[k], final[k]) for k in final)
    for key in ("train_accuracy_final", "val_accuracy"):
        assert 0.0 <= history[key] <= 1.0
    assert history["train_accuracy_final"] >= 0.95


def test_steps_option_trains_exactly_that_many_steps_and_keeps_only_the_final_model() -> None:
    task = ToyTask(ToyConfig(epochs=2, patience=1, min_delta=100.0, steps=10))
    data = task.load()
    torch.manual_seed(0)
    trained = task.train_model(task.build_model(), data, device=CPU)
    assert trained.history["steps"] == 10 and trained.history["epochs_run"] == 4  # 3 batches an epoch
    assert [c.epoch for c in trained.checkpoints] == [4]


def test_train_task_model_on_corrupt_labels_reports_flipped_fitted() -> None:
    data = ToyTask().load()
    flipped = torch.arange(len(data.train)) % 4 == 0
    y = torch.where(flipped, (data.train.y + 1) % 3, data.train.y)
    train = Split("train", data.train.materialise(), y, {**data.train.meta, "flipped": flipped})
    data = replace(data, train=train, variant="corrupt")
    torch.manual_seed(0)
    trained = train_task_model(TinyMLP(8, 16, 3), data, ToyConfig(epochs=30, lr=0.02), device=CPU, label="t")
    history = trained.history
    predicted = trained.model(data.train.materialise()).argmax(dim=1)
    assert history["flipped_fitted"] == pytest.approx(float((predicted == y)[flipped].double().mean()))
    assert history["clean_fitted"] == pytest.approx(float((predicted == y)[~flipped].double().mean()))
    assert history["train_accuracy_final"] == pytest.approx(float((predicted == y).double().mean()))


@pytest.mark.parametrize("config_cls", [ToyConfig, MNISTConfig, CIFAR10Config, AwA2Config])
@pytest.mark.parametrize(
    ("key", "value"),
    [("patience", 0), ("steps", 0), ("checkpoint_every", 0), ("min_delta", -0.1), ("steps", 1.5)],
)
def test_task_configs_validate_the_training_length_options(config_cls: Any, key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=key):
        config_cls(**{key: value})


@pytest.mark.parametrize("config_cls", [ToyConfig, MNISTConfig, CIFAR10Config, AwA2Config])
def test_task_configs_default_to_no_step_budget(config_cls: Any) -> None:
    config = config_cls()
    assert config.steps is None
    assert config_cls.from_dict({"steps": "12"}).steps == 12  # settable from the command line


def test_mnist_quick_trains_to_the_plateau_and_paper_keeps_the_full_data_recipe() -> None:
    quick, paper = MNISTConfig.quick(), MNISTConfig.paper()
    assert quick.patience == 3 and quick.min_delta == 0.01 and quick.epochs == 60  # epochs: a maximum
    assert paper.patience is None and paper.epochs == 4
    assert paper.checkpoint_every == quick.checkpoint_every == 2  # the reference code's save_each
