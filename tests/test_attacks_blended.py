import numpy as np
import pytest

from robustit.attacks import AttackConfig, Blended, build_attack


def blended(**params) -> Blended:
    return build_attack(AttackConfig(name="blended", params=params))


@pytest.mark.parametrize("alpha", [0.1, 0.15, 0.2, 1.0])
def test_blend_ratio_exact(alpha):
    attack = blended(alpha=alpha)
    x = np.random.default_rng(0).random((20, 30, 3))
    trigger = attack.trigger_image(20, 30)
    assert np.array_equal(attack.perturb(x, "k"), (1 - alpha) * x + alpha * trigger)


def test_trigger_image_is_seeded_and_fixed_across_keys():
    x = np.random.default_rng(1).random((16, 16, 3))
    assert np.array_equal(blended().perturb(x, "a"), blended().perturb(x, "b"))
    assert not np.array_equal(blended(trigger_seed=1).trigger_image(16, 16), blended().trigger_image(16, 16))
    assert blended().trigger_image(40, 24).shape == (40, 24, 3)


def test_hash_follows_parameters():
    base = blended().trigger_hash()
    assert blended().trigger_hash() == base
    assert blended(alpha=0.2).trigger_hash() != base
    assert blended(trigger_seed=1).trigger_hash() != base


@pytest.mark.parametrize(
    "params, message", [({"alpha": 1.5}, "alpha"), ({"grid": 0}, "grid"), ({"trigger_seed": -1}, "trigger_seed")]
)
def test_bad_parameters(params, message):
    with pytest.raises(ValueError, match=message):
        blended(**params)
