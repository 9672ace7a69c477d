"""The cache never lies: an entry whose bytes changed, a truncated or missing file, an entry from
before checksums, are moved aside and computed again, never returned (issue 16, section 2)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from harness.cache import Artefact, Cache, CacheConflictError


class Counter:
    """A compute function that counts its calls and returns a fixed artefact."""

    def __init__(self, folder_root: Path | None = None) -> None:
        self.calls = 0
        self.folder_root = folder_root

    def __call__(self) -> Artefact:
        self.calls += 1
        folder = None
        if self.folder_root is not None:
            folder = self.folder_root / f"lib-{self.calls}"
            (folder / "sub").mkdir(parents=True)
            (folder / "sub" / "factors.bin").write_bytes(bytes(range(256)) * 4)
        return Artefact({"w": torch.arange(100, dtype=torch.float32)}, {"n": 100}, folder)


def _entry(cache: Cache, key: dict) -> Path:
    return cache.path_for(key)


def _overwrite_same_size(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(bytes((b + 1) % 256 for b in data[:-64]) + data[-64:])


@pytest.mark.parametrize(
    "damage",
    ["tensors_garbage", "tensors_truncated", "meta_missing", "meta_garbage", "no_checksums", "key_garbage"],
)
def test_a_damaged_entry_is_moved_aside_and_computed_again(damage: str, tmp_path: Path) -> None:
    cache, key, compute = Cache(tmp_path), {"k": 1}, Counter()
    first = cache.get_or_create(key, compute)
    entry = _entry(cache, key)
    if damage == "tensors_garbage":
        _overwrite_same_size(entry / "tensors.safetensors")
    elif damage == "tensors_truncated":
        data = (entry / "tensors.safetensors").read_bytes()
        (entry / "tensors.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "meta_missing":
        (entry / "meta.json").unlink()
    elif damage == "meta_garbage":
        (entry / "meta.json").write_text('{"n": 7}')
    elif damage == "no_checksums":  # an entry written before checksums existed
        (entry / "checksums.json").unlink()
    elif damage == "key_garbage":
        (entry / "key.json").write_bytes(b"\x00" * 20)

    again = Cache(tmp_path)
    assert not again.contains(key)
    second = again.get_or_create(key, compute)
    assert compute.calls == 2, "the damaged entry must be computed again"
    assert torch.equal(second.tensors["w"], first.tensors["w"]) and second.meta == {"n": 100}
    assert again.stats.corrupt == 1 and again.stats.misses == 1
    aside = list(tmp_path.glob(".corrupt-*"))
    assert len(aside) == 1, "the damaged entry is kept for inspection"
    # the recomputed entry is whole: a third reader hits it
    third = Cache(tmp_path)
    assert torch.equal(third.get_or_create(key, compute).tensors["w"], first.tensors["w"])
    assert compute.calls == 2 and third.stats.hits == 1


def test_library_files_are_checked_too(tmp_path: Path) -> None:
    cache, key = Cache(tmp_path / "cache"), {"k": "folder"}
    compute = Counter(folder_root=tmp_path / "scratch")
    artefact = cache.get_or_create(key, compute)
    assert artefact.folder == _entry(cache, key) / "files"
    factors = artefact.folder / "sub" / "factors.bin"
    assert factors.read_bytes() == bytes(range(256)) * 4
    hit = Cache(tmp_path / "cache").get_or_create(key, compute)
    assert compute.calls == 1 and hit.folder == artefact.folder
    _overwrite_same_size(factors)
    again = Cache(tmp_path / "cache").get_or_create(key, compute)
    assert compute.calls == 2
    assert (again.folder / "sub" / "factors.bin").read_bytes() == bytes(range(256)) * 4
    (again.folder / "sub" / "extra.bin").write_bytes(b"x")  # a file that was never written with the entry
    assert not Cache(tmp_path / "cache").contains(key)


def test_a_different_key_is_still_an_error(tmp_path: Path) -> None:
    cache, key = Cache(tmp_path), {"k": 1}
    cache.get_or_create(key, Counter())
    entry = _entry(cache, key)
    (entry / "key.json").write_text(json.dumps({"k": 2}))
    with pytest.raises(CacheConflictError, match="delete that directory"):
        Cache(tmp_path).get_or_create(key, Counter())


def test_half_written_temporaries_are_removed_by_the_next_writer(tmp_path: Path) -> None:
    cache, key = Cache(tmp_path), {"k": 3}
    entry = _entry(cache, key)
    entry.parent.mkdir(parents=True, exist_ok=True)
    stale = entry.parent / f".{entry.name}.killed"
    stale.mkdir()
    (stale / "tensors.safetensors").write_bytes(b"half")
    cache.get_or_create(key, Counter())
    assert not stale.exists()


def test_entries_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        cache, key = Cache(tmp_path), {"k": 4}
        cache.get_or_create(key, Counter())
    finally:
        os.umask(old)
    entry = _entry(cache, key)
    assert entry.stat().st_mode & 0o777 == 0o755
    assert (entry / "tensors.safetensors").stat().st_mode & 0o777 == 0o644


def test_a_corrupt_model_entry_is_retrained_not_used(tmp_path: Path) -> None:
    """The audit's case: a model entry overwritten with garbage of the same size gave a different
    test accuracy and different metrics with exit code 0. Now the model is retrained: same numbers."""
    from harness.runner import ComponentSpec, RunSpec, TimingConfig, run_one

    spec = RunSpec(
        task=ComponentSpec("toy"),
        method=ComponentSpec("feature_similarity"),
        metrics=(ComponentSpec("class_detection"),),
        results_dir=str(tmp_path / "results"),
        cache_dir=str(tmp_path / "cache"),
        timing=TimingConfig(repeats=1, batch_size=8),
    )
    first = run_one(spec)
    assert first["status"] == "ok", first["error"]
    damaged = list((tmp_path / "cache").rglob("tensors.safetensors"))
    assert damaged
    for path in damaged:
        _overwrite_same_size(path)
    second = run_one(spec)
    assert second["status"] == "ok", second["error"]
    assert second["task"]["model"]["cached"] is False  # retrained, not read
    assert second["task"]["model"]["test_accuracy"] == first["task"]["model"]["test_accuracy"]
    assert second["metrics"]["class_detection"]["value"] == first["metrics"]["class_detection"]["value"]
