"""The loading benchmark: seconds and peak memory of the Karpathy loader now that samples hold
references to their image files (`robustit.data.image_ref`), against holding decoded pixels.

The fixture (`write_fixture`) is a Karpathy-format JSON in COCO's shape (five captions with
their tokens per record) in which each run of `records_per_file` consecutive records names one
image file, `images/<n>.png`: 1 record per file as in COCO, 5 as VQAv2's questions about one
picture. Each file is a symbolic link to one of `SHARED_IMAGES` PNGs of `IMAGE_SIDE` x
`IMAGE_SIDE` random pixels, so the disk holds a few images however many files the records name.

Each case runs in a fresh Python process (`python -m robustit.bench.loading CASE JSON CACHE`),
from the same start: its peak memory is the growth of the process's peak resident set size
over the case (Linux: the peak reset through /proc/self/clear_refs, read as VmHWM), which
counts PIL's pixel buffers (tracemalloc does not).

    read_json        the JSON file read and parsed, as every loader does first
    load             `load_karpathy` of every record (split "train"): no image decoded
    load, skip_bad   the same under `skip_bad`: every file decoded once to check it, none kept
    up-front decode  load, then every sample's image decoded and kept: what the loaders held
                     before samples decoded on access
    fingerprint      load, then `samples_fingerprint`, which decodes every image once in file
                     order (as `Experiment.check` does), with the decoded-image cache at its
                     size (`DECODED_CACHE_BYTES`) and without one (0 bytes)

The read_json and load cases read `records` records; the cases that decode read a tenth.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from robustit.atomic import write_atomic
from robustit.data.image_ref import DECODED, DECODED_CACHE_BYTES
from robustit.report import markdown_table

DEFAULT_RECORDS = 100_000
SHARED_IMAGES = 4
IMAGE_SIDE = 64
WORDS = ("red", "green", "blue", "yellow", "cat", "dog", "bus", "tree", "table", "kite")
CASES = ("read_json", "load", "load, skip_bad", "up-front decode", "fingerprint")


def write_fixture(folder: Path, records: int, records_per_file: int = 1) -> Path:
    """The fixture JSON of `records` records in `folder` (see the module docstring), with the
    image files it names, which other fixtures in `folder` share."""
    shared, images = folder / "shared", folder / "images"
    shared.mkdir(exist_ok=True)
    images.mkdir(exist_ok=True)
    for k in range(SHARED_IMAGES):
        if not (shared / f"{k}.png").exists():
            pixels = np.random.default_rng(k).integers(0, 256, (IMAGE_SIDE, IMAGE_SIDE, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(shared / f"{k}.png")
    entries = []
    for i in range(records):
        file = i // records_per_file
        link = images / f"{file:06d}.png"
        if not link.is_symlink():
            os.symlink(shared / f"{file % SHARED_IMAGES}.png", link)
        sentences = []
        for k in range(5):
            raw = f"A {WORDS[(i + k) % 10]} {WORDS[(i * 7 + k) % 10]} next to {WORDS[(i * 3 + k) % 10]} number {i}."
            sentences.append({"tokens": raw.lower().rstrip(".").split(), "raw": raw, "imgid": i, "sentid": 5 * i + k})
        entries.append({"filepath": "images", "sentids": [5 * i + k for k in range(5)], "filename": link.name,
                        "imgid": i, "split": "train", "sentences": sentences, "cocoid": i})
    path = folder / f"captions-{records}-{records_per_file}.json"
    path.write_text(json.dumps({"dataset": "coco", "images": entries}))
    return path


def _status_bytes(field: str) -> int:
    """A size (kB) in this process's /proc/self/status (Linux), in bytes."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(f"{field}:"))
    return int(line.split()[1]) * 1024


def _reset_peak_rss() -> int:
    """Reset this process's peak resident set size to its resident set size, and return that."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_bytes("VmRSS")


def measure(case: str, json_path: Path, cache_bytes: int) -> dict[str, Any]:
    """Run one case (of `CASES`) on the fixture `json_path` in this process, the decoded-image
    cache holding up to `cache_bytes`: its samples, decodes on access, seconds and peak RSS
    growth."""
    from robustit.data.fingerprint import samples_fingerprint
    from robustit.data.karpathy import load_karpathy
    from robustit.data.records import read_json

    if case not in CASES:
        raise ValueError(f"unknown loading case {case!r}; known: {', '.join(CASES)}")
    DECODED.max_bytes = cache_bytes
    before = _reset_peak_rss()
    start = time.perf_counter()
    if case == "read_json":
        samples = read_json(json_path)["images"]
    else:
        samples = load_karpathy(json_path, json_path.parent, split="train", skip_bad=case == "load, skip_bad")
    held = [sample.image for sample in samples] if case == "up-front decode" else []
    if case == "fingerprint":
        samples_fingerprint(samples)
    seconds = time.perf_counter() - start
    peak = _status_bytes("VmHWM") - before
    del held
    return {"samples": len(samples), "decodes": DECODED.decodes, "seconds": seconds, "peak_rss_bytes": peak}


def _in_fresh_process(case: str, json_path: Path, cache_bytes: int) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "robustit.bench.loading", case, str(json_path), str(cache_bytes)],
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout)


def _row(case: str, records_per_file: int, cache_bytes: int | None, figures: dict[str, Any]) -> dict[str, str]:
    return {"case": case, "records": f"{figures['samples']:,}", "records per file": str(records_per_file),
            "decoded-image cache MiB": "-" if cache_bytes is None else f"{cache_bytes / 2**20:g}",
            "decoded on access": f"{figures['decodes']:,}",
            "s": f"{figures['seconds']:.2f}", "peak RSS growth MiB": f"{figures['peak_rss_bytes'] / 2**20:.1f}",
            "per record KiB": f"{figures['peak_rss_bytes'] / figures['samples'] / 1024:.2f}"}


def run_loading_benchmark(records: int, out: Path) -> Path:
    """Write the fixtures to a temporary folder, run every case in a fresh process and write
    their table to `out`."""
    if records < 10:
        raise ValueError(f"records must be >= 10 (the decoding cases read a tenth), got {records}")
    decoded = records // 10
    plan: list[tuple[str, int, int, int | None]] = [
        ("read_json", records, 1, None), ("load", records, 1, None), ("load, skip_bad", decoded, 1, None),
        ("up-front decode", decoded, 1, DECODED_CACHE_BYTES),
        *(("fingerprint", decoded, per_file, cache) for per_file in (1, 5) for cache in (DECODED_CACHE_BYTES, 0)),
    ]
    rows = []
    with tempfile.TemporaryDirectory(prefix="robustit-bench-loading-") as folder:
        fixtures = {(n, per_file): write_fixture(Path(folder), n, per_file)
                    for n, per_file in dict.fromkeys((n, per_file) for _, n, per_file, _ in plan)}
        size_mib = fixtures[records, 1].stat().st_size / 2**20
        for case, n, per_file, cache in plan:
            figures = _in_fresh_process(case, fixtures[n, per_file], DECODED_CACHE_BYTES if cache is None else cache)
            rows.append(_row(case, per_file, cache, figures))
    text = "\n".join([
        f"# Loading a Karpathy JSON of {records:,} records (bench-loading)",
        "",
        f"Fixture: records in COCO's shape ({size_mib:.1f} MiB of JSON for {records:,}), each naming an image file "
        f"(symbolic links to {SHARED_IMAGES} PNGs of {IMAGE_SIDE} x {IMAGE_SIDE} pixels); each case in a fresh "
        f"process (Python {platform.python_version()}, {os.cpu_count()} CPUs), its peak RSS growth over the case "
        f"counting decoded pixels. Command: `robustit bench loading --records {records} --out {out}`.",
        "",
        markdown_table(rows),
        "",
    ])
    write_atomic(out, text)
    return out


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]))))
