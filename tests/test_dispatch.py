"""Dispatch: inline, local (submitit processes) and slurm (a real local cluster) give the same records;
failed jobs, --retry-failed, resume; the cache lock; bad input.

The Slurm test needs a running cluster (`sbatch` on PATH and a controller that answers). .ci/run
starts one (../shared/slurm/start-local-slurm.sh) and sets CI=true, where the test must run; elsewhere
it skips with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from harness import records
from harness.cache import Artefact, Cache
from harness.config import ConfigError
from harness.dispatch import DispatchConfig
from harness.grid import run_grid
from harness.runner import ComponentSpec, RunSpec, TimingConfig

PROJECT = Path(__file__).resolve().parent.parent

#: Record keys that legitimately differ between two executions of the same run.
VOLATILE = {"created_utc", "record_id", "timings", "memory", "environment", "git", "machine"}


def _specs(root: Path, methods=("random", "feature_similarity", "dualda")) -> list[RunSpec]:
    return [
        RunSpec(
            task=ComponentSpec("toy"),
            method=ComponentSpec(name),
            metrics=(ComponentSpec("class_detection"), ComponentSpec("sparsity")),
            results_dir=str(root / "results"),
            cache_dir=str(root / "cache"),
            timing=TimingConfig(repeats=1, batch_size=8),
        )
        for name in methods
    ]


def _comparable(record: records.Record) -> dict:
    task = dict(record["task"])
    model = dict(task.pop("model"))
    model.pop("cached", None)
    history = dict(model.pop("history"))
    for key in ("seconds", "epoch_seconds"):
        history.pop(key, None)
    # method diagnostics may hold timings of their own (e.g. DualDA's solver_seconds)
    diagnostics = {
        k: v for k, v in record["diagnostics"].items() if "second" not in k and not k.endswith("_s")
    }
    return {
        **{k: v for k, v in record.items() if k not in VOLATILE and k not in ("task", "diagnostics")},
        "diagnostics": diagnostics,
        "task": {**task, "model": {**model, "history": history}},
    }


def _records(root: Path) -> dict[str, dict]:
    found = [records.read_record(p) for p in (root / "results" / "records").glob("*.json")]
    return {r["run_id"]: _comparable(r) for r in found}


@pytest.fixture(scope="module")
def inline_records(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("inline")
    outcome = run_grid(_specs(root), progress=False)
    assert len(outcome.written) == 3 and not outcome.failed
    return _records(root)


@pytest.mark.slow
def test_local_executor_records_equal_inline(inline_records, tmp_path: Path) -> None:
    config = DispatchConfig(executor="local", folder=str(tmp_path / "jobs"), parallelism=2, poll_s=0.2)
    outcome = run_grid(_specs(tmp_path), dispatch=config)
    assert len(outcome.written) == 3 and not outcome.failed
    assert _records(tmp_path) == inline_records
    # job scripts and logs live in the jobs folder, one sub-folder per job
    assert any((tmp_path / "jobs").rglob("*_log.out"))


def _slurm_up() -> str | None:
    """None when a Slurm controller answers here, else why not."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return "no Slurm client on PATH (sbatch, sinfo)"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"sinfo failed: {err}"
    if out.returncode != 0 or not out.stdout.strip():
        return f"no Slurm controller answers (sinfo: {out.stderr.strip() or 'no nodes'})"
    return None


@pytest.mark.slow
def test_slurm_executor_records_equal_inline(inline_records, tmp_path: Path) -> None:
    reason = _slurm_up()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the Slurm test, but: {reason}; .ci/run starts a local cluster")
        pytest.skip(f"{reason}; start one with ../shared/slurm/start-local-slurm.sh STATE_DIR")
    config = DispatchConfig(
        executor="slurm",
        folder=str(tmp_path / "jobs"),
        parallelism=3,
        time_limit_min=10,
        cpus_per_job=1,
        poll_s=0.5,
    )
    outcome = run_grid(_specs(tmp_path), dispatch=config)
    assert len(outcome.written) == 3 and not outcome.failed, [
        records.read_record(p)["error"] for p in outcome.failed
    ]
    assert _records(tmp_path) == inline_records
    logs = list((tmp_path / "jobs").rglob("*_log.out"))
    assert logs, "submitit wrote no job logs"


@pytest.mark.slow
def test_failed_run_is_recorded_and_retry_failed_reruns_only_it(tmp_path: Path) -> None:
    # TRAK at the paper's lambda_reg 0 cannot invert Phi^T Phi on 48 points: its fit raises inside
    # the job (a DataError), which must become a failed record, not a failed grid
    specs = _specs(tmp_path, ("random", "trak"))
    config = DispatchConfig(executor="local", folder=str(tmp_path / "jobs"), parallelism=2, poll_s=0.2)
    first = run_grid(specs, dispatch=config)
    assert len(first.written) == 1 and len(first.failed) == 1
    failed = records.read_record(first.failed[0])
    assert failed["status"] == "failed" and failed["method"]["name"] == "trak"
    assert failed["error"]["type"] == "DataError" and "Traceback" in failed["error"]["traceback"]
    # a rerun keeps both records; --retry-failed reruns the failed one only
    again = run_grid(specs, dispatch=config)
    assert not again.written and not again.failed and len(again.skipped) == 2
    retried = run_grid(specs, dispatch=config, retry_failed=True)
    assert len(retried.failed) == 1 and len(retried.skipped) == 1 and not retried.written
    assert records.read_record(retried.failed[0])["created_utc"] > failed["created_utc"]


@pytest.mark.slow
def test_a_job_that_dies_gets_a_failed_record(tmp_path: Path) -> None:
    from harness.dispatch import dispatch
    from harness.grid import preflight

    items = preflight(_specs(tmp_path, ("random",)))
    config = DispatchConfig(executor="local", folder=str(tmp_path / "jobs"), poll_s=0.2)
    (path,) = dispatch(items, config, job=lambda spec: os._exit(3))  # the process dies, writing nothing
    record = records.read_record(path)
    assert record["status"] == "failed" and "job" in record["error"]["message"]
    assert path.parent == items[0].records_dir().absolute() and path.stem == record["record_id"]


def test_concurrent_writers_compute_a_cache_entry_once(tmp_path: Path) -> None:
    import torch

    calls = []
    barrier = threading.Barrier(4)

    def compute() -> Artefact:
        calls.append(1)
        return Artefact({"x": torch.ones(3)}, {"n": 1})

    def worker(results: list) -> None:
        barrier.wait()
        results.append(Cache(tmp_path).scope("models", "t").get_or_create({"k": 1}, compute))

    results: list = []
    threads = [threading.Thread(target=worker, args=(results,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 4
    assert all(torch.equal(r.tensors["x"], torch.ones(3)) for r in results)


def test_dispatch_bad_input(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(ConfigError, match="unknown executor 'cluster'; choose one of"):
        DispatchConfig(executor="cluster")
    with pytest.raises(ConfigError, match="parallelism"):
        DispatchConfig(parallelism=0)
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch anywhere
    with pytest.raises(ConfigError, match="sbatch"):
        run_grid(_specs(tmp_path, ("random",)), dispatch=DispatchConfig(executor="slurm"))
    assert not (tmp_path / "results").exists()  # nothing written


def test_cli_executor_errors_are_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{PROJECT / '.venv' / 'bin'}:/usr/bin:/bin"}
    out = subprocess.run(
        [str(PROJECT / ".venv" / "bin" / "dabench"), "run", "--task", "toy", "--methods", "random",
         "--executor", "cluster", "--results-dir", str(tmp_path / "r"), "--cache-dir", str(tmp_path / "c")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2
    assert "unknown executor 'cluster'" in out.stderr and "Traceback" not in out.stderr


SLOW_PLUGIN = """
import time
from harness.registry import register_method
from methods.random_baseline import RandomAttribution


@register_method("sleepy_test_method", "sleeps in fit, for a test")
class Sleepy(RandomAttribution):
    def setup(self, model, train):
        time.sleep(120)
"""


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_local_jobs_stop_when_dabench_is_killed_or_interrupted(how: str, tmp_path: Path) -> None:
    """Issue 16: a killed or interrupted `dabench ... --executor local` left its jobs running (parent
    PID 1), overlapping with the rerun. Now each job ends itself when its dabench process is gone,
    and an interrupt cancels the jobs in flight."""
    import signal
    import subprocess
    import sys
    import time

    import psutil

    plugin = tmp_path / "sleepy.py"
    plugin.write_text(SLOW_PLUGIN)
    command = [
        sys.executable, "-m", "harness", "run", "--task", "toy", "--methods", "sleepy_test_method",
        "--metrics", "class_detection", "--plugin", str(plugin), "--executor", "local", "--parallelism", "2",
        "--seeds", "0,1", "--results-dir", str(tmp_path / "results"), "--cache-dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    parent = subprocess.Popen(command, cwd=Path(__file__).resolve().parent.parent)
    try:
        deadline = time.time() + 120
        jobs: list[psutil.Process] = []
        while time.time() < deadline:  # the two jobs are sleeping in fit
            jobs = [
                p
                for p in psutil.Process(parent.pid).children(recursive=True)
                if "submitit" in " ".join(p.cmdline())
            ]
            if len(jobs) >= 2:
                break
            time.sleep(0.5)
        assert len(jobs) >= 2, "the local jobs did not start"
        time.sleep(2)
        parent.send_signal(signal.SIGKILL if how == "SIGKILL" else signal.SIGINT)
        parent.wait(timeout=60)
        gone, alive = psutil.wait_procs(jobs, timeout=30)
        assert not alive, f"jobs still running after dabench was stopped: {[p.pid for p in alive]}"
    finally:
        if parent.poll() is None:
            parent.kill()
        for proc in psutil.Process().children(recursive=True):
            if "submitit" in " ".join(proc.cmdline()):
                proc.kill()
