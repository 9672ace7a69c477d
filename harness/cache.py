"""Content-addressed cache shared by runs, methods and (later) concurrent jobs.

Layout: ``<root>/<kind>/<name>/<hash of key>/`` holding ``key.json`` (the full key, written beside
the artefacts), ``tensors.safetensors``, ``meta.json``, for an artefact that a library writes as
files (kronfluence's factors, traker's store) the folder ``files/``, and ``checksums.json`` (a hash
of every other file, written at creation and checked on every read: an entry whose bytes changed is
moved aside and computed again, never returned). An entry is built in a temporary
sibling directory and moved into place with one ``os.rename``, so readers never see a half-written
entry; writers of the same key take turns on a lock file (``.<hash>.lock``), so concurrent jobs
that need the same model or features compute it once and the others read it.

A stored ``key.json`` that differs from the requested key is an error, never a silent hit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.config import stable_hash

if TYPE_CHECKING:
    from torch import Tensor

log = logging.getLogger(__name__)

#: The files of an entry: the key, checksums of all other files, tensors, meta, library files.
KEY = "key.json"
CHECKSUMS = "checksums.json"
TENSORS = "tensors.safetensors"
META = "meta.json"
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
    #: Entries found unusable (checksum mismatch, unreadable) and computed again.
    corrupt: int = 0


class CorruptEntryError(RuntimeError):
    """A cache entry's files do not match its checksums or cannot be read."""


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

        An entry whose files do not match the checksums written with it (bytes overwritten,
        truncated, a file missing) or that cannot be read is never returned: it is logged with its
        path, moved aside to ``.corrupt-<hash>-<time>`` beside it (kept for inspection) and
        computed again.
        """
        path = self.path_for(key)
        if (path / KEY).exists():
            artefact, _ = self._verified(path, key)
            if artefact is not None:
                return artefact
        with _entry_lock(path):
            _remove_stale_temporaries(path)  # a writer killed mid-write left them; writers hold this lock
            if (path / KEY).exists():  # written while we waited, or the corrupt entry seen above
                artefact, problem = self._verified(path, key)
                if artefact is not None:
                    return artefact
                log.warning(
                    "cache entry %s is unusable (%s); it is moved aside and computed again", path, problem
                )
                self.stats.corrupt += 1
                _quarantine(path)
            self.stats.misses += 1
            artefact = compute()
            self._write(path, key, artefact)
        return artefact

    def _verified(self, path: Path, key: dict[str, Any]) -> tuple[Artefact | None, str]:
        """The entry at ``path`` read and checked against its checksums, or None and what is wrong."""
        self._check_key(path, key)
        try:
            artefact = _read(path)
        except CorruptEntryError as err:
            return None, str(err)
        self.stats.hits += 1
        return artefact, ""

    def contains(self, key: dict[str, Any]) -> bool:
        """Whether a complete entry for ``key`` exists (its files are checked against their checksums)."""
        path = self.path_for(key)
        if not (path / KEY).exists():
            return False
        self._check_key(path, key)
        try:
            _verify(path)
        except CorruptEntryError as err:
            log.warning("cache entry %s is unusable (%s); it will be computed again", path, err)
            return False
        return True

    def _check_key(self, path: Path, key: dict[str, Any]) -> None:
        try:
            stored = json.loads((path / KEY).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return  # an unreadable key.json is a corrupt entry: _read's checksums find it
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
            save_file(tensors, str(tmp / TENSORS))
            if artefact.folder is not None:
                shutil.move(str(artefact.folder), str(tmp / FILES))
            (tmp / META).write_text(json.dumps(artefact.meta, sort_keys=True, default=str))
            key_text = json.dumps(key, sort_keys=True, default=str, indent=1)
            checksums = {name: _file_digest(tmp / name) for name in _payload_files(tmp)}
            checksums[KEY] = _digest(key_text.encode())
            (tmp / CHECKSUMS).write_text(json.dumps(checksums, sort_keys=True, indent=1))
            # key.json last: its presence marks a complete entry.
            (tmp / KEY).write_text(key_text)
            _share_like_umask(tmp)
            try:
                os.rename(tmp, path)
                if artefact.folder is not None:
                    artefact.folder = path / FILES
            except OSError:
                # Another writer finished first (the target exists and is non-empty): keep theirs.
                if not (path / KEY).exists():
                    raise
                self._check_key(path, key)
                log.debug("cache entry %s was written concurrently; keeping the first", path)
                if artefact.folder is not None:
                    artefact.folder = path / FILES
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def copy_entry(source: Path, target: Path) -> bool:
    """Copy the cache entry at ``source`` to the entry path ``target`` (in another cache root).

    The source is checked against its checksums first; the copy is built in a temporary sibling of
    ``target`` and moved into place with one rename under the target's lock, as every entry is
    written. Returns False when ``target`` already holds the same entry (same key, same checksums).

    Raises
    ------
    CorruptEntryError
        ``source`` fails its checksums.
    CacheConflictError
        ``target`` holds a complete entry with another key or other bytes (e.g. the same model
        trained again elsewhere with different weights): copying over it would change what the
        target cache's readers get, so the caller must decide.
    """
    checksums = _verify(source)
    with _entry_lock(target):
        if (target / KEY).exists():
            _same_entry(source, target, checksums)
            return False
        _remove_stale_temporaries(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            for name in [*_payload_files(source), CHECKSUMS, KEY]:  # key.json last, as in _write
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source / name, tmp / name)
            _verify(tmp)
            _share_like_umask(tmp)
            os.rename(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return True


def _same_entry(source: Path, target: Path, checksums: dict[str, str]) -> None:
    """Raise :class:`CacheConflictError` unless ``target`` holds the entry ``source`` holds."""
    try:
        held = json.loads((target / CHECKSUMS).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CacheConflictError(
            f"cache entry {target} cannot be compared with {source} ({type(err).__name__}: {err}); "
            f"delete {target} so that it is copied again"
        ) from err
    if held != checksums:
        raise CacheConflictError(
            f"cache entry {target} holds other bytes than {source} (same address, e.g. the model "
            f"trained again elsewhere); delete {target} to use {source}, or use another cache folder"
        )


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
    """The entry at ``path``, each file checked against the checksums written with it.

    Raises
    ------
    CorruptEntryError
        A file is missing, unreadable, or its bytes differ from the checksum (truncated,
        overwritten); or the entry predates checksums.
    """
    from safetensors.torch import load

    checksums = _verify(path, skip=(TENSORS, META))
    try:
        tensor_bytes = (path / TENSORS).read_bytes()
        meta_bytes = (path / META).read_bytes()
    except OSError as err:
        raise CorruptEntryError(f"{type(err).__name__}: {err}") from err
    for name, data in ((TENSORS, tensor_bytes), (META, meta_bytes)):
        if _digest(data) != checksums.get(name):
            raise CorruptEntryError(f"{name} does not match its checksum")
    try:
        tensors = load(tensor_bytes)
        meta = json.loads(meta_bytes)
    except Exception as err:  # noqa: BLE001 - any parse failure of checked bytes is a corrupt entry
        raise CorruptEntryError(f"{type(err).__name__}: {err}") from err
    folder = path / FILES
    return Artefact(tensors, meta, folder if folder.is_dir() else None)


def _verify(path: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Check every file of the entry at ``path`` (but ``skip``) against its checksums; return them."""
    try:
        checksums = json.loads((path / CHECKSUMS).read_text())
        key_bytes = (path / KEY).read_bytes()
    except FileNotFoundError as err:
        raise CorruptEntryError(
            f"{Path(err.filename).name} is missing (an entry written before checksums?)"
        ) from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptEntryError(f"{type(err).__name__}: {err}") from err
    if not isinstance(checksums, dict):
        raise CorruptEntryError(f"{CHECKSUMS} is not a mapping")
    if _digest(key_bytes) != checksums.get(KEY):
        raise CorruptEntryError(f"{KEY} does not match its checksum")
    present = set(_payload_files(path))
    expected = set(checksums) - {KEY}
    if present != expected:
        missing, extra = sorted(expected - present), sorted(present - expected)
        raise CorruptEntryError(f"files missing {missing}, unexpected {extra}")
    for name in sorted(present - set(skip)):
        try:
            digest = _file_digest(path / name)
        except OSError as err:
            raise CorruptEntryError(f"{name}: {type(err).__name__}: {err}") from err
        if digest != checksums[name]:
            raise CorruptEntryError(f"{name} does not match its checksum")
    return checksums


def _payload_files(entry: Path) -> list[str]:
    """Relative POSIX paths of the entry's files that carry checksums (all but key.json, checksums.json)."""
    names = []
    for file in entry.rglob("*"):
        if file.is_file():
            name = file.relative_to(entry).as_posix()
            if name not in (KEY, CHECKSUMS):
                names.append(name)
    return sorted(names)


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _file_digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _quarantine(path: Path) -> None:
    """Move a corrupt entry aside (``.corrupt-<hash>-<UTC time>`` beside it), kept for inspection."""
    target = (
        path.parent / f".corrupt-{path.name}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}"
    )
    try:
        os.rename(path, target)
    except FileNotFoundError:
        return  # another process moved it first
    log.warning("corrupt cache entry moved to %s (delete it when inspected)", target)


def _remove_stale_temporaries(path: Path) -> None:
    """Delete the half-written ``.<hash>.*`` folders of ``path`` (call only while holding its lock)."""
    for stale in path.parent.glob(f".{path.name}.*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
            log.info("removed %s, left by a writer that was stopped mid-write", stale)


def _share_like_umask(folder: Path) -> None:
    """Give ``folder`` and everything in it the modes of the user's umask.

    ``mkdtemp`` makes folders 0700 and some writers make files 0600; a group must be able to share a
    cache, as with any file the user creates.
    """
    mask = current_umask()
    os.chmod(folder, 0o777 & ~mask)
    for item in folder.rglob("*"):
        os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~mask)


def current_umask() -> int:
    """The process' umask, read without changing it where Linux tells it (other threads may create files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    current = os.umask(0o022)
    os.umask(current)
    return current
