import pytest
import torch

from conftest import vocabulary
from robustit.defenses import AAR, DefenseConfig
from robustit.defenses.aar import batch_importance, keep_mask
from robustit.models import build_model
from robustit.models.adapters import PerceiverResampler
from robustit.models.base import VisionLanguageModel
from robustit.models.features import FeatureCache
from test_train import shape_samples


pytestmark = pytest.mark.usefixtures("one_thread")


def aar(**params) -> AAR:
    return AAR(DefenseConfig("aar", params))


def test_keep_mask_keeps_the_least_activated_channels():
    g = torch.tensor([-3.0, -1.0, -2.0, -0.5])
    assert keep_mask(g, 0.5).tolist() == [0.0, 1.0, 0.0, 1.0]
    assert keep_mask(g, 0.8).tolist() == [0.0, 1.0, 1.0, 1.0]
    assert keep_mask(g, 1.0).tolist() == [1.0, 1.0, 1.0, 1.0]
    assert keep_mask(-torch.arange(10.0), 0.3).tolist() == [1.0] * 3 + [0.0] * 7
    assert keep_mask(-torch.arange(100.0), 0.29).sum() == 29
    with pytest.raises(ValueError, match="keeps no channel"):
        keep_mask(g, 0.2)


def test_batch_importance_is_minus_the_mean_absolute_activation_per_channel():
    x = torch.tensor([[[1.0, -2.0, 0.0], [3.0, 2.0, -1.0]], [[-1.0, 0.0, 0.0], [3.0, 4.0, 1.0]]])
    assert batch_importance(x).tolist() == [-2.0, -2.0, -0.5]


def test_momentum_update_first_batch_initialises_then_blends():
    first, second = torch.tensor([[[1.0, 3.0]]]), torch.tensor([[[5.0, 0.0]]])
    slow, fast = aar(beta=0.9, gamma=0.5), aar(beta=0.0, gamma=0.5)
    for defense in (slow, fast):
        defense.update(first)
        assert defense.importance.tolist() == [-1.0, -3.0] and defense.mask.tolist() == [1.0, 0.0]
        defense.update(second)
    assert torch.allclose(slow.importance, torch.tensor([-1.4, -2.7]))
    assert slow.mask.tolist() == [1.0, 0.0]
    assert fast.importance.tolist() == [-5.0, 0.0] and fast.mask.tolist() == [0.0, 1.0]


def test_mask_broadcasts_over_every_axis_but_channels():
    defense = aar(gamma=0.5)
    defense.prepare(None, ())
    x = torch.ones(2, 3, 4) * torch.tensor([4.0, 1.0, 3.0, 2.0])
    out = defense.adapter_hook(x)
    assert out.shape == x.shape
    assert (out[..., [0, 2]] == 0).all() and torch.equal(out[..., [1, 3]], x[..., [1, 3]])


def test_mask_updates_once_per_step_and_only_while_training():
    defense = aar(beta=0.5)
    defense.adapter_hook(torch.ones(1, 2, 4))
    assert defense.importance is None and defense.mask is None
    defense.prepare(None, ())
    defense.adapter_hook(torch.tensor([[[4.0, 1.0, 3.0, 2.0]]]))
    defense.adapter_hook(torch.tensor([[[0.0, 9.0, 9.0, 0.0]]]))
    assert defense.importance.tolist() == [-4.0, -1.0, -3.0, -2.0]
    defense.after_step(1)
    defense.adapter_hook(torch.tensor([[[0.0, 9.0, 9.0, 0.0]]]))
    assert defense.importance.tolist() == [-2.0, -5.0, -6.0, -1.0] and defense.mask.tolist() == [1.0, 0.0, 0.0, 1.0]
    defense.finalize(None)
    defense.after_step(2)
    defense.adapter_hook(torch.ones(1, 1, 4))
    assert defense.importance.tolist() == [-2.0, -5.0, -6.0, -1.0]


def trained_mask(model: VisionLanguageModel, defense: AAR) -> torch.Tensor:
    features = FeatureCache(model).features([s.image for s in shape_samples()[:3]])
    defense.prepare(model, ())
    remove = model.add_adapter_hook(defense.adapter_hook)
    with torch.no_grad():
        model.adapter(features)
    remove()
    defense.finalize(model)
    return features


@pytest.mark.parametrize("at_inference", [True, False])
def test_at_inference_keeps_or_drops_the_mask_at_test_time(tiny_model, at_inference):
    defense = aar(at_inference=at_inference)
    features = trained_mask(tiny_model, defense)
    mask, importance = defense.mask.clone(), defense.importance.clone()
    with torch.no_grad():
        plain = tiny_model.adapter(features)
        with defense.inference(tiny_model):
            tested = tiny_model.adapter(features)
        after = tiny_model.adapter(features)
    assert torch.equal(after, plain)
    assert torch.equal(defense.mask, mask) and torch.equal(defense.importance, importance)
    if at_inference:
        assert torch.equal(tested, plain * mask) and int(mask.sum()) == mask.numel() // 2
    else:
        assert torch.equal(tested, plain)


def test_the_same_hook_masks_a_perceiver_resampler(tiny_model):
    parts = build_model("llava", tiny=True, vocabulary=vocabulary(), seed=0)
    model = VisionLanguageModel(
        family="llava", spec={}, vision=parts.vision, decoder=parts.decoder, lm_head=parts.lm_head,
        adapter=PerceiverResampler(32, 32, dim=16, num_latents=4, depth=1, heads=2),
        tokenizer=parts.tokenizer, image_size=parts.image_size, prompt_format=parts.prompt_format,
    )
    defense = aar(gamma=0.25)
    features = trained_mask(model, defense)
    assert defense.mask.shape == (16,) and int(defense.mask.sum()) == 4
    with torch.no_grad():
        with defense.inference(model):
            tested = model.adapter(features)
        latents = model.adapter.resampler(features)
        assert latents.shape == (3, 4, 16)
        assert torch.allclose(tested, model.adapter.out_proj(latents * defense.mask))
        assert not torch.allclose(tested, model.adapter(features))


def test_state_round_trip_and_parameter_checks():
    defense = aar()
    assert defense.state_dict() == {}
    defense.update(torch.tensor([[1.0, 2.0]]))
    fresh = aar()
    fresh.load_state_dict(defense.state_dict())
    assert torch.equal(fresh.mask, defense.mask) and torch.equal(fresh.importance, defense.importance)
    with pytest.raises(ValueError, match="importance and mask"):
        fresh.load_state_dict({"other": torch.zeros(1)})
    for params, key in [({"gamma": 0}, "gamma"), ({"gamma": 1.5}, "gamma"), ({"beta": -0.1}, "beta"),
                        ({"at_inference": "yes"}, "at_inference"), ({"alpha": 2}, "alpha")]:
        with pytest.raises(ValueError, match=key):
            aar(**params)
