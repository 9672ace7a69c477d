"""Content-addressed cache shared by runs, methods and (later) concurrent jobs.

Layout: ``<root>/<kind>/<name>/<hash of key>/`` holding ``key.json`` (the full key, written beside
the artefacts), ``tensors.safetensors``, ``meta.json`` and, for an artefact that a library writes as
files (kronfluence's factors, traker's store), the folder ``files/``. An entry is built in a temporary
sibling directory and moved into place with one ``os.rename``, so readers never see a half-written
entry; writers of the same key take turns on a lock file (``.<hash>.lock``), so concurrent jobs
that need the same model or features compute it once and the others read it.

A stored ``key.json`` that differs from the requested key is an error, never a silent hit.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.config import stable_hash

if TYPE_CHECKING:
    from torch import Tensor

log = logging.getLogger(__name__)

#: The sub-folder of an entry that holds an artefact's library-written files.
FILES = "files"


class CacheConflictError(RuntimeError):
    """A cache directory holds a different key than the one it is addressed by."""


@dataclass
class Artefact:
    """What a cache entry holds: named tensors, JSON-able ``meta`` and optionally a ``folder``.

    ``folder`` is a directory a library wrote (e.g. into ``Method.scratch_dir()``): on a miss the
    cache MOVES it into the entry and points ``folder`` at its new place; on a hit ``folder`` is the
    entry's copy (None when the entry has none).
    """

    tensors: dict[str, Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    folder: Path | None = None


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0


class Cache:
    """A cache rooted at ``root``, scoped to ``<kind>/<name>`` (see :meth:`scope`)."""

    def __init__(
        self, root: str | os.PathLike[str], scope: tuple[str, ...] = (), stats: CacheStats | None = None
    ) -> None:
        self.root = Path(root)
        self._scope = scope
        self.stats = stats if stats is not None else CacheStats()

    def scope(self, *parts: str) -> Cache:
        """A view of this cache under ``<kind>/<name>``; statistics are shared with the parent."""
        return Cache(self.root, self._scope + parts, self.stats)

    @property
    def scope_parts(self) -> tuple[str, ...]:
        """The ``(kind, name, ...)`` parts this view is scoped to (``Cache(root, parts)`` rebuilds it)."""
        return self._scope

    def path_for(self, key: dict[str, Any]) -> Path:
        return self.root.joinpath(*self._scope, stable_hash(key, length=24))

    def get_or_create(self, key: dict[str, Any], compute: Callable[[], Artefact]) -> Artefact:
        """The artefact stored under ``key``, computing and storing it on a miss.

        Concurrent callers (threads or processes, e.g. jobs of one grid on a cluster's shared
        disk) computing the same key take turns on a lock file beside the entry: the first computes
        and writes, the others wait and then read its entry, so nothing is computed twice.
        """
        path = self.path_for(key)
        if (path / "key.json").exists():
            return self._hit(path, key)
        with _entry_lock(path):
            if (path / "key.json").exists():  # written while we waited
                return self._hit(path, key)
            self.stats.misses += 1
            artefact = compute()
            self._write(path, key, artefact)
        return artefact

    def _hit(self, path: Path, key: dict[str, Any]) -> Artefact:
        self._check_key(path, key)
        self.stats.hits += 1
        return _read(path)

    def contains(self, key: dict[str, Any]) -> bool:
        path = self.path_for(key)
        if (path / "key.json").exists():
            self._check_key(path, key)
            return True
        return False

    def _check_key(self, path: Path, key: dict[str, Any]) -> None:
        stored = json.loads((path / "key.json").read_text())
        wanted = json.loads(json.dumps(key, sort_keys=True, default=str))
        if stored != wanted:
            raise CacheConflictError(
                f"cache entry {path} was written for a different key; delete that directory "
                f"(stored {stored}, requested {wanted})"
            )

    def _write(self, path: Path, key: dict[str, Any], artefact: Artefact) -> None:
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            tensors = {k: v.detach().cpu().contiguous() for k, v in artefact.tensors.items()}
            save_file(tensors, str(tmp / "tensors.safetensors"))
            if artefact.folder is not None:
                shutil.move(str(artefact.folder), str(tmp / FILES))
            (tmp / "meta.json").write_text(json.dumps(artefact.meta, sort_keys=True, default=str))
            # key.json last: its presence marks a complete entry.
            (tmp / "key.json").write_text(json.dumps(key, sort_keys=True, default=str, indent=1))
            try:
                os.rename(tmp, path)
                if artefact.folder is not None:
                    artefact.folder = path / FILES
            except OSError:
                # Another writer finished first (the target exists and is non-empty): keep theirs.
                if not (path / "key.json").exists():
                    raise
                self._check_key(path, key)
                log.debug("cache entry %s was written concurrently; keeping the first", path)
                if artefact.folder is not None:
                    artefact.folder = path / FILES
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _entry_lock(path: Path) -> Iterator[None]:
    """An exclusive ``fcntl.flock`` on ``<entry>.lock`` beside the entry (released on exit)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.parent / f".{path.name}.lock"
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read(path: Path) -> Artefact:
    from safetensors.torch import load_file

    tensors = load_file(str(path / "tensors.safetensors"))
    meta = json.loads((path / "meta.json").read_text())
    folder = path / FILES
    return Artefact(tensors, meta, folder if folder.is_dir() else None)
