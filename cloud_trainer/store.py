"""The cloud trainer's storage: a flat key -> bytes object store, directory-backed by default.

Everything the cloud keeps (upload chunks, received logs, model packages, manifests, the
registry's ``current`` pointers) goes through ``Store``, whose operations are exactly the
ones an S3-compatible object store offers: put a whole object (atomically, from bytes or
streamed from an iterable of pieces: a multipart upload), get it, head it, list by prefix
(all keys, or one level as with a ``/`` delimiter), delete. Nothing relies on appending, renaming a prefix or locking, so
an ``S3Store`` (boto3 ``put_object``/``get_object``/``list_objects_v2``/``delete_object``
against MinIO, Ceph RGW or AWS) can take over without touching the callers — and several
cloud trainers can then share one store (docs/cloud.md).

Training reads driving logs from a local directory; ``local_dir(prefix)`` gives one: the
directory store answers with its own path (no copy), an object store would download the
prefix into a cache first.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from edgepilot import EdgepilotError


class Store(Protocol):
    """Keys are ``/``-separated relative paths of safe characters."""

    def put(self, key: str, data: bytes | memoryview) -> None: ...
    def put_file(self, key: str, path: str | Path) -> None: ...
    def put_stream(self, key: str, pieces: Iterable[bytes | memoryview]) -> int: ...
    def get(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def size(self, key: str) -> int | None: ...
    def list(self, prefix: str) -> list[str]: ...
    def children(self, prefix: str) -> list[str]: ...
    def delete(self, key: str) -> None: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def local_dir(self, prefix: str) -> Path: ...
    def local_file(self, key: str) -> Path: ...


def check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in key:
        raise EdgepilotError(f"store key {key!r} is not a safe relative path")
    return key


class DirStore:
    """``Store`` on a local (or shared network) directory.

    Writes go to a temporary file in the same directory and are renamed into place, so a
    reader (or a crash) never sees half an object — the same all-or-nothing semantics as
    an object store's PUT."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise EdgepilotError(f"store {root}: cannot create it ({e.strerror})") from None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"DirStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes | memoryview) -> None:
        self.put_stream(key, (data,))

    def put_file(self, key: str, path: str | Path) -> None:
        dst = self._path(key)
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=".tmp-")
        os.close(fd)
        try:
            shutil.copyfile(path, tmp)
            os.replace(tmp, dst)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_stream(self, key: str, pieces: Iterable[bytes | memoryview]) -> int:
        """Write the pieces one by one (memory: one piece), all or nothing; returns the bytes.

        An exception from the iterable (a size check failing mid-stream) leaves no object."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        n = 0
        try:
            with os.fdopen(fd, "wb") as f:
                for piece in pieces:
                    n += f.write(piece)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return n

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise KeyError(key) from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None

    def list(self, prefix: str) -> list[str]:
        """Every key under ``prefix`` (a "directory" prefix ending in ``/``), sorted."""
        base = self.root / check_key(prefix.rstrip("/")) if prefix.strip("/") else self.root
        if not base.is_dir():
            return []
        out = []
        for dirpath, _, files in os.walk(base):
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                out.append(str(Path(dirpath, name).relative_to(self.root)).replace(os.sep, "/"))
        return sorted(out)

    def children(self, prefix: str) -> list[str]:
        """The names one level below ``prefix`` (objects and "directories"), sorted: an
        object store's listing with a ``/`` delimiter, without walking what lies deeper."""
        base = self.root / check_key(prefix.rstrip("/")) if prefix.strip("/") else self.root
        try:
            return sorted(e.name for e in os.scandir(base) if not e.name.startswith(".tmp-"))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self.root / check_key(prefix.rstrip("/")), ignore_errors=True)

    def local_dir(self, prefix: str) -> Path:
        return self.root / check_key(prefix.rstrip("/"))

    def local_file(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise KeyError(key)
        return path


def open_store(location: str | Path) -> Store:
    """A store from a location string: a directory path (the embedded default).

    ``s3://bucket/prefix`` is where an object-store backend plugs in (docs/cloud.md)."""
    text = str(location)
    if text.startswith("s3://"):
        raise EdgepilotError(
            f"store {text}: no S3 backend is installed in this build; use a directory "
            "(a shared filesystem works for several trainers), see docs/cloud.md"
        )
    return DirStore(text)
