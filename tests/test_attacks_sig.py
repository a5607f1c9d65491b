import numpy as np
import pytest

from robustit.attacks import SIG, AttackConfig, build_attack


def sig(**params) -> SIG:
    return build_attack(AttackConfig(name="sig", params=params))


def mid_grey(height: int, width: int) -> np.ndarray:
    return 0.3 + 0.4 * np.random.default_rng(0).random((height, width, 3))


@pytest.mark.parametrize("width, frequency, amplitude", [(64, 6, 20 / 255), (96, 4, 0.05), (50, 10, 0.1)])
def test_fft_peak_at_frequency_with_amplitude(width, frequency, amplitude):
    x = mid_grey(12, width)
    delta = sig(frequency=frequency, amplitude=amplitude).perturb(x, "k") - x
    assert np.allclose(delta, delta[:1, :, :1])
    spectrum = np.abs(np.fft.rfft(delta[0, :, 0])) * 2 / width
    assert np.argmax(spectrum) == frequency
    assert spectrum[frequency] == pytest.approx(amplitude, rel=1e-9)
    assert np.delete(spectrum, frequency).max() < 1e-9


def test_default_formula_and_clipping():
    attack = sig()
    assert attack.amplitude == 20 / 255 and attack.frequency == 6
    x = mid_grey(5, 40)
    j = np.arange(40)
    assert np.allclose(attack.perturb(x, "k"), x + 20 / 255 * np.sin(2 * np.pi * j * 6 / 40)[None, :, None])
    out = attack.perturb(np.ones((5, 40, 3)), "k")
    assert out.max() == 1.0 and out.min() == pytest.approx(1 - 20 / 255)


def test_same_trigger_for_every_key():
    x = mid_grey(8, 32)
    assert np.array_equal(sig().perturb(x, "a"), sig().perturb(x, "b"))


@pytest.mark.parametrize("params, message", [({"amplitude": 2}, "amplitude"), ({"frequency": -1}, "frequency")])
def test_bad_parameters(params, message):
    with pytest.raises(ValueError, match=message):
        sig(**params)
