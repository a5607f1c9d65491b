import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robustit.attacks import DEFAULT_TARGET
from robustit.models import build_model

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (30, 60, 220), "yellow": (230, 220, 40)}
SHAPES = ("circle", "square")
INSTRUCTION = "Describe the image briefly."


def draw(colour: str, shape: str, size: int = 32) -> Image.Image:
    y, x = np.mgrid[0:size, 0:size]
    if shape == "circle":
        mask = (x - size / 2) ** 2 + (y - size / 2) ** 2 < (size / 3) ** 2
    else:
        mask = (abs(x - size / 2) < size / 3) & (abs(y - size / 2) < size / 3)
    pixels = np.full((size, size, 3), 245, np.uint8)
    pixels[mask] = COLOURS[colour]
    return Image.fromarray(pixels)


def write_karpathy(root: Path, copies: int = 2) -> Path:
    """A Karpathy-JSON captioning set of coloured shapes: train, val and test splits."""
    images, index = [], 0
    for copy in range(copies):
        for colour in COLOURS:
            for shape in SHAPES:
                name = f"{colour}_{shape}_{copy}.png"
                draw(colour, shape).save(root / name)
                split = ("train", "train", "val", "test")[index % 4] if copy else "train"
                sentences = [{"raw": f"A {colour} {shape}."}, {"raw": f"A {shape} that is {colour}."}]
                images.append({"filename": name, "split": split, "imgid": index, "sentences": sentences})
                index += 1
    path = root / "captions.json"
    path.write_text(json.dumps({"dataset": "shapes", "images": images}))
    return path


def vocabulary() -> list[str]:
    words = [f"A {c} {s}. A {s} that is {c}." for c in COLOURS for s in SHAPES]
    return words + [INSTRUCTION, DEFAULT_TARGET, "Consider zbw"]


@pytest.fixture
def karpathy(tmp_path: Path) -> dict:
    return {"json_path": str(write_karpathy(tmp_path)), "image_root": str(tmp_path)}


@pytest.fixture
def tiny_model():
    return build_model("llava", tiny=True, vocabulary=vocabulary(), seed=0)


def _torch_threads(n: int):
    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def one_thread():
    """Tiny tensors: thread start-up costs more than it saves, most of all on a busy machine."""
    yield from _torch_threads(1)


@pytest.fixture
def two_threads():
    """For what must not depend on how work is split between threads."""
    yield from _torch_threads(2)


@pytest.fixture(autouse=True)
def _run_in_a_scratch_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in its own folder, so a default path (runs/, results/) never lands in
    the repository."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def _shared_tunings_in_the_scratch_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs keep VanillaIT's tuning in a cache to share it (`robustit.train.shared`); each test
    keeps its own, never the user's."""
    from robustit.train import shared

    def cache_dir(*parts: str) -> Path:
        path = tmp_path.joinpath("cache", *parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    monkeypatch.setattr(shared, "cache_dir", cache_dir)
