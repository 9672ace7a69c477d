"""Where the runs of a grid execute: in this process, in local worker processes, or on Slurm.

Three executors, one contract: each run is one job that runs one :class:`~harness.runner.RunSpec`
and writes its own record (atomically and once, under ``results/records/<record_id>.json``); a job that
raises leaves a record with status "failed" and its traceback; the rest of the grid goes on.

- ``inline``: the runs one after the other in this process (the default).
- ``local``: each run in its own process through submitit's ``LocalExecutor``, at most
  ``parallelism`` at a time (submitit's local executor starts every job at once, so the harness
  submits the next job when one finishes).
- ``slurm``: the grid becomes one submitit job array (``AutoExecutor(cluster="slurm")``; the
  cluster is always passed explicitly: with ``cluster=None`` submitit picks Slurm whenever
  ``srun`` is on PATH), with partition, GPUs per job, time limit, memory, CPUs per job and the
  array's parallelism as options.

Jobs that need the same expensive inputs (a trained model, DualDA's features, counterfactual
models) share them through the content-addressed cache, whose writers take turns on a lock file:
the first job computes, the others read. Results and cache paths are made absolute before
submission, so jobs find them wherever the scheduler starts them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import records
from harness.config import Config, ConfigError, option, require_positive_int
from harness.specs import RECORDS_FOLDER

if TYPE_CHECKING:
    from harness.runner import ResolvedSpec, RunSpec

log = logging.getLogger(__name__)

EXECUTORS: tuple[str, ...] = ("inline", "local", "slurm")


@dataclass(frozen=True, kw_only=True)
class DispatchConfig(Config):
    """How a grid is dispatched (changes where runs execute, never what they compute)."""

    executor: str = option("inline", "inline (this process), local (worker processes) or slurm")
    folder: str = option("results/jobs", "submitit's folder for job scripts, pickles and logs")
    parallelism: int = option(1, "local: jobs at a time; slurm: the job array's parallelism")
    partition: str | None = option(None, "slurm partition (None: the cluster's default)")
    gpus_per_job: int = option(0, "GPUs per job (slurm gres; local: CUDA_VISIBLE_DEVICES)")
    cpus_per_job: int = option(2, "CPUs per job")
    time_limit_min: int = option(60, "wall-time limit per job in minutes (submitit needs >= 2 on slurm)")
    mem_gb: float | None = option(None, "memory per job in GB (None: the cluster's default)")
    poll_s: float = option(1.0, "seconds between checks on running jobs")

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise ConfigError(f"unknown executor {self.executor!r}; choose one of {list(EXECUTORS)}")
        require_positive_int(self.parallelism, "parallelism")
        require_positive_int(self.cpus_per_job, "cpus_per_job")
        require_positive_int(self.time_limit_min, "time_limit_min")
        if (
            isinstance(self.gpus_per_job, bool)
            or not isinstance(self.gpus_per_job, int)
            or self.gpus_per_job < 0
        ):
            raise ConfigError(f"gpus_per_job must be an integer >= 0, got {self.gpus_per_job!r}")
        if self.mem_gb is not None and not self.mem_gb > 0:
            raise ConfigError(f"mem_gb must be > 0, got {self.mem_gb!r}")
        if self.executor == "slurm" and self.time_limit_min < 2:
            raise ConfigError("slurm jobs need time_limit_min >= 2 (submitit's minimum)")


def run_spec_job(spec: RunSpec) -> str:
    """One job: run ``spec``, write its record, return the record's path (runs in the worker)."""
    from harness.runner import run_one

    record = run_one(spec)
    return str(records.write_record(record, Path(spec.results_dir) / RECORDS_FOLDER))


@dataclass(frozen=True)
class WithPlugins:
    """A job that first loads the plugins of the submitting process (workers start fresh).

    Parameters
    ----------
    job:
        What the job runs (:func:`run_spec_job`).
    plugins:
        :func:`harness.registry.loaded_plugins` of the submitting process; the installed plugins
        (entry points) are loaded as well.
    """

    job: Callable[[RunSpec], str]
    plugins: tuple[str | tuple[str, str], ...] = ()
    #: The submitting process (``--executor local``): the job ends itself when that process is gone,
    #: so that no orphaned job overlaps with a rerun. None (Slurm): the job outlives the submitter.
    parent_pid: int | None = None

    def __call__(self, spec: RunSpec) -> str:
        from harness.registry import load_plugins

        if self.parent_pid is not None:
            _exit_with_parent(self.parent_pid)
        load_plugins(list(self.plugins))
        return self.job(spec)


#: Seconds between two checks of a local job that the process that submitted it is still alive.
PARENT_POLL_S = 1.0


def _exit_with_parent(parent_pid: int) -> None:
    """End this process (exit code 143, like SIGTERM) soon after ``parent_pid`` is gone (a daemon thread).

    A killed or interrupted ``dabench`` leaves no local job running: its record is not written, and the
    next run of the grid computes it again.
    """
    import threading

    def watch() -> None:
        while True:
            time.sleep(PARENT_POLL_S)
            try:
                os.kill(parent_pid, 0)
            except ProcessLookupError:
                log.error(
                    "the dabench process %d that started this job is gone; stopping the job", parent_pid
                )
                os._exit(143)
            except PermissionError:
                continue  # alive, owned by someone else (pid reuse is not ours to judge)

    threading.Thread(target=watch, name="dabench-parent-watch", daemon=True).start()


def absolute_paths(spec: RunSpec) -> RunSpec:
    """``spec`` with its results and cache directories made absolute (jobs may start elsewhere)."""
    return dataclasses.replace(
        spec, results_dir=os.path.abspath(spec.results_dir), cache_dir=os.path.abspath(spec.cache_dir)
    )


def check_executor_available(config: DispatchConfig) -> None:
    """Raise :class:`ConfigError` naming the fix when the executor cannot run here."""
    if config.executor == "slurm" and shutil.which("sbatch") is None:
        raise ConfigError(
            "--executor slurm needs Slurm's sbatch on PATH and none was found; run on a Slurm login node "
            "(or start a local cluster: ../shared/slurm/start-local-slurm.sh), or use --executor local"
        )
    if config.executor in ("local", "slurm"):
        import importlib.util

        if importlib.util.find_spec("submitit") is None:
            raise ConfigError(f"--executor {config.executor} needs submitit: pip install submitit")


def dispatch(
    items: Sequence[ResolvedSpec],
    config: DispatchConfig,
    *,
    on_done: Callable[[Path], None] | None = None,
    job: Callable[[RunSpec], str] = run_spec_job,
) -> list[Path]:
    """Run ``items`` (already filtered: the runs to do) with submitit; return their record paths.

    ``job`` is what each job calls (:func:`run_spec_job`; tests pass one that dies). A job that
    dies without writing its record (killed, out of memory, timed out, an error in the job itself)
    gets a "failed" record written here, with submitit's traceback.
    """
    import submitit
    from tqdm.auto import tqdm

    from harness.registry import loaded_plugins

    check_executor_available(config)
    if not items:
        return []
    folder = Path(config.folder).absolute() / time.strftime("%Y%m%d-%H%M%S")
    cluster = "slurm" if config.executor == "slurm" else "local"
    # workers register the same methods, tasks and metrics; local ones end with this process
    job = WithPlugins(job, tuple(loaded_plugins()), os.getpid() if cluster == "local" else None)
    executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=cluster)
    params: dict[str, Any] = {
        "timeout_min": config.time_limit_min,
        "cpus_per_task": config.cpus_per_job,
        "gpus_per_node": config.gpus_per_job,
        "name": "dabench",
    }
    if config.mem_gb is not None:
        params["mem_gb"] = config.mem_gb
    if cluster == "slurm":
        params["slurm_array_parallelism"] = config.parallelism
        if config.partition:
            params["slurm_partition"] = config.partition
    executor.update_parameters(**params)
    specs = [absolute_paths(item.spec) for item in items]
    log.info("dispatching %d runs to %s (jobs in %s)", len(specs), config.executor, folder)

    paths: list[Path] = []
    with tqdm(total=len(specs), desc=f"jobs ({config.executor})", unit="run", disable=None) as bar:

        def finish(done: Any, item: ResolvedSpec) -> None:
            path = _collect(done, item)
            paths.append(path)
            bar.update(1)
            if on_done is not None:
                on_done(path)

        def reap(running: list[tuple[Any, ResolvedSpec]]) -> list[tuple[Any, ResolvedSpec]]:
            """Finish the done jobs; return the others (after a pause when some still run)."""
            still = []
            for submitted, item in running:
                if submitted.done():
                    finish(submitted, item)
                else:
                    still.append((submitted, item))
            if still:
                time.sleep(config.poll_s)
            return still

        if cluster == "slurm":  # one job array; Slurm throttles it (slurm_array_parallelism)
            pending = list(zip(executor.map_array(job, specs), items, strict=True))
            while pending:
                pending = reap(pending)
        else:  # local: at most `parallelism` processes at once
            queue = list(zip(specs, items, strict=True))
            running: list[tuple[Any, ResolvedSpec]] = []
            try:
                while queue or running:
                    while queue and len(running) < config.parallelism:
                        spec, item = queue.pop(0)
                        running.append((executor.submit(job, spec), item))
                    running = reap(running)
            except BaseException:  # interrupted: stop the jobs in flight (a rerun computes them again)
                for submitted, _ in running:
                    with contextlib.suppress(Exception):
                        submitted.cancel(check=False)
                raise
    return paths


def _collect(job: Any, item: ResolvedSpec) -> Path:
    """The record path of a finished job; a failed record written here when the job left none."""
    try:
        return Path(job.result())
    except Exception as err:  # the job died before writing its record
        from harness.runner import empty_record

        log.error("job %s for run %s failed: %s", job.job_id, item.run_id, err)
        last_line = str(err).strip().splitlines()[-1] if str(err).strip() else repr(err)
        record = records.mark_failed(empty_record(item), err, message=f"job {job.job_id} failed: {last_line}")
        return records.write_record(record, item.records_dir().absolute())
