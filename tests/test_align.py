import pytest
import torch

from robustit.data.sample import Sample
from robustit.train.align import align_adapter, alignment_targets
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


def test_alignment_makes_the_visual_tokens_read_as_their_caption_words(tiny_model):
    samples = shape_samples()
    targets = alignment_targets(tiny_model, samples)
    words = tiny_model.decoder.get_input_embeddings().weight.detach()
    frozen = {n: p.detach().clone() for n, p in tiny_model.named_parameters() if not n.startswith("adapter.")}

    def accuracy() -> float:
        with torch.no_grad():
            tokens = tiny_model.adapter(tiny_model.encode_images(tiny_model.pixels([s.image for s in samples])))
        return float(((tokens @ words.T).argmax(-1) == targets).float().mean())

    before = accuracy()
    losses = align_adapter(tiny_model, samples, PretrainConfig(epochs=0, align_epochs=60, align_batch_size=4, align_lr=1e-2), progress=False)
    assert len(losses) == 120 and sum(losses[-5:]) / 5 < 0.5 * losses[0]
    assert accuracy() > max(before, 0.5)
    assert all(torch.equal(p, frozen[n]) for n, p in tiny_model.named_parameters() if n in frozen)
