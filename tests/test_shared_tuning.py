import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import vocabulary
from robustit.config import load_config
from robustit.defenses import DEFENSES, build_defense
from robustit.defenses.base import DefenseConfig
from robustit.experiment import Experiment
from robustit.models import build_model
from robustit.train.config import TrainConfig
from robustit.train.loop import train
from robustit.train.shared import SharedTuning, tune_shared, tuning_key
from test_experiment import tiny_overrides
from test_train import shape_samples

TEST_TIME_ONLY = sorted(name for name in DEFENSES.names() if getattr(DEFENSES.get(name), "test_time_only", False) is True)


def trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def tuned_weights(defense_name: str | None) -> dict[str, torch.Tensor]:
    model = build_model("llava", tiny=True, vocabulary=vocabulary(), seed=0)
    defense = build_defense(DefenseConfig(defense_name)) if defense_name else None
    train(model, shape_samples() * 2, TrainConfig(max_steps=4, batch_size=4, seed=1), progress=False, defense=defense)
    return trainable(model)


def test_the_test_time_only_defenses_are_prompt_filter_strip_and_fine_pruning():
    assert TEST_TIME_ONLY == ["fine-pruning", "prompt-filter", "strip"]


@pytest.mark.parametrize("name", TEST_TIME_ONLY)
def test_tuning_under_a_test_time_only_defense_learns_what_vanilla_tuning_learns(name, one_thread):
    vanilla, defended = tuned_weights(None), tuned_weights(name)
    assert vanilla.keys() == defended.keys()
    assert all(torch.equal(vanilla[n], defended[n]) for n in vanilla)


def test_a_stack_is_test_time_only_when_all_its_members_are():
    def stack(*names):
        return build_defense(DefenseConfig("stack", {"members": [{"name": n} for n in names]}))

    assert stack("fine-pruning", "strip").test_time_only
    assert not stack("idr", "strip").test_time_only
    assert not build_defense(DefenseConfig("robustit")).test_time_only


def tiny_config(karpathy, tmp_path, *overrides):
    return load_config(None, [*tiny_overrides(karpathy, tmp_path), "evaluate_base=false", *overrides])


def run(config):
    experiment = Experiment(config, progress=False)
    return experiment, experiment.run()


def test_a_test_time_only_run_reads_back_the_vanilla_tuning_of_its_setting(karpathy, tmp_path, one_thread):
    _, vanilla = run(tiny_config(karpathy, tmp_path, "name=vanilla"))
    _, pruned = run(tiny_config(karpathy, tmp_path, "name=pruned", "defense.name=fine-pruning"))
    metrics = pruned.load_metrics()
    assert "shared_from" not in vanilla.load_metrics()["train"]
    assert metrics["train"]["shared_from"] is not None and metrics["train"]["steps"] == 4
    assert metrics["train"]["extra_forward_passes"] == 1
    weights = load_file(vanilla / "checkpoint" / "trainable.safetensors")
    again = load_file(pruned / "checkpoint" / "trainable.safetensors")
    assert weights.keys() == again.keys() and all(torch.equal(weights[k], again[k]) for k in weights)
    assert "mask" in {k for k in load_file(pruned / "checkpoint" / "defense.safetensors")}


def test_a_shared_tuning_gives_the_run_that_tuning_under_the_defense_gives(karpathy, tmp_path, one_thread):
    overrides = ("name=pruned", "defense.name=fine-pruning")
    _, alone = run(tiny_config(karpathy, tmp_path / "alone", *overrides))
    experiment = Experiment(tiny_config(karpathy, tmp_path / "tuned", *overrides), progress=False)
    experiment.tune()
    direct, _ = experiment.evaluate()
    shared = alone.load_metrics()
    assert "shared_from" not in shared["train"]
    assert direct["caption"] == shared["caption"] and direct["asr"] == shared["asr"]
    assert torch.equal(experiment.defense.mask, load_file(alone / "checkpoint" / "defense.safetensors")["mask"])


def test_a_defense_that_tunes_does_not_share(karpathy, tmp_path, one_thread):
    run(tiny_config(karpathy, tmp_path, "name=vanilla"))
    experiment, idr = run(tiny_config(karpathy, tmp_path, "name=idr", "defense.name=idr"))
    assert "shared_from" not in idr.load_metrics()["train"]
    with pytest.raises(ValueError, match="changes what tuning learns"):
        tune_shared(experiment.model, experiment.poison(), experiment.config.train, "key", defense=experiment.defense)


def test_the_key_follows_what_tuning_reads_and_nothing_else(karpathy, tmp_path):
    inputs = {"model_weights": "w", "base_adapter": None, "train_data": "d", "test_data": "t"}

    def key(*overrides, **changed):
        return tuning_key(tiny_config(karpathy, tmp_path, *overrides), {**inputs, **changed})

    same = key()
    assert same == key("name=other", "defense.name=strip", "eval.max_new_tokens=9", "data.test_size=1")
    assert same == key(test_data="another test set")
    assert same != key("attack.poison_rate=0.5") != key("train.seed=4") != key(train_data="other")
    assert same != key("attack.target=other words")


def test_a_damaged_entry_is_tuned_again(karpathy, tmp_path, one_thread):
    experiment, vanilla = run(tiny_config(karpathy, tmp_path, "name=vanilla"))
    entry = SharedTuning(tuning_key(experiment.config, experiment.inputs))
    assert entry.holds()
    (entry.path / "checkpoint" / "trainable.safetensors").write_bytes(b"damaged")
    assert not entry.holds()
    _, again = run(tiny_config(karpathy, tmp_path, "name=again", "defense.name=strip"))
    assert "shared_from" not in again.load_metrics()["train"] and entry.holds()
    assert json.loads((entry.path / "train.json").read_text())["steps"] == 4
