"""Benchmarks: measured, never asserted. Run them with

    .venv/bin/python -m pytest tests/benchmarks --benchmark-only --benchmark-json results/benchmarks/NAME.json

Each benchmark times our code with pytest-benchmark and its comparison (scikit-learn, a bare
matmul) in the same process, one after the other, and stores both and their ratio in the
benchmark's ``extra_info``; the session ends with a table of those ratios.
"""

from __future__ import annotations

from typing import Any

import pytest

_ROWS: list[dict[str, Any]] = []


@pytest.fixture
def report_ratio(request: pytest.FixtureRequest):
    """``report_ratio(benchmark, **numbers)``: store numbers in extra_info and the final table."""

    def record(benchmark: Any, **numbers: Any) -> None:
        benchmark.extra_info.update(numbers)
        _ROWS.append({"benchmark": request.node.name, **numbers})

    return record


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _ROWS:
        return
    import pandas as pd

    terminalreporter.write_sep("=", "measured ratios (ours / reference; < 1 means ours is faster)")
    frame = pd.DataFrame(_ROWS)
    terminalreporter.write_line(frame.to_markdown(index=False, floatfmt=".4g"))
