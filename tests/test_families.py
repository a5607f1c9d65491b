"""Every transformers family (docs/models.md) on its tiny random miniature: one table of
families, the same behaviour asserted for each."""
import json

import pytest
import torch

from conftest import INSTRUCTION, vocabulary
from robustit.attacks import AttackConfig, PoisonedDataset, build_attack
from robustit.defenses import DefenseConfig, build_defense
from robustit.eval.generate import generate_responses
from robustit.models import IGNORE_INDEX, EncodedBatch, VisionLanguageModel, build_model
from robustit.models.blip2 import tiny_blip2_config
from robustit.models.features import FeatureCache
from robustit.models.hf import tiny_model
from robustit.models.idefics import tiny_idefics_config
from robustit.models.idefics3 import tiny_idefics3_config
from robustit.models.llava import tiny_llava_config
from robustit.models.paligemma import tiny_paligemma_config
from robustit.models.tokenizers import build_word_tokenizer
from robustit.train.config import TrainConfig
from robustit.train.loop import train
from test_train import shape_samples

TINY_CONFIGS = {
    "llava": tiny_llava_config,
    "blip2": tiny_blip2_config,
    "idefics3": tiny_idefics3_config,
    "paligemma": tiny_paligemma_config,
    "idefics": tiny_idefics_config,
}
FAMILIES = list(TINY_CONFIGS)
INSTRUCTIONS = [INSTRUCTION, "A red circle?", "Consider the blue square that is green."]

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.parametrize("family", FAMILIES)]


def tiny(family: str, seed: int = 0) -> VisionLanguageModel:
    return build_model(family, tiny=True, vocabulary=vocabulary(), seed=seed)


def poisoned_samples() -> list:
    dataset = PoisonedDataset(shape_samples(), build_attack(AttackConfig("badnets", poison_rate=0.25)))
    return [dataset[i] for i in range(len(dataset))]


def snapshot(model: VisionLanguageModel, trainable: bool) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad == trainable}


def greedy_without_cache(model: VisionLanguageModel, features: torch.Tensor, instruction: str, steps: int) -> str:
    """Greedy decoding of one prompt by a full forward pass per token: the next token's logits
    are those the loss reads at a labelled placeholder appended after the sequence."""
    prompt = model.encode_prompts([instruction])
    eos = model.tokenizer(model.prompt_format.response_suffix, add_special_tokens=False).input_ids[-1]
    tokens: list[int] = []
    while len(tokens) < steps and eos not in tokens:
        ids = torch.tensor([prompt.input_ids[0].tolist() + tokens + [0]])
        labels = torch.full_like(ids, IGNORE_INDEX)
        labels[0, -1] = 0
        visual = torch.cat([prompt.visual_mask, torch.zeros(1, len(tokens) + 1, dtype=torch.bool)], dim=1)
        batch = EncodedBatch(ids, torch.ones_like(ids), visual, labels)
        tokens.append(int(model(batch, features).logits[0].argmax()))
    tokens = tokens[: tokens.index(eos)] if eos in tokens else tokens
    return model.tokenizer.decode(tokens, skip_special_tokens=True).strip()


def test_robustit_tuning_moves_the_adapter_and_embeddings_and_nothing_frozen(family):
    model = tiny(family)
    frozen, trainable = snapshot(model, False), snapshot(model, True)
    widths: list[int] = []
    model.add_adapter_hook(lambda x: widths.append(x.shape[-1]) or x)
    defense = build_defense(DefenseConfig("robustit"))
    result = train(model, poisoned_samples(), TrainConfig(max_steps=3, batch_size=4), progress=False, defense=defense)
    assert result.audit["frozen_with_grad"] == [] and result.audit["trainable_without_grad"] == []
    modules = result.audit["modules"]
    assert modules["vision"]["trainable"] == modules["decoder"]["trainable"] == 0
    assert all(modules[part]["frozen"] == 0 < modules[part]["trainable"] for part in ("adapter", "input_embeddings", "lm_head"))
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], p) for n, p in frozen.items())
    names = {id(p): n for n, p in params.items()}
    moved = {group for group, tensors in model.trainable_groups().items()
             if any(not torch.equal(p, trainable[names[id(p)]]) for p in tensors)}
    assert moved == {"adapter", "embeddings"}
    assert set(result.loss_terms) == {"idr_visual", "idr_text"}
    aar = defense.defenses[1]
    assert aar.mask.numel() == widths[0] and int(aar.mask.sum()) == widths[0] // 2


def test_byorn_tuning_then_reloaded_weights_generate_identically(family, tmp_path):
    model = tiny(family)
    frozen = snapshot(model, False)
    defense = build_defense(DefenseConfig("byorn", {"threshold": "quantile", "quantile": 0.25, "refresh_every": 1,
                                                    "max_new_tokens": 4}))
    result = train(model, poisoned_samples(), TrainConfig(max_steps=3, batch_size=4, lr_adapter=3e-3, lr_embeddings=3e-3),
                   progress=False, defense=defense)
    assert sum(f.flagged for f in defense.flags()) == 2 and result.extra_forward_passes > 0
    assert result.audit["frozen_with_grad"] == []
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], p) for n, p in frozen.items())
    samples = shape_samples()
    expected = generate_responses(model, samples, FeatureCache(model), batch_size=8, max_new_tokens=6, progress=False)
    directory = model.save_trainable(tmp_path / "checkpoint")
    fresh = tiny(family, seed=1)
    assert not all(torch.equal(p, params[n]) for n, p in fresh.named_parameters() if p.requires_grad)
    fresh.load_trainable(directory)
    assert generate_responses(fresh, samples, FeatureCache(fresh), batch_size=3, max_new_tokens=6, progress=False) == expected
    spec = json.loads((directory / "model_spec.json").read_text())
    assert spec["family"] == family
    rebuilt = build_model(spec.pop("family"), **spec)
    rebuilt.load_trainable(directory)
    assert generate_responses(rebuilt, samples, FeatureCache(rebuilt), batch_size=8, max_new_tokens=6, progress=False) == expected


def test_cached_batched_generation_is_greedy_decoding_of_each_prompt_alone(family):
    model = tiny(family)
    with torch.no_grad():  # zero logits for special tokens, below the best random word's: every step decodes a word
        model.lm_head.weight[model.tokenizer.all_special_ids] = 0.0
    features = model.encode_images(model.pixels([s.image for s in shape_samples()[:3]]))
    generated = model.generate(features, INSTRUCTIONS, max_new_tokens=5)
    alone = [greedy_without_cache(model, features[i : i + 1], INSTRUCTIONS[i], 5) for i in range(3)]
    assert generated == alone and all(alone)


def test_rows_that_end_early_leave_the_batch_and_every_row_is_still_its_greedy_decoding_alone(family):
    model = tiny(family, seed=2)  # a seed whose rows differ in every family
    eos = model.tokenizer(model.prompt_format.response_suffix, add_special_tokens=False).input_ids[-1]
    features = model.encode_images(model.pixels([s.image for s in shape_samples()[:3]]))
    with torch.no_grad():
        model.lm_head.weight[model.tokenizer.all_special_ids] = 0.0
        rows = [text.split() for text in model.generate(features, INSTRUCTIONS, max_new_tokens=6)]
        word = next(w for row in rows for w in row if not all(w in other for other in rows))  # ends some rows only
        model.lm_head.weight[eos] = 1.05 * model.lm_head.weight[model.tokenizer.convert_tokens_to_ids(word)]
    generated = model.generate(features, INSTRUCTIONS, max_new_tokens=6)
    alone = [greedy_without_cache(model, features[i : i + 1], INSTRUCTIONS[i], 6) for i in range(3)]
    assert generated == alone
    assert len({len(text.split()) for text in generated}) > 1


def test_the_image_reaches_the_loss(family):
    model = tiny(family)
    samples = shape_samples()[:3]
    features = model.encode_images(model.pixels([s.image for s in samples]))
    batch = model.encode_prompts([s.instruction for s in samples], [s.response for s in samples])
    assert not torch.allclose(model(batch, features).sample_loss, model(batch, features.flip(0)).sample_loss)


def test_a_local_checkpoint_directory_loads_as_its_family_and_no_other(family, tmp_path):
    tokenizer = build_word_tokenizer(vocabulary())
    tokenizer.bos_token, tokenizer.eos_token = "<|im_start|>", "<|im_end|>"
    released = tiny_model(TINY_CONFIGS[family](tokenizer), 0, ())
    released.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model = build_model(family, name_or_path=str(tmp_path))
    assert model.spec["name_or_path"] == str(tmp_path) and not model.spec["tiny"]
    miniature = dict(tiny(family).named_parameters())
    assert all(torch.equal(p, miniature[n]) for n, p in model.named_parameters())
    samples = shape_samples()[:2]
    features = model.encode_images(model.pixels([s.image for s in samples]))
    batch = model.encode_prompts([s.instruction for s in samples], [s.response for s in samples])
    assert torch.isfinite(model(batch, features).loss)
    other = next(f for f in FAMILIES if f != family)
    with pytest.raises(ValueError, match=f"holds a {type(released).__name__}; this family takes"):
        build_model(other, name_or_path=str(tmp_path))
