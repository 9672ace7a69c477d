"""Shared fixtures: a trained toy model and its data, built once per test session."""

from __future__ import annotations

import pytest

# Heavy imports happen inside fixtures so that collecting the tests stays fast.


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none here)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def toy_setup(tmp_path_factory: pytest.TempPathFactory):
    """(task, data, model) for the toy task, trained once (seed 0) and cached in a temp dir."""
    from harness.cache import Cache
    from harness.registry import TASKS
    from harness.runner import get_or_train_model, load_task_data, select_device

    task_cls = TASKS.get("toy")
    task = task_cls(task_cls.Config())
    data = load_task_data(task)
    cache = Cache(tmp_path_factory.mktemp("toy-cache"))
    model, _ = get_or_train_model(task, data, seed=0, cache=cache, device=select_device())
    return task, data, model
