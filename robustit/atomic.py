"""Writes that a kill, a full disk or a refused permission never leave half done.

A file is written to a temporary name in its own folder (`.<name>.<pid>.tmp`), flushed to
disk and renamed over its target (`os.replace`, atomic on POSIX); a folder of files (a
checkpoint) is filled under a temporary name and renamed into place the same way. On failure
the temporary is removed and the target keeps what it held before; an `OSError` (no space
left, permission denied, read-only file system) becomes a `WriteError` naming the target.
A process killed mid-write leaves at most a temporary, which `remove_temporaries` clears.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

TEMPORARY_SUFFIX = ".tmp"


class WriteError(OSError):
    """Writing `path` failed; the message names it and the cause, and says that what was
    written before is unchanged."""

    def __init__(self, path: str | Path, cause: OSError) -> None:
        reason = cause.strerror or str(cause)
        super().__init__(cause.errno, reason)
        self.path = Path(path)
        self.message = f"cannot write {path}: {reason}; files written before are unchanged"

    def __str__(self) -> str:
        return self.message


def temporary_name(path: Path, tag: str = "") -> Path:
    """The temporary sibling of `path` that this process writes before renaming."""
    return path.with_name(f".{path.name}.{os.getpid()}{tag}{TEMPORARY_SUFFIX}")


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write `data` (str as UTF-8) to `path` through a temporary file and a rename."""
    path = Path(path)
    temporary = temporary_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as error:
        _remove(temporary)
        raise WriteError(path, error) from error
    except BaseException:
        _remove(temporary)
        raise
    return path


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """An empty temporary folder beside `path` to fill in the block; when the block ends
    without error it becomes `path` (an earlier `path` is replaced), otherwise it is removed."""
    path = Path(path)
    temporary, previous = temporary_name(path), temporary_name(path, ".previous")
    _remove(temporary)
    try:
        temporary.mkdir(parents=True)
        yield temporary
        if path.exists():
            os.replace(path, previous)
        os.replace(temporary, path)
        _remove(previous)
    except OSError as error:
        _remove(temporary)
        raise WriteError(path, error) from error
    except BaseException:
        _remove(temporary)
        raise


def remove_temporaries(folder: str | Path) -> list[Path]:
    """Remove the temporaries that killed writers left anywhere under `folder`; returns them."""
    found = sorted(p for p in Path(folder).rglob(f".*{TEMPORARY_SUFFIX}") if p.name.startswith("."))
    for path in found:
        _remove(path)
    return found
