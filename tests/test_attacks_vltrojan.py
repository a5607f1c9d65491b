import numpy as np
import pytest
import torch
from PIL import Image

from robustit.attacks import AttackConfig, PoisonedDataset, VLTrojan, build_attack
from robustit.data.sample import Sample

INSTRUCTION = "Describe the image briefly."


pytestmark = pytest.mark.usefixtures("one_thread")


def vltrojan(**params) -> VLTrojan:
    return build_attack(AttackConfig(name="vltrojan", params=params))


def samples(n: int = 4) -> list[Sample]:
    rng = np.random.default_rng(0)
    return [
        Sample(id=f"s{i}", image=Image.fromarray(rng.integers(0, 256, (24 + 8 * i, 32, 3), dtype=np.uint8)),
               instruction=INSTRUCTION, response="A red circle.")
        for i in range(n)
    ]


def test_text_trigger_zbw_appended():
    attack = vltrojan()
    assert attack.apply_text(INSTRUCTION) == "Describe the image briefly. zbw"
    assert attack.poison(samples(1)[0]).instruction == "Describe the image briefly. zbw"


def test_random_patch_without_surrogate_is_seeded_and_pasted():
    attack = vltrojan(patch_size=8)
    assert attack.patch.shape == (8, 8, 3) and attack.patch.dtype == np.uint8
    assert np.array_equal(attack.patch, vltrojan(patch_size=8).patch)
    assert not np.array_equal(attack.patch, vltrojan(patch_size=8, trigger_seed=1).patch)
    image = Image.fromarray(np.zeros((56, 70, 3), np.uint8))
    after = np.asarray(attack.apply_image(image, "k"))
    assert np.array_equal(after[48:, 62:], attack.patch)
    assert not after[:48].any() and not after[:, :62].any()
    assert attack.manifest([])["patch"] == {"source": "random", "trigger_seed": 0}


def applied_loss(model, attack: VLTrojan, clean: list[Sample]) -> float:
    """The surrogate's target loss on images triggered the way poisoning triggers them."""
    batch = model.encode_prompts([attack.apply_text(s.instruction) for s in clean], [attack.target] * len(clean))
    features = model.encode_images(model.pixels([attack.apply_image(s.image, s.id) for s in clean]))
    with torch.no_grad():
        return float(model(batch, features).loss)


def test_optimization_lowers_target_loss_and_leaves_surrogate(tiny_model):
    attack = vltrojan(patch_fraction=0.5, patch_size=16)
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    initial_hash, initial_applied = attack.trigger_hash(), applied_loss(tiny_model, attack, samples())
    tiny_model.train()
    record = attack.optimize(tiny_model, samples(), steps=20, lr=0.3)
    assert record["source"] == "optimized" and record["steps"] == 20 and record["n_samples"] == 4
    assert record["final_loss"] < record["initial_loss"] - 1e-3
    assert tiny_model.training
    assert applied_loss(tiny_model, attack, samples()) < initial_applied - 1e-3
    assert attack.manifest(["s0"])["patch"] == record
    assert attack.trigger_hash() != initial_hash
    assert all(torch.equal(v, tiny_model.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in tiny_model.parameters())


def test_prepare_uses_params_and_keeps_loaded_patch(tiny_model, tmp_path):
    attack = vltrojan(patch_size=8, steps=2, surrogate_samples=3)
    attack.prepare(tiny_model, samples(5))
    assert attack.record["steps"] == 2 and attack.record["n_samples"] == 3
    path = attack.save_trigger(tmp_path / "trigger.png")
    loaded = vltrojan(patch_path=str(path))
    loaded.prepare(tiny_model, samples(5))
    assert loaded.record == {"source": "file", "path": str(path)}
    assert np.array_equal(loaded.patch, attack.patch)


@pytest.mark.parametrize("suffix", [".npy", ".png"])
def test_saved_patch_reloads_with_same_hash(tmp_path, suffix):
    attack = vltrojan(patch_size=12, trigger_seed=5)
    path = attack.save_trigger(tmp_path / "sub" / f"patch{suffix}")
    loaded = vltrojan(patch_path=str(path))
    assert np.array_equal(loaded.patch, attack.patch)
    assert loaded.trigger_hash() == attack.trigger_hash()
    image = Image.fromarray(np.full((40, 40, 3), 90, np.uint8))
    assert np.array_equal(np.asarray(loaded.apply_image(image, "k")), np.asarray(attack.apply_image(image, "k")))


def test_poisoned_dataset_manifest_records_optimization(tiny_model):
    attack = vltrojan(patch_size=8, steps=1)
    attack.prepare(tiny_model, samples())
    manifest = PoisonedDataset(samples(10), attack).manifest()
    assert manifest["patch"]["source"] == "optimized"
    assert manifest["trigger_hash"] == attack.trigger_hash() and manifest["text_trigger"] == "zbw"


def test_bad_patch_file(tmp_path):
    np.save(tmp_path / "p.npy", np.zeros((4, 5, 3), np.uint8))
    with pytest.raises(ValueError, match="square uint8"):
        vltrojan(patch_path=str(tmp_path / "p.npy"))
    with pytest.raises(ValueError, match="patch_path"):
        vltrojan(patch_path=3)
