"""Shared fixtures: a trained toy model and its data, built once per test session."""

from __future__ import annotations

import pytest

# Heavy imports happen inside fixtures so that collecting the tests stays fast.


#: Fixtures that train a real model: every test that uses one is slow (marked here, not by hand).
TRAINING_FIXTURES = frozenset({"mnist_small_setup"})


@pytest.hookimpl(tryfirst=True)  # before `-m "not slow"` deselects
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none here)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # the marker, not a parameter named gpu
            item.add_marker(skip)


@pytest.fixture(scope="session")
def toy_setup(tmp_path_factory: pytest.TempPathFactory):
    """(task, data, model) for the toy task, trained once (seed 0) and cached in a temp dir."""
    from harness.cache import Cache
    from harness.model_store import get_or_train_model, load_task_data, select_device
    from harness.registry import TASKS

    task_cls = TASKS.get("toy")
    task = task_cls(task_cls.Config())
    data = load_task_data(task)
    cache = Cache(tmp_path_factory.mktemp("toy-cache"))
    model, _ = get_or_train_model(task, data, seed=0, cache=cache, device=select_device())
    return task, data, model


@pytest.fixture(scope="session")
def mnist_small_setup(tmp_path_factory: pytest.TempPathFactory):
    """(task, data, model) for MNIST on 2,000 training and 200 test points, quick preset, seed 0.

    Real data and a real BasicConv (about 95% test accuracy), trained once per session in a few
    seconds: the fixture for tests that need the embedded task's own features.
    """
    from harness.cache import Cache
    from harness.model_store import get_or_train_model, load_task_data, select_device
    from harness.registry import TASKS

    task_cls = TASKS.get("mnist")
    config = task_cls.Config.from_dict({"n_train": 2000, "n_test": 200}, base=task_cls.Config.quick())
    task = task_cls(config)
    data = load_task_data(task)
    cache = Cache(tmp_path_factory.mktemp("mnist-cache"))
    model, _ = get_or_train_model(task, data, seed=0, cache=cache, device=select_device())
    return task, data, model
