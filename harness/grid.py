"""Grids: many specs run, skipping finished records, inline or through a dispatcher.

Composes the runner (one spec -> one record) and dispatch (where runs execute): the only module that
imports both, so that neither imports the other.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from harness import records
from harness.config import ConfigError
from harness.model_store import load_task_data
from harness.runner import run_one
from harness.specs import ResolvedSpec, RunSpec

if TYPE_CHECKING:
    from harness.dispatch import DispatchConfig

log = logging.getLogger(__name__)


@dataclass
class GridOutcome:
    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[Path] = field(default_factory=list)


def existing_status(item: ResolvedSpec) -> str | None:
    """The status of the latest record of ``item``'s run ("ok", "failed"), None when it has none."""
    latest = records.latest_record(item.records_dir(), item.run_id)
    return None if latest is None else latest["status"]


def check_writable_folder(path: str | os.PathLike[str], what: str) -> Path:
    """Raise ConfigError (one line) unless ``path`` is, or can be created as, a folder this process writes.

    Called before any work, so that a results folder that is read-only or a cache "folder" that is
    a file stops a grid at once instead of failing it run by run after the first has been computed.
    Creates nothing: a missing folder is checked through its nearest existing parent.
    """
    folder = Path(path)
    flag = {"results": "--results-dir", "cache": "--cache-dir", "report": "--out"}.get(what, what)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"the {what} folder {folder} is a file; give {flag} a folder")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(
            f"the {what} folder {folder} cannot be created: {existing} is a file; give {flag} a folder"
        )
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".dabench-write-check-"):
            pass
    except OSError as err:
        raise ConfigError(
            f"the {what} folder {folder} is not writable ({err.strerror or err}); give {flag} a folder "
            "you can write"
        ) from err
    return folder


def preflight(specs: Sequence[RunSpec]) -> list[ResolvedSpec]:
    """Resolve every spec and load every task's data once, before anything is written.

    Bad names, config keys, variants and sizes fail here with a one-line error, so a grid with
    bad input leaves no partial files behind.
    """
    resolved = [spec.resolve() for spec in specs]
    for item in resolved:
        load_task_data(item.task)
    ids = [r.run_id for r in resolved]
    if len(set(ids)) != len(ids):
        raise ConfigError("the grid lists the same run twice; remove the duplicate spec")
    return resolved


def run_grid(
    specs: Iterable[RunSpec],
    *,
    force: bool = False,
    retry_failed: bool = False,
    dispatch: DispatchConfig | None = None,
    progress: bool | None = None,
    on_record: Callable[[records.Record, Path], None] | None = None,
    on_start: Callable[[int, int, str], None] | None = None,
) -> GridOutcome:
    """Run every spec that has no record yet; with ``retry_failed`` also those whose record failed;
    with ``force`` all of them.

    Records are written one by one as runs finish, so an interrupted grid loses at most the runs in
    flight and a rerun picks up where it stopped; a run computed again adds a record beside the
    earlier ones (the latest counts). ``dispatch`` chooses where the runs execute
    (:mod:`harness.dispatch`; default inline, in this process). ``on_start(index, total, what)`` is
    called before each inline run; ``on_record(record, path)`` after each written record.
    """
    from tqdm.auto import tqdm

    from harness.dispatch import DispatchConfig, check_executor_available
    from harness.dispatch import dispatch as dispatch_jobs

    dispatch = dispatch if dispatch is not None else DispatchConfig()
    check_executor_available(dispatch)
    specs = list(specs)
    for path, what in {(s.results_dir, "results") for s in specs} | {(s.cache_dir, "cache") for s in specs}:
        check_writable_folder(path, what)
    resolved = preflight(specs)
    for folder in {item.records_dir() for item in resolved}:
        records.remove_stale_temporaries(folder)
    outcome = GridOutcome()
    todo: list[ResolvedSpec] = []
    for item in resolved:
        latest = records.latest_record(item.records_dir(), item.run_id)
        if latest is None or force or (latest["status"] == "failed" and retry_failed):
            records.set_aside_unreadable(item.records_dir(), item.run_id)
            todo.append(item)
        else:
            outcome.skipped.append(item.records_dir() / f"{latest['record_id']}.json")

    def written(path: Path, record: records.Record) -> None:
        (outcome.written if record["status"] == "ok" else outcome.failed).append(path)
        if on_record is not None:
            on_record(record, path)

    if dispatch.executor != "inline":
        dispatch_jobs(todo, dispatch, on_done=lambda path: written(path, records.read_record(path)))
        return outcome
    bar = tqdm(todo, desc="runs", unit="run", disable=None if progress is None else not progress)
    for index, item in enumerate(bar, start=1):
        what = f"{item.method.name} on {item.task.name}/{item.task.config.variant}"
        bar.set_postfix_str(what)
        if on_start is not None:
            on_start(index, len(todo), what)
        record = run_one(item.spec)
        written(records.write_record(record, item.records_dir()), record)
    return outcome
