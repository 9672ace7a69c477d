"""Run records: one self-describing JSON file per run, written once and never overwritten.

The record's shape is the :class:`Record` TypedDict below (schema version 2); nested parts are
TypedDicts too, so a type checker sees every key the runner writes and every key a reader reads.
The runner fills a record that :func:`new_record` started; nothing else builds one.

Identity and history. ``run_id`` names WHAT was computed (task, method, configs, metrics, seed);
``record_id`` names one computation of it: ``<run_id>-<UTC time>-<machine id>-<commit>``. A rerun
(``--force``, ``--retry-failed``, a rerun on another machine into the same folder) adds a record
beside the earlier ones; :func:`write_record` refuses to replace a file. Loaders take the latest
record of each run id (:func:`latest_per_run`: by ``created_utc``, then ``record_id``); the earlier
ones stay on disk as the run's history (``scan_records(..., history=True)`` reads them all).

Version 1 (records written before 2026-12-03: one ``<run_id>.json`` per run, overwritten by a
rerun) is read through :func:`upgrade`, which adds what version 1 lacked: ``record_id`` (the run id
plus ``-v1``), ``machine`` (unknown: ids and host None), ``explanation_error`` and
``task.n_explained`` where absent, ``per_point`` None on metric entries that predate it. Records of
either version written before explanations were streamed get ``explanations_kept`` None.

Loaders read keys from the JSON, never from file names.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import logging
import math
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, TypedDict, cast

from harness.cache import current_umask
from harness.timing import MemoryFacts

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
#: Schema versions this harness reads (older ones through :func:`upgrade`).
READABLE_VERSIONS = (1, 2)
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


# =============================================================================================
# The record's shape
# =============================================================================================
class ErrorInfo(TypedDict):
    type: str
    message: str
    traceback: str


class MethodSection(TypedDict):
    name: str
    version: str
    config: dict[str, Any]
    config_hash: str
    label: str  #: the name plus the settings that differ from the defaults, e.g. "dualda(C=0.001)"
    supports: list[str]
    #: read after the fit: a method may learn them while fitting (e.g. the modules EK-FAC tracked)
    attributes_through: str | None
    self_influence_definition: str | None


class ModelInfo(TypedDict):
    key: str  #: the trained model's cache key
    cached: bool  #: read from the cache (True) or trained by this run
    test_accuracy: float
    history: dict[str, Any]  #: the training history (epochs, losses, accuracies)


class TaskSection(TypedDict):
    name: str
    version: str
    variant: str
    config: dict[str, Any]
    config_hash: str
    seed: int
    n_train: int | None  #: None until the data is loaded (a run that failed before)
    n_test: int | None
    n_explained: int | None  #: the test points explained (fewer than n_test under explain_limit)
    num_classes: int | None
    model: ModelInfo | None


class MetricEntry(TypedDict):
    value: float | None
    direction: Literal["higher", "lower"] | str
    version: str
    config: dict[str, Any]
    details: dict[str, Any]
    #: the per-test-point scores whose mean is ``value`` (None for a metric that is not such a mean)
    per_point: list[float] | None
    status: Literal["ok", "failed"]
    error: ErrorInfo | None


#: Peak-memory reading of one phase (:meth:`harness.timing.MemoryReading.to_dict`), in MiB.
MemoryReading = MemoryFacts


class FitTimings(TypedDict):
    cold_s: float | None  #: the fit from scratch (None when the first fit hit the cache)
    warm_s: float  #: a second, fresh instance's fit, which reads the cache
    cache_used: bool


class ExplainTimings(TypedDict):
    per_point_median_s: float
    per_point_min_s: float
    per_point_max_s: float
    per_point_iqr_s: float
    per_point_all_s: list[float]
    repeats: int
    n_points: int  #: test points explained in the first pass
    timed_points: int  #: the repeats after the first pass time the first timed_points points
    batch_size: int
    batch_source: Literal["method", "harness"] | str  #: "method": its prescribed explain batch
    warmup: int
    total_s: float  #: per-point median x n_test_total
    n_test_total: int
    extrapolated: bool


class Timings(TypedDict, total=False):
    """Seconds per phase; a run that failed early has only the phases it reached."""

    model_s: float
    #: the method's one-off process costs (compilation, imports), paid before the timed fit
    warmup_s: float
    fit: FitTimings
    explain: ExplainTimings
    self_influence_s: float | None  #: None unless the method has self-influence and a metric reads it
    metrics_s: dict[str, float | None]


class Memory(TypedDict, total=False):
    fit: MemoryReading
    explain: MemoryReading
    self_influence: MemoryReading


class Sparsity(TypedDict):
    exact_zero_share: float
    l0_eps: float
    hoyer: float


class KeptByMetric(TypedDict):
    kept: str  #: in words, e.g. "top-5 indices per test point"; "nothing" when it read no explanations
    mb: float  #: MiB it held after the last chunk


class ExplanationsKept(TypedDict):
    """What a run kept of its explanations, which it streamed one chunk of test points at a time."""

    chunk_rows: int  #: test points per chunk (the explain batch); the run held one chunk at a time
    dense_mb: float  #: what the whole n_test x n_train float32 matrix would have taken, for scale
    metrics: dict[str, KeptByMetric]


class GitInfo(TypedDict):
    commit: str | None
    dirty: bool | None


class MachineInfo(TypedDict):
    id: str | None  #: :func:`machine`: stable per host; None in records of version 1
    hostname: str | None


class Record(TypedDict):
    schema_version: int
    #: one computation of the run: ``<run_id>-<UTC time>-<machine id>-<commit>``; the file's stem
    record_id: str
    #: what is computed: a hash of (task, task config, method, method config, metrics, seed)
    run_id: str
    created_utc: str  #: ISO 8601, microseconds
    status: Literal["ok", "failed"]
    error: ErrorInfo | None
    method: MethodSection
    task: TaskSection
    metrics: dict[str, MetricEntry]
    timings: Timings
    memory: Memory
    sparsity: Sparsity | None  #: of the explanation matrix (None when the run did not get that far)
    #: None, or why the explanation matrix is unusable (wrong shape, NaN); the run then failed
    explanation_error: str | None
    #: None in records written before explanations were streamed, and when a run failed before
    explanations_kept: ExplanationsKept | None
    diagnostics: dict[str, Any]  #: method-specific numbers (e.g. support vectors)
    git: GitInfo
    machine: MachineInfo
    environment: dict[str, Any]  #: python, platform, torch, device, cpu, gpu, threads, packages


REQUIRED_KEYS: tuple[str, ...] = tuple(Record.__required_keys__)


class RecordError(ValueError):
    """A record file is not a valid run record."""


# =============================================================================================
# Building
# =============================================================================================
def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds")


def new_record(run_id: str, method: MethodSection, task: TaskSection) -> Record:
    """A record of ``run_id`` that says "failed" until :func:`mark_ok`: the one place a record is begun.

    ``record_id`` carries the time, the machine and the commit, so a rerun of the same run id adds a
    record instead of replacing one.
    """
    created = utc_now()
    git, host = git_info(), machine()
    stamp = _dt.datetime.fromisoformat(created).strftime("%Y%m%dT%H%M%S%fZ")
    return {
        "schema_version": SCHEMA_VERSION,
        "record_id": f"{run_id}-{stamp}-{host['id']}-{(git['commit'] or 'nogit')[:10]}",
        "run_id": run_id,
        "created_utc": created,
        "status": "failed",
        "error": None,
        "method": method,
        "task": task,
        "metrics": {},
        "timings": {},
        "memory": {},
        "sparsity": None,
        "explanation_error": None,
        "explanations_kept": None,
        "diagnostics": {},
        "git": git,
        "machine": host,
        "environment": environment(),
    }


def error_info(
    err: BaseException, message: str | None = None, traceback_text: str | None = None
) -> ErrorInfo:
    """What a failed record or metric entry says of ``err`` (its type, message and traceback)."""
    import traceback

    return {
        "type": type(err).__name__,
        "message": str(err) if message is None else message,
        "traceback": traceback_text
        if traceback_text is not None
        else "".join(traceback.format_exception(err)),
    }


def mark_failed(
    record: Record, err: BaseException, message: str | None = None, traceback_text: str | None = None
) -> Record:
    """Set ``record``'s status to "failed" with ``err``'s type, message and traceback."""
    record["status"] = "failed"
    record["error"] = error_info(err, message, traceback_text)
    return record


def mark_ok(record: Record) -> Record:
    record["status"] = "ok"
    record["error"] = None
    return record


# =============================================================================================
# Writing and reading
# =============================================================================================
def write_record(record: Record, directory: str | os.PathLike[str]) -> Path:
    """Write ``record`` to ``<directory>/<record_id>.json``, atomically and never over another file.

    The JSON goes to a temporary file first, which is then linked to its name (a link fails when
    the name is taken: :class:`FileExistsError`, which names the file), so a reader never sees half a
    record and a record, once written, is never replaced.
    """
    validate(record)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{record['record_id']}.json"
    fd, tmp = tempfile.mkstemp(prefix=f".{record['run_id']}.", suffix=".tmp", dir=directory)
    try:
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes it 0600; a group may share the results
        with os.fdopen(fd, "w") as handle:
            json.dump(record, handle, indent=1, sort_keys=True, allow_nan=True)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, target)
        except FileExistsError:
            raise FileExistsError(
                f"{target} exists: records are written once; give the record a new id"
            ) from None
        except OSError:  # a file system without hard links: check, then rename (a narrow race)
            if target.exists():
                raise FileExistsError(f"{target} exists: records are written once") from None
            os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
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


def read_record(path: str | os.PathLike[str]) -> Record:
    """The record in ``path`` (version 1 upgraded); :class:`RecordError` (naming the path) when invalid."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RecordError(f"{path}: not a readable JSON record ({err})") from err
    return upgrade(data, where=str(path))


def upgrade(data: Any, where: str = "record") -> Record:
    """``data`` as a record of the current schema: version 1 is upgraded, version 2 checked.

    Raises
    ------
    RecordError
        ``data`` is not an object, has another schema version, or lacks what a reader needs.
    """
    if not isinstance(data, dict):
        raise RecordError(f"{where}: not a run record (a JSON {type(data).__name__})")
    version = data.get("schema_version")
    if version not in READABLE_VERSIONS:
        raise RecordError(
            f"{where}: schema version {version!r} (this harness reads versions {READABLE_VERSIONS})"
        )
    if version == 1:
        data = _from_version_1(data, where)
    if "explanations_kept" not in data:  # version 2 records written before explanations were streamed
        data = {**data, "explanations_kept": None}
    validate(data, where)
    return cast(Record, data)


def _from_version_1(data: dict[str, Any], where: str) -> dict[str, Any]:
    missing = [k for k in ("run_id", "task", "metrics") if k not in data]
    if missing:
        raise RecordError(f"{where}: missing keys {missing}")
    upgraded = dict(data, schema_version=SCHEMA_VERSION)
    upgraded.setdefault("record_id", f"{data['run_id']}-v1")
    upgraded.setdefault("machine", {"id": None, "hostname": None})
    upgraded.setdefault("explanation_error", None)
    upgraded.setdefault("explanations_kept", None)
    task = data["task"]
    if isinstance(task, dict):
        upgraded["task"] = {"n_explained": task.get("n_test"), **task}
    if isinstance(data["metrics"], dict):
        upgraded["metrics"] = {
            name: ({"per_point": None, **entry} if isinstance(entry, dict) else entry)
            for name, entry in data["metrics"].items()
        }
    return upgraded


def validate(record: Any, where: str = "record") -> None:
    """Raise :class:`RecordError` unless ``record`` is a run record of the current schema."""
    if not isinstance(record, dict):
        raise RecordError(f"{where}: not a run record (a JSON {type(record).__name__})")
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        raise RecordError(f"{where}: missing keys {missing}")
    if record["schema_version"] != SCHEMA_VERSION:
        raise RecordError(
            f"{where}: schema version {record['schema_version']} (this harness writes {SCHEMA_VERSION})"
        )
    if record["status"] not in ("ok", "failed"):
        raise RecordError(f"{where}: status must be 'ok' or 'failed', got {record['status']!r}")
    for key in ("run_id", "record_id", "created_utc"):
        if not isinstance(record[key], str) or not record[key]:
            raise RecordError(f"{where}: {key!r} must be a non-empty string, got {record[key]!r}")
    for key in ("method", "task", "metrics", "timings", "memory", "machine"):
        if not isinstance(record[key], dict):
            raise RecordError(f"{where}: {key!r} must be an object, got {type(record[key]).__name__}")
    for key, fields in (("method", ("name", "label", "config")), ("task", ("name", "n_train", "n_test"))):
        absent = [f for f in fields if f not in record[key]]
        if absent:
            raise RecordError(f"{where}: {key!r} lacks {absent}")
    broken = [name for name, entry in record["metrics"].items() if not isinstance(entry, dict)]
    if broken:
        raise RecordError(f"{where}: metric entries {broken} are not objects")


def _order(record: Record) -> tuple[float, str]:
    """Sort key of the records of one run: the later ``created_utc`` wins, then the larger record id."""
    try:
        created = _dt.datetime.fromisoformat(record["created_utc"])
        if created.tzinfo is None:
            created = created.replace(tzinfo=_dt.UTC)
        when = created.timestamp()
    except (TypeError, ValueError):
        when = -math.inf
    return when, record["record_id"]


def latest_per_run(found: Iterable[Record]) -> list[Record]:
    """The latest record of each run id (:func:`_order`), in the order the run ids first appear."""
    latest: dict[str, Record] = {}
    for record in found:
        held = latest.get(record["run_id"])
        if held is None or _order(record) > _order(held):
            latest[record["run_id"]] = record
    return list(latest.values())


def scan_records(
    directory: str | os.PathLike[str], *, history: bool = False
) -> tuple[list[Record], list[tuple[str, str]]]:
    """The valid records under ``directory`` (recursively; temp files ignored) and the unreadable ones.

    Parameters
    ----------
    history:
        False (the default): the latest record of each run id. True: every record, earlier
        computations of a run included.

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
    return (good if history else latest_per_run(good)), bad


def iter_records(directory: str | os.PathLike[str]) -> Iterator[Record]:
    """The latest valid record of each run under ``directory``; an unreadable file is logged and skipped."""
    good, bad = scan_records(directory)
    for path, reason in bad:
        log.warning("skipping %s: %s", path, reason)
    yield from good


def latest_record(directory: str | os.PathLike[str], run_id: str) -> Record | None:
    """The latest valid record of ``run_id`` in ``directory`` (not recursive), or None.

    Reads only the files named after the run id (``<run_id>.json`` of version 1,
    ``<run_id>-*.json`` of version 2) and keeps those whose JSON says ``run_id``.
    """
    folder = Path(directory)
    found = []
    for path in [folder / f"{run_id}.json", *sorted(folder.glob(f"{run_id}-*.json"))]:
        if not path.exists():
            continue
        try:
            record = read_record(path)
        except RecordError as err:
            log.warning("skipping %s: %s", path, err)
            continue
        if record["run_id"] == run_id:
            found.append(record)
    return latest_per_run(found)[0] if found else None


def set_aside_unreadable(directory: str | os.PathLike[str], run_id: str) -> list[Path]:
    """Rename the unreadable record files of ``run_id`` in ``directory`` to ``.<name>.unreadable``.

    Called before a run is computed again, so that the broken file its new record supersedes is no
    longer reported as unreadable, yet stays on disk (hidden: loaders skip dot-files) for a look.
    Returns the new paths; each rename is logged with both paths.
    """
    folder = Path(directory)
    moved = []
    for path in [folder / f"{run_id}.json", *sorted(folder.glob(f"{run_id}-*.json"))]:
        if not path.exists():
            continue
        try:
            read_record(path)
        except RecordError as err:
            target = path.with_name(f".{path.name}.unreadable")
            os.replace(path, target)
            log.warning("set %s aside as %s before computing its run again: %s", path, target, err)
            moved.append(target)
    return moved


# =============================================================================================
# Where a record comes from
# =============================================================================================
@functools.cache
def git_info() -> GitInfo:
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
def machine() -> MachineInfo:
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

    packages: dict[str, str | None] = {}
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
