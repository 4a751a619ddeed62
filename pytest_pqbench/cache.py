"""Artefact cache: content-addressed, atomic, safe under several processes, self-verifying.

Layout: ``<root>/<kind>/<key>/`` holds the artefact's files plus ``manifest.json`` with the sha256
of every file and free-form metadata. An entry is built in a temporary sibling directory and
renamed into place (atomic on POSIX), under a file lock so concurrent processes build it once.
On load every file is re-hashed; a mismatch (truncation, corruption), a manifest that does not
account for every file, or an entry that is not a folder is warned about once, removed under the
entry's lock and rebuilt: a cached artefact is never trusted blindly. An entry that cannot be
removed (permissions) fails the cases that need it with ``CacheError`` naming its path. Build
folders left by killed builders (``.<key>.*.tmp``) are removed once nobody holds their lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from .errors import CacheError, CorruptEntry  # noqa: F401  (defined in errors.py)
from .isolation import isolated

MANIFEST = "manifest.json"
BUILD_LOG = "builds.log"
# A build folder this old whose key lock is free belongs to a builder that was killed. The lock
# alone decides (a live builder holds it); the age only spares folders being created right now.
STALE_TMP_SECONDS = 10 * 60
BUILD_FOLDER = re.compile(r"^\.(?P<key>[\w-]+)\.[\w-]+\.tmp$")  # mkdtemp(prefix=.KEY., suffix=.tmp)
UMASK = os.umask(0o022)  # read once (os.umask can only be read by setting it) ...
os.umask(UMASK)  # ... and restored at once
# Kinds whose build runs in a killable worker process under a time limit (``isolation``): the
# work needs one torch thread at most. Training and fine-tuning (compute-heavy torch) do not.
ISOLATED_KINDS = {"onnx": "ONNX export", "onnx-fp16": "FP16 conversion",
                  "ort-int8": "INT8 calibration", "onnx-int8-symmetric": "INT8 calibration",
                  "torch-export": "torch.export"}
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


def remove_path(path: Path) -> None:
    """Remove a file, link or folder tree; raise ``OSError`` if anything of it is left."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


@dataclass
class Entry:
    """A verified cache entry: a directory of files plus metadata."""

    path: Path
    meta: dict[str, Any]
    hit: bool
    files: frozenset[str] = frozenset()

    def file(self, name: str) -> Path:
        if self.files and name not in self.files:  # never hand out a file the hash check skipped
            raise CacheError(f"{self.path / name}: not in the entry's manifest (it lists "
                             f"{', '.join(sorted(self.files))})")
        return self.path / name


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    rebuilt_corrupt: int = 0
    builds_by_kind: dict[str, int] = field(default_factory=dict)

    stale_removed: int = 0

    @property
    def hit_rate(self) -> float | None:
        """Hits over lookups; None when nothing was looked up (not a 100% rate)."""
        total = self.hits + self.misses
        return self.hits / total if total else None

    @property
    def hit_rate_text(self) -> str:
        rate = self.hit_rate
        return "-" if rate is None else f"{rate:.0%}"


def usable_folder(root: Path, option: str = "--pqbench-cache-dir") -> Path:
    """``root`` created if needed and checked writable (a file is created and removed in it);
    ``CacheError`` naming the path and ``option`` otherwise (a file where the folder should be,
    a folder below a file, permissions, a read-only or immutable file system)."""
    root = Path(root)
    try:
        for parent in (root, *root.parents):
            if parent.exists() and not parent.is_dir():
                raise CacheError(f"pqbench cache: {root} cannot be the cache folder: {parent} "
                                 f"is a file; give another {option}")
            if parent.exists():
                break
        root.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=root, prefix=".pqbench-write-check.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise CacheError(f"pqbench cache: cannot write in {root} ({exc.strerror or exc}); "
                         f"give another {option}") from None
    return root


class ArtefactCache:
    def __init__(self, root: Path | str) -> None:
        self.root = usable_folder(Path(root))
        self.stats = CacheStats()
        self._versions = package_versions()
        self._discarded: set[Path] = set()  # corrupt entries removed, counted when rebuilt
        self._broken: dict[Path, str] = {}  # entries that cannot be removed: reported once
        self._log_warned: set[Path] = set()
        # wraps each build function before a miss calls it (``progress`` announces builds)
        self.announcer: Callable[[str, Callable], Callable] | None = None
        self.remove_stale_builds()

    def key(self, kind: str, inputs: dict[str, Any]) -> str:
        """Content address of an artefact: kind, every input that changes it, package versions."""
        return stable_hash({"kind": kind, "inputs": inputs, "versions": self._versions})[:32]

    def _dir(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def _verify(self, path: Path) -> tuple[dict[str, Any], frozenset[str]]:
        if not path.is_dir() or path.is_symlink():
            raise CorruptEntry(f"{path}: not a folder")
        manifest_path = path / MANIFEST
        try:
            manifest = json.loads(manifest_path.read_text())
            files = manifest["files"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CorruptEntry(f"{manifest_path}: unreadable manifest ({exc})") from None
        if not isinstance(files, dict) or not files or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
            # every builder writes at least one file: an empty list would skip the hash check
            raise CorruptEntry(f"{manifest_path}: 'files' is not a non-empty mapping of file "
                               "name to sha256")
        meta = manifest.get("meta", {})
        if not isinstance(meta, dict):
            raise CorruptEntry(f"{manifest_path}: 'meta' is not a mapping")
        unlisted = sorted(p.name for p in path.iterdir() if p.name != MANIFEST and p.is_file()
                          and p.name not in files)
        if unlisted:
            raise CorruptEntry(f"{path}: file(s) {unlisted} not in the manifest")
        for name, digest in files.items():
            f = path / name
            if Path(name).name != name or not f.is_file():
                raise CorruptEntry(f"{f}: missing")
            if file_sha256(f) != digest:
                raise CorruptEntry(f"{f}: content hash mismatch (truncated or corrupted)")
        return meta, frozenset(files)

    def _check(self, kind: str, key: str) -> Entry | None:
        """The verified entry, None when absent; ``CorruptEntry`` when damaged (left in place)."""
        path = self._dir(kind, key)
        if path in self._broken:
            raise CacheError(self._broken[path])
        if not path.exists() and not path.is_symlink():
            return None
        meta, files = self._verify(path)
        return Entry(path, meta, hit=True, files=files)

    def _discard(self, path: Path, problem: CorruptEntry) -> None:
        """Remove a corrupt entry (caller holds its lock), warning once; ``CacheError`` naming
        the path when it cannot be removed, and for every later use of it in this process."""
        warnings.warn(f"pqbench cache: rebuilding corrupt entry: {problem}", stacklevel=3)
        try:
            remove_path(path)
        except OSError as exc:
            self._broken[path] = (f"pqbench cache: corrupt entry {path} ({problem}) cannot be "
                                  f"removed: {exc}; remove it by hand, or use another "
                                  "--pqbench-cache-dir")
            raise CacheError(self._broken[path]) from None
        self._discarded.add(path)

    def lookup(self, kind: str, key: str) -> Entry | None:
        """The verified entry, or None. A corrupt entry is removed with a warning."""
        try:
            return self._check(kind, key)
        except CorruptEntry:
            pass
        with self._lock(kind, key):
            try:
                return self._check(kind, key)
            except CorruptEntry as exc:
                self._discard(self._dir(kind, key), exc)
                return None

    @contextlib.contextmanager
    def _lock(self, kind: str, key: str) -> Iterator[None]:
        """The entry's file lock, held for the block; ``CacheError`` naming the path when it
        cannot be taken (a folder where the lock file should be, permissions, immutable)."""
        lock = self._lock_file(kind, key)
        try:
            lock.acquire()
        except OSError as exc:
            raise CacheError(f"pqbench cache: cannot take the lock {lock.lock_file} "
                             f"({exc.strerror or exc}); give another --pqbench-cache-dir"
                             ) from None
        try:
            yield
        finally:
            lock.release()

    def _lock_file(self, kind: str, key: str) -> FileLock:
        kind_dir = self.root / kind
        lock = kind_dir / f"{key}.lock"
        try:
            kind_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(f"pqbench cache: cannot create {kind_dir} ({exc.strerror or exc});"
                             " remove what is in the way, or give another "
                             "--pqbench-cache-dir") from None
        if lock.is_dir() and not lock.is_symlink():
            raise CacheError(f"pqbench cache: lock file {lock} is a folder; remove it "
                             "(rmdir) or give another --pqbench-cache-dir")
        return FileLock(str(lock))

    def remove_stale_builds(self, max_age_s: float = STALE_TMP_SECONDS) -> int:
        """Remove build folders of killed builders: older than ``max_age_s`` and their key's
        lock free (a live builder holds it for as long as its folder exists)."""
        removed = 0
        now = time.time()
        for tmp in self.root.glob("*/.*.tmp"):
            match = BUILD_FOLDER.match(tmp.name)
            if match is None:
                continue
            key = match["key"]
            try:
                if not tmp.is_dir() or now - tmp.stat().st_mtime < max_age_s:
                    continue
                with FileLock(str(tmp.parent / f"{key}.lock"), timeout=0):
                    remove_path(tmp)
                removed += 1
            except (Timeout, OSError):
                continue  # being built now, or not ours to remove: left alone
        if removed:
            warnings.warn(f"pqbench cache: removed {removed} build folder(s) left by killed "
                          f"builders in {self.root}", stacklevel=2)
        self.stats.stale_removed += removed
        return removed

    def get_or_build(self, kind: str, key: str,
                     build: Callable[[Path], dict[str, Any] | None]) -> Entry:
        """Return the entry for (kind, key), calling ``build(tmpdir)`` once if it is missing.

        ``build`` writes its files into the directory it is given and returns metadata. Only one
        process builds a given entry; the others wait on the lock and then load it. A damaged
        entry is removed and rebuilt under the lock, never while another process may read it.
        """
        try:
            entry = self._check(kind, key)
        except CorruptEntry:
            entry = None
        if entry is not None:
            self.stats.hits += 1
            return entry
        kind_dir = self.root / kind
        with self._lock(kind, key):
            final = self._dir(kind, key)
            try:
                entry = self._check(kind, key)
            except CorruptEntry as exc:
                self._discard(final, exc)
            if entry is not None:
                self.stats.hits += 1
                return entry
            self.stats.misses += 1
            # under the lock, any other build folder of this key was left by a killed builder
            for leftover in kind_dir.glob(f".{key}.*.tmp"):
                shutil.rmtree(leftover, ignore_errors=True)
            try:
                tmp = Path(tempfile.mkdtemp(dir=kind_dir, prefix=f".{key}.", suffix=".tmp"))
                tmp.chmod(0o777 & ~UMASK)  # mkdtemp makes 0700; a shared cache is read by all
            except OSError as exc:
                raise CacheError(f"pqbench cache: cannot write in {kind_dir} "
                                 f"({exc.strerror or exc}); give another "
                                 "--pqbench-cache-dir") from None
            try:
                started = time.perf_counter()
                run = isolated(build, ISOLATED_KINDS[kind]) if kind in ISOLATED_KINDS else build
                run = self.announcer(kind, run) if self.announcer is not None else run
                meta = dict(run(tmp) or {})
                meta.setdefault("build_seconds", time.perf_counter() - started)
                files = {p.name: file_sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
                manifest = {"kind": kind, "key": key, "files": files, "meta": meta,
                            "versions": self._versions, "created": time.time()}
                (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str))
                if final.exists() or final.is_symlink():  # a crashed writer's: never trusted
                    try:
                        remove_path(final)
                    except OSError as exc:
                        raise CacheError(f"pqbench cache: {final} cannot be replaced ({exc}); "
                                         "remove it by hand, or use another "
                                         "--pqbench-cache-dir") from None
                os.replace(tmp, final)
            except OSError as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                if exc.filename is None or not str(exc.filename).startswith(str(self.root)):
                    raise  # the build's own error (its input), not the cache's
                raise CacheError(f"pqbench cache: cannot write {exc.filename} "
                                 f"({exc.strerror or exc}); give another --pqbench-cache-dir"
                                 ) from None
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            self.stats.builds_by_kind[kind] = self.stats.builds_by_kind.get(kind, 0) + 1
            if final in self._discarded:
                self._discarded.discard(final)
                self.stats.rebuilt_corrupt += 1
            self._log_build(kind, key, meta)
            return Entry(final, meta, hit=False, files=frozenset(files))

    def _log_build(self, kind: str, key: str, meta: dict[str, Any]) -> None:
        """Append one line per build to ``builds.log``: the record, across every process sharing
        this cache, of what was built, by whom and how long it took (see ``read_build_log``)."""
        line = json.dumps({"kind": kind, "key": key, "pid": os.getpid(),
                           "worker": os.environ.get("PYTEST_XDIST_WORKER"), "time": time.time(),
                           "seconds": meta.get("build_seconds")}) + "\n"
        # one O_APPEND write per line: lines from concurrent processes never interleave
        path = self.root / BUILD_LOG
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
        except OSError as exc:  # the entry is built and valid: a log line is not worth a case
            if path not in self._log_warned:
                self._log_warned.add(path)
                kind_of = "a folder" if path.is_dir() else "not writable"
                warnings.warn(f"pqbench cache: {path} is {kind_of} ({exc.strerror or exc}); "
                              "builds are not logged (remove it to log them again)",
                              stacklevel=3)


def read_build_log(root: Path | str) -> list[dict[str, Any]]:
    """Every build recorded in the cache at ``root``, oldest first."""
    path = Path(root) / BUILD_LOG
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by a killed process or a full disk: the others still count
        if isinstance(record, dict):
            out.append(record)
    return out
