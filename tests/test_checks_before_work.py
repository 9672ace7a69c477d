"""Checks before work (issue 16, section 5): unusable folders, empty or repeated seeds and repeated
config keys stop a command at once with one line and exit code 2; leftovers of a killed writer are
cleaned up; records follow the user's umask."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import records

PROJECT = Path(__file__).resolve().parent.parent


def dabench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness", *args], capture_output=True, text=True, cwd=PROJECT, timeout=300
    )


def one_line_error(result: subprocess.CompletedProcess[str], *phrases: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dabench: error:"), result.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


@pytest.mark.slow
def test_unusable_folders_stop_before_any_run(tmp_path: Path) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    run = ["run", "--task", "toy", "--methods", "random", "--metrics", "class_detection"]
    one_line_error(
        dabench(*run, "--results-dir", str(a_file), "--cache-dir", str(tmp_path / "c")),
        "results folder",
        "is a file",
    )
    one_line_error(
        dabench(*run, "--results-dir", str(tmp_path / "r"), "--cache-dir", str(a_file)),
        "cache folder",
        "--cache-dir",
    )
    one_line_error(  # below a file: cannot be created (as root too, unlike a read-only folder)
        dabench(*run, "--results-dir", str(a_file / "sub"), "--cache-dir", str(tmp_path / "c")),
        "cannot be created",
    )
    assert not (tmp_path / "r" / "records").exists() or not list((tmp_path / "r" / "records").iterdir())
    one_line_error(
        dabench("report", "--results-dir", str(tmp_path / "r"), "--out", str(a_file)), "report folder"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_results_folder_stops_before_any_run(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    result = dabench("run", "--task", "toy", "--methods", "random", "--results-dir", str(folder))
    one_line_error(result, "not writable")


def test_bad_seeds_and_repeated_keys_are_errors() -> None:
    run = ["run", "--task", "toy", "--methods", "random", "--metrics", "class_detection"]
    one_line_error(dabench(*run, "--seeds", ""), "at least one seed")
    one_line_error(dabench(*run, "--seeds", "0,0"), "given twice")
    one_line_error(dabench(*run, "--seeds", "a"), "integers")
    one_line_error(dabench("suite", "quick", "--seeds", "", "--list"), "at least one seed")
    one_line_error(
        dabench("run", "--task", "toy", "--method", "dualda:tol=1e-4,tol=1e-3"), "'tol' is given twice"
    )


def test_stale_record_temporaries_are_removed_young_ones_kept(tmp_path: Path) -> None:
    folder = tmp_path / "records"
    folder.mkdir()
    stale, young = folder / ".abc.x1.tmp", folder / ".def.x2.tmp"
    stale.write_text("{")
    young.write_text("{")
    old = time.time() - records.STALE_TEMPORARY_S - 60
    os.utime(stale, (old, old))
    records.remove_stale_temporaries(folder)
    assert not stale.exists() and young.exists()


def test_records_follow_the_umask(tmp_path: Path) -> None:
    from harness.runner import ComponentSpec, RunSpec, TimingConfig, run_one

    record = run_one(
        RunSpec(
            task=ComponentSpec("toy"),
            method=ComponentSpec("random"),
            metrics=(ComponentSpec("class_detection"),),
            results_dir=str(tmp_path),
            cache_dir=str(tmp_path / "cache"),
            timing=TimingConfig(repeats=1, batch_size=8),
        )
    )
    old = os.umask(0o022)
    try:
        path = records.write_record(record, tmp_path / "records")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
