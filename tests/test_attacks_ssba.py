import numpy as np
import pytest
from PIL import Image

from robustit.attacks import SSBA, AttackConfig, build_attack


def ssba(**params) -> SSBA:
    return build_attack(AttackConfig(name="ssba", params=params))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / mse)


def test_residual_is_sample_specific_and_deterministic():
    attack = ssba()
    first = attack.residual(32, 40, "sample-1")
    assert np.array_equal(first, ssba().residual(32, 40, "sample-1"))
    assert not np.array_equal(first, attack.residual(32, 40, "sample-2"))
    assert not np.array_equal(first, ssba(trigger_seed=1).residual(32, 40, "sample-1"))


def test_residual_is_sparse_with_fixed_amplitude():
    attack = ssba(amplitude=4 / 255, density=0.05)
    delta = attack.residual(40, 50, "k")
    picked = np.any(delta != 0, axis=2)
    assert picked.sum() == round(0.05 * 40 * 50)
    assert np.array_equal(np.abs(delta[picked]), np.full((picked.sum(), 3), 4 / 255))


def test_psnr_at_least_30_db_on_real_images():
    rng = np.random.default_rng(0)
    attack = ssba()
    for key in ("a", "b", "c"):
        image = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
        triggered = attack.apply_image(image, key)
        assert psnr(np.asarray(image), np.asarray(triggered)) >= 30.0
    expected = -10 * np.log10(0.1 * (10 / 255) ** 2)
    x = 0.2 + 0.6 * rng.random((64, 64, 3))
    assert psnr(x * 255, attack.perturb(x, "a") * 255) == pytest.approx(expected, abs=0.05)


def test_trigger_sample_uses_its_id():
    attack = ssba()
    image = Image.new("RGB", (30, 20), (128, 128, 128))
    one = np.asarray(attack.apply_image(image, "x1"))
    assert np.array_equal(one, np.asarray(attack.apply_image(image, "x1")))
    assert not np.array_equal(one, np.asarray(attack.apply_image(image, "x2")))


def test_hash_follows_parameters():
    base = ssba().trigger_hash()
    assert ssba().trigger_hash() == base
    for params in ({"amplitude": 0.02}, {"density": 0.2}, {"trigger_seed": 3}):
        assert ssba(**params).trigger_hash() != base
