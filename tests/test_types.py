"""The engine is type-checked: mypy, configured in pyproject.toml ([tool.mypy]: harness/), finds nothing.

The record's TypedDicts (harness/records.py) make this check mean something: a reader that reads a
key the runner does not write, or the runner writing a value of another type, fails here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_mypy_finds_no_error_in_the_engine(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "mypy-cache")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Success: no issues found" in result.stdout


@pytest.mark.slow
def test_mypy_catches_a_reader_of_a_key_the_record_lacks(tmp_path: Path) -> None:
    reader = tmp_path / "reader.py"
    reader.write_text(
        "from harness.records import Record\n\n\n"
        "def seconds(record: Record) -> float:\n"
        '    return record["timings"]["explain"]["total_seconds"]\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), str(reader)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 1, result.stdout
    assert 'TypedDict "ExplainTimings" has no key "total_seconds"' in result.stdout
