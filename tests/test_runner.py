"""The runner end to end on the toy task: records, contract of every method, resume, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from harness import records
from harness.cache import Cache, CacheConflictError
from harness.grid import run_grid
from harness.registry import METHODS
from harness.runner import ComponentSpec, RunSpec, TimingConfig, run_one

PROJECT = Path(__file__).resolve().parent.parent


def _spec(tmp_path: Path, method: str = "random", **kw) -> RunSpec:
    return RunSpec(
        task=ComponentSpec("toy"),
        method=ComponentSpec.parse(method),
        metrics=(ComponentSpec("class_detection"), ComponentSpec("sparsity")),
        results_dir=str(tmp_path / "results"),
        cache_dir=str(tmp_path / "cache"),
        timing=TimingConfig(repeats=2, batch_size=8),
        **kw,
    )


# ----- one run, its record --------------------------------------------------------------------
def test_run_one_record_is_complete_and_round_trips(tmp_path: Path) -> None:
    record = run_one(_spec(tmp_path, "feature_similarity:metric=dot"))
    assert record["status"] == "ok", record["error"]
    path = records.write_record(record, tmp_path / "records")
    assert records.read_record(path) == json.loads(json.dumps(record))
    assert record["method"]["label"] == "feature_similarity(metric=dot)"
    assert (record["task"]["n_train"], record["task"]["n_test"]) == (48, 24)
    assert record["metrics"]["class_detection"]["direction"] == "higher"
    assert 0.0 <= record["metrics"]["class_detection"]["value"] <= 1.0
    explain = record["timings"]["explain"]
    assert explain["repeats"] == 2 and explain["per_point_median_s"] > 0
    assert record["timings"]["fit"]["cold_s"] is not None  # fresh cache: the first fit was cold
    assert record["timings"]["fit"]["warm_s"] is not None
    assert set(record["sparsity"]) == {"exact_zero_share", "l0_eps", "hoyer"}
    assert record["memory"]["explain"]["rss_peak_mb"] > 0
    assert record["environment"]["torch"] == torch.__version__

    # A second run on the same cache: the model comes from the cache and the fit is warm only.
    again = run_one(_spec(tmp_path, "feature_similarity:metric=dot"))
    assert again["task"]["model"]["cached"] is True
    assert again["timings"]["fit"]["cold_s"] is None
    assert again["metrics"]["class_detection"]["value"] == record["metrics"]["class_detection"]["value"]


def test_record_schema_rejects_missing_keys(tmp_path: Path) -> None:
    record = run_one(_spec(tmp_path))
    del record["metrics"]
    with pytest.raises(records.RecordError, match="missing keys"):
        records.write_record(record, tmp_path)
    assert not list(tmp_path.glob("*.json"))


def test_failing_metric_is_recorded_and_others_still_run(tmp_path: Path, monkeypatch) -> None:
    from harness.protocols import Metric, MetricResult
    from harness.registry import METRICS

    class Exploding(Metric):
        def compute(self, ctx):  # noqa: ANN001
            raise RuntimeError("boom")

    METRICS.names()  # import the catalogue first, so the undo below leaves it whole
    # registered for this test only: every suite runs every registered method
    monkeypatch.setattr(METRICS, "_entries", dict(METRICS._entries))
    METRICS.add("exploding_test_metric", Exploding, "raises, for a test")
    spec = _spec(tmp_path)
    spec = RunSpec(
        **{**spec.__dict__, "metrics": (ComponentSpec("exploding_test_metric"), ComponentSpec("sparsity"))}
    )
    record = run_one(spec)
    assert record["status"] == "ok"
    assert record["metrics"]["exploding_test_metric"]["status"] == "failed"
    assert "boom" in record["metrics"]["exploding_test_metric"]["error"]["message"]
    assert record["metrics"]["sparsity"]["status"] == "ok"
    assert isinstance(MetricResult(1.0).value, float)


def test_grid_skips_finished_records_unless_forced(tmp_path: Path) -> None:
    specs = [_spec(tmp_path, m) for m in ("random", "input_similarity")]
    first = run_grid(specs, progress=False)
    assert len(first.written) == 2 and not first.skipped
    second = run_grid(specs, progress=False)
    assert len(second.skipped) == 2 and not second.written
    forced = run_grid(specs, force=True, progress=False)
    assert len(forced.written) == 2


def test_cache_key_conflict_is_an_error(tmp_path: Path) -> None:
    from harness.cache import Artefact

    cache = Cache(tmp_path)
    cache.get_or_create({"a": 1}, lambda: Artefact({"t": torch.ones(2)}))
    path = cache.path_for({"a": 1})
    (path / "key.json").write_text(json.dumps({"a": 2}))
    with pytest.raises(CacheConflictError, match="different key"):
        cache.get_or_create({"a": 1}, lambda: Artefact({"t": torch.zeros(2)}))


# ----- the command line: bad input and interruption -----------------------------------------
def _dabench(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(PROJECT)},
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "toyy", "--methods", "random"], "unknown task 'toyy'; did you mean 'toy'"),
        (["--task", "toy", "--methods", "randm"], "did you mean 'random'"),
        (
            ["--task", "toy", "--methods", "random", "--metrics", "class_detect"],
            "did you mean 'class_detection'",
        ),
        (["--task", "toy", "--method", "random:sed=1"], "unknown config key(s) ['sed']"),
        (["--task", "toy", "--methods", "random", "--n-test", "100000"], "--n-test"),
        (
            ["--task", "toy", "--methods", "random", "--data-root", "/no/such/dir"],
            "data directory '/no/such/dir' does not exist",
        ),
        (["--task", "toy", "--methods", "random", "--variant", "nope"], "has no variant 'nope'"),
    ],
)
def test_bad_input_is_a_one_line_error_with_no_files(args, message, tmp_path: Path) -> None:
    result = _dabench("run", *args, "--results-dir", "res", "--cache-dir", "cache", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("dabench: error:"), result.stderr
    assert message in lines[0]
    assert not (tmp_path / "res").exists()
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_interrupted_grid_resumes_without_loss_or_duplicates(tmp_path: Path) -> None:
    seeds = ",".join(str(s) for s in range(6))
    args = [
        "run",
        "--task",
        "toy",
        "--methods",
        "random,input_similarity",
        "--seeds",
        seeds,
        "--metrics",
        "sparsity",
        "--repeats",
        "1",
        "--results-dir",
        "res",
        "--cache-dir",
        "c",
    ]
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    records_dir = tmp_path / "res" / "records"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(records_dir.glob("*.json"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = {p.name for p in records_dir.glob("*.json")}
    assert 2 <= len(done_before) < 12, "the kill must land mid-grid"

    result = _dabench(*args, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    finals = sorted(records_dir.glob("*.json"))
    assert len(finals) == 12
    assert done_before <= {p.name for p in finals}
    loaded = [records.read_record(p) for p in finals]
    assert len({r["run_id"] for r in loaded}) == 12
    assert all(r["status"] == "ok" for r in loaded)
    assert f"{len(done_before)} already recorded" in result.stdout


# ----- training checkpoints -------------------------------------------------------------------
def test_trained_model_carries_its_checkpoints_through_the_cache(tmp_path: Path) -> None:
    from harness.model_store import get_or_train_model, load_task_data
    from harness.protocols import CapabilityError, training_checkpoints
    from harness.registry import TASKS

    task_cls = TASKS.get("toy")
    task = task_cls(task_cls.Config())
    data = load_task_data(task)
    cold, info = get_or_train_model(task, data, seed=0, cache=Cache(tmp_path), device=torch.device("cpu"))
    warm, warm_info = get_or_train_model(
        task, data, seed=0, cache=Cache(tmp_path), device=torch.device("cpu")
    )
    assert not info["cached"] and warm_info["cached"]
    for model in (cold, warm):
        checkpoints = training_checkpoints(model)
        assert [c.epoch for c in checkpoints] == list(range(1, task.config.epochs + 1))
        assert all(c.lr == task.config.lr for c in checkpoints)
        final = checkpoints[-1].state
        assert all(torch.equal(final[k], v) for k, v in model.state_dict().items())
        assert not torch.equal(checkpoints[0].state["classifier.weight"], final["classifier.weight"])
    with pytest.raises(CapabilityError, match="carries no training checkpoints"):
        training_checkpoints(torch.nn.Linear(2, 2))


def test_explain_limit_is_stated_and_extrapolated(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "feature_similarity")
    limited = RunSpec(**{**spec.__dict__, "timing": TimingConfig(repeats=2, batch_size=8, explain_limit=5)})
    assert limited.resolve().run_id != spec.resolve().run_id  # a subset is a different measurement
    record = run_one(limited)
    assert record["status"] == "ok", record["error"]
    explain = record["timings"]["explain"]
    n_test = record["task"]["n_test"]
    assert explain["n_points"] == record["task"]["n_explained"] == 5 < n_test == explain["n_test_total"]
    assert explain["extrapolated"] is True
    assert explain["total_s"] == pytest.approx(explain["per_point_median_s"] * n_test)
    full = run_one(spec)
    assert full["timings"]["explain"]["extrapolated"] is False
    with pytest.raises(Exception, match="explain_limit must be a positive"):
        TimingConfig(explain_limit=0)


# ----- what the runner times and records around the fit ---------------------------------------
class _Probe:
    """Calls seen by :func:`_probe_method` instances (class-level: the runner builds fresh instances)."""

    calls: list[str] = []
    batches: list[int] = []


def _probe_method():
    from methods.random_baseline import RandomAttribution

    class Probe(RandomAttribution):
        """The random baseline plus a slow warm-up, a prescribed explain batch and a fact learnt in fit."""

        attributes_through = "none (class value)"

        def warm_up(self, device):  # noqa: ANN001
            _Probe.calls.append("warm_up")
            time.sleep(0.4)

        def preferred_batch_size(self) -> int:
            return 5

        def fit(self, model, train, *, cache):  # noqa: ANN001
            _Probe.calls.append("fit")
            super().fit(model, train, cache=cache)
            self.attributes_through = "learnt during fit"

        def explain(self, x, targets):  # noqa: ANN001
            _Probe.batches.append(int(x.shape[0]))
            return super().explain(x, targets)

    return Probe


def test_warm_up_runs_before_the_timed_fit_and_is_recorded_apart(tmp_path: Path, monkeypatch) -> None:
    METHODS.names()  # import the catalogue first, so the undo below leaves it whole
    monkeypatch.setattr(METHODS, "_entries", dict(METHODS._entries))
    METHODS.add("probe_test_method", _probe_method(), "random with a slow warm-up, for a test")
    _Probe.calls, _Probe.batches = [], []
    record = run_one(_spec(tmp_path, "probe_test_method"))
    assert record["status"] == "ok", record["error"]
    assert _Probe.calls[:2] == ["warm_up", "fit"]  # once, before the first (timed) fit
    assert _Probe.calls.count("warm_up") == 1
    timings = record["timings"]
    assert timings["warmup_s"] >= 0.4  # the sleep is the warm-up's ...
    assert timings["fit"]["cold_s"] < 0.4  # ... and not the fit's
    # The method's own explain batch, not the harness' 8; the record says whose it is.
    assert timings["explain"]["batch_size"] == 5 and timings["explain"]["batch_source"] == "method"
    assert max(_Probe.batches) == 5
    # A fact learnt during fit replaces the class value the record copied before it.
    assert record["method"]["attributes_through"] == "learnt during fit"


def test_methods_without_a_batch_preference_use_the_harness_batch(tmp_path: Path) -> None:
    record = run_one(_spec(tmp_path, "random"))
    assert record["timings"]["explain"]["batch_size"] == 8
    assert record["timings"]["explain"]["batch_source"] == "harness"
    assert record["timings"]["warmup_s"] >= 0


def test_repeats_after_the_first_pass_time_a_subset(tmp_path: Path, monkeypatch) -> None:
    METHODS.names()
    monkeypatch.setattr(METHODS, "_entries", dict(METHODS._entries))
    METHODS.add("probe_test_method", _probe_method(), "random with a slow warm-up, for a test")
    _Probe.calls, _Probe.batches = [], []
    spec = _spec(tmp_path, "probe_test_method")
    spec = RunSpec(**{**spec.__dict__, "timing": TimingConfig(repeats=3, batch_size=8, timed_points=7)})
    record = run_one(spec)
    assert record["status"] == "ok", record["error"]
    explain = record["timings"]["explain"]
    # 7 rounded up to whole batches of 5: a timed pass amortises per-call costs like the full pass
    assert explain["timed_points"] == 10 and len(explain["per_point_all_s"]) == 3
    # warm-up call, one full pass over the 24 test points (the explanations), two passes over 10
    assert _Probe.batches == [5] + [5, 5, 5, 5, 4] + [5, 5] * 2
    assert record["metrics"]["class_detection"]["status"] == "ok"  # computed on all 24 points


def test_long_phases_say_when_they_start_and_how_the_fit_went(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A cold fit of tens of minutes (Arnoldi at 60,000 points) is not silent under ``-v``."""
    import logging

    with caplog.at_level(logging.INFO, logger="harness.runner"):
        run_one(_spec(tmp_path, "feature_similarity"))
        run_one(_spec(tmp_path, "feature_similarity"))  # the second run finds the fit in the cache
    lines = [r.getMessage() for r in caplog.records if r.name == "harness.runner"]
    fits = [line for line in lines if line.startswith("feature_similarity: fitted in")]
    assert [line.rsplit(" (", 1)[1] for line in fits] == ["cold)", "cache hit)"]
    assert any(line.startswith("feature_similarity: fitting on ") for line in lines)
    assert any(line.startswith("feature_similarity: explaining ") for line in lines)
