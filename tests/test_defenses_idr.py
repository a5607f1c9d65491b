import random

import pytest
import torch

from conftest import INSTRUCTION, draw
from robustit.defenses import IDR, DefenseBatch, DefenseConfig, View
from robustit.defenses.idr import augment_pixels, augment_text, relative_squared_distance, squared_distance
from robustit.models.image_processing import images_to_tensor
from robustit.train.config import TrainConfig
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
    ({"consistency": "cosine"}, "consistency"),
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
