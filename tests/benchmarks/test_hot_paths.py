"""Hot paths tracked across commits (`dabench bench`, then `dabench compare`): measured, never asserted.

- every registered method's explain on the embedded MNIST task at a small size (600 training points,
  64 test points, quick presets; fitted once per method outside the timing);
- DualDA's fit (solver on cached features) and explain at 2,000 training points;
- report generation over a directory of records.

Sizes are small on purpose: the point is the ratio between two commits on the same machine, not the
absolute time (see the README's "Tracking performance over time").
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cache import Cache
from harness.model_store import get_or_train_model, load_task_data, select_device
from harness.registry import METHODS, TASKS

N_TRAIN, N_TEST = 600, 64  # TRAK's quick proj_dim 512 needs more than 512 training points


@pytest.fixture(scope="module")
def mnist_tiny(tmp_path_factory: pytest.TempPathFactory):
    cls = TASKS.get("mnist")
    task = cls(cls.Config.from_dict({"n_train": N_TRAIN, "n_test": N_TEST}, base=cls.Config.quick()))
    data = load_task_data(task)
    cache = Cache(tmp_path_factory.mktemp("bench-cache"))
    model, _ = get_or_train_model(task, data, seed=0, cache=cache, device=select_device())
    import torch

    with torch.no_grad():
        targets = model(data.test.materialise()).argmax(dim=1)
    return data, model, targets, cache


@pytest.mark.parametrize("name", METHODS.names())
def test_explain(benchmark, name: str, mnist_tiny) -> None:
    data, model, targets, cache = mnist_tiny
    cls = METHODS.get(name)
    method = cls(cls.Config.quick())
    method.fit(model, data.train, cache=cache.scope("methods", name))
    benchmark.group = "explain"
    benchmark.extra_info.update(n_train=N_TRAIN, n_test=N_TEST, preset="quick")
    out = benchmark.pedantic(
        method.explain, args=(data.test.materialise(), targets), rounds=3, warmup_rounds=1
    )
    assert out.shape == (N_TEST, N_TRAIN)


@pytest.fixture(scope="module")
def mnist_features(tmp_path_factory: pytest.TempPathFactory):
    cls = TASKS.get("mnist")
    task = cls(cls.Config.from_dict({"n_train": 2000, "n_test": 500}, base=cls.Config.quick()))
    data = load_task_data(task)
    cache = Cache(tmp_path_factory.mktemp("bench-dualda"))
    model, _ = get_or_train_model(task, data, seed=0, cache=cache, device=select_device())
    return data, model


@pytest.mark.parametrize("C", [1e-5, 1e-3, 1e-1], ids=lambda c: f"C={c:g}")
def test_dualda_fit_and_explain(benchmark, C: float, mnist_features, tmp_path: Path) -> None:
    import torch

    from methods.cs_dual import solve_cs_dual
    from methods.dualda import DualDA, DualDAConfig

    data, model = mnist_features
    method = DualDA(DualDAConfig(C=C))
    method.fit(model, data.train, cache=Cache(tmp_path))
    features = model.features(data.train.materialise()).detach().double().numpy()
    labels = data.train.y.numpy()
    benchmark.group = "dualda"
    benchmark.extra_info.update(n_train=len(labels), C=C)
    benchmark.pedantic(solve_cs_dual, args=(features, labels), kwargs={"C": C}, rounds=3, warmup_rounds=1)
    with torch.no_grad():
        targets = model(data.test.materialise()).argmax(dim=1)
    import time

    start = time.perf_counter()
    method.explain(data.test.materialise(), targets)
    benchmark.extra_info["explain_s"] = time.perf_counter() - start


def test_report_generation(benchmark, tmp_path: Path) -> None:
    from harness.grid import run_grid
    from harness.report import write_report
    from harness.runner import ComponentSpec, RunSpec, TimingConfig

    specs = [
        RunSpec(
            task=ComponentSpec("toy"),
            method=ComponentSpec(name),
            metrics=(ComponentSpec("class_detection"), ComponentSpec("sparsity")),
            results_dir=str(tmp_path / "results"),
            cache_dir=str(tmp_path / "cache"),
            timing=TimingConfig(repeats=1, batch_size=8),
            seed=seed,
        )
        for name in ("random", "feature_similarity", "dualda")
        for seed in (0, 1)
    ]
    run_grid(specs, progress=False)
    benchmark.group = "report"
    benchmark.pedantic(write_report, args=(str(tmp_path / "results"), str(tmp_path / "tables")), rounds=5)
