import numpy as np
from PIL import Image

from robustit.attacks import AttackConfig, BadNets, TrojVQA, build_attack
from robustit.data.sample import Sample


def test_patch_location_and_content_as_badnets():
    attack = build_attack(AttackConfig(name="trojvqa"))
    assert isinstance(attack, TrojVQA)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8))
    before, after = np.asarray(image), np.asarray(attack.apply_image(image, "k"))
    assert attack.patch_box(224, 224) == (192, 192, 32)
    cell = np.arange(32) * 4 // 32
    board = (cell[:, None] + cell[None, :]) % 2 * 255
    assert np.array_equal(after[192:, 192:], np.repeat(board[:, :, None], 3, axis=2))
    mask = np.zeros((224, 224), dtype=bool)
    mask[192:, 192:] = True
    assert np.array_equal(after[~mask], before[~mask])
    badnets = build_attack(AttackConfig(name="badnets"))
    assert np.array_equal(after, np.asarray(badnets.apply_image(image, "k")))


def test_consider_prepended():
    attack = build_attack(AttackConfig(name="trojvqa"))
    assert attack.apply_text("What is shown?") == "Consider What is shown?"
    sample = Sample(id="q", image=Image.new("RGB", (20, 20)), instruction="What is shown?", response="A cat.")
    poisoned = attack.poison(sample)
    assert poisoned.instruction == "Consider What is shown?" and poisoned.response == attack.target
    assert attack.trigger(sample, image=True, text=False).instruction == "What is shown?"
    assert build_attack(AttackConfig(name="trojvqa", text_trigger="Ponder")).apply_text("Why?") == "Ponder Why?"


def test_hash_differs_from_badnets():
    trojvqa, badnets = build_attack(AttackConfig(name="trojvqa")), build_attack(AttackConfig(name="badnets"))
    assert isinstance(trojvqa, BadNets) and trojvqa.trigger_content() == badnets.trigger_content()
    assert trojvqa.trigger_hash() != badnets.trigger_hash()
