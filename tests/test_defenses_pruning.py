import math
import random

import pytest
import torch

from conftest import vocabulary
from robustit.attacks import AttackConfig, PoisonedDataset, build_attack
from robustit.defenses import DefenseConfig, build_defense
from robustit.defenses.pruning import FinePruning, MagnitudePruning, pruned_weights, pruning_mask, smallest
from robustit.models import build_model
from robustit.models.base import VisionLanguageModel
from robustit.models.features import FeatureCache
from robustit.rundir import RunDirectory
from robustit.train.config import TrainConfig
from robustit.train.loop import train
from test_train import shape_samples


pytestmark = pytest.mark.usefixtures("one_thread")


def fine_pruning(**params) -> FinePruning:
    return FinePruning(DefenseConfig("fine-pruning", params))


def magnitude_pruning(**params) -> MagnitudePruning:
    return MagnitudePruning(DefenseConfig("magnitude-pruning", params))


def features_of(model: VisionLanguageModel, count: int = 3) -> torch.Tensor:
    return FeatureCache(model).features([s.image for s in shape_samples()[:count]])


def magnitude_pruned(weight: torch.Tensor, rate: float) -> torch.Tensor:
    """`weight` with its floor(rate * n) smallest |w| zeroed, ties to the lower index."""
    count = math.floor(rate * weight.numel())
    order = sorted(range(weight.numel()), key=lambda i: (abs(weight.view(-1)[i].item()), i))
    pruned = weight.detach().clone()
    pruned.view(-1)[order[:count]] = 0
    return pruned


def adapter_weights(model: VisionLanguageModel) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.adapter.named_parameters()}


def test_smallest_takes_the_lowest_values_and_breaks_ties_by_index():
    values = torch.tensor([3.0, 1.0, 2.0, 1.0, 0.0])
    assert smallest(values, 0.4).tolist() == [4, 1]
    assert smallest(values, 0.6).tolist() == [4, 1, 3]
    assert smallest(values, 0.0).tolist() == [] and len(smallest(values, 1.0)) == 5
    assert len(smallest(torch.zeros(100), 0.29)) == 29
    assert pruning_mask(torch.tensor([0.5, 0.1, 0.9, 0.1, 0.3]), 0.4).tolist() == [1.0, 0.0, 1.0, 0.0, 1.0]


def test_magnitude_pruning_zeroes_exactly_the_lowest_magnitude_share_of_each_adapter_weight_matrix(tiny_model):
    before = adapter_weights(tiny_model)
    defense = magnitude_pruning()
    defense.prepare(tiny_model, ())
    with torch.no_grad():
        tiny_model.adapter(features_of(tiny_model))
    pruned = {id(p) for p in pruned_weights(tiny_model.adapter)}
    matrices = {name for name, p in tiny_model.adapter.named_parameters() if id(p) in pruned}
    assert matrices == {"projector.linear_1.weight", "projector.linear_2.weight"}
    for name, p in tiny_model.adapter.named_parameters():
        if name in matrices:
            assert torch.equal(p, magnitude_pruned(before[name], 0.2))
            assert int((p == 0).sum()) == math.floor(0.2 * p.numel()) == 204
            kept = before[name][p != 0].abs()
            assert before[name][p == 0].abs().max() <= kept.min()
        else:
            assert torch.equal(p, before[name])
    defense.finalize(tiny_model)
    assert not tiny_model.adapter._forward_pre_hooks


def test_magnitude_pruning_twice_in_one_step_keeps_gradients_flowing(tiny_model):
    defense = magnitude_pruning(rate=0.5)
    defense.prepare(tiny_model, ())
    features = features_of(tiny_model)
    (tiny_model.adapter(features).sum() + tiny_model.adapter(features).pow(2).sum()).backward()
    assert all(p.grad is not None for p in pruned_weights(tiny_model.adapter))


def test_magnitude_pruning_prunes_before_every_forward_pass_of_tuning_and_leaves_the_adapter_pruned(tiny_model):
    zeros_seen: list[list[int]] = []
    tiny_model.adapter.register_forward_hook(
        lambda module, inputs, output: zeros_seen.append([int((w == 0).sum()) for w in pruned_weights(module)]))
    defense = magnitude_pruning()
    result = train(tiny_model, shape_samples(), TrainConfig(max_steps=3, batch_size=4, lr_adapter=3e-3), progress=False,
                   defense=defense)
    assert zeros_seen == [[204, 204]] * 3 and result.extra_forward_passes == 0
    assert not tiny_model.adapter._forward_pre_hooks and tiny_model._adapter_hooks == []
    for weight in pruned_weights(tiny_model.adapter):
        assert torch.equal(weight, magnitude_pruned(weight, 0.2))


def test_magnitude_pruning_at_inference_prunes_inside_the_block_and_restores_after(tiny_model):
    before = adapter_weights(tiny_model)
    features = features_of(tiny_model)
    reference = build_model("llava", tiny=True, vocabulary=vocabulary(), seed=0)
    with torch.no_grad():
        for weight in pruned_weights(reference.adapter):
            weight.copy_(magnitude_pruned(weight, 0.2))
        with magnitude_pruning().inference(tiny_model):
            tested = tiny_model.adapter(features)
        assert torch.equal(tested, reference.adapter(features))
        assert not torch.equal(tested, tiny_model.adapter(features))
    assert not tiny_model.adapter._forward_pre_hooks
    assert all(torch.equal(p, before[name]) for name, p in tiny_model.adapter.named_parameters())


def test_fine_pruning_mask_zeroes_the_least_active_channels_on_the_chosen_inputs(tiny_model):
    samples = shape_samples()
    defense = fine_pruning(samples=3, seed=5)
    defense.prepare(tiny_model, samples)
    chosen = sorted(random.Random(5).sample(range(len(samples)), 3))
    assert defense.images == [samples[i].image for i in chosen]
    defense.finalize(tiny_model)
    with torch.no_grad():
        activation = tiny_model.adapter(FeatureCache(tiny_model).features(defense.images)).abs().mean((0, 1))
    assert torch.allclose(defense.activation, activation)
    pruned = activation.argsort()[:6]
    assert math.floor(0.2 * activation.numel()) == 6
    assert defense.mask[pruned].tolist() == [0.0] * 6 and int(defense.mask.sum()) == activation.numel() - 6
    assert activation[defense.mask == 0].max() <= activation[defense.mask == 1].min()
    assert defense.extra_forward_passes == 1


def test_fine_pruning_takes_every_input_when_samples_exceeds_the_set(tiny_model):
    samples = shape_samples()
    defense = fine_pruning(rate=0.5)
    defense.prepare(tiny_model, samples)
    assert defense.images == [s.image for s in samples]


def test_fine_pruning_mask_survives_the_checkpoint_and_applies_at_inference_only(tiny_model, tmp_path):
    defense = fine_pruning()
    result = train(tiny_model, shape_samples(), TrainConfig(max_steps=2, batch_size=4), run_dir=RunDirectory(tmp_path),
                   progress=False, defense=defense)
    assert result.extra_forward_passes == 1 and tiny_model._adapter_hooks == []
    fresh_model, fresh = build_model("llava", tiny=True, vocabulary=vocabulary(), seed=1), fine_pruning()
    RunDirectory(tmp_path).load_checkpoint(fresh_model, fresh)
    assert torch.equal(fresh.mask, defense.mask) and torch.equal(fresh.activation, defense.activation)
    features = features_of(fresh_model)
    with torch.no_grad():
        with fresh.inference(fresh_model):
            tested = fresh_model.adapter(features)
        plain = fresh_model.adapter(features)
        with defense.inference(tiny_model):
            assert torch.equal(tiny_model.adapter(features), tested)
    assert torch.equal(tested, plain * fresh.mask) and not torch.equal(tested, plain)
    assert fresh_model._adapter_hooks == []


def test_fine_pruning_state_is_empty_before_finalize_and_checks_its_keys():
    defense = fine_pruning()
    assert defense.state_dict() == {}
    defense.load_state_dict({})
    with pytest.raises(ValueError, match="activation and mask"):
        defense.load_state_dict({"mask": torch.ones(4)})


@pytest.mark.parametrize("name, params, key", [
    ("fine-pruning", {"rate": 1.5}, "rate"),
    ("fine-pruning", {"rate": -0.1}, "rate"),
    ("fine-pruning", {"rate": "0.2"}, "rate"),
    ("fine-pruning", {"samples": 0}, "samples"),
    ("fine-pruning", {"samples": 2.5}, "samples"),
    ("fine-pruning", {"seed": -1}, "seed"),
    ("fine-pruning", {"retune_steps": 5}, "retune_steps"),
    ("magnitude-pruning", {"rate": 2}, "rate"),
    ("magnitude-pruning", {"rate": None}, "rate"),
    ("magnitude-pruning", {"samples": 3}, "samples"),
])
def test_invalid_parameters_raise_errors_naming_them(name, params, key):
    with pytest.raises(ValueError, match=key):
        build_defense(DefenseConfig(name, params))


@pytest.mark.parametrize("name", ["fine-pruning", "magnitude-pruning"])
def test_prepare_gets_only_stripped_samples_of_a_poisoned_set(tiny_model, name):
    attack = build_attack(AttackConfig("badnets", poison_rate=0.5))
    dataset = PoisonedDataset(shape_samples(), attack)
    assert sum(bool(dataset[i].metadata.get("is_poisoned")) for i in range(len(dataset))) == 4
    defense = build_defense(DefenseConfig(name))
    handed: list = []
    prepare = defense.prepare
    defense.prepare = lambda model, data: handed.append(data) or prepare(model, data)
    train(tiny_model, dataset, TrainConfig(max_steps=2, batch_size=4), progress=False, defense=defense)
    (data,) = handed
    assert isinstance(data, tuple) and len(data) == len(dataset)
    assert all(s.metadata == {} and s.references == [s.response] for s in data)
    assert sum(s.response == attack.target for s in data) == 4
