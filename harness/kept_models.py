"""Trained models kept beside a results folder's records, so that a reference stays one set of weights.

A suite that is resumed later, on another day or another machine, trains its model again when
the cache no longer holds it; the new weights need not equal the old ones bit for bit (another
CPU, another thread count), and the records of one reference would then explain two models. A
results folder can therefore keep the model entries its records were computed with, in the cache's
own layout::

    <results-dir>/models/<task>/<model key>/   key.json, checksums.json, tensors.safetensors, meta.json

- :func:`keep_models` (``dabench suite ... --keep-models``) copies the entry of every record's
  model (``record["task"]["model"]["key"]``) from the cache into that folder;
- :func:`restore_models` (every ``dabench suite`` and ``dabench run``, before its runs) copies the
  kept entries into the cache where it lacks them. Entries are checked against their checksums
  on both copies; a cache entry at the same address with other bytes is an error that names both
  folders, never a silent choice of one set of weights.

Only the model entries travel; method artefacts are recomputed (their cost is what is measured).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from harness.cache import CacheConflictError, CorruptEntryError, copy_entry
from harness.records import Record

log = logging.getLogger(__name__)

#: The folder of a results directory that holds kept models, and the cache's folder of models.
MODELS_FOLDER = "models"


class KeptModelError(RuntimeError):
    """A kept model cannot be copied: it is corrupt, missing, or the cache holds other weights."""


def kept_entries(results_dir: str | Path) -> list[Path]:
    """The kept model entries of ``results_dir`` (``models/<task>/<key>/``), sorted."""
    root = Path(results_dir) / MODELS_FOLDER
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("*/*") if p.is_dir() and not p.name.startswith("."))


def restore_models(results_dir: str | Path, cache_dir: str | Path) -> list[Path]:
    """Copy the kept models of ``results_dir`` into the cache where missing; the entries copied.

    Raises
    ------
    KeptModelError
        A kept entry fails its checksums, or the cache holds other bytes at its address.
    """
    copied = []
    for entry in kept_entries(results_dir):
        target = Path(cache_dir) / MODELS_FOLDER / entry.parent.name / entry.name
        if _copy(entry, target, why=f"kept beside the records of {results_dir}"):
            copied.append(target)
    if copied:
        log.info("restored %d kept model(s) from %s into %s", len(copied), results_dir, cache_dir)
    return copied


def keep_models(records: Iterable[Record], results_dir: str | Path, cache_dir: str | Path) -> list[Path]:
    """Copy the model entry of each record from the cache into ``results_dir/models``; the new copies.

    Records without a model (a failure before training) are skipped.

    Raises
    ------
    KeptModelError
        A record's model is not in the cache (trained with another ``--cache-dir``), is corrupt,
        or ``results_dir`` already keeps other bytes under its key.
    """
    copied = []
    wanted = set()
    for record in records:
        model = record["task"].get("model")
        if model:
            wanted.add((record["task"]["name"], model["key"]))
    for task, key in sorted(wanted):
        source = Path(cache_dir) / MODELS_FOLDER / task / key
        if not source.is_dir():
            raise KeptModelError(
                f"the model {task}/{key} of the records in {results_dir} is not in the cache {cache_dir}; "
                "pass the --cache-dir the runs used"
            )
        target = Path(results_dir) / MODELS_FOLDER / task / key
        target.parent.mkdir(parents=True, exist_ok=True)
        if _copy(source, target, why="to keep beside the records"):
            copied.append(target)
    return copied


def _copy(source: Path, target: Path, why: str) -> bool:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        return copy_entry(source, target)
    except CorruptEntryError as err:
        raise KeptModelError(f"model entry {source} ({why}) is corrupt: {err}; delete it") from err
    except CacheConflictError as err:
        raise KeptModelError(str(err)) from err
