"""Where robustit keeps built artefacts: $ROBUSTIT_CACHE, else ~/.cache/robustit."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    root = Path(os.environ.get("ROBUSTIT_CACHE", Path.home() / ".cache" / "robustit"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
