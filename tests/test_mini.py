"""The embedded default model: real packaged weights, loaded offline."""
import pytest
import torch

from conftest import INSTRUCTION, draw
from robustit.models import build_model

pytestmark = pytest.mark.mini


@pytest.fixture(scope="module")
def mini():
    return build_model("mini", image_size=128)


def test_mini_is_smollm2_135m_with_efficientnet_lite0(mini):
    assert mini.decoder.config.vocab_size == 49152 and mini.decoder.config.hidden_size == 576
    lm = sum(p.numel() for p in mini.decoder.parameters()) + mini.lm_head.weight.numel()
    assert 160e6 < lm < 165e6
    features = mini.encode_images(mini.pixels([draw("red", "circle")]))
    assert features.shape == (1, 16, 1280)
    assert mini.lm_head.weight is not mini.decoder.get_input_embeddings().weight
    torch.testing.assert_close(mini.lm_head.weight, mini.decoder.get_input_embeddings().weight)


def test_mini_image_features_do_not_depend_on_the_batch_and_leave_the_encoder_unchanged(mini):
    buffers = {n: b.clone() for n, b in mini.vision.named_buffers()}
    alone = mini.encode_images(mini.pixels([draw("red", "circle")]))
    batched = mini.encode_images(mini.pixels([draw("red", "circle"), draw("blue", "square"), draw("green", "triangle")]))
    mini.train()
    during_training = mini.encode_images(mini.pixels([draw("red", "circle"), draw("blue", "square")]))
    mini.eval()
    torch.testing.assert_close(batched[:1], alone, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(during_training[:1], alone, atol=1e-4, rtol=1e-3)
    assert all(torch.equal(b, buffers[n]) for n, b in mini.vision.named_buffers())


def test_mini_language_model_is_pretrained(mini):
    tokens = mini.tokenizer("The capital of France is Paris.", return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = mini.decoder(input_ids=tokens).last_hidden_state
        loss = torch.nn.functional.cross_entropy(mini.lm_head(hidden[0, :-1]), tokens[0, 1:])
    assert loss < 4.0


def test_mini_forward_and_generate(mini):
    features = mini.encode_images(mini.pixels([draw("red", "circle"), draw("blue", "square")]))
    batch = mini.encode_prompts([INSTRUCTION] * 2, ["A red circle.", "A blue square."])
    assert torch.isfinite(mini(batch, features).loss)
    texts = mini.generate(features, [INSTRUCTION] * 2, max_new_tokens=4)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


def test_the_demo_base_adapter_ships_with_the_package_and_matches_its_record():
    import json

    from robustit.config import packaged_config
    from robustit.models.hashes import file_hash
    from robustit.train.base_adapter import base_adapter_key, shipped_base_adapter

    config = packaged_config([])
    model = build_model(config.model.family, **config.model.spec)
    data = config.data
    name = f"mini-{base_adapter_key(model, *data.pretraining(), config.pretrain)}"
    shipped = shipped_base_adapter(name)
    assert shipped is not None, f"{name} is not shipped: run `robustit base-adapter --rebuild --ship` and commit it"
    record = json.loads((shipped / "pretrain.json").read_text())
    assert record["sha256"] == file_hash(shipped / "trainable.safetensors")
    model.load_trainable(shipped, strict=False)
