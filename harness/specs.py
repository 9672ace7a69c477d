"""Run specs: what one run computes (task, method, metrics, seed) and how it is timed.

A leaf of the engine: the runner, the grid, dispatch and the suites all read these; it imports
only the protocols, the config and the registries.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config import Config, ConfigError, option, parse_key_values, stable_hash
from harness.protocols import Method, Metric, Task
from harness.registry import METHODS, METRICS, TASKS

#: The folder of a results directory that holds the run records.
RECORDS_FOLDER = "records"


# =============================================================================================
# Specs
# =============================================================================================
@dataclass(frozen=True, kw_only=True)
class TimingConfig(Config):
    """How explanation time is measured (changes timings only, never outputs)."""

    warmup: int = option(1, "explain calls on one batch before timing starts")
    repeats: int = option(3, "timed passes over the test points; the record keeps median and spread")
    batch_size: int = option(
        256, "test points per explain() call, for methods whose settings prescribe no explain batch"
    )
    timed_points: int | None = option(
        None,
        "the repeats after the first pass time only the first N test points, rounded up to whole explain "
        "batches (None: all); the first pass over all points gives the explanations and is the first "
        "timed sample",
    )
    explain_limit: int | None = option(
        None,
        "explain only the first N test points (for methods too slow to explain all on this machine); "
        "the record says so, metrics use those N, and the total for all test points is extrapolated",
    )

    def __post_init__(self) -> None:
        if self.repeats < 1 or self.warmup < 0 or self.batch_size < 1:
            raise ConfigError("timing needs repeats >= 1, warmup >= 0 and batch_size >= 1")
        if self.timed_points is not None and self.timed_points < 1:
            raise ConfigError(
                f"timed_points must be a positive number of test points, got {self.timed_points}"
            )
        if self.explain_limit is not None and self.explain_limit < 1:
            raise ConfigError(
                f"explain_limit must be a positive number of test points, got {self.explain_limit}"
            )


@dataclass(frozen=True)
class ComponentSpec:
    """A registered name plus config overrides (values as given: strings from the CLI are fine)."""

    name: str
    overrides: tuple[tuple[str, Any], ...] = ()
    preset: str = "default"

    @classmethod
    def parse(cls, text: str, preset: str = "default") -> ComponentSpec:
        """``"name"`` or ``"name:key=value,key=value"`` (the CLI form)."""
        name, _, rest = text.partition(":")
        parts = [part.strip() for part in rest.split(",") if part.strip()]
        overrides = parse_key_values(parts, repr(text))
        return cls(name.strip(), overrides, preset)

    def build_config(self, config_cls: type[Config], kind: str) -> Config:
        """The preset with the overrides applied; errors name the component ("method 'x': ...")."""
        try:
            return config_cls.from_dict(dict(self.overrides), base=config_cls.preset(self.preset))
        except ConfigError as err:
            raise ConfigError(f"{kind} {self.name!r}: {err}") from err


@dataclass(frozen=True)
class RunSpec:
    """Everything one run needs; picklable, so any executor can ship it to a worker."""

    task: ComponentSpec
    method: ComponentSpec
    metrics: tuple[ComponentSpec, ...]
    seed: int = 0
    results_dir: str = "results"
    cache_dir: str = "cache"
    timing: TimingConfig = field(default_factory=TimingConfig)
    #: processes that train counterfactual models for retraining metrics (changes no output)
    retrain_workers: int = 1

    def resolve(self) -> ResolvedSpec:
        """Check names and configs (no data is loaded); raises a one-line error on bad input."""
        task_cls = TASKS.get(self.task.name)
        method_cls = METHODS.get(self.method.name)
        metric_classes = [METRICS.get(m.name) for m in self.metrics]
        task_config = self.task.build_config(task_cls.Config, "task")
        method_config = self.method.build_config(method_cls.Config, "method")
        metric_configs = [
            m.build_config(cls.Config, "metric") for m, cls in zip(self.metrics, metric_classes, strict=True)
        ]
        task = task_cls(task_config)
        method = method_cls(method_config)
        metrics = [cls(cfg) for cls, cfg in zip(metric_classes, metric_configs, strict=True)]
        names = [m.name for m in metrics]
        if len(set(names)) != len(names):
            raise ConfigError(f"metric listed twice in {names}")
        return ResolvedSpec(self, task, method, metrics)


@dataclass
class ResolvedSpec:
    spec: RunSpec
    task: Task
    method: Method
    metrics: list[Metric]

    @property
    def run_id(self) -> str:
        """Stable id of what is computed (not of where it is written or how it is timed)."""
        return stable_hash(
            {
                "task": [self.task.name, self.task.version, self.task.config.to_dict()],
                "method": [self.method.name, self.method.version, self.method.config.to_dict()],
                "metrics": sorted([m.name, m.version, m.config.to_dict()] for m in self.metrics),
                "seed": self.spec.seed,
                # a subset changes what the metrics see; absent when unset so earlier ids stay valid
                **(
                    {"explain_limit": self.spec.timing.explain_limit}
                    if self.spec.timing.explain_limit
                    else {}
                ),
            },
            length=20,
        )

    def records_dir(self) -> Path:
        """The folder of this run's records (each computation of it adds one: :mod:`harness.records`)."""
        return Path(self.spec.results_dir) / RECORDS_FOLDER


# =============================================================================================
# One run
# =============================================================================================
def expand(
    task: ComponentSpec,
    methods: Sequence[ComponentSpec],
    metrics: Sequence[ComponentSpec],
    seeds: Sequence[int],
    **common: Any,
) -> list[RunSpec]:
    """The cross product methods x seeds for one task."""
    return [
        RunSpec(task=task, method=method, metrics=tuple(metrics), seed=seed, **common)
        for method in methods
        for seed in seeds
    ]


def with_paths(spec: RunSpec, results_dir: str, cache_dir: str) -> RunSpec:
    return dataclasses.replace(spec, results_dir=results_dir, cache_dir=cache_dir)
