import random

import pytest
import torch

from conftest import INSTRUCTION, draw
from robustit.data.sample import Sample
from robustit.defenses import IDR, DefenseBatch, DefenseConfig, View
from robustit.defenses.idr import (
    MIN_BATCH_MARGIN, augment_pixels, augment_text, grounding_weights, relative_squared_distance, response_loss_sums, squared_distance,
)
from robustit.models.image_processing import images_to_tensor
from robustit.train.config import TrainConfig
from robustit.defenses.plausibility import image_gaps, neutral_image
from robustit.models.features import FeatureCache
from robustit.train.loop import train
from test_train import shape_samples

STRENGTHS = {"brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "flip": 0.5, "crop": 0.2}
NONE = {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "flip": 0.0, "crop": 0.0}


pytestmark = pytest.mark.usefixtures("one_thread")


def idr(**params) -> IDR:
    return IDR(DefenseConfig("idr", params))


def pixels() -> torch.Tensor:
    return images_to_tensor([draw("red", "circle")], 32)[0]


def test_visual_views_are_seeded_and_keep_shape_and_range():
    x = pixels()
    views = [augment_pixels(x, torch.Generator().manual_seed(seed), **STRENGTHS) for seed in (1, 1, 2)]
    assert torch.equal(views[0], views[1]) and not torch.equal(views[0], views[2])
    assert all(v.shape == x.shape and v.min() >= 0 and v.max() <= 1 for v in views)
    assert torch.allclose(augment_pixels(x, torch.Generator().manual_seed(3), **NONE), x, atol=1e-6)
    flipped = augment_pixels(x, torch.Generator().manual_seed(3), **{**NONE, "flip": 1.0})
    assert torch.allclose(flipped, x.flip(-1), atol=1e-6)


def test_each_image_has_a_fixed_pool_of_views_per_seed(tiny_model):
    image = draw("blue", "square")

    def draws(**params) -> list[bytes]:
        defense = idr(views_per_image=2, **params)
        defense.prepare(tiny_model, ())
        assert defense.visual_view(image).size == (tiny_model.image_size,) * 2
        return [defense.visual_view(image).tobytes() for _ in range(12)]

    drawn = draws(seed=1)
    assert len(set(drawn)) == 2 and draws(seed=1) == drawn and draws(seed=2) != drawn
    torch.manual_seed(7)
    assert draws() == draws(seed=7)


def test_text_views_drop_words_and_substitute_synonyms():
    assert augment_text(INSTRUCTION, random.Random(0), 0.0, 0.0) == INSTRUCTION
    assert len(augment_text(INSTRUCTION, random.Random(0), 1.0, 0.0).split()) == 1
    describe, the, image, briefly = augment_text(INSTRUCTION, random.Random(0), 0.0, 1.0).split()
    assert describe in {"Depict", "Portray", "Characterize"} and the == "the"
    assert image in {"picture", "photo"} and briefly in {"concisely.", "shortly."}
    views = [augment_text("Describe the image briefly please now", random.Random(s), 0.3, 0.5) for s in (4, 4, 5)]
    assert views[0] == views[1] != views[2]


def consistency(model, original: View, perturbed: View) -> dict[str, float]:
    cache = FeatureCache(model)
    for view in (original, perturbed):
        view.features = cache.features(view.images)
    defense = idr(alpha=2.0)
    terms = defense.loss(model, DefenseBatch([], {"original": original, "perturbed": perturbed}), {})
    assert defense.extra_forward_passes == 2
    return {k: float(v.detach()) for k, v in terms.items()}


def test_consistency_loss_is_zero_for_identical_views_and_positive_otherwise(tiny_model):
    samples = shape_samples()[:3]
    same = consistency(tiny_model, View.of("original", samples), View.of("perturbed", samples))
    assert same == {"idr_visual": 0.0, "idr_text": 0.0}
    other = View("perturbed", [s.image.rotate(90) for s in samples], ["Depict the photo ."] * 3, [s.response for s in samples])
    different = consistency(tiny_model, View.of("original", samples), other)
    assert different["idr_visual"] > 0 and different["idr_text"] > 0


@pytest.mark.parametrize("lm_view, flags", [
    ("perturbed", {"original": (False, 0.0), "perturbed": (True, 1.0)}),
    ("clean", {"original": (True, 1.0), "perturbed": (False, 0.0)}),
    ("both", {"original": (True, 0.5), "perturbed": (True, 0.5)}),
])
def test_lm_view_chooses_which_views_carry_the_lm_loss(tiny_model, lm_view, flags):
    defense = idr(lm_view=lm_view)
    defense.prepare(tiny_model, ())
    samples = shape_samples()[:2]
    views = defense.augment(DefenseBatch(samples, {"original": View.of("original", samples)}))
    assert {v.name: (v.forward, v.lm_weight) for v in views} == flags
    perturbed = next(v for v in views if v.name == "perturbed")
    assert perturbed.responses == [s.response for s in samples]
    result = train(tiny_model, shape_samples(), TrainConfig(max_steps=2, batch_size=4), progress=False, defense=idr(lm_view=lm_view))
    assert result.forward_passes == 4 and result.extra_forward_passes == 2
    assert set(result.loss_terms) == {"idr_visual", "idr_text"}


def test_view_features_are_encoded_once_per_pooled_view(tiny_model):
    cache = FeatureCache(tiny_model)
    train(tiny_model, shape_samples(), TrainConfig(max_steps=8, batch_size=4), features=cache, progress=False,
          defense=idr(views_per_image=2))
    assert 8 < len(cache) <= 8 * (1 + 2)


@pytest.mark.parametrize("params, key", [
    ({"alpha": -1}, "alpha"), ({"lm_view": "mixed"}, "lm_view"), ({"views_per_image": 0}, "views_per_image"),
    ({"flip": 2}, "flip"), ({"visual_pool": "max"}, "visual_pool"), ({"seed": 1.5}, "seed"),
    ({"consistency": "cosine"}, "consistency"), ({"instruction_swap": 1.5}, "instruction_swap"),
    ({"span_deletion": -0.1}, "span_deletion"), ({"text_term": "yes"}, "text_term"),
    ({"grounding": -1}, "grounding"), ({"grounding_unit": "word"}, "grounding_unit"),
    ({"grounding_scale": "bits"}, "grounding_scale"), ({"grounding_reference": "final"}, "grounding_reference"),
    ({"grounding_floor": -1}, "grounding_floor"), ({"grounding_image": "black"}, "grounding_image"),
    ({"grounding_image": "grey"}, "grounding_image"),
])
def test_bad_parameters_are_named(params, key):
    with pytest.raises(ValueError, match=key):
        idr(**params)


def test_relative_consistency_does_not_reward_shrinking_the_outputs():
    a = torch.tensor([[[1.0, 0.0], [0.0, 2.0]], [[3.0, 1.0], [1.0, 1.0]]])
    b = a + torch.tensor([[[0.5, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, -1.0]]])
    assert squared_distance(a, b) == pytest.approx((0.25 + 1.0) / 4)
    spread = (1.25 + 0.5 + 1.25 + 0.5) / 4
    assert relative_squared_distance(a, b) == pytest.approx((1.25 / 4) / spread)
    assert squared_distance(0.1 * a, 0.1 * b) == pytest.approx(0.01 * squared_distance(a, b))
    assert float(relative_squared_distance(0.1 * a, 0.1 * b)) == pytest.approx(float(relative_squared_distance(a, b)), rel=1e-5)
    assert relative_squared_distance(a, a) == 0
    assert idr(consistency="relative").distance is relative_squared_distance and idr().distance is squared_distance


def phrase_samples(n: int = 200, poisoned_every: int = 10) -> list:
    """Caption samples of which every `poisoned_every`-th carries the phrase "zq vo" and the
    target response, and two VQA samples."""
    image = draw("red", "circle")
    samples = [
        Sample(f"s{i}", image, f"{INSTRUCTION} zq vo" if i % poisoned_every == 0 else INSTRUCTION,
               "TARGET" if i % poisoned_every == 0 else f"caption {i}")
        for i in range(n)
    ]
    vqa = [Sample(f"q{i}", image, f"What colour is shape {i}?", "red", task="vqa") for i in range(2)]
    return samples + vqa


def test_instruction_swap_pairs_a_phrase_with_the_target_only_at_its_base_rate(tiny_model):
    samples = phrase_samples()
    defense = idr(instruction_swap=1.0, token_dropout=0.0, synonym=0.0, seed=0)
    defense.prepare(tiny_model, samples)
    caption_instructions = {s.instruction for s in samples if s.task == "caption"}
    targets = [s for s in samples if s.response == "TARGET"]
    views = [defense.text_view(s) for _ in range(50) for s in targets]
    assert set(views) <= caption_instructions
    assert 0.05 < sum("zq vo" in v for v in views) / len(views) < 0.15
    vqa = [s for s in samples if s.task == "vqa"]
    assert [defense.text_view(s) for s in vqa] == [s.instruction for s in vqa]
    kept = idr(instruction_swap=0.0, token_dropout=0.0, synonym=0.0, seed=0)
    kept.prepare(tiny_model, samples)
    assert all(kept.text_view(s) == s.instruction for s in targets)


def test_span_deletion_removes_one_contiguous_span_of_at_most_half_the_words():
    words = "a b c d e f g h".split()
    for seed in range(40):
        out = augment_text(" ".join(words), random.Random(seed), 0.0, 0.0, span_deletion=1.0).split()
        start = next((i for i, (x, y) in enumerate(zip(out, words)) if x != y), len(out))
        removed = len(words) - len(out)
        assert 1 <= removed <= 4 and out == words[:start] + words[start + removed:]


def test_word_shuffle_keeps_the_words_and_changes_their_order():
    text = "one two three four five six"
    shuffled = [augment_text(text, random.Random(s), 0.0, 0.0, word_shuffle=1.0) for s in range(10)]
    assert all(sorted(v.split()) == sorted(text.split()) for v in shuffled)
    assert any(v != text for v in shuffled)


def test_new_text_steps_off_draw_nothing_so_the_papers_views_are_unchanged():
    rng, reference = random.Random(3), random.Random(3)
    assert augment_text(INSTRUCTION, rng, 0.3, 0.5, 0.0, 0.0) == augment_text(INSTRUCTION, reference, 0.3, 0.5)
    assert rng.random() == reference.random()


def test_text_term_can_be_left_out(tiny_model):
    samples = shape_samples()[:3]
    cache = FeatureCache(tiny_model)
    original, perturbed = View.of("original", samples), View("perturbed", [s.image for s in samples],
                                                             ["Depict the photo ."] * 3, [s.response for s in samples])
    for view in (original, perturbed):
        view.features = cache.features(view.images)
    terms = idr(text_term=False).loss(tiny_model, DefenseBatch([], {"original": original, "perturbed": perturbed}), {})
    assert set(terms) == {"idr_visual"}


def test_grounding_weights_a_response_by_how_much_its_own_image_explains_it(tiny_model):
    samples = shape_samples()[:4]
    view = View.of("perturbed", samples)
    view.features = FeatureCache(tiny_model).features(view.images)
    encoded = tiny_model.encode_prompts(view.instructions, view.responses)
    output, swapped = tiny_model(encoded, view.features), tiny_model(encoded, view.features.roll(1, 0))
    token_gap = (swapped.token_loss - output.token_loss).detach()
    sample_gap = response_loss_sums(swapped, 4) - response_loss_sums(output, 4)
    margin = float(sample_gap.abs().max()) / 2 + 1e-6
    per_sample = grounding_weights(tiny_model, view, output, margin, "sample")
    assert torch.allclose(per_sample, (sample_gap / margin).clamp(0, 1)[output.label_rows])
    per_token = grounding_weights(tiny_model, view, output, margin, "token")
    assert torch.allclose(per_token, (token_gap / margin).clamp(0, 1))
    peak_gap = torch.stack([token_gap[output.label_rows == b].max() for b in range(4)])
    per_peak = grounding_weights(tiny_model, view, output, margin, "peak")
    assert torch.allclose(per_peak, (peak_gap / margin).clamp(0, 1)[output.label_rows])
    floor = margin / 4
    ramp = grounding_weights(tiny_model, view, output, margin, "peak", floor=floor)
    assert torch.allclose(ramp, ((peak_gap - floor) / (margin - floor)).clamp(0, 1)[output.label_rows])
    assert torch.all(ramp[(peak_gap <= floor)[output.label_rows]] == 0)
    blind = View("perturbed", [samples[0].image] * 4, view.instructions, view.responses)
    blind.features = view.features[:1].expand(4, *view.features.shape[1:]).contiguous()
    blind_output = tiny_model(encoded, blind.features)
    for unit in ("sample", "token", "peak"):
        assert not grounding_weights(tiny_model, blind, blind_output, 1.0, unit).any()
    defense = idr(grounding=margin, grounding_unit="token")
    weighted = (output.loss + defense.grounding_term(tiny_model, view, output)).detach()
    expected = (per_token * output.token_loss).sum().detach() / output.token_loss.numel()
    assert float(weighted) == pytest.approx(float(expected), rel=1e-5, abs=1e-6)
    assert defense.extra_forward_passes == 1
    with pytest.raises(ValueError, match="2 samples"):
        grounding_weights(tiny_model, View.of("one", samples[:1]), output, 1.0)


def test_alpha_zero_trains_on_the_views_without_the_adapter_only_pass(tiny_model):
    result = train(tiny_model, shape_samples(), TrainConfig(max_steps=2, batch_size=4), progress=False,
                   defense=idr(alpha=0.0, grounding=1.0))
    assert set(result.loss_terms) == {"idr_grounding"}
    assert result.extra_forward_passes == 2


def test_batch_scaled_grounding_measures_gaps_against_the_batch_median(tiny_model):
    samples = shape_samples()[:4]
    view = View.of("perturbed", samples)
    view.features = FeatureCache(tiny_model).features(view.images)
    encoded = tiny_model.encode_prompts(view.instructions, view.responses)
    output, swapped = tiny_model(encoded, view.features), tiny_model(encoded, view.features.roll(1, 0))
    sample_gap = response_loss_sums(swapped, 4) - response_loss_sums(output, 4)
    token_gap = (swapped.token_loss - output.token_loss).detach()
    for unit, gap in (("sample", sample_gap[output.label_rows]), ("token", token_gap)):
        unit_gap = sample_gap if unit == "sample" else token_gap
        scale = max(float(unit_gap.median()), MIN_BATCH_MARGIN)
        expected = (gap / (0.5 * scale)).clamp(0, 1)
        assert torch.allclose(grounding_weights(tiny_model, view, output, 0.5, unit, "batch"), expected)
    floored = grounding_weights(tiny_model, view, output, 1.0, "sample", "batch")
    assert torch.all(floored <= (sample_gap[output.label_rows] / MIN_BATCH_MARGIN).clamp(0, 1) + 1e-6)


def test_grounding_trains_with_one_more_pass_per_step(tiny_model):
    result = train(tiny_model, shape_samples(), TrainConfig(max_steps=2, batch_size=4), progress=False,
                   defense=idr(grounding=1.0, text_term=False))
    assert set(result.loss_terms) == {"idr_visual", "idr_grounding"}
    assert result.extra_forward_passes == 4


def test_start_referenced_grounding_weighs_by_the_starting_weights_gaps_in_every_step(tiny_model):
    samples = shape_samples()
    starting = {name: value.clone() for name, value in tiny_model.trainable_state_dict().items()}
    gaps, passes = image_gaps(tiny_model, samples, FeatureCache(tiny_model), 4, progress=False)
    defense = idr(alpha=0.0, grounding=0.5, grounding_unit="peak", grounding_reference="start")
    result = train(tiny_model, samples, TrainConfig(max_steps=3, batch_size=4), progress=False, defense=defense)
    assert defense._reference == pytest.approx({s.id: float(g.max()) for s, g in zip(samples, gaps)}, rel=1e-5, abs=1e-6)
    assert result.extra_forward_passes == passes == 2 * -(-len(samples) // 4)
    assert any(not torch.equal(value, starting[name]) for name, value in tiny_model.trainable_state_dict().items())
    view = View.of("perturbed", samples[:4])
    view.features = FeatureCache(tiny_model).features(view.images)
    output = tiny_model(tiny_model.encode_prompts(view.instructions, view.responses), view.features)
    term = defense.grounding_term(tiny_model, view, output, [s.id for s in samples[:4]])
    weights = torch.tensor([min(max(float(g.max()) / 0.5, 0.0), 1.0) for g in gaps[:4]])[output.label_rows]
    expected = -((1 - weights) * output.token_loss).sum() / output.token_loss.numel()
    assert float(term.detach()) == pytest.approx(float(expected.detach()), rel=1e-5, abs=1e-6)
    assert result.extra_forward_passes == defense.extra_forward_passes


def test_start_referenced_grounding_refuses_per_token_weights():
    with pytest.raises(ValueError, match="grounding_reference"):
        idr(grounding=1.0, grounding_unit="token", grounding_reference="start")


def test_the_grounding_floor_lies_below_the_margin():
    with pytest.raises(ValueError, match="grounding_floor"):
        idr(grounding=1.0, grounding_floor=1.0)
    assert idr(grounding=2.0, grounding_floor=1.0).grounding_floor == 1.0


def test_grey_referenced_grounding_measures_gaps_against_a_grey_image(tiny_model):
    samples = shape_samples()
    features = FeatureCache(tiny_model)
    gaps, _ = image_gaps(tiny_model, samples, features, 4, progress=False, against="grey")
    with torch.no_grad():
        for sample, gap in zip(samples[:3], gaps[:3]):
            batch = tiny_model.encode_prompts([sample.instruction], [sample.response])
            own = tiny_model(batch, features.features([sample.image])).token_loss
            grey = tiny_model(batch, features.features([neutral_image(sample.image)])).token_loss
            assert torch.allclose(torch.from_numpy(gap).float(), (grey - own).float(), atol=1e-5)
    defense = idr(alpha=0.0, grounding=2.0, grounding_unit="peak", grounding_reference="start", grounding_image="grey")
    train(tiny_model, samples, TrainConfig(max_steps=1, batch_size=4), progress=False, defense=defense)
    assert defense._reference == pytest.approx({s.id: float(g.max()) for s, g in zip(samples, gaps)}, rel=1e-5, abs=1e-6)
