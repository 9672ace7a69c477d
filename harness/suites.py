"""Named suites: the whole benchmark grid is Python here, not a folder of YAML files.

- ``default`` (``./run_all.sh``): the paper's grid scaled to a 2-core CPU, offline on the embedded
  MNIST: the four variants std/group/corrupt/mark, every registered method at its ``quick()`` preset
  (DualDA at the paper's three C), the seven paper metrics plus sparsity and top-k cardinality, each
  variant with the metrics it serves; 1,000 training and 500 explained test points, three model
  seeds (every value gets a bootstrap and an across-seed interval; the totals for 2,000 test points
  are extrapolated from the per-point time and marked so).
- ``quick``: the same grid on 600 training and 50 test points (a smoke run of the whole pipeline).
- ``full``: the cheap methods (DualDA, Representer Points, the baselines) on all 60,000 MNIST
  training points and 2,000 test points: the paper's size, for the speedup table at full scale.
- ``scaling``: every method on MNIST std at four training-set sizes, 600 to 2,000 (cost vs N).
- ``methods``: every method on 2,000 training and 100 test points, class detection only.
- ``gpu``: the paper's MNIST speed-up grid (every method at its ``paper()`` preset on all 60,000
  training points) with each method explaining the first 20 of 2,000 test points: the first
  measurement on a GPU, meant to finish in minutes (``dabench doctor --gpu`` runs it).
- ``paper``: the paper's exact settings (``paper()`` presets of tasks, methods and metrics) on MNIST,
  CIFAR-10 and AwA2 (the latter two from ``--data-root``), all variants and metrics; meant for GPUs and
  ``--executor slurm``.

Every suite takes :class:`SuiteOptions` (the command line's ``--data-root``, ``--n-train``,
``--n-test``, ``--methods``, ``--datasets``, ``--metrics``, ``--task-option``, ``--seeds``) so that
the same grid can be run smaller, e.g. the paper suite end to end on tiny fake data in the tests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from harness.config import ConfigError
from harness.specs import ComponentSpec, RunSpec, TimingConfig

#: Which metrics each variant's model serves (the paper's seven, plus sparsity and top-k cardinality).
VARIANT_METRICS: dict[str, tuple[str, ...]] = {
    "std": ("class_detection", "lds", "coreset_selection", "data_pruning", "sparsity", "topk_cardinality"),
    "group": ("subclass_detection", "class_detection"),
    "corrupt": ("mislabel_detection", "class_detection"),
    "mark": ("shortcut_detection", "class_detection"),
}
VARIANTS = tuple(VARIANT_METRICS)

DATASETS = ("mnist", "cifar10", "awa2")
SCALING_SIZES = (600, 1000, 1500, 2000)  # from 600: TRAK's quick proj_dim 512 needs more points


@dataclass(frozen=True)
class SuiteOptions:
    """Command-line overrides applied to every spec of a suite (None / empty: the suite's own)."""

    data_root: str | None = None
    n_train: int | None = None
    n_test: int | None = None
    methods: tuple[str, ...] = ()
    datasets: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    task_options: tuple[tuple[str, str], ...] = ()
    seeds: tuple[int, ...] = ()
    paths: dict[str, str] = field(default_factory=dict)

    def pick(self, names: Sequence[str], chosen: Sequence[str], what: str) -> tuple[str, ...]:
        if not chosen:
            return tuple(names)
        unknown = [c for c in chosen if c not in names]
        if unknown:
            raise ConfigError(f"this suite has no {what} {unknown}; choose from {list(names)}")
        return tuple(c for c in names if c in chosen)


def all_methods() -> tuple[str, ...]:
    """Every registered method (plug-ins included), in registration order: the order of the tables."""
    from harness.registry import METHODS

    return tuple(METHODS.in_order())


def cheap_methods() -> tuple[str, ...]:
    """The registered methods that declare ``cheap``: they fit all 60,000 MNIST points on a CPU."""
    from harness.registry import METHODS

    return tuple(name for name in METHODS.in_order() if METHODS.get(name).cheap)


def _methods(names: Sequence[str], preset: str, dataset: str) -> list[ComponentSpec]:
    """One spec per method and point of its declared sweep; the paper preset adds the dataset's settings."""
    from harness.registry import METHODS

    specs = []
    for name in names:
        config = METHODS.get(name).Config
        base = tuple(config.for_dataset(dataset).items()) if preset == "paper" else ()
        specs += [ComponentSpec(name, base + tuple(point.items()), preset) for point in config.sweep()]
    return specs


def _served(method: str, metrics: Sequence[str]) -> tuple[str, ...]:
    """The metrics of ``metrics`` that ``method`` serves (none that read self-influence without it)."""
    from harness.registry import METHODS, METRICS

    method_cls = METHODS.get(method)
    return tuple(m for m in metrics if method_cls.serves(METRICS.get(m)))


def _task_options_for(dataset: str, task_options: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The ``--task-option`` items that ``dataset``'s config has (a suite may span several tasks)."""
    from harness.registry import TASKS

    fields = set(TASKS.get(dataset).Config.field_names())
    return [(k, v) for k, v in task_options if k in fields]


def _check_task_options(datasets: Sequence[str], task_options: Sequence[tuple[str, str]]) -> None:
    from harness.registry import TASKS

    known = set().union(*(TASKS.get(d).Config.field_names() for d in datasets)) if datasets else set()
    unknown = [k for k, _ in task_options if k not in known]
    if unknown:
        raise ConfigError(
            f"--task-option {unknown}: no task of this suite ({', '.join(datasets)}) has that option"
        )


def _grid(
    options: SuiteOptions,
    *,
    datasets: Sequence[str],
    variants: Sequence[str],
    methods: Sequence[str],
    n_train: int | None,
    n_test: int | None,
    preset: str,
    timing: TimingConfig,
    metrics: dict[str, tuple[str, ...]] | None = None,
    seeds: Sequence[int] = (0,),
) -> list[RunSpec]:
    metrics = metrics if metrics is not None else VARIANT_METRICS
    seeds = options.seeds or seeds
    n_train = options.n_train if options.n_train is not None else n_train
    n_test = options.n_test if options.n_test is not None else n_test
    from harness.registry import TASKS

    every_metric = {m for ms in metrics.values() for m in ms}
    unknown = [m for m in options.metrics if m not in every_metric]
    if unknown:
        raise ConfigError(f"this suite has no metric {unknown}; choose from {sorted(every_metric)}")
    specs = []
    _check_task_options(options.pick(datasets, options.datasets, "dataset"), options.task_options)
    for dataset in options.pick(datasets, options.datasets, "dataset"):
        for variant in variants:
            overrides: list[tuple[str, object]] = [("variant", variant)]
            overrides += [(k, v) for k, v in (("n_train", n_train), ("n_test", n_test)) if v is not None]
            if options.data_root is not None and TASKS.get(dataset).needs_data_root:
                overrides.append(("data_root", options.data_root))
            overrides += _task_options_for(dataset, options.task_options)
            task = ComponentSpec(dataset, tuple(overrides), preset)
            chosen = options.pick(methods, options.methods, "method")
            kept = [m for m in metrics[variant] if not options.metrics or m in options.metrics]
            for method in _methods(chosen, preset, dataset):
                served = _served(method.name, kept)
                if not served:
                    continue  # this variant's metrics all need what the method does not have
                metric_specs = tuple(ComponentSpec(m, preset=preset) for m in served)
                for seed in seeds:
                    specs.append(
                        RunSpec(
                            task=task,
                            method=method,
                            metrics=metric_specs,
                            seed=seed,
                            timing=timing,
                            results_dir=options.paths.get("results_dir", "results"),
                            cache_dir=options.paths.get("cache_dir", "cache"),
                        )
                    )
    return specs


#: Model seeds of the default suite: three, so that every value has an across-seed interval too.
DEFAULT_SEEDS = (0, 1, 2)


def default(options: SuiteOptions) -> list[RunSpec]:
    """The paper's grid on MNIST at 1,000 training / 500 test points, 3 model seeds, quick presets."""
    return _grid(
        options,
        datasets=("mnist",),
        variants=VARIANTS,
        methods=all_methods(),
        n_train=1000,
        n_test=500,
        preset="quick",
        # The first pass explains all 500 test points (the metrics read it); two more time the first
        # 20, rounded up to whole explain batches (LiSSA explains in the paper's batches of 5; methods
        # explaining in batches of 256 time the first 256 points each pass).
        timing=TimingConfig(repeats=3, timed_points=20),
        seeds=DEFAULT_SEEDS,
    )


def quick(options: SuiteOptions) -> list[RunSpec]:
    """The default grid on 600 training and 50 test points: the whole pipeline in minutes.

    600, not fewer: TRAK's quick() projects to 512 dimensions and needs more training points than that
    to invert Phi^T Phi at the paper's lambda_reg 0.
    """
    return _grid(
        options,
        datasets=("mnist",),
        variants=VARIANTS,
        methods=all_methods(),
        n_train=600,
        n_test=50,
        preset="quick",
        timing=TimingConfig(repeats=1),
    )


def full(options: SuiteOptions) -> list[RunSpec]:
    """The cheap methods on all 60,000 MNIST training points, 2,000 test points (the paper's size)."""
    return _grid(
        options,
        datasets=("mnist",),
        variants=("std",),
        methods=cheap_methods(),
        n_train=None,
        n_test=2000,
        preset="quick",
        timing=TimingConfig(),
        metrics={"std": ("class_detection", "sparsity")},
    )


def scaling(options: SuiteOptions) -> list[RunSpec]:
    """Every method on MNIST std at 600, 1,000, 1,500 and 2,000 training points (50 test points)."""
    specs = []
    for size in SCALING_SIZES:
        sized = SuiteOptions(**{**options.__dict__, "n_train": options.n_train or size})
        specs += _grid(
            sized,
            datasets=("mnist",),
            variants=("std",),
            methods=all_methods(),
            n_train=size,
            n_test=50,
            preset="quick",
            timing=TimingConfig(repeats=1),
            metrics={"std": ("class_detection",)},
        )
        if options.n_train:
            break  # one size given on the command line
    return specs


def methods(options: SuiteOptions) -> list[RunSpec]:
    """Every method on 2,000 training and 100 test points (quick presets), class detection only."""
    return _grid(
        options,
        datasets=("mnist",),
        variants=("std",),
        methods=all_methods(),
        n_train=2000,
        n_test=100,
        preset="quick",
        timing=TimingConfig(repeats=3),
        metrics={"std": ("class_detection", "sparsity")},
    )


def paper(options: SuiteOptions) -> list[RunSpec]:
    """The paper's settings: MNIST, CIFAR-10, AwA2; all variants, methods, metrics; paper presets.

    2,000 explained test points per dataset as in the paper; CIFAR-10 and AwA2 need ``--data-root``.
    """
    from harness.registry import TASKS

    chosen = options.pick(DATASETS, options.datasets, "dataset")
    if options.data_root is None and any(TASKS.get(d).needs_data_root for d in chosen):
        raise ConfigError(
            "the paper suite reads CIFAR-10 and AwA2 from --data-root DIR (see README, 'Tasks and "
            "variants'); give it, or run only MNIST with --datasets mnist"
        )
    return _grid(
        options,
        datasets=DATASETS,
        variants=VARIANTS,
        methods=all_methods(),
        n_train=None,
        n_test=2000,
        preset="paper",
        timing=TimingConfig(),
    )


#: Test points each method explains in the ``gpu`` suite (the totals for 2,000 are extrapolated).
GPU_EXPLAIN_LIMIT = 20


def gpu(options: SuiteOptions) -> list[RunSpec]:
    """The paper's MNIST speed-up grid for one GPU: paper presets, 60,000 training points, sparsity.

    Every method explains the first :data:`GPU_EXPLAIN_LIMIT` of the paper's 2,000 test points (one
    EK-FAC query batch, four LiSSA batches); a second pass times the first 5, rounded up to whole
    explain batches. The speed-up table extrapolates the totals to 2,000 points and marks them.
    """
    return _grid(
        options,
        datasets=("mnist",),
        variants=("std",),
        methods=all_methods(),
        n_train=None,
        n_test=2000,
        preset="paper",
        timing=TimingConfig(repeats=2, timed_points=5, explain_limit=GPU_EXPLAIN_LIMIT),
        metrics={"std": ("sparsity",)},
    )


SUITES: dict[str, Callable[[SuiteOptions], list[RunSpec]]] = {
    "default": default,
    "quick": quick,
    "full": full,
    "scaling": scaling,
    "methods": methods,
    "paper": paper,
    "gpu": gpu,
}


def get_suite(name: str, options: SuiteOptions | None = None, **paths: str) -> list[RunSpec]:
    """The specs of suite ``name``; ``paths`` (results_dir, cache_dir) go into every spec."""
    if name not in SUITES:
        raise ConfigError(f"unknown suite {name!r}; choose one of {sorted(SUITES)}")
    options = options if options is not None else SuiteOptions()
    if paths:
        options = SuiteOptions(**{**options.__dict__, "paths": {**options.paths, **paths}})
    return SUITES[name](options)
