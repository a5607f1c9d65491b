"""Adapter drift: the tuned adapter's reading of the test images against the starting one's."""
import pytest
import torch
from PIL import Image

from robustit.eval.drift import VisualReadout, adapter_drift, visual_readout
from robustit.models import build_model
from robustit.models.visual_words import nearest_words
from test_visual_words import VOCABULARY, reading_visual_words

pytestmark = pytest.mark.usefixtures("one_thread")


class ConstantAdapter(torch.nn.Module):
    """Puts out the same token for every image, whatever the features."""

    def __init__(self, adapter: torch.nn.Module, token: torch.Tensor) -> None:
        super().__init__()
        self.inner, self.token = adapter, token

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        shape = self.inner(features).shape
        return self.token.expand(shape)


def images() -> list[Image.Image]:
    return [Image.new("RGB", (32, 32), colour) for colour in ((220, 30, 30), (30, 60, 220), (20, 200, 40))]


def test_an_unchanged_adapter_has_cosine_one_and_keeps_every_visual_word():
    model = reading_visual_words(build_model("llava", tiny=True, vocabulary=VOCABULARY, seed=0))
    features = model.encode_images(model.pixels(images()))
    readout = visual_readout(model, features)
    drift = adapter_drift(readout, visual_readout(model, features))
    assert drift["token_cosine"] == pytest.approx(1.0)
    assert drift["words_kept"] == 100.0
    assert drift["distinct_words"] == readout.words.unique().numel()


def test_the_visual_words_are_those_the_model_snaps_its_tokens_to():
    model = reading_visual_words(build_model("llava", tiny=True, vocabulary=VOCABULARY, seed=0))
    features = model.encode_images(model.pixels(images()))
    readout = visual_readout(model, features)
    embeddings = model.decoder.get_input_embeddings().weight
    with torch.no_grad():
        assert torch.equal(embeddings[readout.words], model.visual_tokens(features))


def test_an_adapter_that_puts_out_one_token_for_every_image_reads_one_word():
    model = reading_visual_words(build_model("llava", tiny=True, vocabulary=VOCABULARY, seed=0))
    features = model.encode_images(model.pixels(images()))
    start = visual_readout(model, features)
    word = int(start.words.flatten()[0]) + 1
    model.adapter = ConstantAdapter(model.adapter, model.decoder.get_input_embeddings().weight[word].detach())
    drift = adapter_drift(start, visual_readout(model, features))
    assert drift["distinct_words"] == 1
    assert drift["words_kept"] == pytest.approx(100.0 * (start.words == word).float().mean().item())
    assert drift["token_cosine"] < 1.0


def test_a_model_reading_continuous_tokens_has_a_cosine_and_no_words():
    model = build_model("llava", tiny=True, vocabulary=VOCABULARY, seed=0)
    features = model.encode_images(model.pixels(images()))
    drift = adapter_drift(visual_readout(model, features), visual_readout(model, features))
    assert drift["words_kept"] is None and drift["distinct_words"] is None


def test_readouts_of_different_images_are_refused():
    start = VisualReadout(torch.zeros(2, 3, 4), None)
    with pytest.raises(ValueError, match="different shapes"):
        adapter_drift(start, VisualReadout(torch.zeros(3, 3, 4), None))


def test_nearest_words_is_the_cosine_argmax():
    torch.manual_seed(0)
    embeddings = torch.randn(20, 8)
    tokens = 5.0 * embeddings[torch.tensor([[4, 9]])] + 0.01 * torch.randn(1, 2, 8)
    assert nearest_words(tokens, embeddings).tolist() == [[4, 9]]
