"""Run records: one self-describing JSON file per run, written atomically.

Schema (``SCHEMA_VERSION`` 1); every key is always present, ``None`` where it does not apply::

    schema_version  int
    run_id          str   hash of (task, task config, method, method config, metrics, seed)
    created_utc     str   ISO 8601
    status          "ok" | "failed"
    error           None | {"type", "message", "traceback"}
    method          {"name", "version", "config", "config_hash", "label", "supports",
                     "attributes_through", "self_influence_definition" (read after the fit: a method
                     may learn them while fitting, e.g. the modules EK-FAC tracked)}
    task            {"name", "version", "variant", "config", "config_hash", "seed",
                     "n_train", "n_test", "num_classes", "model": {"key", "cached", "test_accuracy"}}
    metrics         {name: {"value", "direction", "version", "config", "details", "per_point", "status",
                    "error"}}; "per_point": the per-test-point scores whose mean is "value" (None for a
                    metric that is not such a mean; absent from records written before it existed)
    timings         {"model_s", "warmup_s" (the method's one-off process costs, paid before the
                     timed fit and never counted in it), "fit": {"cold_s", "warm_s"}, "explain":
                     {per-point stats, "n_points", "timed_points" (repeats after the first pass
                     time the first timed_points points), "batch_size", "batch_source" ("method": its
                     prescribed explain batch; "harness"), "warmup", "total_s"}, "self_influence_s"
                     (None unless the method has self-influence and a metric reads it),
                     "metrics_s": {name: s}}
    memory          {"fit", "explain", "self_influence": peak-memory readings in MiB}
    sparsity        {"exact_zero_share", "l0_eps", "hoyer"} of the explanation matrix (None when malformed)
    explanation_error  None, or why the explanation matrix is unusable (wrong shape, NaN); every
                    metric that reads explanations then fails with it (absent from records
                    written before it existed)
    diagnostics     method-specific numbers (e.g. support vectors)
    git             {"commit", "dirty"}
    environment     {"python", "platform", "torch", "device", "cpu", "gpu", "threads", "packages"}

Loaders read keys from the JSON, never from file names.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import logging
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from harness.cache import current_umask

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
REQUIRED_KEYS = (
    "schema_version",
    "run_id",
    "created_utc",
    "status",
    "error",
    "method",
    "task",
    "metrics",
    "timings",
    "memory",
    "sparsity",
    "diagnostics",
    "git",
    "environment",
)
KEY_PACKAGES = (
    "torch",
    "torchvision",
    "numpy",
    "quanda",
    "captum",
    "traker",
    "kronfluence",
    "zennit",
    "submitit",
    "scikit-learn",
    "pandas",
)
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class RecordError(ValueError):
    """A record file is not a valid run record."""


def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def write_record(record: dict[str, Any], directory: str | os.PathLike[str]) -> Path:
    """Write ``record`` to ``<directory>/<run_id>.json`` atomically (temp file + os.replace)."""
    validate(record)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{record['run_id']}.json"
    fd, tmp = tempfile.mkstemp(prefix=f".{record['run_id']}.", suffix=".tmp", dir=directory)
    try:
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes it 0600; a group may share the results
        with os.fdopen(fd, "w") as handle:
            json.dump(record, handle, indent=1, sort_keys=True, allow_nan=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


#: A temporary record file older than this was left by a writer that was stopped mid-write.
STALE_TEMPORARY_S = 600


def remove_stale_temporaries(directory: str | os.PathLike[str]) -> None:
    """Delete the ``.<run_id>.*.tmp`` files that writers stopped mid-write left in ``directory``.

    Only files older than :data:`STALE_TEMPORARY_S`: a record is written in well under a second, so
    a younger one may belong to a writer still at work (another job of the grid).
    """
    now = time.time()
    for path in Path(directory).glob(".*.tmp"):
        try:
            if now - path.stat().st_mtime > STALE_TEMPORARY_S:
                path.unlink()
                log.info("removed %s, left by a writer that was stopped mid-write", path)
        except FileNotFoundError:
            continue


def read_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The record in ``path``; :class:`RecordError` (naming the path) when it is not a valid one."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RecordError(f"{path}: not a readable JSON record ({err})") from err
    validate(record, where=str(path))
    return record


def scan_records(directory: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """The valid records under ``directory`` (recursively; temp files ignored) and the unreadable ones.

    Returns
    -------
    tuple
        ``(records, unreadable)``: ``unreadable`` lists ``(path, reason)`` of the files that are not
        valid records (truncated, not JSON, not an object, a missing key, another schema). Commands
        report them and go on; a grid's rerun computes their runs again.
    """
    good, bad = [], []
    for path in sorted(Path(directory).rglob("*.json")):
        if path.name.startswith("."):
            continue
        try:
            good.append(read_record(path))
        except RecordError as err:
            bad.append((str(path), str(err)))
    return good, bad


def iter_records(directory: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Every valid record under ``directory`` (recursively); an unreadable one is logged and skipped."""
    good, bad = scan_records(directory)
    for path, reason in bad:
        log.warning("skipping %s: %s", path, reason)
    yield from good


def validate(record: Any, where: str = "record") -> None:
    """Raise :class:`RecordError` unless ``record`` is a run record of this schema."""
    if not isinstance(record, dict):
        raise RecordError(f"{where}: not a run record (a JSON {type(record).__name__})")
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        raise RecordError(f"{where}: missing keys {missing}")
    if record["schema_version"] != SCHEMA_VERSION:
        raise RecordError(
            f"{where}: schema version {record['schema_version']} (this harness reads {SCHEMA_VERSION})"
        )
    if record["status"] not in ("ok", "failed"):
        raise RecordError(f"{where}: status must be 'ok' or 'failed', got {record['status']!r}")
    for key in ("method", "task", "metrics", "timings", "memory"):
        if not isinstance(record[key], dict):
            raise RecordError(f"{where}: {key!r} must be an object, got {type(record[key]).__name__}")
    for key, fields in (("method", ("name", "label", "config")), ("task", ("name", "n_train", "n_test"))):
        absent = [f for f in fields if f not in record[key]]
        if absent:
            raise RecordError(f"{where}: {key!r} lacks {absent}")
    broken = [name for name, entry in record["metrics"].items() if not isinstance(entry, dict)]
    if broken:
        raise RecordError(f"{where}: metric entries {broken} are not objects")


@functools.cache
def git_info() -> dict[str, Any]:
    """Commit and dirty flag of the project checkout (None outside a git work tree)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


@functools.cache
def machine() -> dict[str, str]:
    """Which machine wrote a record: ``{"id", "hostname"}``.

    ``id`` is 12 hex digits of a hash of the host's ``/etc/machine-id`` (systemd's stable id, when the
    file is there), its host name and its network card's address: the same on every run of one host,
    different across hosts, and no name or address given away. Two hosts of the same type can train
    different models (floating-point order differs), so a comparison of records needs to know which
    machine wrote each.
    """
    import hashlib
    import socket
    import uuid

    try:
        machine_id = Path("/etc/machine-id").read_text().strip()
    except OSError:
        machine_id = ""
    hostname = socket.gethostname()
    text = f"{machine_id}|{hostname}|{uuid.getnode():012x}"
    return {"id": hashlib.blake2b(text.encode(), digest_size=6).hexdigest(), "hostname": hostname}


@functools.cache
def environment() -> dict[str, Any]:
    import torch

    packages = {}
    for name in KEY_PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "device": "cuda" if cuda else "cpu",
        "cpu": _cpu_name(),
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "packages": packages,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
