"""robustit.models on the tiny, randomly initialised LLaVA family (built in memory, fast).

The "mini" family (SmolLM2 + EfficientNet-Lite0) is slow to load and is tested elsewhere.
"""
import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from robustit.models import IGNORE_INDEX, VisionLanguageModel, build_model
from robustit.models.adapters import Projector
from robustit.models.llava import ClipFeatures, tiny_llava
from robustit.models.tokenizers import build_word_tokenizer

VOCABULARY = [
    "Describe the image briefly.",
    "What colour is the shape?",
    "A red circle.",
    "A blue square that is blue.",
    "A small green triangle on a white background.",
]
INSTRUCTIONS = ["Describe the image briefly.", "What colour is the shape?", "Describe the shape."]
RESPONSES = ["A red circle.", "A blue square that is blue.", "A green triangle."]
COLOURS = [(220, 30, 30), (30, 60, 220), (40, 180, 60)]


def tiny(seed: int = 0) -> VisionLanguageModel:
    return build_model("llava", tiny=True, vocabulary=VOCABULARY, seed=seed)


@pytest.fixture
def model() -> VisionLanguageModel:
    return tiny()


def images(n: int = 3) -> list[Image.Image]:
    out = []
    for i in range(n):
        image = Image.new("RGB", (40, 40), (245, 245, 245))
        image.paste(Image.new("RGB", (12 + 4 * i, 12), COLOURS[i % len(COLOURS)]), (6 * i, 10))
        out.append(image)
    return out


def features(model: VisionLanguageModel, n: int = 3) -> torch.Tensor:
    return model.encode_images(model.pixels(images(n)))


def token_id(model: VisionLanguageModel, token: str) -> int:
    return model.tokenizer.convert_tokens_to_ids(token)


# ---- prompt layout and labels ------------------------------------------------------------------


def test_encoded_batch_is_left_padded_with_labels_only_on_response_and_end_token(model):
    tok = model.tokenizer
    batch = model.encode_prompts(INSTRUCTIONS, RESPONSES)
    rows, width = batch.input_ids.shape
    assert rows == 3 and batch.labels.shape == batch.attention_mask.shape == batch.visual_mask.shape == (rows, width)
    end, start = token_id(model, "<|im_end|>"), token_id(model, "<|im_start|>")
    lengths = batch.attention_mask.sum(1)
    assert int(lengths.max()) == width  # the longest row is unpadded
    assert len(set(lengths.tolist())) > 1  # and the others are padded
    for i in range(rows):
        n = int(lengths[i])
        # left padding: zeros then ones; pads hold the pad id and never labels or visual slots
        assert batch.attention_mask[i, : width - n].eq(0).all() and batch.attention_mask[i, width - n:].eq(1).all()
        assert batch.input_ids[i, : width - n].eq(tok.pad_token_id).all()
        assert not batch.visual_mask[i, : width - n].any()
        # the visual slots: exactly num_visual_tokens, contiguous, right after the user prefix token
        slots = batch.visual_mask[i].nonzero().flatten()
        assert len(slots) == model.num_visual_tokens
        assert slots.tolist() == list(range(width - n + 1, width - n + 1 + model.num_visual_tokens))
        assert batch.input_ids[i, width - n] == start
        # labels: -100 everywhere but the response tokens and the end token
        response = tok(RESPONSES[i], add_special_tokens=False).input_ids
        k = len(response) + 1
        assert batch.labels[i, : width - k].eq(IGNORE_INDEX).all()
        assert batch.labels[i, width - k:].tolist() == response + [end]
        assert batch.input_ids[i, width - k:].tolist() == response + [end]
        assert batch.input_ids[i, width - k - 1] == start  # the assistant turn opens right before
        assert tok.decode(batch.labels[i, width - k: -1]) == RESPONSES[i]


def test_prompt_without_responses_is_the_same_layout_minus_the_answer(model):
    full = model.encode_prompts(INSTRUCTIONS, RESPONSES)
    prompt = model.encode_prompts(INSTRUCTIONS)
    assert prompt.labels is None
    for i, response in enumerate(RESPONSES):
        k = len(model.tokenizer(response, add_special_tokens=False).input_ids) + 1
        full_ids = full.input_ids[i][full.attention_mask[i].bool()].tolist()
        prompt_ids = prompt.input_ids[i][prompt.attention_mask[i].bool()].tolist()
        assert prompt_ids == full_ids[:-k]
        assert prompt.visual_mask[i].sum() == model.num_visual_tokens


# ---- forward and loss ------------------------------------------------------------------------


def test_loss_is_the_mean_cross_entropy_over_response_tokens(model):
    batch = model.encode_prompts(INSTRUCTIONS, RESPONSES)
    out = model(batch, features(model))
    targets = batch.labels[:, 1:]
    selected = targets != IGNORE_INDEX
    assert out.logits.shape == (int(selected.sum()), len(model.tokenizer))
    assert out.label_rows.tolist() == selected.nonzero()[:, 0].tolist()
    token_loss = F.cross_entropy(out.logits, targets[selected], reduction="none")
    assert torch.allclose(out.loss, token_loss.mean())
    for i in range(len(RESPONSES)):
        assert torch.allclose(out.sample_loss[i], token_loss[out.label_rows == i].mean())
    assert out.visual_tokens.shape == (3, model.num_visual_tokens, model.decoder.config.hidden_size)


def test_padding_does_not_change_a_row(model):
    """Left padding and position ids: a row's loss is the same alone and in a padded batch."""
    feats = features(model)
    batched = model(model.encode_prompts(INSTRUCTIONS, RESPONSES), feats).sample_loss
    for i in range(len(RESPONSES)):
        alone = model(model.encode_prompts([INSTRUCTIONS[i]], [RESPONSES[i]]), feats[i: i + 1]).sample_loss
        assert torch.allclose(alone[0], batched[i], atol=1e-5)


def test_forward_needs_labels(model):
    with pytest.raises(ValueError, match="labels"):
        model(model.encode_prompts(INSTRUCTIONS), features(model))


def test_the_image_reaches_the_loss(model):
    batch = model.encode_prompts(INSTRUCTIONS, RESPONSES)
    feats = features(model)
    assert not torch.allclose(model(batch, feats).sample_loss, model(batch, feats.flip(0)).sample_loss)


# ---- what trains -----------------------------------------------------------------------------


def test_only_adapter_and_embeddings_get_gradients(model):
    batch = model.encode_prompts(INSTRUCTIONS, RESPONSES)
    model.train()
    model(batch, features(model)).loss.backward()
    embed = model.decoder.get_input_embeddings().weight
    frozen = [(n, p) for n, p in model.named_parameters() if n.startswith(("vision.", "decoder.layers.", "decoder.norm"))]
    assert frozen and all(not p.requires_grad and p.grad is None for _, p in frozen)
    adapter = list(model.adapter.named_parameters())
    assert adapter and all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in adapter)
    assert embed.grad is not None and model.lm_head.weight.grad is not None
    assert model.lm_head.weight.grad.abs().sum() > 0
    # the input embedding gets gradient on the rows of the prompt's tokens only
    used = set(batch.input_ids[~batch.visual_mask & batch.attention_mask.bool()].tolist())
    rows_with_grad = set(embed.grad.abs().sum(1).nonzero().flatten().tolist())
    assert rows_with_grad and rows_with_grad <= used
    assert token_id(model, "white") not in rows_with_grad  # in the vocabulary, not in this batch
    # the frozen towers stay in eval mode even in train()
    assert model.training and not model.vision.training and not model.decoder.training
    groups = model.trainable_groups()
    assert {id(p) for p in groups["adapter"]} == {id(p) for _, p in adapter}
    assert groups["embeddings"][0] is embed and groups["embeddings"][1] is model.lm_head.weight


def test_input_embeddings_and_lm_head_are_untied(model):
    embed = model.decoder.get_input_embeddings().weight
    assert embed is not model.lm_head.weight
    assert embed.data_ptr() != model.lm_head.weight.data_ptr()


def test_tied_weights_are_untied_into_two_trainable_copies():
    tokenizer = build_word_tokenizer(VOCABULARY)
    llava = tiny_llava(tokenizer)
    embed = llava.model.language_model.get_input_embeddings()
    llava.lm_head.weight = embed.weight  # tie them, as many released models do
    vlm = VisionLanguageModel(
        family="llava", spec={}, vision=ClipFeatures(llava.model.vision_tower, -1),
        adapter=Projector(llava.model.multi_modal_projector, 16), decoder=llava.model.language_model,
        lm_head=llava.lm_head, tokenizer=tokenizer, image_size=32,
    )
    head, embed_weight = vlm.lm_head.weight, vlm.decoder.get_input_embeddings().weight
    assert head is not embed_weight and torch.equal(head, embed_weight)
    assert head.requires_grad and embed_weight.requires_grad
    with torch.no_grad():
        head.add_(1.0)
    assert not torch.equal(head, embed_weight)
    audit = vlm.parameter_audit()
    assert audit["modules"]["lm_head"]["trainable"] == audit["modules"]["input_embeddings"]["trainable"] == head.numel()


def test_parameter_audit_adds_up(model):
    audit = model.parameter_audit()
    assert audit["family"] == "llava"
    assert audit["total"] == sum(p.numel() for p in model.parameters())
    assert audit["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    modules = audit["modules"]
    assert set(modules) == {"vision", "adapter", "input_embeddings", "decoder", "lm_head"}
    assert sum(m["trainable"] + m["frozen"] for m in modules.values()) == audit["total"]
    assert sum(m["trainable"] for m in modules.values()) == audit["trainable"]
    assert modules["vision"]["trainable"] == modules["decoder"]["trainable"] == 0
    assert modules["adapter"]["frozen"] == modules["input_embeddings"]["frozen"] == modules["lm_head"]["frozen"] == 0
    assert modules["adapter"]["trainable"] == sum(p.numel() for p in model.adapter.parameters())
    assert modules["input_embeddings"]["trainable"] == model.decoder.get_input_embeddings().weight.numel()
    assert modules["lm_head"]["trainable"] == model.lm_head.weight.numel()
    assert modules["vision"]["frozen"] == sum(p.numel() for p in model.vision.parameters())


# ---- checkpoints -----------------------------------------------------------------------------


def test_save_and_load_trainable_round_trip(model, tmp_path):
    feats = features(model)
    batch = model.encode_prompts(INSTRUCTIONS, RESPONSES)
    directory = model.save_trainable(tmp_path / "ckpt")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(load_file(str(directory / "trainable.safetensors"))) == trainable
    spec = json.loads((directory / "model_spec.json").read_text())
    assert spec == {"family": "llava", **model.spec} and spec["vocabulary"] == VOCABULARY

    fresh = tiny(seed=1)  # other trainable initialisation
    assert not torch.equal(fresh.adapter.projector.linear_1.weight, model.adapter.projector.linear_1.weight)
    assert not torch.allclose(fresh(batch, feats).sample_loss, model(batch, feats).sample_loss)
    fresh.load_trainable(directory)
    theirs = dict(fresh.named_parameters())
    assert all(torch.equal(p, theirs[n]) for n, p in model.named_parameters())
    assert torch.equal(fresh(batch, feats).sample_loss, model(batch, feats).sample_loss)
    expected = model.generate(feats, INSTRUCTIONS, max_new_tokens=8)
    assert fresh.generate(fresh.encode_images(fresh.pixels(images())), INSTRUCTIONS, max_new_tokens=8) == expected

    rebuilt = build_model(spec.pop("family"), **spec)  # the spec rebuilds the rest
    rebuilt.load_trainable(directory)
    assert rebuilt.generate(feats, INSTRUCTIONS, max_new_tokens=8) == expected


def test_load_trainable_rejects_missing_and_unexpected_tensors(model, tmp_path):
    state = model.trainable_state_dict()
    partial = {n: t for n, t in state.items() if n.startswith("adapter.")}
    (tmp_path / "partial").mkdir()
    save_file(partial, str(tmp_path / "partial" / "trainable.safetensors"))
    with pytest.raises(ValueError, match=r"missing \[.*'lm_head.weight'.*\], unexpected \[\]"):
        model.load_trainable(tmp_path / "partial")

    fresh = tiny(seed=3)
    embed = fresh.decoder.get_input_embeddings().weight.detach().clone()
    fresh.load_trainable(tmp_path / "partial", strict=False)  # a base adapter alone
    assert torch.equal(fresh.adapter.projector.linear_1.weight, model.adapter.projector.linear_1.weight)
    assert torch.equal(fresh.decoder.get_input_embeddings().weight, embed)

    extra = dict(state, **{"vision.tower.extra": torch.zeros(2)})
    (tmp_path / "extra").mkdir()
    save_file(extra, str(tmp_path / "extra" / "trainable.safetensors"))
    for strict in (True, False):
        with pytest.raises(ValueError, match=r"unexpected \['vision.tower.extra'\]"):
            model.load_trainable(tmp_path / "extra", strict=strict)


def test_load_trainable_rejects_other_shapes_without_touching_the_model(tmp_path):
    other = build_model("llava", tiny=True, vocabulary=VOCABULARY + ["zebra giraffe okapi"], seed=0)
    other.save_trainable(tmp_path / "other")
    model = tiny(seed=2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="shapes") as caught:
        model.load_trainable(tmp_path / "other")
    assert "lm_head.weight" in str(caught.value) and str(tmp_path / "other") in str(caught.value)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


# ---- generation ------------------------------------------------------------------------------


def test_generate_returns_one_string_per_input_deterministically(model):
    feats = features(model)
    first = model.generate(feats, INSTRUCTIONS, max_new_tokens=6)
    assert isinstance(first, list) and len(first) == 3 and all(isinstance(t, str) for t in first)
    assert model.generate(feats, INSTRUCTIONS, max_new_tokens=6) == first
    assert model.generate(feats[:1], INSTRUCTIONS[:1], max_new_tokens=6) == first[:1]
    words = [len(model.tokenizer(text, add_special_tokens=False).input_ids) for text in first]
    assert max(words) <= 6


class ScriptedHead(nn.Module):
    """An lm_head that emits a fixed token per row and step, whatever the hidden state. A row
    that emitted `end` must be gone from the next call's batch: generation drops finished rows."""

    def __init__(self, vocab_size: int, hidden: int, script: list[list[int]], end: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(vocab_size, hidden))
        self.script, self.end, self.step = script, end, 0  # script[row][step]
        self.rows = list(range(len(script)))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        assert hidden.shape[0] == len(self.rows), "a finished row is still in the batch"
        logits = torch.zeros(hidden.shape[0], self.weight.shape[0])
        tokens = [self.script[row][min(self.step, len(self.script[row]) - 1)] for row in self.rows]
        for i, token in enumerate(tokens):
            logits[i, token] = 1.0
        self.rows = [row for row, token in zip(self.rows, tokens) if token != self.end]
        self.step += 1
        return logits


def test_generation_stops_each_row_at_the_end_token(model):
    ids = lambda text: model.tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    end = token_id(model, "<|im_end|>")
    script = [
        ids("A red circle.") + [end] + ids("blue square"),
        ids("A blue") + [end] + ids("circle circle circle"),
        ids("red red red red red red red red"),
    ]
    hidden = model.decoder.config.hidden_size
    model.lm_head = ScriptedHead(len(model.tokenizer), hidden, script, end)
    texts = model.generate(features(model), INSTRUCTIONS, max_new_tokens=6)
    assert texts == ["A red circle.", "A blue", "red red red red red red"]


# ---- adapter hooks ---------------------------------------------------------------------------


def test_adapter_hooks_rewrite_visual_tokens_and_can_be_removed(model):
    feats = features(model)
    batch = model.encode_prompts(INSTRUCTIONS, RESPONSES)
    clean = model(batch, feats)
    remove_double = model.add_adapter_hook(lambda x: 2 * x)
    remove_shift = model.add_adapter_hook(lambda x: x + 1.0)
    hooked = model(batch, feats)
    assert torch.allclose(hooked.visual_tokens, 2 * clean.visual_tokens + 1.0)  # in order added
    assert not torch.allclose(hooked.sample_loss, clean.sample_loss)
    remove_double()
    assert torch.allclose(model.adapter(feats), clean.visual_tokens + 1.0)
    remove_shift()
    restored = model(batch, feats)
    assert torch.equal(restored.visual_tokens, clean.visual_tokens)
    assert torch.equal(restored.sample_loss, clean.sample_loss)


def test_adapter_hook_reaches_generation(model):
    feats = features(model)
    seen = []
    remove = model.add_adapter_hook(lambda x: seen.append(x.shape) or x)
    model.generate(feats, INSTRUCTIONS, max_new_tokens=2)
    remove()
    assert seen == [torch.Size([3, model.num_visual_tokens, model.decoder.config.hidden_size])]
    model.generate(feats, INSTRUCTIONS, max_new_tokens=2)
    assert len(seen) == 1
