"""The runner: one (task, variant, method, config, seed) spec in, one record out.

For each spec: get or train the model (content-addressed), fit the method (cold and warm fit
timed separately), explain the test points against the model's PREDICTED class (per-point time
after a warm-up, over repeats), self-influence where supported, the metrics, peak memory; then one
JSON record written atomically. :func:`run_grid` runs many specs, skipping finished records.

The runner knows plug-ins only through :mod:`harness.protocols` and the registries.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import tempfile
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import records
from harness.cache import Cache
from harness.config import Config, ConfigError, option, stable_hash
from harness.measures import sparsity_summary
from harness.model_store import (
    Retrainer,
    get_or_train_model,
    load_task_data,
    predict,
    seed_everything,
    select_device,
)
from harness.protocols import (
    CapabilityError,
    DataError,
    Method,
    Metric,
    MetricContext,
    MetricResult,
    Task,
)
from harness.registry import METHODS, METRICS, TASKS
from harness.timing import RepeatStats, now, peak_memory, timed

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    from harness.dispatch import DispatchConfig
    from harness.protocols import TaskData

log = logging.getLogger(__name__)


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
        overrides = []
        for item in filter(None, (part.strip() for part in rest.split(","))):
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ConfigError(f"cannot read {item!r} in {text!r}: write key=value")
            if key.strip() in {k for k, _ in overrides}:
                raise ConfigError(f"{key.strip()!r} is given twice in {text!r}; give each key once")
            overrides.append((key.strip(), value.strip()))
        return cls(name.strip(), tuple(overrides), preset)

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

    def record_path(self) -> Path:
        return Path(self.spec.results_dir) / "records" / f"{self.run_id}.json"


# =============================================================================================
# One run
# =============================================================================================
def method_label(method: Method) -> str:
    """``name`` plus the config values that differ from the defaults, e.g. ``similarity(metric=l2)``."""
    defaults = type(method.config)().to_dict()
    changed = {k: v for k, v in method.config.to_dict().items() if defaults.get(k) != v}
    if not changed:
        return method.name
    return f"{method.name}(" + ",".join(f"{k}={v}" for k, v in sorted(changed.items())) + ")"


def explain_all(method: Method, x: Tensor, targets: Tensor, batch_size: int, device: torch.device) -> Tensor:
    """``method.explain`` over ``x`` in batches, on the CPU: ``(n_test, n_train)``.

    Raises
    ------
    ExplanationError
        When a batch is not a floating-point tensor with one row per test point of the batch, or
        the rows of two batches differ in length (a method's output must not be taken for attributions).
    """
    import torch

    parts = []
    for i in range(0, len(x), batch_size):
        part = method.explain(x[i : i + batch_size].to(device), targets[i : i + batch_size].to(device))
        rows = len(x[i : i + batch_size])
        if not isinstance(part, torch.Tensor):
            raise ExplanationError(
                f"method {method.name!r}: explain returned a {type(part).__name__}, expected a torch.Tensor "
                "(n_test x n_train)"
            )
        if part.dim() != 2 or part.shape[0] != rows or (parts and part.shape[1] != parts[0].shape[1]):
            expected = f"{rows}x{parts[0].shape[1] if parts else 'n_train'}"
            shape = "x".join(map(str, part.shape)) or "a scalar"
            raise ExplanationError(
                f"method {method.name!r}: explain returned {shape} for {rows} test points, expected "
                f"{expected} (n_test x n_train)"
            )
        if not part.is_floating_point():
            raise ExplanationError(
                f"method {method.name!r}: explain returned {str(part.dtype).replace('torch.', '')} values; "
                "attributions are floating point (float32)"
            )
        parts.append(part.detach().cpu())
    return torch.cat(parts)


class ExplanationError(RuntimeError):
    """A method's explanations cannot be attributions (wrong type, shape, dtype, non-finite values)."""


def run_one(spec: RunSpec) -> dict[str, Any]:
    """Run one spec and return its record (status "failed" with the traceback on any error)."""
    resolved = spec.resolve()
    record = empty_record(resolved)
    try:
        _run(resolved, record)
        record["status"] = "ok"
    except Exception as err:  # the record carries the failure; the grid goes on
        log.exception("run %s failed", resolved.run_id)
        record["status"] = "failed"
        record["error"] = {
            "type": type(err).__name__,
            "message": str(err),
            "traceback": traceback.format_exc(),
        }
    return record


def empty_record(resolved: ResolvedSpec) -> dict[str, Any]:
    task, method = resolved.task, resolved.method
    return {
        "schema_version": records.SCHEMA_VERSION,
        "run_id": resolved.run_id,
        "created_utc": records.utc_now(),
        "status": "failed",
        "error": None,
        "method": {
            "name": method.name,
            "version": method.version,
            "config": method.config.to_dict(),
            "config_hash": method.config.config_hash(),
            "label": method_label(method),
            "supports": sorted(method.supports),
            "attributes_through": method.attributes_through,
            "self_influence_definition": method.self_influence_definition,
        },
        "task": {
            "name": task.name,
            "version": task.version,
            "variant": task.config.variant,
            "config": task.config.to_dict(),
            "config_hash": task.config.config_hash(),
            "seed": resolved.spec.seed,
            "n_train": None,
            "n_test": None,
            "num_classes": None,
            "model": None,
        },
        "metrics": {},
        "timings": {},
        "memory": {},
        "sparsity": None,
        "explanation_error": None,
        "diagnostics": {},
        "git": records.git_info(),
        "environment": records.environment(),
    }


def _run(resolved: ResolvedSpec, record: dict[str, Any]) -> None:
    import torch

    spec, task, method = resolved.spec, resolved.task, resolved.method
    cache = Cache(spec.cache_dir)
    device = select_device()

    data = load_task_data(task)
    model, model_info = get_or_train_model(task, data, spec.seed, cache, device)
    n_test_total = len(data.test)
    limit = spec.timing.explain_limit
    if limit is not None and limit < n_test_total:
        # Stated, never silent: the record carries n_explained and an extrapolated total.
        log.warning(
            "%s: explaining the first %d of %d test points (explain_limit); the total time is extrapolated",
            method.name,
            limit,
            n_test_total,
        )
        data = dataclasses.replace(data, test=data.test.subset(limit))
    test_x = data.test.x
    targets = predict(model, test_x, spec.timing.batch_size)
    test_accuracy = float((targets == data.test.y).to(torch.float64).mean())
    record["task"].update(
        n_train=len(data.train),
        n_test=n_test_total,
        n_explained=len(data.test),
        num_classes=data.num_classes,
        model={
            "key": model_info["key"],
            "cached": model_info["cached"],
            "test_accuracy": test_accuracy,
            "history": model_info["history"],
        },
    )
    timings: dict[str, Any] = {"model_s": model_info["seconds"]}
    record["timings"] = timings

    # --- warm-up: one-off process costs (kernel compilation, library imports), timed apart so
    # that they never count as the method's cache or explain time.
    _, warmup = timed(lambda: method.warm_up(device))
    timings["warmup_s"] = warmup.seconds

    # --- fit: the first fit may miss the cache (cold); a second, fresh instance hits it (warm).
    method_cache = cache.scope("methods", method.name)
    seed_everything(spec.seed)
    misses_before = method_cache.stats.misses
    _, fit_first = timed(lambda: method.fit(model, data.train, cache=method_cache))
    # Cold = the cost from scratch: a cache miss, or any fit of a method that keeps no cache.
    was_cold = method_cache.stats.misses > misses_before or "cache" not in method.supports
    warm_method = type(method)(method.config)
    seed_everything(spec.seed)
    _, fit_warm = timed(lambda: warm_method.fit(model, data.train, cache=method_cache))
    timings["fit"] = {
        "cold_s": fit_first.seconds if was_cold else None,
        "warm_s": fit_warm.seconds,
        "cache_used": "cache" in method.supports,
    }
    record["memory"]["fit"] = (fit_first if was_cold else fit_warm).memory.to_dict()
    method = warm_method  # explain with the instance that loaded from cache
    # Facts a method learns only while fitting (e.g. the modules EK-FAC tracked) replace what the
    # record copied from the class before the fit.
    record["method"].update(
        attributes_through=method.attributes_through,
        self_influence_definition=method.self_influence_definition,
    )

    # --- explain: warm-up, then timed passes over all test points, in the method's own batch
    # where its settings prescribe one (the paper's explain batch is part of the measured cost).
    batch = method.preferred_batch_size() or spec.timing.batch_size
    for _ in range(spec.timing.warmup):
        explain_all(method, test_x[:batch], targets[:batch], batch, device)
    stats = RepeatStats()
    # Whole explain batches only, so a timed pass amortises per-call costs as the full pass does.
    wanted = spec.timing.timed_points or len(test_x)
    timed_points = min(len(test_x), -(-wanted // batch) * batch)
    with peak_memory() as explain_memory:
        start = now()
        explanations = explain_all(method, test_x, targets, batch, device)
        stats.per_item_s.append((now() - start) / len(test_x))
        for _ in range(spec.timing.repeats - 1):
            start = now()
            explain_all(method, test_x[:timed_points], targets[:timed_points], batch, device)
            stats.per_item_s.append((now() - start) / timed_points)
    # A malformed matrix fails every metric that reads explanations (each with this message); the
    # timings and the metrics that read only self-influence are still recorded.
    problem = _explanation_problem(explanations, len(test_x), len(data.train), method.name)
    record["explanation_error"] = problem
    if problem:  # a run whose explanations are not attributions has no number worth recording
        raise ExplanationError(problem)
    timings["explain"] = {
        **{f"per_point_{k}": v for k, v in stats.to_dict().items() if k != "repeats"},
        "repeats": spec.timing.repeats,
        "n_points": len(test_x),
        "timed_points": timed_points,
        "batch_size": batch,
        "batch_source": "method" if method.preferred_batch_size() else "harness",
        "warmup": spec.timing.warmup,
        "total_s": stats.median * n_test_total,
        "n_test_total": n_test_total,
        "extrapolated": len(test_x) < n_test_total,
    }
    record["memory"]["explain"] = explain_memory.to_dict()
    record["sparsity"] = sparsity_summary(explanations, device=device)

    # --- self-influence where supported and a metric reads it (it can cost as much as explaining
    # the whole training set, e.g. EK-FAC or LiSSA).
    self_influence = None
    wanted = any("self_influence" in metric.needs for metric in resolved.metrics)
    if "self_influence" in method.supports and wanted:
        self_influence, si_timing = timed(lambda: method.self_influence().detach().cpu())
        timings["self_influence_s"] = si_timing.seconds
        record["memory"]["self_influence"] = si_timing.memory.to_dict()
    else:
        timings["self_influence_s"] = None

    record["diagnostics"] = method.diagnostics()

    # --- metrics: one failing metric is recorded as failed; the others still run.
    context = MetricContext(
        data=data,
        model=model,
        explanations=explanations,
        targets=targets,
        self_influence=self_influence,
        cache=cache.scope("metrics"),
        device=device,
        retrain=Retrainer(task, data, spec.seed, cache, device, workers=spec.retrain_workers),
        explain_with=lambda other: _explain_with(method, other, data, targets, method_cache, spec),
    )
    timings["metrics_s"] = {}
    for metric in resolved.metrics:
        record["metrics"][metric.name], timings["metrics_s"][metric.name] = _run_metric(
            metric, context, data.variant, method.supports
        )


def _explain_with(
    method: Method, model: nn.Module, data: TaskData, targets: Tensor, cache: Cache, spec: RunSpec
) -> Tensor:
    """Explanations of ``data.test`` by a fresh instance of ``method`` (same config) fitted on ``model``."""
    other = type(method)(method.config)
    seed_everything(spec.seed)
    other.fit(model, data.train, cache=cache)
    device = next(model.parameters()).device
    batch = other.preferred_batch_size() or spec.timing.batch_size
    return explain_all(other, data.test.x, targets, batch, device)


def _run_metric(
    metric: Metric,
    ctx: MetricContext,
    variant: str,
    supports: frozenset[str],
) -> tuple[dict[str, Any], float | None]:
    entry: dict[str, Any] = {
        "value": None,
        "direction": metric.direction,
        "version": metric.version,
        "config": metric.config.to_dict(),
        "details": {},
        "per_point": None,
        "status": "failed",
        "error": None,
    }
    try:
        metric.check_applicable(variant, supports)
        result, timing = timed(lambda: metric.compute(ctx))
        _check_metric_result(metric.name, result)
    except Exception as err:  # recorded; the other metrics go on
        level = logging.WARNING if isinstance(err, CapabilityError) else logging.ERROR
        log.log(level, "metric %s failed: %s", metric.name, err)
        entry["error"] = {
            "type": type(err).__name__,
            "message": str(err),
            "traceback": traceback.format_exc(),
        }
        return entry, None
    per_point = None if result.per_point is None else [float(v) for v in result.per_point]
    entry.update(value=float(result.value), details=result.details, per_point=per_point, status="ok")
    return entry, timing.seconds


#: How far a metric's value may lie from the mean of its per-point scores (float round-off).
PER_POINT_TOLERANCE = 1e-6


def _check_metric_result(name: str, result: MetricResult) -> None:
    """Raise :class:`DataError` when a metric's value is not finite or disagrees with its per-point scores."""
    value = float(result.value)
    if not math.isfinite(value):
        raise DataError(f"metric {name!r} computed a non-finite value ({value}); no number is recorded")
    if result.per_point is None:
        return
    scores = [float(v) for v in result.per_point]
    if not scores or not all(math.isfinite(v) for v in scores):
        raise DataError(f"metric {name!r} returned per-point scores that are empty or not finite")
    mean = math.fsum(scores) / len(scores)
    if abs(mean - value) > PER_POINT_TOLERANCE * max(1.0, abs(value)):
        raise DataError(
            f"metric {name!r}: value {value!r} is not the mean {mean!r} of its {len(scores)} per-point scores"
        )


def _explanation_problem(explanations: Tensor, n_test: int, n_train: int, name: str) -> str | None:
    """What is wrong with a method's explanation matrix, or None."""
    import torch

    if tuple(explanations.shape) != (n_test, n_train):
        shape = "x".join(map(str, explanations.shape))
        return (
            f"method {name!r}: explain returned {shape}, expected {n_test}x{n_train} (n_test x n_train): one "
            "row per test point, one column per training point"
        )
    finite = torch.isfinite(explanations)
    if not finite.all():
        bad = int((~finite).sum())
        return (
            f"method {name!r}: explain returned {bad} non-finite value(s) (NaN or inf) of "
            f"{explanations.numel()}, e.g. in row {int((~finite).any(dim=1).nonzero()[0])}"
        )
    return None


# =============================================================================================
# Grids
# =============================================================================================
@dataclass
class GridOutcome:
    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[Path] = field(default_factory=list)


def existing_status(path: Path) -> str | None:
    if not path.exists():
        return None
    try:
        return records.read_record(path)["status"]
    except records.RecordError:
        return None


def check_writable_folder(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` as a folder this process can write (created if missing); ConfigError (one line) if not.

    Called before any work, so that a results folder that is read-only or a cache "folder" that is
    a file stops a grid at once instead of failing it run by run after the first has been computed.
    """
    folder = Path(path)
    flag = {"results": "--results-dir", "cache": "--cache-dir", "report": "--out"}.get(what, what)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"the {what} folder {folder} is a file; give {flag} a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".dabench-write-check-"):
            pass
    except OSError as err:
        raise ConfigError(
            f"the {what} folder {folder} is not writable ({err.strerror or err}); give {flag} a folder "
            "you can write"
        ) from err
    return folder


def preflight(specs: Sequence[RunSpec]) -> list[ResolvedSpec]:
    """Resolve every spec and load every task's data once, before anything is written.

    Bad names, config keys, variants and sizes fail here with a one-line error, so a grid with
    bad input leaves no partial files behind.
    """
    resolved = [spec.resolve() for spec in specs]
    for item in resolved:
        load_task_data(item.task)
    ids = [r.run_id for r in resolved]
    if len(set(ids)) != len(ids):
        raise ConfigError("the grid lists the same run twice; remove the duplicate spec")
    return resolved


def run_grid(
    specs: Iterable[RunSpec],
    *,
    force: bool = False,
    retry_failed: bool = False,
    dispatch: DispatchConfig | None = None,
    progress: bool | None = None,
    on_record: Callable[[dict[str, Any], Path], None] | None = None,
    on_start: Callable[[int, int, str], None] | None = None,
) -> GridOutcome:
    """Run every spec that has no record yet; with ``retry_failed`` also those whose record failed;
    with ``force`` all of them.

    Records are written one by one as runs finish, so an interrupted grid loses at most the runs in
    flight and a rerun picks up where it stopped. ``dispatch`` chooses where the runs execute
    (:mod:`harness.dispatch`; default inline, in this process). ``on_start(index, total, what)`` is
    called before each inline run; ``on_record(record, path)`` after each written record.
    """
    from tqdm.auto import tqdm

    from harness.dispatch import DispatchConfig, check_executor_available
    from harness.dispatch import dispatch as dispatch_jobs

    dispatch = dispatch if dispatch is not None else DispatchConfig()
    check_executor_available(dispatch)
    specs = list(specs)
    for folder in {(s.results_dir, "results") for s in specs} | {(s.cache_dir, "cache") for s in specs}:
        check_writable_folder(*folder)
    resolved = preflight(specs)
    for folder in {Path(s.results_dir) / "records" for s in specs}:
        records.remove_stale_temporaries(folder)
    outcome = GridOutcome()
    todo: list[ResolvedSpec] = []
    for item in resolved:
        status = existing_status(item.record_path())
        if force or status is None or (status == "failed" and retry_failed):
            todo.append(item)
        else:
            outcome.skipped.append(item.record_path())

    def written(path: Path, record: dict[str, Any]) -> None:
        (outcome.written if record["status"] == "ok" else outcome.failed).append(path)
        if on_record is not None:
            on_record(record, path)

    if dispatch.executor != "inline":
        dispatch_jobs(todo, dispatch, on_done=lambda path: written(path, records.read_record(path)))
        return outcome
    bar = tqdm(todo, desc="runs", unit="run", disable=None if progress is None else not progress)
    for index, item in enumerate(bar, start=1):
        what = f"{item.method.name} on {item.task.name}/{item.task.config.variant}"
        bar.set_postfix_str(what)
        if on_start is not None:
            on_start(index, len(todo), what)
        record = run_one(item.spec)
        written(records.write_record(record, item.record_path().parent), record)
    return outcome


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
