import pytest
import torch

from conftest import vocabulary
from robustit.data.sample import Sample
from robustit.models import build_model
from robustit.train.align import align_adapter, alignment_loss, alignment_targets
from robustit.train.config import PretrainConfig
from test_train import shape_samples


def test_alignment_targets_repeat_the_shortest_reference_over_the_visual_tokens(tiny_model):
    sample = shape_samples()[0].replace(references=["A red circle on a plain white background.", "A red circle."])
    ids = tiny_model.tokenizer(" A red circle.", add_special_tokens=False).input_ids
    (row,) = alignment_targets(tiny_model, [sample]).tolist()
    n = tiny_model.num_visual_tokens
    assert len(row) == n and row == (ids * n)[:n]
    with pytest.raises(ValueError, match="no tokens"):
        alignment_targets(tiny_model, [sample.replace(references=[""])])


def test_a_cross_attention_family_refuses_alignment_by_name():
    flamingo = build_model("idefics", tiny=True, vocabulary=vocabulary())
    with pytest.raises(ValueError, match="'idefics' reads its visual tokens by cross-attention"):
        alignment_targets(flamingo, shape_samples())


def test_alignment_moves_the_visual_tokens_onto_their_caption_words_embeddings(tiny_model):
    samples = shape_samples()
    targets = alignment_targets(tiny_model, samples)
    words = tiny_model.decoder.get_input_embeddings().weight.detach()
    frozen = {n: p.detach().clone() for n, p in tiny_model.named_parameters() if not n.startswith("adapter.")}

    def tokens() -> torch.Tensor:
        with torch.no_grad():
            return tiny_model.adapter(tiny_model.encode_images(tiny_model.pixels([s.image for s in samples])))

    def accuracy() -> float:
        nearest = (torch.nn.functional.normalize(tokens(), dim=-1) @ torch.nn.functional.normalize(words, dim=-1).T).argmax(-1)
        return float((nearest == targets).float().mean())

    def distance() -> float:
        return float(((tokens() - words[targets]).norm(dim=-1) / words[targets].norm(dim=-1)).mean())

    before, far = accuracy(), distance()
    losses = align_adapter(tiny_model, samples, PretrainConfig(epochs=0, align_epochs=60, align_batch_size=4, align_lr=1e-2), progress=False)
    assert len(losses) == 120 and sum(losses[-5:]) / 5 < 0.5 * losses[0]
    assert accuracy() > max(before, 0.5)
    assert distance() < 0.6 * far
    assert all(torch.equal(p, frozen[n]) for n, p in tiny_model.named_parameters() if n in frozen)


def test_alignment_loss_is_least_on_the_target_words_embeddings():
    words = torch.eye(3) * torch.tensor([[1.0], [2.0], [3.0]])
    targets = torch.tensor([[1, 2]])
    exact = words[targets]
    skewed = exact + 0.5 * torch.tensor([[[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]]) * exact.norm(dim=-1, keepdim=True)
    on_word = alignment_loss(exact, targets, words, scale=20.0, distance_weight=1.0)
    too_long = alignment_loss(5 * exact, targets, words, scale=20.0, distance_weight=1.0)
    off_word = alignment_loss(skewed, targets, words, scale=20.0, distance_weight=1.0)
    wrong_word = alignment_loss(words[torch.tensor([[0, 0]])], targets, words, scale=20.0, distance_weight=1.0)
    assert on_word < 1e-3 and min(too_long, off_word, wrong_word) > on_word + 0.2
    assert alignment_loss(5 * exact, targets, words, scale=20.0, distance_weight=0.0) < 1e-3


def test_pretrain_config_rejects_bad_alignment_settings():
    for bad in ({"align_scale": 0.0}, {"align_distance_weight": -1.0}, {"align_lr": 0.0}, {"epochs": -1.0}):
        with pytest.raises(ValueError):
            PretrainConfig(**{"epochs": 0, "align_epochs": 1, **bad})
    with pytest.raises(ValueError, match="align_epochs > 0"):
        PretrainConfig(epochs=0, align_epochs=0)
