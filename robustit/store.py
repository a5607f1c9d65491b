"""The committed result store: one small JSON record per finished run, keyed by the hash of
the run's resolved config (BackdoorBench-style: one save/load pair, `put` and `get`).

Layout:

    <root>/<config_hash[:16]>.json     one record per finished run (pretty, sorted keys)

A record is a JSON object

    config_hash       sha256 of the resolved config minus its run labels
                      (`ExperimentConfig.config_hash`): equal hashes, equal results
    config            the resolved config (`ExperimentConfig.resolved()`)
    name              the run's name
    metrics           the run's metrics.json
    inputs            hashes identifying the run's inputs (data, base adapter, ...), from the caller
    machine           where it ran (`machine_info()`)
    robustit_version  the package version that produced it
    finished          when it finished (UTC, ISO 8601)

Records are written atomically (`robustit.rundir.write_atomic`: a temporary file in the same
directory, then `os.replace`), so a crash never leaves a partial record: a run is either stored whole or not at all. Stores
written on several machines (or by several shards of a grid) are combined with `merge`.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from robustit.atomic import write_atomic
from robustit.config import value_at

if TYPE_CHECKING:
    from robustit.config import ExperimentConfig

log = logging.getLogger(__name__)
DEFAULT_STORE = "results"

RECORD_KEYS = ("config_hash", "config", "name", "metrics", "inputs", "machine", "robustit_version", "finished")
HASH_PATTERN = re.compile(r"[0-9a-f]{64}")


class CorruptRecord(ValueError):
    """A record file that cannot be read as a record; the message names the file."""


def machine_info() -> dict[str, Any]:
    """Platform, Python, torch version and threads, CPU model (from /proc/cpuinfo when
    readable), logical cores, the CUDA device's name (when there is one) and, for a
    data-parallel run, its process count."""
    import torch

    from robustit.train.parallel import launched_processes

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu": None,
        "logical_cores": os.cpu_count(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    if launched_processes() > 1:
        info["processes"] = launched_processes()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if info["cpu"] is None:
        info["cpu"] = platform.processor() or None
    return info


def make_record(config: ExperimentConfig, metrics: dict[str, Any], inputs: dict[str, Any]) -> dict[str, Any]:
    """The record of a finished run of `config`: its metrics, the caller's input hashes, this
    machine and this version, finished now."""
    from robustit import __version__

    return {
        "config_hash": config.config_hash(),
        "config": config.resolved(),
        "name": config.name,
        "metrics": metrics,
        "inputs": dict(inputs),
        "machine": machine_info(),
        "robustit_version": __version__,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def dotted(record: dict[str, Any], key: str) -> Any:
    """The value at dotted `key` of the record's config ("attack.name"); None where a step of
    the path is missing or null (so defense=None selects the runs without a defense)."""
    return value_at(record["config"], key)


class ResultStore:
    """The records under `root` (see the module docstring for the layout)."""

    def __init__(self, root: str | Path = DEFAULT_STORE) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"ResultStore({str(self.root)!r})"

    def path(self, config_hash: str) -> Path:
        return self.root / f"{config_hash[:16]}.json"

    def _read(self, path: Path) -> dict[str, Any]:
        try:
            record = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CorruptRecord(f"corrupt result record {path}: {error}") from error
        problem = record_problem(record)
        if problem is None and path.name != f"{record['config_hash'][:16]}.json":
            problem = f"its config_hash {record['config_hash'][:16]}... does not match the file name"
        if problem:
            raise CorruptRecord(f"corrupt result record {path}: {problem}")
        return record

    def get(self, config_hash: str) -> dict[str, Any] | None:
        """The record of `config_hash` (the full hash), or None if the store has none."""
        path = self.path(config_hash)
        if not path.exists():
            return None
        record = self._read(path)
        if record["config_hash"] != config_hash:
            raise CorruptRecord(f"result record {path} holds config hash {record['config_hash']}, not {config_hash}")
        return record

    def __contains__(self, config_hash: object) -> bool:
        return isinstance(config_hash, str) and self.get(config_hash) is not None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records())

    def __len__(self) -> int:
        return len(self.paths())

    def paths(self) -> list[Path]:
        """The record files, sorted (temporary files of a write in progress are not records)."""
        return sorted(self.root.glob("*.json")) if self.root.is_dir() else []

    def put(self, record: dict[str, Any]) -> Path:
        """Write `record` atomically to <root>/<config_hash[:16]>.json (replacing the record
        of the same config, if any); returns the file."""
        problem = record_problem(record)
        if problem:
            raise ValueError(f"not a result record: {problem}")
        text = json.dumps(record, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        return write_atomic(self.path(record["config_hash"]), text)

    def records(self, predicate: Callable[[dict[str, Any]], bool] | None = None, **where: Any) -> list[dict[str, Any]]:
        """The records (sorted by config hash) whose config has each dotted key of `where` equal
        to its value, e.g. records(**{"attack.name": "sig"}), and that `predicate` accepts."""
        out = []
        for path in self.paths():
            record = self._read(path)
            if all(dotted(record, key) == value for key, value in where.items()) and (predicate is None or predicate(record)):
                out.append(record)
        return out

    def merge(self, other_root: str | Path) -> tuple[list[str], list[str], list[str]]:
        """Copy the records of the store at `other_root` (another machine's, another shard's)
        that this store lacks. Returns the config hashes (sorted) (added, same, conflicting):
        same = stored here with the same metrics; conflicting = stored here with different
        metrics, kept as is here and logged."""
        other = ResultStore(other_root)
        if not other.root.is_dir():
            raise FileNotFoundError(f"no result store at {other.root}")
        added, same, conflicting = [], [], []
        for record in other.records():
            key = record["config_hash"]
            mine = self.get(key)
            if mine is None:
                self.put(record)
                added.append(key)
            elif mine["metrics"] == record["metrics"]:
                same.append(key)
            else:
                conflicting.append(key)
                log.warning("merge: %s holds other metrics for config %s than %s; kept this store's",
                            other.path(key), key[:16], self.path(key))
        return added, same, conflicting


def record_problem(record: Any) -> str | None:
    """Why `record` is not a well-formed record, or None if it is."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    missing = [key for key in RECORD_KEYS if key not in record]
    if missing:
        return f"missing key(s) {missing}"
    if not isinstance(record["config_hash"], str) or not HASH_PATTERN.fullmatch(record["config_hash"]):
        return f"config_hash must be 64 lowercase hex digits, got {record['config_hash']!r}"
    for key in ("config", "metrics", "inputs", "machine"):
        if not isinstance(record[key], dict):
            return f"{key} must be an object, got {type(record[key]).__name__}"
    return None
