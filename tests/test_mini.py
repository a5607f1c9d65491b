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
