"""Models kept beside records (issue 18, section 1): a resumed reference uses the weights its records used.

Unit tests copy entries between two cache roots; the end-to-end test runs the toy task with
``--keep-models``, then again on an empty cache, and checks that the second run trained nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.cache import Artefact, Cache, CacheConflictError, CorruptEntryError, copy_entry
from harness.kept_models import KeptModelError, keep_models, kept_entries, restore_models
from harness.records import scan_records

PROJECT = Path(__file__).resolve().parent.parent
KEY = {"task": "toy", "seed": 0}


def _entry(root: Path, weights: torch.Tensor, key: dict | None = None) -> Path:
    store = Cache(root).scope("models", "toy")
    store.get_or_create(key or KEY, lambda: Artefact(tensors={"model.w": weights}, meta={"history": {}}))
    return store.path_for(key or KEY)


def _record(key: str, task: str = "toy") -> dict:
    return {"task": {"name": task, "model": {"key": key}}}


def test_copy_entry_copies_a_verified_entry_that_the_target_cache_reads(tmp_path: Path) -> None:
    source = _entry(tmp_path / "a", torch.arange(6.0))
    target = tmp_path / "b" / "models" / "toy" / source.name
    target.parent.mkdir(parents=True)
    assert copy_entry(source, target) is True
    read = Cache(tmp_path / "b").scope("models", "toy").get_or_create(KEY, lambda: pytest.fail("recomputed"))
    assert torch.equal(read.tensors["model.w"], torch.arange(6.0))
    assert copy_entry(source, target) is False  # the same entry: nothing to do


def test_copy_entry_refuses_a_corrupt_source_and_other_bytes_at_the_target(tmp_path: Path) -> None:
    source = _entry(tmp_path / "a", torch.arange(6.0))
    other = _entry(tmp_path / "b", torch.ones(6))  # the same key trained again with other weights
    with pytest.raises(CacheConflictError, match="other bytes"):
        copy_entry(source, other)
    tensors = source / "tensors.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:-4])
    fresh = tmp_path / "c" / "models" / "toy" / source.name
    fresh.parent.mkdir(parents=True)
    with pytest.raises(CorruptEntryError):
        copy_entry(source, fresh)
    assert not fresh.exists() and not list(fresh.parent.iterdir())  # nothing half-copied left


def test_keep_then_restore_round_trip(tmp_path: Path) -> None:
    cache, results, empty = tmp_path / "cache", tmp_path / "results", tmp_path / "empty"
    entry = _entry(cache, torch.arange(4.0))
    kept = keep_models(
        [_record(entry.name), _record(entry.name), {"task": {"name": "toy", "model": None}}], results, cache
    )
    assert kept == [results / "models" / "toy" / entry.name]
    assert kept_entries(results) == kept
    assert keep_models([_record(entry.name)], results, cache) == []  # already kept
    assert restore_models(results, empty) == [empty / "models" / "toy" / entry.name]
    assert restore_models(results, empty) == []
    assert restore_models(tmp_path / "no-such-results", empty) == []


def test_keep_and_restore_errors_name_the_folders(tmp_path: Path) -> None:
    cache, results = tmp_path / "cache", tmp_path / "results"
    with pytest.raises(KeptModelError, match="not in the cache"):
        keep_models([_record("0123456789abcdef01234567")], results, cache)
    entry = _entry(cache, torch.arange(4.0))
    keep_models([_record(entry.name)], results, cache)
    elsewhere = tmp_path / "elsewhere"
    _entry(elsewhere, torch.zeros(4))  # same address, other weights
    with pytest.raises(KeptModelError, match="other bytes"):
        restore_models(results, elsewhere)
    kept = results / "models" / "toy" / entry.name / "meta.json"
    kept.write_text(kept.read_text() + " ")
    with pytest.raises(KeptModelError, match="corrupt"):
        restore_models(results, tmp_path / "fresh")


def _run(results: Path, cache: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = ["run", "--task", "toy", "--methods", "random", "--metrics", "class_detection"]
    argv += ["--results-dir", str(results), "--cache-dir", str(cache), *extra]
    return subprocess.run(
        [sys.executable, "-m", "harness", *argv], capture_output=True, text=True, cwd=PROJECT, timeout=300
    )


@pytest.mark.slow
def test_a_resumed_run_on_an_empty_cache_uses_the_kept_model(tmp_path: Path) -> None:
    results = tmp_path / "results"
    first = _run(results, tmp_path / "cache-1", "--keep-models")
    assert first.returncode == 0, first.stderr
    (model_dir,) = kept_entries(results)
    assert f"model toy/{model_dir.name}: kept in" in first.stdout

    second = _run(results, tmp_path / "cache-2", "--force")
    assert second.returncode == 0, second.stderr
    assert f"model toy/{model_dir.name}: restored from" in second.stdout
    found, unreadable = scan_records(results / "records", history=True)
    assert not unreadable and len(found) == 2
    models = sorted((r["task"]["model"]["cached"], r["task"]["model"]["key"]) for r in found)
    assert models == [(False, model_dir.name), (True, model_dir.name)]  # the second run trained nothing
    assert json.loads((model_dir / "key.json").read_text())["task"] == "toy"
