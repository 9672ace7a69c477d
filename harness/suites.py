"""Named suites: the whole benchmark grid is Python here, not a folder of YAML files.

``default`` is the embedded suite that ``./run_all.sh`` runs offline on a 2-core CPU (full MNIST,
2,000 explained test points as in the paper); ``quick`` is the same grid on a subset that finishes
in a few minutes. Methods, metrics and variants are added here as they land.
"""

from __future__ import annotations

from collections.abc import Callable

from harness.config import ConfigError
from harness.runner import ComponentSpec, RunSpec, TimingConfig, expand

SIMILARITIES = ("dot", "cos", "l2")
DUALDA_C_GRID = (1e-5, 1e-3, 1e-1)  # the paper's grid (methods.dualda.C_GRID; not imported: no torch here)


#: The paper's other methods that fit the suites' CPU budget at their quick() preset (each method
#: module documents what its quick() changes and why). arnoldi, ekfac, tracin, graddot, gradcos and
#: trak take minutes to hours per run on 2 CPU cores at these sizes (README, "The methods"): they
#: join when the default suite's size is set for the full grid of variants and metrics.
SUITE_METHODS = ("representer", "lissa")


#: Every other registered method: in the ``methods`` suite, on a training set small enough for them.
GRADIENT_METHODS = ("arnoldi", "ekfac", "tracin", "graddot", "gradcos", "trak")


def _mnist_std(
    n_train: int | None,
    n_test: int,
    task_preset: str,
    timing: TimingConfig,
    extra_methods: tuple[str, ...] = (),
    **paths: str,
) -> list[RunSpec]:
    overrides = (("variant", "std"), ("n_test", n_test)) + (
        (("n_train", n_train),) if n_train is not None else ()
    )
    task = ComponentSpec("mnist", overrides, task_preset)
    methods = [ComponentSpec("random", preset="quick")]
    methods += [ComponentSpec("dualda", (("C", c),), "quick") for c in DUALDA_C_GRID]
    for name in ("feature_similarity", "input_similarity"):
        methods += [ComponentSpec(name, (("metric", m),), "quick") for m in SIMILARITIES]
    methods += [ComponentSpec(name, preset="quick") for name in SUITE_METHODS + extra_methods]
    metrics = [ComponentSpec("class_detection"), ComponentSpec("sparsity")]
    return expand(task, methods, metrics, seeds=[0], timing=timing, **paths)


def default(**paths: str) -> list[RunSpec]:
    """The paper's MNIST setting (60,000 training points, 2,000 explained test points), CPU presets."""
    return _mnist_std(None, 2000, "default", TimingConfig(), **paths)


def quick(**paths: str) -> list[RunSpec]:
    """A few minutes on 2 cores: 6,000 training points, 200 test points, shorter training."""
    return _mnist_std(6000, 200, "quick", TimingConfig(repeats=3), **paths)


def methods(**paths: str) -> list[RunSpec]:
    """Every registered method on 2,000 training and 100 test points (quick presets).

    The one grid that runs the gradient-based methods (GRADIENT_METHODS) on a CPU today; its task is
    smaller than ``quick``'s, so its rows are not comparable with the other suites'.
    """
    return _mnist_std(2000, 100, "quick", TimingConfig(repeats=3), GRADIENT_METHODS, **paths)


SUITES: dict[str, Callable[..., list[RunSpec]]] = {"default": default, "quick": quick, "methods": methods}


def get_suite(name: str, **paths: str) -> list[RunSpec]:
    if name not in SUITES:
        raise ConfigError(f"unknown suite {name!r}; choose one of {sorted(SUITES)}")
    return SUITES[name](**paths)
