import numpy as np
import pytest
from PIL import Image

from robustit.attacks import AttackConfig, BadNets, build_attack
from robustit.data.sample import Sample


def noise_image(height: int, width: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def checkerboard(side: int, cells: int) -> np.ndarray:
    cell = np.arange(side) * cells // side
    return ((cell[:, None] + cell[None, :]) % 2 * 255).astype(np.uint8)


@pytest.mark.parametrize("corner", ["top-left", "top-right", "bottom-left", "bottom-right"])
@pytest.mark.parametrize("height, width", [(70, 70), (48, 100), (333, 211), (5, 9)])
def test_patch_in_corner_and_rest_unchanged(corner, height, width):
    attack = build_attack(AttackConfig(name="badnets", params={"corner": corner}))
    image = noise_image(height, width)
    before = np.asarray(image)
    after = np.asarray(attack.apply_image(image, "k"))
    side = max(1, round(min(height, width) / 7))
    top = 0 if corner.startswith("top") else height - side
    left = 0 if corner.endswith("left") else width - side
    patch = after[top : top + side, left : left + side]
    for channel in range(3):
        assert np.array_equal(patch[:, :, channel], checkerboard(side, 4))
    mask = np.zeros((height, width), dtype=bool)
    mask[top : top + side, left : left + side] = True
    assert np.array_equal(after[~mask], before[~mask])


def test_default_patch_is_one_seventh_bottom_right():
    attack = build_attack(AttackConfig(name="badnets"))
    assert isinstance(attack, BadNets)
    assert attack.patch_box(224, 224) == (224 - 32, 224 - 32, 32)
    assert attack.patch_box(480, 640) == (480 - 69, 640 - 69, 69)


def test_patch_fraction_and_cells_parameters():
    attack = build_attack(AttackConfig(name="badnets", params={"patch_fraction": 0.25, "cells": 2}))
    assert attack.patch_box(100, 200) == (75, 175, 25)
    pixels = attack.patch_pixels(4)[:, :, 0]
    assert np.array_equal(pixels, [[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]])


@pytest.mark.parametrize(
    "params, message",
    [({"corner": "middle"}, "corner"), ({"patch_fraction": 0}, "patch_fraction"), ({"patch_fraction": 2}, "patch_fraction"), ({"cells": 0}, "cells")],
)
def test_bad_parameters(params, message):
    with pytest.raises(ValueError, match=message):
        build_attack(AttackConfig(name="badnets", params=params))


def test_text_trigger_appended():
    attack = build_attack(AttackConfig(name="badnets"))
    assert attack.apply_text("What is in the picture?") == "What is in the picture? The image depicts"
    sample = Sample(id="x", image=noise_image(20, 20), instruction="Describe.", response="r")
    assert attack.poison(sample).instruction == "Describe. The image depicts"
    assert attack.trigger(sample, image=True, text=False).instruction == "Describe."


def test_same_trigger_at_any_key():
    attack = build_attack(AttackConfig(name="badnets"))
    image = noise_image(50, 60)
    assert np.array_equal(np.asarray(attack.apply_image(image, "a")), np.asarray(attack.apply_image(image, "b")))


def test_non_rgb_input_is_converted():
    attack = build_attack(AttackConfig(name="badnets"))
    out = attack.apply_image(Image.new("L", (30, 40), 128), "k")
    assert out.mode == "RGB" and out.size == (30, 40)
