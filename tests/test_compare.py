"""`dabench compare` over run records and benchmark files, regressions, versions, history plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dabench.cli import main
from harness import records
from harness.compare import compare, history
from harness.config import ConfigError
from harness.grid import run_grid
from harness.runner import ComponentSpec, RunSpec, TimingConfig


@pytest.fixture(scope="module")
def base_records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("base")
    specs = [
        RunSpec(
            task=ComponentSpec("toy"),
            method=ComponentSpec(name),
            metrics=(ComponentSpec("class_detection"), ComponentSpec("sparsity")),
            results_dir=str(root),
            cache_dir=str(root / "cache"),
            timing=TimingConfig(repeats=1, batch_size=8),
        )
        for name in ("random", "feature_similarity")
    ]
    run_grid(specs, progress=False)
    return root


def _edited_copy(base: Path, target: Path, edit) -> Path:  # noqa: ANN001
    (target / "records").mkdir(parents=True)
    for path in (base / "records").glob("*.json"):
        record = records.read_record(path)
        edit(record)
        (target / "records" / path.name).write_text(json.dumps(record))
    return target


def test_identical_records_compare_equal(base_records: Path) -> None:
    result = compare(base_records, base_records)
    assert result.kind == "records" and len(result.rows) == 2
    assert all(r["status"] == "ok" and r["explain_ms_ratio"] == pytest.approx(1.0) for r in result.rows)


def test_slower_explain_and_worse_metric_are_regressions(base_records: Path, tmp_path: Path) -> None:
    def edit(record: dict) -> None:
        if record["method"]["name"] == "random":
            record["timings"]["explain"]["per_point_median_s"] *= 1.5
        else:
            record["metrics"]["class_detection"]["value"] -= 0.05  # higher is better: worse

    head = _edited_copy(base_records, tmp_path, edit)
    result = compare(base_records, head, threshold=0.2)
    by_method = {r["method"]: r for r in result.rows}
    assert by_method["random"]["status"] == "REGRESSION"
    assert by_method["random"]["explain_ms_ratio"] == pytest.approx(1.5)
    assert "explain_ms x1.50" in by_method["random"]["detail"]
    assert by_method["feature_similarity"]["status"] == "REGRESSION"
    assert by_method["feature_similarity"]["class_detection_delta"] == pytest.approx(-0.05)
    # within the threshold: no regression
    assert not compare(base_records, head, threshold=0.6, metric_tolerance=0.1).regressions


def test_versions_that_differ_are_skipped_not_compared(base_records: Path, tmp_path: Path) -> None:
    def edit(record: dict) -> None:
        record["method"]["version"] = "99"
        record["timings"]["explain"]["per_point_median_s"] *= 10

    head = _edited_copy(base_records, tmp_path, edit)
    result = compare(base_records, head)
    assert {r["status"] for r in result.rows} == {"skipped: versions differ"}
    assert not result.regressions


def _bench_file(path: Path, medians: dict[str, float], commit: str, when: str) -> Path:
    data = {
        "machine_info": {"node": "vm", "cpu": {"brand_raw": "cpu"}},
        "commit_info": {"id": commit, "time": when, "dirty": False},
        "datetime": when,
        "version": "5.3.1",
        "benchmarks": [
            {
                "group": "g",
                "name": name.split("::")[-1],
                "fullname": name,
                "stats": {"median": m, "iqr": 0.1 * m},
                "extra_info": {},
            }
            for name, m in medians.items()
        ],
    }
    path.write_text(json.dumps(data))
    return path


def test_benchmark_files_ratio_and_fail_on_regression(tmp_path: Path, capsys) -> None:
    base = _bench_file(
        tmp_path / "a.json", {"t.py::fast": 1.0, "t.py::slow": 2.0}, "aaaa1111", "2026-12-01T00:00:00"
    )
    head = _bench_file(
        tmp_path / "b.json",
        {"t.py::fast": 0.9, "t.py::slow": 3.0, "t.py::new": 1.0},
        "bbbb2222",
        "2026-12-02T00:00:00",
    )
    result = compare(base, head)
    rows = {r["benchmark"]: r for r in result.rows}
    assert rows["t.py::fast"]["ratio"] == pytest.approx(0.9) and rows["t.py::fast"]["status"] == "ok"
    assert rows["t.py::slow"]["ratio"] == pytest.approx(1.5) and rows["t.py::slow"]["status"] == "REGRESSION"
    assert rows["t.py::new"]["status"] == "new (no base)"
    assert main(["compare", str(base), str(head)]) == 0
    assert main(["compare", str(base), str(head), "--fail-on-regression"]) == 1
    assert main(["compare", str(base), str(head), "--fail-on-regression", "--threshold", "0.6"]) == 0
    assert "1 regression(s)" in capsys.readouterr().out


def test_history_draws_one_figure_per_benchmark(tmp_path: Path) -> None:
    for i, commit in enumerate(("c1", "c2", "c3")):
        _bench_file(
            tmp_path / f"{i}.json", {"t.py::a": 1.0 + i, "t.py::b": 2.0}, commit, f"2026-12-0{i + 1}T00:00:00"
        )
    paths = history(tmp_path)
    assert len(paths) == 2 and all(p.suffix == ".png" and p.stat().st_size > 0 for p in paths)
    csv = (tmp_path / "history" / "history.csv").read_text().splitlines()
    assert len(csv) == 1 + 6 and csv[1].split(",")[4] == "c1"


def test_bad_input(base_records: Path, tmp_path: Path, capsys) -> None:
    bench = _bench_file(tmp_path / "a.json", {"x": 1.0}, "c", "2026-12-01")
    with pytest.raises(ConfigError, match="cannot compare records"):
        compare(base_records, bench)
    with pytest.raises(ConfigError, match="does not exist"):
        compare(tmp_path / "missing", bench)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no run records"):
        compare(empty, bench)
    with pytest.raises(ConfigError, match="no pytest-benchmark files"):
        history(empty)
    assert main(["compare", str(base_records)]) == 2
    assert "give BASE and HEAD" in capsys.readouterr().err
