"""Where results are written: every output path checked, before any work, against every input
and every other output (symlinks and hard links resolved), and for being writable.

One check for every writer: ``pqbench report -o / --plot``, ``noise --write``, ``merge -o`` and,
in pytest, ``--benchmark-json`` (against ``--pqbench-compare`` and ``--pqbench-noise``) and the
``--benchmark-save`` storage. A problem is one ``UsageError`` naming the option, the path and
what to do (``pqbench`` exits 2, pytest reports a usage error), so a long run never ends in an
error about where to put its results, nor replaces one of its own inputs.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from .errors import UsageError

Named = Mapping[str, "Path | str | None"] | Iterable[tuple[str, "Path | str | None"]]


def same_file(a: Path, b: Path) -> bool:
    """``a`` and ``b`` name one file: equal once symlinks are resolved, or one inode (a hard
    link)."""
    try:
        if Path(a).resolve() == Path(b).resolve():
            return True
    except (OSError, RuntimeError):  # a symlink loop: compared by inode below, where it can be
        pass
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _items(named: Named) -> list[tuple[str, Path]]:
    pairs = named.items() if isinstance(named, Mapping) else named
    return [(label, Path(path)) for label, path in pairs if path is not None and str(path)]


def check_outputs(outputs: Named, inputs: Named = (), example: str = "out.json") -> None:
    """Refuse, before any work, an output that would fail at the end or destroy something:
    a folder, a file in a missing or unwritable folder, an existing file that cannot be replaced
    or is not a regular file (``/dev/null`` would be replaced by a file), one of the ``inputs``,
    or the same file as another output. ``outputs`` / ``inputs``: option label -> path."""
    outs, ins = _items(outputs), _items(inputs)
    for label, path in outs:
        check_writable(path, label, example)
        for in_label, source in ins:
            if same_file(path, source):
                also = "" if str(path) == str(source) else f" ({source})"
                raise UsageError(f"{label} {path}: is the {in_label} file{also}, which this "
                                 "command reads; an input is never overwritten: write to "
                                 "another file")
    for i, (label, path) in enumerate(outs):
        for other_label, other in outs[i + 1:]:
            if same_file(path, other):
                raise UsageError(f"{label} {path} and {other_label} {other} are the same file; "
                                 "give each output its own file")


def check_writable(path: Path, label: str, example: str = "out.json") -> None:
    """``path`` can be written at the end: a file name (not a folder) in an existing folder this
    process can create files in; if it exists, a regular file that can be replaced."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{label} {path}: is a directory; give a file name, e.g. "
                         f"{path / example}")
    folder = path.parent
    if not folder.is_dir():
        what = "is not a directory" if folder.exists() else "does not exist"
        raise UsageError(f"{label} {path}: directory {str(folder)!r} {what}")
    if path.exists() or path.is_symlink():
        try:
            mode = path.stat().st_mode
        except OSError as exc:  # a dangling symlink or a loop
            raise UsageError(f"{label} {path}: cannot be replaced ({exc.strerror or exc})"
                             ) from None
        if not stat.S_ISREG(mode):
            raise UsageError(f"{label} {path}: exists and is not a regular file (results are "
                             "written by replacing the file); give a file name")
        try:
            with open(path, "ab"):  # opened for writing, nothing written: immutable, read-only
                pass
        except OSError as exc:
            raise UsageError(f"{label} {path}: exists and cannot be replaced "
                             f"({exc.strerror or exc}); give another file") from None
    probe_folder(folder, f"{label} {path}")


def probe_folder(folder: Path, what: str) -> None:
    """A file can be created in ``folder`` (and is removed at once): permissions, a read-only or
    full file system, an immutable folder. ``UsageError`` naming ``what`` otherwise."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".pqbench-write-check.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"{what}: cannot write in {str(folder)!r} ({exc.strerror or exc}); "
                         "give a folder this process can write") from None


def check_folder(folder: Path, label: str) -> None:
    """A folder results are saved into (``--benchmark-save`` storage): existing and writable,
    or creatable below an existing writable folder."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{label} {folder}: {existing} is not a directory")
    probe_folder(existing, f"{label} {folder}")


def numbered_free(path: Path) -> Path:
    """``path`` if no file has that name, else ``<stem>-2<suffix>``, ``-3``...: a name that
    replaces nothing (the caller still writes it no-clobber)."""
    if not (path.exists() or path.is_symlink()):
        return path
    for n in range(2, 10_000):
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        if not (candidate.exists() or candidate.is_symlink()):
            return candidate
    raise UsageError(f"{path}: no free numbered name beside it; clean up its folder")
