"""A broken record never breaks a command (issue 16, section 3): report, compare and the rerun of a
grid go on; the unreadable files are named, and their runs are computed again."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness import records
from harness.grid import run_grid
from harness.runner import ComponentSpec, RunSpec, TimingConfig

PROJECT = Path(__file__).resolve().parent.parent


def _spec(results: Path, cache: Path, method: str) -> RunSpec:
    return RunSpec(
        task=ComponentSpec("toy"),
        method=ComponentSpec(method),
        metrics=(ComponentSpec("class_detection"),),
        results_dir=str(results),
        cache_dir=str(cache),
        timing=TimingConfig(repeats=1, batch_size=8),
    )


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[RunSpec]]:
    root = tmp_path_factory.mktemp("broken-records")
    specs = [
        _spec(root / "results", root / "cache", m)
        for m in ("random", "feature_similarity", "input_similarity")
    ]
    outcome = run_grid(specs)
    assert len(outcome.written) == 3 and not outcome.failed
    return root, specs


BROKEN = {
    "truncated": lambda text: text[: len(text) // 2],
    "null": lambda text: "null",
    "number": lambda text: "42",
    "list": lambda text: "[1, 2]",
    "missing_keys": lambda text: json.dumps({"run_id": "x", "status": "ok"}),
    "broken_content": lambda text: json.dumps({**json.loads(text), "task": 7}),
}


@pytest.mark.parametrize("damage", sorted(BROKEN))
def test_report_compare_and_rerun_go_on(damage: str, grid, tmp_path: Path) -> None:
    root, specs = grid
    results = tmp_path / "results"
    subprocess.run(["cp", "-r", str(root / "results"), str(results)], check=True)
    paths = sorted((results / "records").glob("*.json"))
    victim = paths[0]
    victim.write_text(BROKEN[damage](victim.read_text()))

    good, bad = records.scan_records(results / "records")
    assert len(good) == 2 and [p for p, _ in bad] == [str(victim)]

    cli = [sys.executable, "-m", "harness"]
    report = subprocess.run(
        [*cli, "report", "--results-dir", str(results), "--no-figures"],
        capture_output=True,
        text=True,
        cwd=PROJECT,
    )
    assert report.returncode == 0, report.stderr[-2000:]
    assert "unreadable record" in report.stdout and "Traceback" not in report.stderr
    compare = subprocess.run(
        [*cli, "compare", str(results), str(results)], capture_output=True, text=True, cwd=PROJECT
    )
    assert compare.returncode == 0, compare.stderr[-2000:]

    # the rerun of the grid computes the broken record's run again and skips the others
    moved = [
        RunSpec(**{**s.__dict__, "results_dir": str(results), "cache_dir": str(root / "cache")})
        for s in specs
    ]
    outcome = run_grid(moved)
    assert len(outcome.written) == 1 and len(outcome.skipped) == 2
    rerun = records.read_record(outcome.written[0])
    assert rerun["status"] == "ok" and victim.name.startswith(rerun["run_id"])
    # the broken file is kept aside, hidden from the loaders, which now find three good records
    assert not victim.exists() and (victim.parent / f".{victim.name}.unreadable").exists()
    assert records.scan_records(results / "records") == (records.scan_records(results / "records")[0], [])
    assert len(records.scan_records(results / "records")[0]) == 3


def test_a_broken_record_given_by_name_is_a_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "record.json"
    bad.write_text("null")
    result = subprocess.run(
        [sys.executable, "-m", "harness", "compare", str(bad), str(bad)],
        capture_output=True,
        text=True,
        cwd=PROJECT,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "not a run record" in result.stderr
