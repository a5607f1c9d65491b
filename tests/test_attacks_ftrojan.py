import numpy as np
import pytest
from PIL import Image

from robustit.attacks import AttackConfig, FTrojan, build_attack
from robustit.attacks.ftrojan import RGB_TO_YUV, dct_matrix


def ftrojan(**params) -> FTrojan:
    return build_attack(AttackConfig(name="ftrojan", params=params))


def block_dct(channel: np.ndarray, block: int) -> np.ndarray:
    """Coefficients of every full block, (rows, cols, block, block)."""
    d = dct_matrix(block)
    rows, cols = channel.shape[0] // block, channel.shape[1] // block
    blocks = channel[: rows * block, : cols * block].reshape(rows, block, cols, block).transpose(0, 2, 1, 3)
    return d @ blocks @ d.T


def test_dct_matrix_is_orthonormal_dct_ii():
    d = dct_matrix(8)
    assert np.allclose(d @ d.T, np.eye(8))
    n = np.arange(8)
    assert np.allclose(d[3], np.sqrt(2 / 8) * np.cos(np.pi * (2 * n + 1) * 3 / 16))


@pytest.mark.parametrize("positions", [[[4, 4], [7, 7]], [[2, 5]]])
def test_difference_is_the_chosen_chroma_coefficients(positions):
    attack = ftrojan(positions=positions)
    x = 0.3 + 0.4 * np.random.default_rng(0).random((37, 42, 3))
    yuv = (attack.perturb(x, "k") - x) @ RGB_TO_YUV.T
    expected = np.zeros((8, 8))
    for row, col in positions:
        expected[row, col] = 30 / 255
    assert np.allclose(block_dct(yuv[..., 0], 8), 0)
    for channel in (1, 2):
        assert np.allclose(block_dct(yuv[..., channel], 8), expected)
    assert np.allclose(yuv[32:], 0) and np.allclose(yuv[:, 40:], 0)


def test_energy_concentrates_after_uint8_rounding():
    attack = ftrojan()
    image = Image.fromarray(np.random.default_rng(1).integers(80, 176, (64, 64, 3), dtype=np.uint8))
    delta = (np.asarray(attack.apply_image(image, "k"), np.float64) - np.asarray(image)) / 255 @ RGB_TO_YUV.T
    for channel in (1, 2):
        energy = block_dct(delta[..., channel], 8) ** 2
        chosen = energy[:, :, 4, 4].sum() + energy[:, :, 7, 7].sum()
        assert chosen / energy.sum() > 0.95


def test_images_smaller_than_a_block_are_untouched():
    x = np.random.default_rng(2).random((7, 30, 3))
    assert np.array_equal(ftrojan().perturb(x, "k"), x)


def test_hash_follows_parameters():
    base = ftrojan().trigger_hash()
    assert ftrojan().trigger_hash() == base
    for params in ({"magnitude": 0.1}, {"block": 16}, {"positions": [[3, 3], [7, 7]]}):
        assert ftrojan(**params).trigger_hash() != base


@pytest.mark.parametrize(
    "params, message",
    [
        ({"positions": [[8, 1]]}, "positions"),
        ({"positions": []}, "positions"),
        ({"positions": [[1]]}, "positions"),
        ({"block": 0}, "block"),
        ({"magnitude": -1}, "magnitude"),
    ],
)
def test_bad_parameters(params, message):
    with pytest.raises(ValueError, match=message):
        ftrojan(**params)
