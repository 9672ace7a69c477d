"""Clocks and memory gauges owned by the harness (methods never time themselves).

- Every clock read synchronises CUDA first, so GPU work queued by a phase is inside its time.
- Peak memory per phase: on Linux the resident-set high-water mark (VmHWM) is reset before the
  phase through /proc/self/clear_refs and read after it; on CUDA the allocator's peak is reset and
  read likewise. Where the reset is not permitted the record says so (``rss_peak_scope``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict, TypeVar

R = TypeVar("R")

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def synchronize() -> None:
    """Wait for queued CUDA work (no-op on CPU or when torch is not imported)."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def now() -> float:
    synchronize()
    return time.perf_counter()


def _status_mb(field_name: str) -> float | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024.0  # kB -> MiB
    except OSError:
        return None
    return None


class MemoryFacts(TypedDict):
    """A :class:`MemoryReading` in a record, in MiB (``harness.records.MemoryReading``)."""

    rss_start_mb: float | None
    rss_peak_mb: float | None
    rss_increase_mb: float | None
    rss_peak_scope: str  #: "phase" when the high-water mark was reset before the phase, else "process"
    cuda_peak_mb: float | None


@dataclass
class MemoryReading:
    rss_start_mb: float | None = None
    rss_peak_mb: float | None = None
    #: "phase" when the high-water mark was reset before the phase, else "process".
    rss_peak_scope: str = "process"
    cuda_peak_mb: float | None = None

    @property
    def rss_increase_mb(self) -> float | None:
        if self.rss_start_mb is None or self.rss_peak_mb is None:
            return None
        return max(0.0, self.rss_peak_mb - self.rss_start_mb)

    def to_dict(self) -> MemoryFacts:
        return {
            "rss_start_mb": self.rss_start_mb,
            "rss_peak_mb": self.rss_peak_mb,
            "rss_increase_mb": self.rss_increase_mb,
            "rss_peak_scope": self.rss_peak_scope,
            "cuda_peak_mb": self.cuda_peak_mb,
        }


@contextmanager
def peak_memory() -> Iterator[MemoryReading]:
    """Measure the peak resident memory (and CUDA allocator peak) of the enclosed block."""
    import sys

    reading = MemoryReading(rss_start_mb=_status_mb("VmRSS"))
    try:
        _CLEAR_REFS.write_text("5")  # resets VmHWM to the current RSS
        reading.rss_peak_scope = "phase"
    except OSError:
        reading.rss_peak_scope = "process"
    torch = sys.modules.get("torch")  # only when loaded: measuring must not import torch
    cuda = torch.cuda if torch is not None and torch.cuda.is_available() else None
    if cuda is not None:
        cuda.reset_peak_memory_stats()
    try:
        yield reading
    finally:
        reading.rss_peak_mb = _status_mb("VmHWM")
        if cuda is not None:
            reading.cuda_peak_mb = cuda.max_memory_allocated() / 2**20


@dataclass
class Timed:
    seconds: float
    memory: MemoryReading


def timed(fn: Callable[[], R]) -> tuple[R, Timed]:
    """Run ``fn`` once; return its result, its wall time (CUDA-synchronised) and peak memory."""
    with peak_memory() as mem:
        start = now()
        result = fn()
        seconds = now() - start
    return result, Timed(seconds, mem)


@dataclass
class RepeatStats:
    """Per-item time over repeats of the same work (e.g. seconds per explained test point)."""

    per_item_s: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.per_item_s)

    def to_dict(self) -> dict[str, Any]:
        values = sorted(self.per_item_s)
        q1, q3 = (values[0], values[-1]) if len(values) < 4 else _quartiles(values)
        return {
            "median_s": self.median,
            "min_s": values[0],
            "max_s": values[-1],
            "iqr_s": q3 - q1,
            "all_s": values,
        }


def _quartiles(values: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]
