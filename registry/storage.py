"""Where registry bytes live: any fsspec URL, with the atomicity each backend can give.

Three guarantees matter to the registry:

* `publish_dir` makes a whole version directory appear at once or not at all, and
  refuses to replace one that exists (this is how concurrent writers get distinct
  version numbers);
* `write_bytes` replaces a small file (alias, rollout) so readers see the old or the
  new content, never a mix;
* `create` writes a small file only if none is there, atomically: the claim of a version
  number and of a change-feed entry (`registry/change_feed.py`).

On a local filesystem all three come from POSIX: files are written into a private staging
place, fsync'ed, and `rename`d into place (`create`: `link`ed, which fails if the name is
taken); `rename` of a directory onto an existing non-empty one fails, which is the claim.
Cross-process locks use `flock`.

On object stores a single object PUT is atomic but there is no rename and no cross-process
lock. On S3 `create` is a conditional PUT (`If-None-Match: *`, through s3fs's
`mode="create"`), which the store itself decides, so writers on different machines get
distinct claims. A version directory is claimed by creating its first file that way and is
visible once its manifest (written last) exists. Other fsspec backends (gs://, memory://,
...) get check-then-write under an in-process lock: one writing process at a time there.

Every storage request is counted in `requests` (by kind), which is how the benchmarks
measure what a refresh costs.
"""

import collections
import contextlib
import errno
import fcntl
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

from promptmux.core.errors import NotFoundError, PromptmuxError

STAGING_DIR = ".staging"
TEMP_NAME = re.compile(r"\..+\.[0-9a-f]{32}\.tmp")  # what `LocalStorage._place` writes before its rename
CONDITIONAL_PUT_PROTOCOLS = {"s3", "s3a"}


class Storage:
    """fsspec storage with object-store semantics (see the module docstring)."""

    atomic_publish = False
    concurrent_reads = 16  # reads worth running at once: each is a network round trip

    _locks: dict[str, threading.Lock] = {}
    _locks_guard = threading.Lock()

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, uri: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.uri = uri.rstrip("/")
        self.requests: collections.Counter[str] = collections.Counter()
        protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
        self.conditional_put = bool(protocols & CONDITIONAL_PUT_PROTOCOLS)

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def url(self, rel: str) -> str:
        return f"{self.uri}/{rel}" if rel else self.uri

    def exists(self, rel: str) -> bool:
        self.requests["exists"] += 1
        return self.fs.exists(self.path(rel))

    def read_bytes(self, rel: str) -> bytes:
        self.requests["read"] += 1
        try:
            return self.fs.cat_file(self.path(rel))
        except FileNotFoundError as exc:
            raise NotFoundError(f"not found: {self.url(rel)}") from exc

    def listdir(self, rel: str) -> list[str]:
        """Names of the entries directly under `rel` (empty when it does not exist)."""
        self.requests["list"] += 1
        try:
            entries = self.fs.ls(self.path(rel), detail=False)
        except FileNotFoundError:
            return []
        return sorted(entry.rstrip("/").rsplit("/", 1)[-1] for entry in entries)

    def write_bytes(self, rel: str, data: bytes, private: bool = False) -> None:
        """Write `rel` whole; `private`: readable by its owner only, where the storage has file
        modes (an object store's access is its bucket policy)."""
        self.requests["write"] += 1
        self.fs.pipe_file(self.path(rel), data)

    def create(self, rel: str, data: bytes) -> bool:
        """Write `rel` only if it does not exist; False (nothing written) if it does."""
        self.requests["create"] += 1
        with self.lock(rel) if not self.conditional_put else contextlib.nullcontext():
            try:
                self.fs.pipe_file(self.path(rel), data, mode="create")
            except FileExistsError:
                return False
        return True

    def local_path(self, rel: str) -> str | None:
        """A filesystem path for `rel`, where the storage has one (then files can be memory-mapped)."""
        return None

    def remove(self, rel: str) -> None:
        self.requests["remove"] += 1
        try:
            self.fs.rm_file(self.path(rel))
        except FileNotFoundError as exc:
            raise NotFoundError(f"not found: {self.url(rel)}") from exc

    def remove_tree(self, rel: str) -> None:
        """Remove `rel` and everything under it, if it is there."""
        self.requests["remove"] += 1
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.path(rel), recursive=True)

    def publish_dir(self, rel: str, files: dict[str, bytes]) -> bool:
        """Create directory `rel` holding `files` (written in order, the last one makes it
        visible). Returns False, writing nothing, when `rel` already exists: the first file
        is written with `create`, which is the claim."""
        (first, data), *rest = files.items()
        if self.exists(rel) or not self.create(f"{rel}/{first}", data):
            return False
        for name, data in rest:
            self.write_bytes(f"{rel}/{name}", data)
        return True

    def remove_stale_leftovers(self, older_than_s: float) -> int:
        """Delete what writers that died mid-write left; object stores have no such leftovers."""
        return 0

    @contextmanager
    def lock(self, rel: str) -> Iterator[None]:
        key = self.url(rel)
        with Storage._locks_guard:
            lock = Storage._locks.setdefault(key, threading.Lock())
        with lock:
            yield


class LocalStorage(Storage):
    """A directory on a POSIX filesystem: atomic renames and flock-based locks."""

    atomic_publish = True
    concurrent_reads = 1  # threads only contend for the GIL over a local disk

    def read_bytes(self, rel: str) -> bytes:
        self.requests["read"] += 1
        try:
            return Path(self.path(rel)).read_bytes()
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise NotFoundError(f"not found: {self.url(rel)}") from exc

    def local_path(self, rel: str) -> str | None:
        return self.path(rel)

    def write_bytes(self, rel: str, data: bytes, private: bool = False) -> None:
        self.requests["write"] += 1
        self._place(rel, data, os.replace, 0o600 if private else 0o666)

    def create(self, rel: str, data: bytes) -> bool:
        self.requests["create"] += 1
        try:
            self._place(rel, data, os.link)
        except FileExistsError:
            return False
        return True

    def _place(self, rel: str, data: bytes, move: Callable[[Path, Path], None], mode: int = 0o666) -> None:
        """Write `data` to a synced temporary file beside `rel` (of `mode`, less the umask), then
        `move` it into place."""
        target = Path(self.path(rel))
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
        try:
            _write_synced(tmp, data, mode)
            move(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(target.parent)

    def publish_dir(self, rel: str, files: dict[str, bytes]) -> bool:
        self.requests["publish"] += 1
        target = Path(self.path(rel))
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(self.path(STAGING_DIR)) / uuid.uuid4().hex
        staging.mkdir(parents=True)
        try:
            for name, data in files.items():
                _write_synced(staging / name, data)
            _fsync_dir(staging)
            try:
                os.rename(staging, target)
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    return False
                raise
            _fsync_dir(target.parent)
            return True
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def remove_stale_leftovers(self, older_than_s: float) -> int:
        """Staging directories and temporary files (`.<name>.<hex>.tmp`, anywhere) older than
        `older_than_s`: what a writer killed between writing and renaming left."""
        cutoff = time.time() - older_than_s
        staging = Path(self.path(STAGING_DIR))
        stale = [entry for entry in staging.iterdir() if _mtime(entry) < cutoff] if staging.is_dir() else []
        for entry in stale:
            shutil.rmtree(entry, ignore_errors=True)
        for folder, _, files in os.walk(self.root):
            temporary = [Path(folder) / name for name in files if TEMP_NAME.fullmatch(name)]
            for path in temporary:
                if _mtime(path) < cutoff:
                    path.unlink(missing_ok=True)
                    stale.append(path)
        return len(stale)

    @contextmanager
    def lock(self, rel: str) -> Iterator[None]:
        lock_path = Path(self.path(rel))
        lock_path = lock_path.parent / f".{lock_path.name}.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with super().lock(rel), open(lock_path, "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # removed meanwhile
        return float("inf")


def _write_synced(path: Path, data: bytes, mode: int = 0o666) -> None:
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_storage(uri: str, create: bool = True) -> Storage:
    """Storage for a local path or any fsspec URL. A local folder is made if missing
    (`create`), or else must exist; either way a file in its place is refused."""
    if "://" in uri and not uri.startswith("file://"):
        # Other writers (other processes, other machines) change the store: never trust a cached listing.
        fs, root = fsspec.core.url_to_fs(uri, use_listings_cache=False)
    else:
        fs, root = fsspec.core.url_to_fs(uri)
    if isinstance(fs, LocalFileSystem):
        folder = Path(root)
        if folder.exists() and not folder.is_dir():
            raise PromptmuxError(f"registry {uri} is a file; a registry is a folder")
        if not folder.exists() and not create:
            raise NotFoundError(f"no registry at {uri}: no such folder (the first `promptmux train` or "
                                "`promptmux registry import` creates one)")
        folder.mkdir(parents=True, exist_ok=True)
        return LocalStorage(fs, root, str(folder.resolve()))
    return Storage(fs, root, uri)
