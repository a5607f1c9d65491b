"""Visual words: visual tokens snapped onto the word embeddings, with a straight-through gradient."""
import pytest
import torch
from PIL import Image

from robustit.models import VisionLanguageModel, build_model
from robustit.models.visual_words import snap_to_words

pytestmark = pytest.mark.usefixtures("one_thread")

VOCABULARY = ["Describe the image briefly.", "A red circle.", "A blue square on a white background."]


def test_each_token_becomes_the_embedding_it_points_at_most():
    torch.manual_seed(0)
    embeddings = torch.randn(50, 16)
    chosen = torch.tensor([[3, 7, 7], [49, 0, 12]])
    tokens = 3.0 * embeddings[chosen] + 0.01 * torch.randn(2, 3, 16)
    assert torch.equal(snap_to_words(tokens, embeddings), embeddings[chosen])


def test_the_tokens_get_a_gradient_and_only_the_chosen_rows_of_the_embeddings_do():
    torch.manual_seed(0)
    embeddings = torch.randn(50, 16, requires_grad=True)
    chosen = torch.tensor([[3, 7], [11, 3]])
    tokens = (embeddings.detach()[chosen] + 0.3 * torch.randn(2, 2, 16)).requires_grad_()
    snapped = snap_to_words(tokens, embeddings)
    (snapped * torch.randn_like(snapped)).sum().backward()
    assert tokens.grad is not None and bool((tokens.grad.abs().sum(-1) > 0).all())
    rows_with_grad = set(embeddings.grad.abs().sum(1).nonzero().flatten().tolist())
    assert rows_with_grad == {3, 7, 11}


def test_the_embeddings_gradient_is_the_same_bits_on_every_backward_with_two_threads(two_threads):
    assert torch.get_num_threads() == 2
    torch.manual_seed(0)
    embeddings = torch.randn(400, 576, requires_grad=True)
    chosen = torch.randint(0, 40, (8, 96))
    tokens = embeddings.detach()[chosen] + 0.05 * torch.randn(8, 96, 576)
    upstream = torch.randn(8, 96, 576)
    gradients = []
    for _ in range(8):
        embeddings.grad = None
        snap_to_words(tokens, embeddings).backward(upstream)
        gradients.append(embeddings.grad.clone())
    assert all(torch.equal(gradients[0], gradient) for gradient in gradients[1:])


def reading_visual_words(model: VisionLanguageModel) -> VisionLanguageModel:
    return VisionLanguageModel(
        family=model.family, spec=model.spec, vision=model.vision, adapter=model.adapter, decoder=model.decoder,
        lm_head=model.lm_head, tokenizer=model.tokenizer, image_size=model.image_size, visual_words=True,
    )


def test_a_model_reading_visual_words_puts_word_embeddings_in_the_prompt_and_still_tunes_its_adapter():
    model = reading_visual_words(build_model("llava", tiny=True, vocabulary=VOCABULARY, seed=0))
    images = [Image.new("RGB", (32, 32), colour) for colour in ((220, 30, 30), (30, 60, 220))]
    features = model.encode_images(model.pixels(images))
    tokens = model.visual_tokens(features)
    embeddings = model.decoder.get_input_embeddings().weight
    is_a_row = (tokens.detach().flatten(0, 1)[:, None, :] == embeddings.detach()).all(-1).any(-1)
    assert bool(is_a_row.all())
    model.train()
    batch = model.encode_prompts([VOCABULARY[0]] * 2, VOCABULARY[1:])
    model(batch, features).loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.adapter.parameters())
