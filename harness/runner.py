"""The runner: one (task, variant, method, config, seed) spec in, one record out.

For each spec: get or train the model (content-addressed), fit the method (cold and warm fit
timed separately), explain the test points against the model's PREDICTED class (per-point time
after a warm-up, over repeats), self-influence where supported, the metrics, peak memory; then one
JSON record written atomically. :mod:`harness.grid` runs many specs, skipping finished records;
:mod:`harness.specs` defines the specs (re-exported here: ``ComponentSpec``, ``RunSpec``, ...).

Explanations are streamed: the test points are explained one chunk (the explain batch) at a time,
each chunk is checked, given to every metric's reader (:class:`harness.protocols.Reader`: what the
metric keeps, e.g. top-k indices) and to the record's sparsity summary, and dropped. A run's memory
is then bounded by the chunk and what the metrics keep, not by ``n_test x n_train``; the record's
``explanations_kept`` says what each metric kept.

The runner knows plug-ins only through :mod:`harness.protocols` and the registries.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

from harness import records
from harness.cache import Cache
from harness.measures import SparsityRows
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
    Inputs,
    Method,
    Metric,
    MetricContext,
    MetricResult,
    Reader,
    Task,
    WholeMatrix,
)
from harness.specs import ComponentSpec, ResolvedSpec, RunSpec, TimingConfig, expand, with_paths
from harness.timing import RepeatStats, now, peak_memory, timed

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    from harness.protocols import TaskData

log = logging.getLogger(__name__)


def method_label(method: Method) -> str:
    """``name`` plus the config values that differ from the defaults, e.g. ``similarity(metric=l2)``."""
    defaults = type(method.config)().to_dict()
    changed = {k: v for k, v in method.config.to_dict().items() if defaults.get(k) != v}
    if not changed:
        return method.name
    return f"{method.name}(" + ",".join(f"{k}={v}" for k, v in sorted(changed.items())) + ")"


def explain_all(
    method: Method, x: Tensor | Inputs, targets: Tensor, batch_size: int, device: torch.device
) -> Tensor:
    """``method.explain`` over ``x`` in batches, on the CPU: the whole ``(n_test, n_train)`` matrix.

    ``x`` is a tensor or a split's :class:`~harness.protocols.Inputs` (read a batch at a time).

    For a second fit's explanations that a metric needs whole (model randomization); a run's own
    explanations are streamed (:func:`explain_chunks`).

    Raises
    ------
    ExplanationError
        When a batch is not a floating-point tensor with one row per test point of the batch, or
        the rows of two batches differ in length (a method's output must not be taken for attributions).
    """
    import torch

    parts: list[Tensor] = []
    for rows, part in explain_chunks(method, x, targets, batch_size, device):
        n_train = parts[0].shape[1] if parts else None
        problem = _chunk_problem(part, rows, n_train, method.name)
        if problem:
            raise ExplanationError(problem)
        parts.append(part)
    return torch.cat(parts)


@dataclasses.dataclass
class Stopwatch:
    """Seconds summed over the calls it timed (each clock read synchronises CUDA)."""

    seconds: float = 0.0


def explain_chunks(
    method: Method,
    x: Tensor | Inputs,
    targets: Tensor,
    batch_size: int,
    device: torch.device,
    clock: Stopwatch | None = None,
) -> Iterator[tuple[slice, Any]]:
    """``(rows, method.explain(x[rows], targets[rows]))`` batch by batch, the explanations on the CPU.

    ``clock`` times the explain calls (and the copy to the CPU) alone, not what the caller does
    with each batch. The output is unchecked (:func:`_chunk_problem`): whatever the method returned.
    """
    import torch

    clock = clock if clock is not None else Stopwatch()
    for start in range(0, len(x), batch_size):
        rows = slice(start, min(start + batch_size, len(x)))
        began = now()
        part = method.explain(x[rows].to(device), targets[rows].to(device))
        if isinstance(part, torch.Tensor):
            part = part.detach().cpu()
        clock.seconds += now() - began
        yield rows, part
        del part  # before the next explain call: one chunk held at a time


def _chunk_problem(part: Any, rows: slice, n_train: int | None, name: str) -> str | None:
    """What is wrong with a method's explanations of the test points ``rows`` (one line), or None.

    ``n_train`` None: the width is not known yet (any width passes).
    """
    import torch

    n_rows = rows.stop - rows.start
    if not isinstance(part, torch.Tensor):
        return (
            f"method {name!r}: explain returned a {type(part).__name__}, expected a torch.Tensor "
            "(n_test x n_train)"
        )
    if part.dim() != 2 or part.shape[0] != n_rows or (n_train is not None and part.shape[1] != n_train):
        shape = "x".join(map(str, part.shape)) or "a scalar"
        return (
            f"method {name!r}: explain returned {shape}, expected {n_rows}x{n_train or 'n_train'} "
            f"(n_test x n_train) for a batch of {n_rows} test points: one row per test point, one column "
            "per training point"
        )
    if not part.is_floating_point():
        return (
            f"method {name!r}: explain returned {str(part.dtype).replace('torch.', '')} values; "
            "attributions are floating point (float32)"
        )
    return None


class ExplanationError(RuntimeError):
    """A method's explanations cannot be attributions (wrong type, shape, dtype, non-finite values)."""


def run_one(spec: RunSpec) -> records.Record:
    """Run one spec and return its record (status "failed" with the traceback on any error)."""
    resolved = spec.resolve()
    record = empty_record(resolved)
    try:
        _run(resolved, record)
        records.mark_ok(record)
    except Exception as err:  # the record carries the failure; the grid goes on
        log.exception("run %s failed", resolved.run_id)
        records.mark_failed(record, err, traceback_text=traceback.format_exc())
    return record


def empty_record(resolved: ResolvedSpec) -> records.Record:
    """The record of ``resolved`` before it runs (status "failed" until the run completes)."""
    task, method = resolved.task, resolved.method
    return records.new_record(
        resolved.run_id,
        method={
            "name": method.name,
            "version": method.version,
            "config": method.config.to_dict(),
            "config_hash": method.config.config_hash(),
            "label": method_label(method),
            "supports": sorted(method.supports),
            "attributes_through": method.attributes_through,
            "self_influence_definition": method.self_influence_definition,
        },
        task={
            "name": task.name,
            "version": task.version,
            "variant": task.config.variant,
            "config": task.config.to_dict(),
            "config_hash": task.config.config_hash(),
            "seed": resolved.spec.seed,
            "n_train": None,
            "n_test": None,
            "n_explained": None,
            "num_classes": None,
            "model": None,
        },
    )


@dataclasses.dataclass
class RunSetup:
    """What every run starts from: the task's data, its trained model, the device and the cache."""

    data: TaskData
    model: nn.Module
    #: :func:`harness.model_store.get_or_train_model`'s facts: "key", "cached", "seconds", "history"
    model_info: dict[str, Any]
    device: torch.device
    cache: Cache

    def fit(self, method: Method, seed: int) -> float:
        """Fit ``method`` on the model and training split through the cache; returns the seconds it took."""
        seed_everything(seed)
        _, timing = timed(lambda: method.fit(self.model, self.data.train, cache=self.method_cache(method)))
        return timing.seconds

    def method_cache(self, method: Method) -> Cache:
        """The cache scope of ``method``'s artefacts (``<cache>/methods/<name>``)."""
        return self.cache.scope("methods", method.name)


def set_up(task: Task, seed: int, cache_dir: str | os.PathLike[str]) -> RunSetup:
    """Load ``task``'s data and get or train its model for ``seed`` (content-addressed in ``cache_dir``).

    The set-up of every run, shared by the runner and ``dabench xda``: the same task options and seed
    give the same cached model.
    """
    cache = Cache(cache_dir)
    device = select_device()
    data = load_task_data(task)
    model, model_info = get_or_train_model(task, data, seed, cache, device)
    return RunSetup(data=data, model=model, model_info=model_info, device=device, cache=cache)


def _run(resolved: ResolvedSpec, record: records.Record) -> None:
    import torch

    spec, task, method = resolved.spec, resolved.task, resolved.method
    setup = set_up(task, spec.seed, spec.cache_dir)
    data, model, model_info, device, cache = (
        setup.data,
        setup.model,
        setup.model_info,
        setup.device,
        setup.cache,
    )
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
    test_x = data.test.inputs  # normalised a batch at a time as it is read, never whole
    targets = predict(model, test_x, spec.timing.batch_size)
    test_accuracy = float((targets == data.test.y).to(torch.float64).mean())
    section = record["task"]
    section["n_train"] = len(data.train)
    section["n_test"] = n_test_total
    section["n_explained"] = len(data.test)
    section["num_classes"] = data.num_classes
    section["model"] = {
        "key": model_info["key"],
        "cached": model_info["cached"],
        "test_accuracy": test_accuracy,
        "history": model_info["history"],
    }
    timings: records.Timings = {"model_s": model_info["seconds"]}
    record["timings"] = timings

    # --- warm-up: one-off process costs (kernel compilation, library imports), timed apart so
    # that they never count as the method's cache or explain time.
    _, warmup = timed(lambda: method.warm_up(device))
    timings["warmup_s"] = warmup.seconds

    # --- fit: the first fit may miss the cache (cold); a second, fresh instance hits it (warm).
    method_cache = setup.method_cache(method)
    seed_everything(spec.seed)
    misses_before = method_cache.stats.misses
    log.info("%s: fitting on %d training points", method.name, len(data.train))
    _, fit_first = timed(lambda: method.fit(model, data.train, cache=method_cache))
    # Cold = the cost from scratch: a cache miss, or any fit of a method that keeps no cache.
    was_cold = method_cache.stats.misses > misses_before or "cache" not in method.supports
    log.info("%s: fitted in %.1f s (%s)", method.name, fit_first.seconds, "cold" if was_cold else "cache hit")
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
    record["method"]["attributes_through"] = method.attributes_through
    record["method"]["self_influence_definition"] = method.self_influence_definition

    # --- what each metric keeps of the explanations (its reader), set up before they stream past;
    # a metric that cannot run on this task or method fails here, and the others go on.
    context = MetricContext(
        data=data,
        model=model,
        explanations=None,  # streamed: each metric reads its own reader (``streamed``)
        targets=targets,
        self_influence=None,
        cache=cache.scope("metrics"),
        device=device,
        retrain=Retrainer(task, data, spec.seed, cache, device, workers=spec.retrain_workers),
        explain_with=lambda other: _explain_with(method, other, data, targets, method_cache, spec),
    )
    metric_runs = [
        _MetricRun.start(metric, context, data.variant, method.supports) for metric in resolved.metrics
    ]
    sparsity = SparsityRows(device=device)

    # --- explain: warm-up, then timed passes over all test points, in the method's own batch
    # where its settings prescribe one (the paper's explain batch is part of the measured cost).
    # The first pass streams its chunks to the readers; the clock times the explain calls alone.
    batch = method.preferred_batch_size() or spec.timing.batch_size
    for _ in range(spec.timing.warmup):
        for _ in explain_chunks(method, test_x[:batch], targets[:batch], batch, device):
            pass
    stats = RepeatStats()
    # Whole explain batches only, so a timed pass amortises per-call costs as the full pass does.
    wanted = spec.timing.timed_points or len(test_x)
    timed_points = min(len(test_x), -(-wanted // batch) * batch)
    log.info(
        "%s: explaining %d test points in batches of %d (%d more timed pass(es) over %d)",
        method.name,
        len(test_x),
        batch,
        spec.timing.repeats - 1,
        timed_points,
    )
    with peak_memory() as explain_memory:
        clock = Stopwatch()
        chunks = explain_chunks(method, test_x, targets, batch, device, clock)
        feeds = [sparsity.update, *(run.update for run in metric_runs)]
        problem = _stream(chunks, len(test_x), len(data.train), method.name, feeds)
        stats.per_item_s.append(clock.seconds / len(test_x))
        for _ in range(spec.timing.repeats - 1 if problem is None else 0):
            clock = Stopwatch()
            for _ in explain_chunks(
                method, test_x[:timed_points], targets[:timed_points], batch, device, clock
            ):
                pass  # timed only: the explanations of the first pass are the run's
            stats.per_item_s.append(clock.seconds / timed_points)
    # Explanations that are not attributions (wrong type, shape or dtype, NaN) fail the run: no
    # number computed from them is worth recording.
    record["explanation_error"] = problem
    if problem:
        raise ExplanationError(problem)
    per_point = stats.to_dict()
    timings["explain"] = {
        "per_point_median_s": per_point["median_s"],
        "per_point_min_s": per_point["min_s"],
        "per_point_max_s": per_point["max_s"],
        "per_point_iqr_s": per_point["iqr_s"],
        "per_point_all_s": per_point["all_s"],
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
    record["sparsity"] = cast(records.Sparsity, sparsity.summary())
    record["explanations_kept"] = {
        "chunk_rows": batch,
        "dense_mb": len(test_x) * len(data.train) * 4 / 2**20,
        "metrics": {run.metric.name: run.kept() for run in metric_runs},
    }

    # --- self-influence where supported and a metric reads it (it can cost as much as explaining
    # the whole training set, e.g. EK-FAC or LiSSA).
    self_influence = None
    wanted_si = any("self_influence" in metric.needs for metric in resolved.metrics)
    if "self_influence" in method.supports and wanted_si:
        self_influence, si_timing = timed(lambda: method.self_influence().detach().cpu())
        timings["self_influence_s"] = si_timing.seconds
        record["memory"]["self_influence"] = si_timing.memory.to_dict()
    else:
        timings["self_influence_s"] = None

    record["diagnostics"] = method.diagnostics()

    # --- metrics, from what each kept: one failing metric is recorded as failed; the others still run.
    context = dataclasses.replace(context, self_influence=self_influence)
    timings["metrics_s"] = {}
    for run in metric_runs:
        record["metrics"][run.metric.name], timings["metrics_s"][run.metric.name] = run.finish(context)


def _stream(
    chunks: Iterator[tuple[slice, Any]],
    n_test: int,
    n_train: int,
    name: str,
    feeds: Sequence[Callable[[slice, Tensor], None]],
) -> str | None:
    """Check each chunk of explanations and give it to every feed; what was wrong (one line) or None.

    A chunk of the wrong type, shape or dtype ends the pass. Non-finite values do not: the pass
    goes on to count them all (the message says how many), and no feed sees another chunk. After
    each chunk the memory it freed goes back to the system (:func:`_release_freed_memory`).
    """
    import torch

    non_finite, first_row = 0, 0
    for rows, part in chunks:
        problem = _chunk_problem(part, rows, n_train, name)
        if problem:
            return problem
        finite = torch.isfinite(part)
        if not bool(finite.all()):
            if not non_finite:
                first_row = rows.start + int((~finite).any(dim=1).nonzero()[0])
            non_finite += int((~finite).sum())
        del finite
        if non_finite:
            continue
        for feed in feeds:
            feed(rows, part)
        del part  # before the next chunk is explained: one chunk held at a time
        _release_freed_memory()
    if non_finite:
        return (
            f"method {name!r}: explain returned {non_finite} non-finite value(s) (NaN or inf) of "
            f"{n_test * n_train}, e.g. in row {first_row}"
        )
    return None


def _release_freed_memory() -> None:
    """Hand the memory freed in this process back to the system (glibc's ``malloc_trim``; elsewhere nothing).

    glibc keeps freed blocks of a few MB (a chunk's boolean masks, say) in its heap, where the small
    tensors that readers keep (a score per test point) pin them: chunk after chunk, the resident
    memory would creep up by part of a chunk's temporaries, i.e. grow with n_test x n_train after
    all. Trimming after each chunk (a few microseconds, outside the explain clock) keeps the peak at
    one chunk's working set.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    import ctypes

    try:
        return cast("Callable[[int], int]", ctypes.CDLL("libc.so.6").malloc_trim)
    except (OSError, AttributeError):  # not glibc (macOS, musl)
        return None


T = TypeVar("T")


class _MetricRun:
    """One metric of a run: its reader while the explanations stream past, the time it took, or why
    it failed (a failure is recorded; the run and the other metrics go on)."""

    def __init__(self, metric: Metric) -> None:
        self.metric = metric
        self.reader: Reader | None = None
        self.seconds = 0.0
        self.error: records.ErrorInfo | None = None

    @classmethod
    def start(cls, metric: Metric, ctx: MetricContext, variant: str, supports: frozenset[str]) -> _MetricRun:
        """Check that ``metric`` applies to the run and set up its reader."""
        run = cls(metric)
        run._attempt(lambda: metric.check_applicable(variant, supports))
        run.reader = run._attempt(lambda: metric.reader(ctx))
        return run

    def update(self, rows: slice, chunk: Tensor) -> None:
        reader = self.reader
        if reader is not None:
            self._attempt(lambda: reader.update(rows, chunk))

    def kept(self) -> records.KeptByMetric:
        """What the reader holds (after the stream: what the metric kept)."""
        if self.reader is None:
            return {"kept": "nothing", "mb": 0.0}
        return {"kept": self.reader.kept(), "mb": self.reader.nbytes() / 2**20}

    def finish(self, ctx: MetricContext) -> tuple[records.MetricEntry, float | None]:
        """The metric's record entry and seconds (reader set-up, updates and compute; None when it failed)."""
        reader = self.reader
        explanations = reader.matrix if isinstance(reader, WholeMatrix) else None  # the legacy way in
        own = dataclasses.replace(ctx, streamed=reader, explanations=explanations)
        result = self._attempt(lambda: _computed(self.metric, own))
        entry: records.MetricEntry = {
            "value": None,
            "direction": self.metric.direction,
            "version": self.metric.version,
            "config": self.metric.config.to_dict(),
            "details": {},
            "per_point": None,
            "status": "failed",
            "error": self.error,
        }
        if result is None:
            return entry, None
        entry["value"] = float(result.value)
        entry["details"] = result.details
        entry["per_point"] = None if result.per_point is None else [float(v) for v in result.per_point]
        entry["status"] = "ok"
        return entry, self.seconds

    def _attempt(self, step: Callable[[], T]) -> T | None:
        """``step()`` timed into :attr:`seconds`; None, with the failure recorded, when it raises (or
        the metric failed before)."""
        if self.error is not None:
            return None
        began = now()
        try:
            return step()
        except Exception as err:  # recorded; the other metrics go on
            level = logging.WARNING if isinstance(err, CapabilityError) else logging.ERROR
            log.log(level, "metric %s failed: %s", self.metric.name, err)
            self.error = records.error_info(err, traceback_text=traceback.format_exc())
            self.reader = None
            return None
        finally:
            self.seconds += now() - began


def _computed(metric: Metric, ctx: MetricContext) -> MetricResult:
    result = metric.compute(ctx)
    _check_metric_result(metric.name, result)
    return result


def _explain_with(
    method: Method, model: nn.Module, data: TaskData, targets: Tensor, cache: Cache, spec: RunSpec
) -> Tensor:
    """Explanations of ``data.test`` by a fresh instance of ``method`` (same config) fitted on ``model``."""
    other = type(method)(method.config)
    seed_everything(spec.seed)
    other.fit(model, data.train, cache=cache)
    device = next(model.parameters()).device
    batch = other.preferred_batch_size() or spec.timing.batch_size
    return explain_all(other, data.test.inputs, targets, batch, device)


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


__all__ = [
    "ComponentSpec",
    "ExplanationError",
    "ResolvedSpec",
    "RunSetup",
    "RunSpec",
    "TimingConfig",
    "empty_record",
    "explain_all",
    "explain_chunks",
    "expand",
    "method_label",
    "run_one",
    "set_up",
    "with_paths",
]
