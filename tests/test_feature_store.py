import pytest
import torch

from conftest import draw
from robustit.config import load_config
from robustit.models.feature_store import FeatureStore, encoder_key
from robustit.models.features import FeatureCache, image_key


def images():
    return [draw(colour, shape) for colour in ("red", "blue", "green") for shape in ("circle", "square")]


def test_a_second_run_reads_the_features_the_first_one_encoded(tiny_model, tmp_path):
    first = FeatureCache(tiny_model, store=FeatureStore(tmp_path, 10))
    encoded = first.features(images())
    second = FeatureCache(tiny_model, store=FeatureStore(tmp_path, 10))
    assert torch.equal(second.features(images()), encoded)
    assert second.encoder_calls == 0 and second.store.reads == 6 and first.store.writes == 6


def test_features_from_the_store_equal_encoding_without_one(tiny_model, tmp_path):
    FeatureCache(tiny_model, store=FeatureStore(tmp_path, 10)).features(images())
    stored = FeatureCache(tiny_model, store=FeatureStore(tmp_path, 10)).features(images()[::-1])
    assert torch.allclose(stored, FeatureCache(tiny_model).features(images()[::-1]), atol=1e-6)


def test_the_store_keeps_the_most_recently_used_files_within_its_limit(tiny_model, tmp_path):
    one = FeatureCache(tiny_model).features(images()[:1])[0]
    size = FeatureStore(tmp_path / "probe", 10)
    size.put({"probe": one})
    file_bytes = next((tmp_path / "probe").glob("*/*.safetensors")).stat().st_size
    store = FeatureStore(tmp_path / "store", 3.5 * file_bytes / 2**20)
    keys = [f"{i:02d}key" for i in range(5)]
    for key in keys:
        store.put({key: one})
    kept = sorted(path.stem for path in (tmp_path / "store").glob("*/*.safetensors"))
    assert kept == keys[2:]


def test_a_damaged_file_is_encoded_again(tiny_model, tmp_path):
    cache = FeatureCache(tiny_model, store=FeatureStore(tmp_path, 10))
    cache.features(images()[:2])
    path = next(tmp_path.glob(f"*/{image_key(images()[0])}.safetensors"))
    path.write_bytes(b"not safetensors")
    again = FeatureCache(tiny_model, store=FeatureStore(tmp_path, 10))
    again.features(images()[:2])
    assert again.encoder_calls == 1 and again.store.reads == 1


def test_another_encoder_has_another_folder(tiny_model):
    key = encoder_key(tiny_model)
    with torch.no_grad():
        next(tiny_model.vision.parameters()).add_(1.0)
    assert encoder_key(tiny_model) != key


def test_the_setting_changes_no_config_hash_and_rejects_a_negative_limit():
    assert load_config(None, ["model.feature_cache_mb=512"]).config_hash() == load_config(None, []).config_hash()
    with pytest.raises(ValueError, match="feature_cache_mb"):
        load_config(None, ["model.feature_cache_mb=-1"])
