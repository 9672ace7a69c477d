"""The named suites: every spec resolves (names, presets, overrides) without loading data."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.config import ConfigError
from harness.registry import METHODS, METRICS
from harness.suites import SUITES, VARIANT_METRICS, SuiteOptions, all_methods, get_suite


@pytest.mark.parametrize("name", sorted(SUITES))
def test_every_spec_resolves(name: str) -> None:
    # the paper's AwA2 model starts from ImageNet weights, which must be given or declined explicitly
    options = (
        SuiteOptions(data_root="/tmp", task_options=(("pretrained", "false"),)) if name == "paper" else None
    )
    specs = get_suite(name, options)
    resolved = [spec.resolve() for spec in specs]
    assert len({r.run_id for r in resolved}) == len(specs), "two specs of one suite compute the same run"
    preset = "paper" if name in ("paper", "gpu") else "quick"
    for r in resolved:
        config_cls = type(r.method.config)
        expected = config_cls.from_dict(dict(r.spec.method.overrides), base=config_cls.preset(preset))
        assert r.method.config == expected


def test_default_suite_is_the_papers_grid() -> None:
    resolved = [s.resolve() for s in get_suite("default")]
    assert all_methods() == tuple(METHODS.in_order())  # every registered method is in the suite
    by_variant: dict[str, set[str]] = {}
    for r in resolved:
        by_variant.setdefault(r.task.config.variant, set()).add(r.method.name)
        # each run computes the variant's metrics that its method serves (mislabel detection: self-influence)
        served = {m for m in VARIANT_METRICS[r.task.config.variant] if type(r.method).serves(METRICS.get(m))}
        assert {m.name for m in r.metrics} == served and served
        assert (r.task.config.n_train, r.task.config.n_test) == (1000, 500)
    assert set(by_variant) == {"std", "group", "corrupt", "mark"}
    seeds: dict[tuple[str, str], set[int]] = {}
    for spec in get_suite("default"):
        seeds.setdefault((dict(spec.task.overrides)["variant"], repr(spec.method)), set()).add(spec.seed)
    assert all(s == {0, 1, 2} for s in seeds.values())  # three model seeds for every run
    assert all(names == set(all_methods()) for names in by_variant.values())
    no_self_influence = {n for n in all_methods() if "self_influence" not in METHODS.get(n).supports}
    assert no_self_influence, "the grid has methods without self-influence (e.g. gradcos)"
    for r in resolved:
        if r.method.name in no_self_influence:
            assert "mislabel_detection" not in {m.name for m in r.metrics}
    dualda_cs = sorted(
        {r.method.config.C for r in resolved if r.method.name == "dualda" and r.task.config.variant == "std"}
    )
    assert dualda_cs == [1e-5, 1e-3, 1e-1]
    seven = {"class_detection", "subclass_detection", "shortcut_detection", "mislabel_detection", "lds",
             "coreset_selection", "data_pruning"}  # fmt: skip
    assert seven <= {m for metrics in VARIANT_METRICS.values() for m in metrics}


def test_paper_suite_settings_and_options() -> None:
    options = SuiteOptions(data_root="/tmp", task_options=(("pretrained", "false"),))
    resolved = [s.resolve() for s in get_suite("paper", options)]
    assert {r.task.name for r in resolved} == {"mnist", "cifar10", "awa2"}
    depth = {r.task.name: r.method.config.depth for r in resolved if r.method.name == "lissa"}
    assert depth == {"mnist": 6000, "cifar10": 5000, "awa2": 3700}
    layers = {(r.task.name, r.method.config.layers) for r in resolved if r.method.name == "arnoldi"}
    assert layers == {("mnist", None), ("cifar10", None), ("awa2", ("classifier", "features.layer4.2.conv2"))}
    assert all(r.task.config.n_test == 2000 and r.task.config.n_train is None for r in resolved)
    assert {r.task.config.data_root for r in resolved if r.task.name != "mnist"} == {"/tmp"}
    small = get_suite(
        "paper",
        SuiteOptions(data_root="/tmp", n_train=20, n_test=4, methods=("random",), datasets=("cifar10",),
                     task_options=(("n_val", "4"),)),
    )  # fmt: skip
    assert len(small) == 4  # one method, one dataset, four variants
    assert all(s.resolve().task.config.n_train == 20 and s.resolve().task.config.n_val == 4 for s in small)
    with pytest.raises(ConfigError, match="--data-root"):
        get_suite("paper")
    with pytest.raises(ConfigError, match="no task of this suite"):
        get_suite("default", SuiteOptions(task_options=(("pretrained", "false"),)))
    with pytest.raises(ConfigError, match="no method"):
        get_suite("default", SuiteOptions(methods=("nope",)))


def test_unknown_suite_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="choose one of"):
        get_suite("defualt")


def test_arnoldi_awa2_layers_are_modules_of_the_awa2_resnet50(tmp_path) -> None:
    """The paper's ``classifier`` + ``features.7.2.conv2`` exist, under our names, in the model the awa2
    task builds (ResNet-50, from scratch; only classes.txt is read, no image)."""
    from torch import nn

    from harness.registry import TASKS
    from methods.arnoldi import _check_layers
    from tasks.awa2 import CLASSES_FILE, FOLDER, IMAGES

    folder = tmp_path / FOLDER
    (folder / IMAGES).mkdir(parents=True)
    (folder / CLASSES_FILE).write_text("".join(f"{i + 1}\tclass{i}\n" for i in range(50)))
    task_cls = TASKS.get("awa2")
    task = task_cls(task_cls.Config.from_dict({"data_root": str(tmp_path), "pretrained": False}))
    model = task.build_model()
    modules = dict(model.named_modules())
    assert isinstance(modules["classifier"], nn.Linear) and modules["classifier"].weight.shape == (50, 2048)
    conv = modules["features.layer4.2.conv2"]  # the last bottleneck's 3x3 convolution
    assert isinstance(conv, nn.Conv2d) and conv.weight.shape == (512, 512, 3, 3)
    assert [n for n in modules if n.startswith("features.") and n.count(".") == 1][7] == "features.layer4"
    layers = METHODS.get("arnoldi").Config.for_dataset("awa2")["layers"]  # the paper suite's
    assert _check_layers(model, layers) == list(layers)  # Arnoldi accepts them


def test_seeds_option_overrides_the_suites_seeds() -> None:
    specs = get_suite("default", SuiteOptions(seeds=(7, 8), methods=("random",)))
    assert {s.seed for s in specs} == {7, 8} and len(specs) == 4 * 2  # four variants, two seeds
    assert {s.seed for s in get_suite("quick", SuiteOptions(methods=("random",)))} == {0}


def test_suites_derive_methods_and_sweeps_from_the_registry(monkeypatch) -> None:
    """A method registered from outside joins every suite; its declared sweep expands, and a metric it
    cannot serve is not planned for it (no method name appears in harness/suites.py)."""
    from dataclasses import dataclass

    from harness.config import option
    from harness.protocols import Method
    from methods.random_baseline import RandomAttribution, RandomConfig

    @dataclass(frozen=True, kw_only=True)
    class SweptConfig(RandomConfig):
        scale: float = option(1.0, "a swept option, for the test")

        @classmethod
        def sweep(cls) -> tuple[dict[str, object], ...]:
            return ({"scale": 1.0}, {"scale": 2.0})

    class Swept(RandomAttribution):
        Config = SweptConfig
        supports = frozenset()  # no self-influence: no mislabel detection

    assert issubclass(Swept, Method)
    METHODS.names()
    monkeypatch.setattr(METHODS, "_entries", dict(METHODS._entries))
    METHODS.add("swept_test_method", Swept, "for a test")
    specs = [s for s in get_suite("default") if s.method.name == "swept_test_method"]
    assert len(specs) == 4 * 2 * 3  # four variants, two sweep points, three seeds
    assert {dict(s.method.overrides)["scale"] for s in specs} == {1.0, 2.0}
    corrupt = [s for s in specs if dict(s.task.overrides)["variant"] == "corrupt"]
    assert {m.name for s in corrupt for m in s.metrics} == {"class_detection"}
    assert all_methods()[-1] == "swept_test_method"  # plug-ins come after the catalogue
    source = (Path(__file__).resolve().parent.parent / "harness" / "suites.py").read_text()
    for name in METHODS.names():
        assert f'"{name}"' not in source, f"harness/suites.py names the method {name!r}"


def test_gpu_suite_is_the_papers_mnist_speedup_grid_on_a_few_test_points() -> None:
    from harness.suites import GPU_EXPLAIN_LIMIT

    specs = get_suite("gpu")
    resolved = [s.resolve() for s in specs]
    assert {r.method.name for r in resolved} == set(all_methods())
    assert len(specs) == len(all_methods()) + 2  # DualDA at the paper's three C
    for spec, item in zip(specs, resolved, strict=True):
        assert (spec.task.name, spec.task.preset, spec.method.preset) == ("mnist", "paper", "paper")
        assert item.task.config.n_train is None and item.task.config.n_test == 2000
        assert item.task.config.variant == "std" and [m.name for m in item.metrics] == ["sparsity"]
        assert spec.timing.explain_limit == GPU_EXPLAIN_LIMIT == 20


def test_doctor_without_a_gpu_says_so_in_one_line() -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    plain = subprocess.run(
        [sys.executable, "-m", "harness", "doctor"], capture_output=True, text=True, cwd=root, timeout=300
    )
    assert plain.returncode == 0 and "methods: " in plain.stdout
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: `dabench doctor --gpu` would run the whole check")
    gpu = subprocess.run(
        [sys.executable, "-m", "harness", "doctor", "--gpu"],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=300,
    )
    assert gpu.returncode == 2 and gpu.stderr.strip().count("\n") == 0
    assert "--gpu needs a CUDA device" in gpu.stderr
