"""Artefact cache: content-addressed, atomic, safe under several processes, self-verifying.

Layout: ``<root>/<kind>/<key>/`` holds the artefact's files plus ``manifest.json`` with the sha256
of every file and free-form metadata. An entry is built in a temporary sibling directory and
renamed into place (atomic on POSIX), under a file lock so concurrent processes build it once.
On load every file is re-hashed; a mismatch (truncation, corruption) is warned about, removed and
rebuilt: a cached artefact is never trusted blindly.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from filelock import FileLock

MANIFEST = "manifest.json"
BUILD_LOG = "builds.log"
UMASK = os.umask(0o022)  # read once (os.umask can only be read by setting it) ...
os.umask(UMASK)  # ... and restored at once
VERSIONED_PACKAGES = ("torch", "torch-pruning", "onnx", "onnxruntime", "onnxruntime-gpu", "torchao",
                      "pytest-pqbench", "tensorrt", "torch-tensorrt")


def package_versions() -> dict[str, str]:
    out = {}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def stable_hash(obj: Any) -> str:
    """sha256 of a JSON rendering with sorted keys: the same inputs always give the same key."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def code_fingerprint(*functions: Any) -> str:
    """A hash of the source modules of ``functions`` (builders, trainers), for cache keys.

    The package version does not change with every edit, and a trained model cached by an older
    trainer (other epochs, other stopping rule) must not be served as today's. Whole modules, so
    helpers next to the function count too; where no source exists, the qualified name.
    """
    import functools
    import inspect

    parts = []
    for fn in functions:
        while isinstance(fn, functools.partial):
            fn = fn.func
        module = inspect.getmodule(fn)
        try:
            parts.append(inspect.getsource(module) if module else repr(fn))
        except (OSError, TypeError):
            parts.append(f"{getattr(module, '__name__', '?')}.{getattr(fn, '__qualname__', fn)}")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~UMASK)  # mkstemp makes 0600; a shared path is read by others
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


class CorruptEntry(Exception):
    pass


@dataclass
class Entry:
    """A verified cache entry: a directory of files plus metadata."""

    path: Path
    meta: dict[str, Any]
    hit: bool

    def file(self, name: str) -> Path:
        return self.path / name


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    rebuilt_corrupt: int = 0
    builds_by_kind: dict[str, int] = field(default_factory=dict)

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 1.0


class ArtefactCache:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.stats = CacheStats()
        self._versions = package_versions()

    def key(self, kind: str, inputs: dict[str, Any]) -> str:
        """Content address of an artefact: kind, every input that changes it, package versions."""
        return stable_hash({"kind": kind, "inputs": inputs, "versions": self._versions})[:32]

    def _dir(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def _verify(self, path: Path) -> dict[str, Any]:
        manifest_path = path / MANIFEST
        try:
            manifest = json.loads(manifest_path.read_text())
            files = manifest["files"]
        except (OSError, ValueError, KeyError) as exc:
            raise CorruptEntry(f"{manifest_path}: unreadable manifest ({exc})") from None
        for name, digest in files.items():
            f = path / name
            if not f.is_file():
                raise CorruptEntry(f"{f}: missing")
            if file_sha256(f) != digest:
                raise CorruptEntry(f"{f}: content hash mismatch (truncated or corrupted)")
        return manifest.get("meta", {})

    def lookup(self, kind: str, key: str) -> Entry | None:
        """The verified entry, or None. A corrupt entry is removed with a warning."""
        path = self._dir(kind, key)
        if not path.exists():
            return None
        try:
            meta = self._verify(path)
        except CorruptEntry as exc:
            warnings.warn(f"pqbench cache: rebuilding corrupt entry: {exc}", stacklevel=2)
            self.stats.rebuilt_corrupt += 1
            shutil.rmtree(path, ignore_errors=True)
            return None
        return Entry(path, meta, hit=True)

    def get_or_build(self, kind: str, key: str,
                     build: Callable[[Path], dict[str, Any] | None]) -> Entry:
        """Return the entry for (kind, key), calling ``build(tmpdir)`` once if it is missing.

        ``build`` writes its files into the directory it is given and returns metadata. Only one
        process builds a given entry; the others wait on the lock and then load it.
        """
        entry = self.lookup(kind, key)
        if entry is not None:
            self.stats.hits += 1
            return entry
        kind_dir = self.root / kind
        kind_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(kind_dir / f"{key}.lock")):
            entry = self.lookup(kind, key)
            if entry is not None:
                self.stats.hits += 1
                return entry
            self.stats.misses += 1
            tmp = Path(tempfile.mkdtemp(dir=kind_dir, prefix=f".{key}.", suffix=".tmp"))
            tmp.chmod(0o777 & ~UMASK)  # mkdtemp makes 0700; a shared cache is read by others
            try:
                started = time.perf_counter()
                meta = dict(build(tmp) or {})
                meta.setdefault("build_seconds", time.perf_counter() - started)
                files = {p.name: file_sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
                manifest = {"kind": kind, "key": key, "files": files, "meta": meta,
                            "versions": self._versions, "created": time.time()}
                (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str))
                final = self._dir(kind, key)
                if final.exists():  # left by a crashed writer outside the lock: never trusted
                    shutil.rmtree(final, ignore_errors=True)
                os.replace(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            self.stats.builds_by_kind[kind] = self.stats.builds_by_kind.get(kind, 0) + 1
            self._log_build(kind, key, meta)
            return Entry(final, meta, hit=False)

    def _log_build(self, kind: str, key: str, meta: dict[str, Any]) -> None:
        """Append one line per build to ``builds.log``: the record, across every process sharing
        this cache, of what was built, by whom and how long it took (see ``read_build_log``)."""
        line = json.dumps({"kind": kind, "key": key, "pid": os.getpid(),
                           "worker": os.environ.get("PYTEST_XDIST_WORKER"), "time": time.time(),
                           "seconds": meta.get("build_seconds")}) + "\n"
        # one O_APPEND write per line: lines from concurrent processes never interleave
        fd = os.open(self.root / BUILD_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


def read_build_log(root: Path | str) -> list[dict[str, Any]]:
    """Every build recorded in the cache at ``root``, oldest first."""
    path = Path(root) / BUILD_LOG
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
