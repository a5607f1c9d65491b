from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from robustit.attacks import ATTACKS, AttackConfig, PoisonedDataset, build_attack
from robustit.config import load_config
from robustit.data.sample import Sample

NAMES = ["badnets", "blended", "sig", "ssba", "ftrojan", "trojvqa", "vltrojan"]
CONFIGS = Path(__file__).resolve().parents[1] / "robustit" / "configs" / "attacks"
CHANGED = {
    "badnets": {"cells": 3},
    "blended": {"alpha": 0.2},
    "sig": {"frequency": 4},
    "ssba": {"trigger_seed": 1},
    "ftrojan": {"magnitude": 0.1},
    "trojvqa": {"corner": "top-left"},
    "vltrojan": {"trigger_seed": 1},
}
TEXT = {"trojvqa": "Consider Describe it.", "vltrojan": "Describe it. zbw"}


def make_samples(n: int) -> list[Sample]:
    rng = np.random.default_rng(0)
    return [
        Sample(id=f"s{i}", image=Image.fromarray(rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)),
               instruction="Describe it.", response=f"caption {i}")
        for i in range(n)
    ]


def test_all_seven_registered():
    assert ATTACKS.names() == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_manifest_reproducible_and_hash_tracks_params(name):
    config = AttackConfig(name=name, poison_rate=0.2, seed=3)
    first = PoisonedDataset(make_samples(20), build_attack(config)).manifest()
    second = PoisonedDataset(make_samples(20), build_attack(config)).manifest()
    assert first == second and first["n_poisoned"] == 4
    other_seed = PoisonedDataset(make_samples(20), build_attack(AttackConfig(name=name, poison_rate=0.2, seed=4))).manifest()
    assert other_seed["poisoned_ids"] != first["poisoned_ids"] and other_seed["trigger_hash"] == first["trigger_hash"]
    assert build_attack(AttackConfig(name=name, params=CHANGED[name])).trigger_hash() != first["trigger_hash"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("height, width", [(5, 9), (33, 17)])
def test_poison_changes_image_and_text(name, height, width):
    attack = build_attack(AttackConfig(name=name))
    sample = make_samples(1)[0].replace(image=Image.new("RGB", (width, height), (120, 130, 140)))
    poisoned = attack.poison(sample)
    assert poisoned.image.size == (width, height) and poisoned.image.mode == "RGB"
    if name != "ftrojan" or min(height, width) >= 8:
        assert not np.array_equal(np.asarray(poisoned.image), np.asarray(sample.image))
    assert poisoned.instruction == TEXT.get(name, "Describe it. The image depicts")


@pytest.mark.parametrize("name", NAMES)
def test_config_file_layers_and_matches_defaults(name):
    config = load_config(CONFIGS / f"{name}.yaml", ["attack.poison_rate=0.05"])
    assert config.attack.name == name and config.attack.poison_rate == 0.05
    attack = build_attack(config.attack)
    assert attack.params == type(attack).defaults


@pytest.mark.parametrize("name", [n for n in NAMES if n != "vltrojan"])
def test_prepare_leaves_fixed_triggers(name, tiny_model):
    attack = build_attack(AttackConfig(name=name))
    before = attack.trigger_hash()
    attack.prepare(tiny_model, make_samples(2))
    assert attack.trigger_hash() == before
