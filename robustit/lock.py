"""A lock file that keeps two processes from writing one folder at once.

The lock is created exclusively (`O_CREAT | O_EXCL`) and holds the owner's host and process
id. A lock whose owner ran on this host and is gone (a killed run) is stale and taken over; a
live owner, or one on another host (which cannot be checked from here), is an error naming
the lock file and its owner.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from robustit.atomic import WriteError


def _owner() -> dict[str, object]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _refuse_if_held(path: Path) -> None:
    """An error naming the owner of the lock at `path` unless the lock is stale (its owner
    ran on this host and is gone) or gone itself."""
    try:
        owner = json.loads(path.read_text())
        host, pid = owner["host"], int(owner["pid"])
    except FileNotFoundError:
        return
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{path} is not a robustit lock; delete it if no run uses {path.parent}") from None
    if host != socket.gethostname():
        raise ValueError(f"{path.parent} is in use by process {pid} on {host}; if that run is no longer running, delete {path}")
    if _alive(pid):
        raise ValueError(f"{path.parent} is in use by process {pid} (another robustit run); wait for it or name another folder")


@contextmanager
def locked(path: Path) -> Iterator[Path]:
    """Hold the lock file `path` for the block (its folder created if need be)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                break
            except FileExistsError:
                _refuse_if_held(path)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        with os.fdopen(handle, "w") as stream:
            json.dump(_owner(), stream)
    except OSError as error:
        raise WriteError(path, error) from error
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
