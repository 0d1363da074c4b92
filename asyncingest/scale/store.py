"""Where a scale-out run's output and bookkeeping live: a shared folder, or an object store.

``output.directory`` (or ``--output``) is a local path or a URI that ``pyarrow.fs`` opens
(``s3://bucket/prefix``, ``gs://...``, ``hdfs://...``; with fsspec installed, any fsspec URI).
A :class:`Store` gives :class:`~asyncingest.scale.commit.RunFolder` the few operations the
commit protocol needs, on keys relative to the output (``users/part-...parquet``,
``_asyncingest/scale/<run>/committed/<shard>.json``):

* :class:`LocalStore`: the shared folder, as before: files fsynced, renamed into place, the
  folder fsynced; the commit record is ``link()``ed (the first link wins).
* :class:`ArrowStore`: any ``pyarrow.fs.FileSystem``. An object is written by one PUT of the
  whole object (or a multipart upload, which S3 also shows only once complete): nobody ever sees
  a partial object. A publish is a server-side copy plus a delete. The commit record is a
  manifest object written when none is there; without a conditional PUT in ``pyarrow.fs`` two
  live holders of one shard may both write it, which is made harmless by publishing one object
  per endpoint per shard (docs/scale-out.md, "Object stores").

Credentials never appear in a URI (they would travel in every shard message and in logs): an
output URI with a password or a ``access_key``/``secret_key``/``session_token`` parameter is
refused; the store's own environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_ENDPOINT_URL_S3``, ...) or the URI's ``endpoint_override``/``scheme``/``region``
parameters say how to reach it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit

from ..errors import ConfigError, Problem
from ..sink.durable import fsync_dir

if TYPE_CHECKING:
    import pyarrow.fs

__all__ = ["ArrowStore", "LocalStore", "Store", "check_output", "is_uri", "open_store"]

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")
_SECRET_PARAMS = frozenset({"access_key", "secret_key", "session_token", "password", "token"})


def is_uri(output: str) -> bool:
    """Whether ``output`` names an object store (``scheme://...``, not ``file://``)."""
    return bool(_SCHEME.match(output)) and not output.lower().startswith("file://")


def check_output(output: str, option: str = "output.directory") -> str:
    """``output`` if it carries no credentials, else a :class:`ConfigError` (exit 2) that does
    not repeat them: a shard message carries its output, and messages and logs are no place
    for a secret."""
    if not is_uri(output):
        return output
    parts = urlsplit(output)
    secret = parts.password is not None or any(
        key.lower() in _SECRET_PARAMS for key, _ in parse_qsl(parts.query)
    )
    if secret:
        raise ConfigError(
            option,
            [
                Problem(
                    redact_output(output),
                    "credentials do not belong in the output URI (shard messages carry it); "
                    "give them to every worker in the environment (AWS_ACCESS_KEY_ID, "
                    "AWS_SECRET_ACCESS_KEY, ...)",
                )
            ],
        )
    if not parts.netloc:
        raise ConfigError(option, [Problem(output, "expected SCHEME://BUCKET/PREFIX")])
    return output


def redact_output(output: str) -> str:
    """``output`` without user info or query parameters: safe for logs and errors."""
    if not is_uri(output):
        return output
    parts = urlsplit(output)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}{parts.path}"


class Store:
    """The operations the commit protocol needs, on keys relative to the output (``/``-
    separated). Subclasses: :class:`LocalStore`, :class:`ArrowStore`."""

    local = False
    """Whether a shard's staging can live in the store itself (a local folder: then
    publishing is a rename on one file system)."""

    def where(self, key: str) -> str:
        """Where ``key`` is, for a message (no credentials)."""
        raise NotImplementedError

    def get(self, key: str) -> bytes | None:
        """The object's bytes, or None when there is none."""
        raise NotImplementedError

    def put(self, key: str, data: bytes) -> None:
        """Write ``data`` as ``key`` whole and durably, replacing what was there; a reader sees
        the old or the new object, never part of one."""
        raise NotImplementedError

    def create(self, key: str, data: bytes) -> bool:
        """Write ``data`` as ``key`` unless there is one already: True if this call wrote it."""
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        """Whether there is an object ``key``."""
        raise NotImplementedError

    def names(self, folder: str, suffix: str = "") -> list[str]:
        """The names (not keys) of the objects directly in ``folder`` ending with ``suffix``."""
        raise NotImplementedError

    def ages(self, folder: str) -> dict[str, float]:
        """Seconds since each object directly in ``folder`` was last written, by name."""
        raise NotImplementedError

    def delete(self, key: str) -> None:
        """Delete ``key`` (nothing if absent)."""
        raise NotImplementedError

    def delete_folders(self, folder: str, prefix: str) -> None:
        """Delete every folder directly in ``folder`` whose name starts with ``prefix``, with
        everything in it."""
        raise NotImplementedError

    def move(self, src: str, dst: str) -> None:
        """Make ``src`` appear whole as ``dst`` and remove ``src``; nothing when ``src`` is gone
        and ``dst`` is there (a roll-forward done before); FileNotFoundError when neither is."""
        raise NotImplementedError

    def upload(self, local: Path, key: str) -> None:
        """Copy the local file ``local`` to ``key`` (whole, as :meth:`put`)."""
        raise NotImplementedError

    def sync(self, folders: set[str]) -> None:
        """Make the names created in ``folders`` durable (a folder fsync; nothing on a store
        whose writes are durable when they return)."""


class LocalStore(Store):
    """A folder on a local or shared file system (the output folder)."""

    local = True

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalStore({self.root})"

    def path(self, key: str) -> Path:
        """The file behind ``key``."""
        return self.root / key

    def where(self, key: str) -> str:
        """The file's path."""
        return str(self.path(key))

    def get(self, key: str) -> bytes | None:
        """The file's bytes, or None."""
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            return None

    def _private(self, path: Path, data: bytes) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return tmp

    def put(self, key: str, data: bytes) -> None:
        """A fsynced private file renamed over ``key``, then the folder fsynced."""
        path = self.path(key)
        tmp = self._private(path, data)
        os.replace(tmp, path)
        fsync_dir(path.parent)

    def create(self, key: str, data: bytes) -> bool:
        """A fsynced private file ``link()``ed to ``key``: the first link wins, a second gets
        ``EEXIST`` (False)."""
        path = self.path(key)
        tmp = self._private(path, data)
        try:
            os.link(tmp, path)
            won = True
        except FileExistsError:
            won = False
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(path.parent)
        return won

    def exists(self, key: str) -> bool:
        """Whether the file exists."""
        return self.path(key).exists()

    def names(self, folder: str, suffix: str = "") -> list[str]:
        """The files in ``folder`` ending with ``suffix`` (not the private ``.*.tmp`` ones)."""
        path = self.path(folder)
        if not path.is_dir():
            return []
        return sorted(
            p.name for p in path.iterdir() if p.name.endswith(suffix) and p.name[0] != "."
        )

    def ages(self, folder: str) -> dict[str, float]:
        """Seconds since each file's modification time."""
        path = self.path(folder)
        if not path.is_dir():
            return {}
        now = time.time()
        out = {}
        for p in path.iterdir():
            with contextlib.suppress(FileNotFoundError):
                out[p.name] = now - p.stat().st_mtime
        return out

    def delete(self, key: str) -> None:
        """Unlink the file."""
        self.path(key).unlink(missing_ok=True)

    def delete_folders(self, folder: str, prefix: str) -> None:
        """``rmtree`` each matching folder."""
        path = self.path(folder)
        if path.is_dir():
            for p in path.glob(f"{prefix}*"):
                shutil.rmtree(p, ignore_errors=True)

    def move(self, src: str, dst: str) -> None:
        """``os.replace`` (atomic on one file system)."""
        target = self.path(dst)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(self.path(src), target)
        except FileNotFoundError:
            if not target.exists():
                raise

    def upload(self, local: Path, key: str) -> None:
        """Copy the file in, fsynced, under a private name, then rename it."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        shutil.copyfile(local, tmp)
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def sync(self, folders: set[str]) -> None:
        """fsync each folder."""
        for folder in folders:
            fsync_dir(self.path(folder))


class ArrowStore(Store):
    """An object store (or any file system) through ``pyarrow.fs``: ``fs`` and the ``base``
    path in it that the output URI names."""

    def __init__(self, fs: pyarrow.fs.FileSystem, base: str, uri: str) -> None:
        self.fs = fs
        self.base = base.rstrip("/")
        self.uri = redact_output(uri)

    def __repr__(self) -> str:
        return f"ArrowStore({self.uri}, {type(self.fs).__name__})"

    def _p(self, key: str) -> str:
        return f"{self.base}/{key}" if key else self.base

    def where(self, key: str) -> str:
        """The object's URI (without credentials or parameters)."""
        return f"{self.uri.rstrip('/')}/{key}"

    def _info(self, key: str) -> pyarrow.fs.FileInfo:
        return self.fs.get_file_info(self._p(key))

    def get(self, key: str) -> bytes | None:
        """One GET; None for a missing object."""
        import pyarrow.fs as pf

        try:
            with self.fs.open_input_stream(self._p(key)) as fh:
                return bytes(fh.read())
        except FileNotFoundError:
            return None
        except OSError:
            if self._info(key).type == pf.FileType.NotFound:
                return None
            raise

    def put(self, key: str, data: bytes) -> None:
        """One upload of the whole object (visible only once complete)."""
        with self.fs.open_output_stream(self._p(key)) as fh:
            fh.write(data)

    def create(self, key: str, data: bytes) -> bool:
        """Written unless it exists (a check, then the upload: see the module docstring)."""
        if self.exists(key):
            return False
        self.put(key, data)
        return True

    def exists(self, key: str) -> bool:
        """One HEAD."""
        import pyarrow.fs as pf

        return bool(self._info(key).type == pf.FileType.File)

    def _listing(self, folder: str) -> list[pyarrow.fs.FileInfo]:
        import pyarrow.fs as pf

        selector = pf.FileSelector(self._p(folder), allow_not_found=True, recursive=False)
        return list(self.fs.get_file_info(selector))

    def names(self, folder: str, suffix: str = "") -> list[str]:
        """One listing of the folder's prefix."""
        import pyarrow.fs as pf

        return sorted(
            i.base_name
            for i in self._listing(folder)
            if i.type == pf.FileType.File and i.base_name.endswith(suffix)
        )

    def ages(self, folder: str) -> dict[str, float]:
        """From the objects' last-modified times (the store's clock)."""
        import pyarrow.fs as pf

        now = time.time()
        out = {}
        for i in self._listing(folder):
            if i.type == pf.FileType.File and i.mtime is not None:
                out[i.base_name] = now - i.mtime.timestamp()
        return out

    def delete(self, key: str) -> None:
        """Delete the object (nothing if absent)."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(self._p(key))

    def delete_folders(self, folder: str, prefix: str) -> None:
        """Delete every object under each matching prefix."""
        import pyarrow.fs as pf

        for i in self._listing(folder):
            if i.base_name.startswith(prefix):
                with contextlib.suppress(FileNotFoundError):
                    if i.type == pf.FileType.Directory:
                        self.fs.delete_dir(i.path)
                    else:
                        self.fs.delete_file(i.path)

    def move(self, src: str, dst: str) -> None:
        """A server-side copy (the destination appears whole), then the source deleted."""
        if not self.exists(src):
            if self.exists(dst):
                return
            raise FileNotFoundError(self.where(src))
        try:
            self.fs.copy_file(self._p(src), self._p(dst))
        except OSError:
            if not self.exists(dst):  # another holder moved it first
                raise
        self.delete(src)

    def upload(self, local: Path, key: str) -> None:
        """Stream the local file up as one object."""
        with local.open("rb") as src, self.fs.open_output_stream(self._p(key)) as dst:
            shutil.copyfileobj(src, dst, 8 << 20)


def open_store(output: str | os.PathLike[str]) -> Store:
    """The store behind ``output``: a :class:`LocalStore` for a path, an :class:`ArrowStore`
    for a URI (``pyarrow.fs.FileSystem.from_uri``, else fsspec if installed). Stores are cached
    per URI for the process's life (a worker opens each output once)."""
    text = os.fspath(output)
    if not is_uri(text):
        return LocalStore(text)
    return _arrow_store(check_output(text))


@functools.lru_cache(maxsize=32)
def _arrow_store(uri: str) -> ArrowStore:
    import pyarrow as pa
    import pyarrow.fs as pf

    try:
        fs, base = pf.FileSystem.from_uri(uri)
    except pa.ArrowInvalid:  # a scheme pyarrow does not know: try fsspec
        try:  # optional and untyped: imported by name
            fsspec = importlib.import_module("fsspec")
        except ImportError:
            raise ConfigError(
                "output.directory",
                [Problem(redact_output(uri), "pyarrow cannot open it and fsspec is not installed")],
            ) from None
        ffs, base = fsspec.core.url_to_fs(uri)
        fs = pf.PyFileSystem(pf.FSSpecHandler(ffs))
    return ArrowStore(fs, base, uri)
