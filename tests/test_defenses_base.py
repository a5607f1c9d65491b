import dataclasses
import json
import math
from contextlib import contextmanager
from dataclasses import is_dataclass
from importlib import resources
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from robustit.rundir import RunDirectory
from robustit.attacks import Attack, AttackConfig, PoisonedDataset, TriggeredView, build_attack
from robustit.bench.grid import variant_config
from robustit.config import load_config
from robustit.data.sample import Sample
from robustit.defenses import (
    DEFENSES, Composite, Defense, DefenseBatch, DefenseConfig, RobustIT, View, build_defense,
)
from robustit.eval.evaluate import EvalConfig, evaluate
from robustit.experiment import Experiment
from robustit.report import defense_line
from robustit.train.config import TrainConfig
from robustit.train.loop import train
from test_experiment import tiny_overrides
from test_train import shape_samples

DEFENSE_CONFIGS = resources.files("robustit") / "configs" / "defenses"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def fast_captions(monkeypatch):
    monkeypatch.setattr("robustit.eval.evaluate.caption_scores", lambda p, r: SimpleNamespace(as_dict=lambda: {}))


def test_registry_and_config_errors():
    assert {"idr", "aar", "robustit"} <= set(DEFENSES.names())
    with pytest.raises(KeyError, match=f"unknown defense 'nope'; known: {', '.join(sorted(DEFENSES.names()))}"):
        build_defense(DefenseConfig("nope"))
    with pytest.raises(ValueError, match="non-empty"):
        DefenseConfig("")
    with pytest.raises(ValueError, match="must be a dict"):
        DefenseConfig("idr", [1])
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['delta'\] for defense 'robustit'; known: alpha"):
        build_defense(DefenseConfig("robustit", {"delta": 1}))
    with pytest.raises(ValueError, match="JSON"):
        build_defense(DefenseConfig("idr", {"alpha": object()}))
    with pytest.raises(ValueError, match="missing key"):
        load_config(None, ["defense.params.alpha=3"])
    with pytest.raises(ValueError, match=r"defense\.nope"):
        load_config(None, ["defense.name=idr", "defense.nope=1"])


@pytest.mark.parametrize("name", ["vanilla", "idr", "aar", "robustit", "byorn"])
def test_packaged_configs_build_and_take_overrides(name):
    path = DEFENSE_CONFIGS / f"{name}.yaml"
    with resources.as_file(path) as file:
        config = load_config(file, ["name=abl"])
    assert config.run_dir().parts[:3] == ("runs", "abl", name)
    if name == "vanilla":
        assert config.defense is None
        return
    defense = build_defense(config.defense)
    assert defense.name == name
    with resources.as_file(path) as file:
        key = {"aar": "gamma", "byorn": "quantile"}.get(name, "alpha")
        changed = build_defense(load_config(file, [f"defense.params.{key}=0.8"]).defense)
    assert changed.params[key] == 0.8 and defense.params[key] != 0.8


def test_robustit_routes_parameters_to_its_members():
    defense = build_defense(DefenseConfig("robustit", {"alpha": 3, "gamma": 0.3, "beta": 0.5}))
    idr, aar = defense.defenses
    assert idr.alpha == 3.0 and aar.gamma == 0.3 and aar.beta == 0.5
    assert defense.describe()["params"]["alpha"] == 3 and defense.describe()["params"]["at_inference"] is True


class First(Defense):
    name = "first"
    defaults = {"a": 1.0}

    def augment(self, batch):
        return [*batch.views.values(), View("a", [], [], [], forward=False, lm_weight=0.0)]

    def adapter_hook(self, activations):
        return activations + 1

    def loss(self, model, batch, outputs):
        self.extra_forward_passes += 1
        return {"shared": torch.tensor(self.params["a"]), "first": torch.tensor(2 * self.params["a"])}


class Second(Defense):
    name = "second"
    defaults = {"b": 5.0}

    def augment(self, batch):
        assert "a" in batch.views
        return [*batch.views.values(), View("b", [], [], [], forward=False, lm_weight=0.0)]

    def adapter_hook(self, activations):
        return activations * 2

    def loss(self, model, batch, outputs):
        self.extra_forward_passes += 2
        return {"shared": torch.tensor(self.params["b"])}

    def refuse(self, samples, responses, generate):
        return [response == "refuse me" for response in responses]


class Pair(Composite):
    name = "pair"
    members = (First, Second)


def test_composite_folds_views_chains_hooks_and_sums_terms():
    pair = Pair(DefenseConfig("pair", {"a": 2.0}))
    views = pair.augment(DefenseBatch([], {"original": View("original", [], [], [])}))
    assert [v.name for v in views] == ["original", "a", "b"]
    assert pair.adapter_hook(torch.tensor([1.0])).item() == 4.0
    terms = pair.loss(None, DefenseBatch([], {}), {})
    assert {k: v.item() for k, v in terms.items()} == {"shared": 7.0, "first": 4.0}
    assert pair.extra_forward_passes == 3
    assert pair.refuse([], ["fine", "refuse me"], None) == [False, True]
    assert First(DefenseConfig("first")).refuse([], ["refuse me"], None) is None
    with pytest.raises(TypeError, match="disagree"):
        type("Clash", (Composite,), {"name": "clash", "members": (First, type("Other", (First,), {"defaults": {"a": 2.0}}))})


def walk(obj, path: str, seen: set[int], strings: list[tuple[str, str]]) -> None:
    """Collect every string reachable from `obj` (not into models, tensors or images); fail on
    anything that carries poison information."""
    if id(obj) in seen or isinstance(obj, (torch.Tensor, Image.Image, nn.Module, int, float, type(None))):
        return
    seen.add(id(obj))
    assert not isinstance(obj, (Attack, AttackConfig, PoisonedDataset, TriggeredView)), path
    if isinstance(obj, str):
        strings.append((path, obj))
        return
    if isinstance(obj, Sample):
        assert obj.metadata == {} and obj.references == [obj.response], path
    if isinstance(obj, dict):
        for key, value in obj.items():
            walk(key, f"{path}.key", seen, strings)
            walk(value, f"{path}[{key!r}]", seen, strings)
    elif isinstance(obj, (list, tuple, set)):
        for i, value in enumerate(obj):
            walk(value, f"{path}[{i}]", seen, strings)
    else:
        assert is_dataclass(obj), f"{path}: unexpected {type(obj).__name__}"
        for key, value in vars(obj).items():
            walk(value, f"{path}.{key}", seen, strings)


class Spy(Defense):
    name = "spy"

    def __init__(self) -> None:
        super().__init__(DefenseConfig("spy"))
        self.calls: list[tuple] = []

    def prepare(self, model, dataset):
        self.calls.append(("prepare", dataset))

    def curate(self, state):
        self.calls.append(("curate", state.step, state.steps_per_epoch, state.total_steps))

    def training_sample(self, sample):
        self.calls.append(("training_sample", sample))
        return sample

    def augment(self, batch):
        self.calls.append(("augment", batch))
        return super().augment(batch)

    def adapter_hook(self, activations):
        self.calls.append(("adapter_hook", activations))
        return activations

    def loss(self, model, batch, outputs):
        self.calls.append(("loss", batch, outputs))
        return {}

    def after_step(self, step):
        self.calls.append(("after_step", step))

    def finalize(self, model):
        self.calls.append(("finalize",))

    @contextmanager
    def inference(self, model):
        self.calls.append(("inference",))
        yield

    def filter_input(self, sample):
        self.calls.append(("filter_input", sample))
        return sample


def test_defenses_never_see_poison_information(tiny_model, fast_captions):
    attack = build_attack(AttackConfig("badnets", poison_rate=0.5))
    spy = Spy()
    train(tiny_model, PoisonedDataset(shape_samples(), attack), TrainConfig(max_steps=4, batch_size=4), progress=False, defense=spy)
    evaluate(tiny_model, shape_samples()[:2], attack, EvalConfig(max_new_tokens=2), progress=False, defense=spy)
    hooks = [call[0] for call in spy.calls]
    assert hooks[:2] == ["prepare", "curate"] and hooks.count("augment") == hooks.count("loss") == 4
    assert [c[1:] for c in spy.calls if c[0] == "curate"] == [(step, 2, 4) for step in range(5)]
    assert hooks.count("training_sample") == 4 * 4
    assert [c[1] for c in spy.calls if c[0] == "after_step"] == [1, 2, 3, 4]
    assert hooks.count("finalize") == hooks.count("inference") == 1 and hooks.count("filter_input") == 2 * 4
    strings: list[tuple[str, str]] = []
    walk(spy.calls, "calls", set(), strings)
    responses = [s for path, s in strings if path.endswith((".response", ".references[0]")) or ".responses[" in path]
    others = [(path, s) for path, s in strings if s not in responses]
    assert attack.target in responses
    assert not [(p, s) for p, s in others if attack.target.lower() in s.lower()]
    dataset = spy.calls[0][1]
    assert isinstance(dataset, tuple) and sum(s.response == attack.target for s in dataset) == 4
    assert any(s.instruction.endswith(attack.text_trigger) for s in dataset)


def test_train_with_robustit_records_terms_and_saves_its_state(tiny_model, tmp_path):
    defense = build_defense(DefenseConfig("robustit"))
    result = train(tiny_model, shape_samples(), TrainConfig(max_steps=3, batch_size=4), run_dir=RunDirectory(tmp_path), progress=False,
                   defense=defense)
    assert set(result.loss_terms) == {"idr_visual", "idr_text"}
    assert all(len(v) == 3 and all(math.isfinite(x) and x >= 0 for x in v) for v in result.loss_terms.values())
    assert result.mean_loss_terms()["idr_text"] == pytest.approx(sum(result.loss_terms["idr_text"]) / 3)
    assert result.forward_passes == 6 and result.extra_forward_passes == 3
    assert json.loads((tmp_path / "audit.json").read_text())["frozen_with_grad"] == []
    assert tiny_model._adapter_hooks == []
    aar = defense.defenses[1]
    assert not aar.training and int(aar.mask.sum()) == aar.mask.numel() // 2
    fresh = RobustIT(DefenseConfig("robustit"))
    fresh.load_state_dict(load_file(str(tmp_path / "checkpoint" / "defense.safetensors")))
    assert torch.equal(fresh.defenses[1].mask, aar.mask.cpu())


def test_pipeline_records_the_defense(karpathy, tmp_path, fast_captions):
    overrides = tiny_overrides(karpathy, tmp_path) + ["evaluate_base=false", "defense.name=robustit", "defense.params.alpha=3"]
    run_dir = Experiment(load_config(None, overrides), progress=False).run()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["defense"]["name"] == "robustit" and metrics["defense"]["params"]["alpha"] == 3.0
    assert set(metrics["train"]["loss_terms"]) == {"idr_visual", "idr_text"}
    assert metrics["train"]["extra_forward_passes"] == metrics["train"]["steps"] == 4
    assert len(json.loads((run_dir / "loss_terms.json").read_text())["idr_text"]) == 4
    report = (run_dir / "report.md").read_text()
    assert "Defense: robustit (alpha=3.0, at_inference=True, beta=0.9," in report and "| 1.00 |" in report
    assert defense_line(None) == "Defense: none (VanillaIT)."


def test_a_composite_turns_its_members_progress_bars_on_and_off():
    stack = build_defense(DefenseConfig("stack", {"members": [{"name": "idr"}, {"name": "prompt-filter"}]}))
    assert not stack.progress and not any(d.progress for d in stack.defenses)
    stack.show_progress(True)
    assert stack.progress and all(d.progress for d in stack.defenses)


def test_a_composite_reports_the_test_time_stats_of_the_members_that_have_any():
    stack = build_defense(DefenseConfig("stack", {"members": [{"name": "idr"}, {"name": "prompt-filter"}]}))
    stack.defenses[1].stats.inputs = 3
    assert stack.test_time_stats() == {"prompt-filter": {"inputs": 3, "modified": 0, "passes": 0, "removed": {}}}


def test_a_stack_runs_the_members_its_config_names_with_their_full_settings():
    stack = build_defense(DefenseConfig("stack", {"members": [{"name": "idr", "params": {"alpha": 0.5}}, {"name": "aar"}]}))
    idr, aar = stack.defenses
    assert (idr.name, idr.alpha, aar.name) == ("idr", 0.5, "aar")
    assert stack.params["members"] == [{"name": "idr", "params": idr.params}, {"name": "aar", "params": aar.params}]
    assert aar.params["gamma"] == 0.5


def test_a_stack_param_named_after_a_member_sets_that_members_params_and_hashes_as_if_written_there():
    variant = variant_config("robustit-grounded-aar:aar.gamma=0.3", "badnets", [])
    default = variant_config("robustit-grounded-aar", "badnets", [])
    stack = build_defense(variant.defense)
    assert stack.defenses[1].gamma == 0.3 and stack.defenses[1].beta == 0.9
    assert stack.defenses[0].params == build_defense(default.defense).defenses[0].params
    members = build_defense(default.defense).params["members"]
    members[1]["params"]["gamma"] = 0.3
    written = dataclasses.replace(default, defense=DefenseConfig("stack", {"members": members}), name=variant.name)
    assert variant.config_hash() == written.config_hash() != default.config_hash()
    assert variant_config("robustit-grounded-aar:aar.gamma=0.5", "badnets", []).config_hash() == default.config_hash()


@pytest.mark.parametrize("params, field", [
    ({"members": [{"name": "aar"}], "aar": 0.3}, "aar"),
    ({"members": [{"name": "aar"}], "aar": {"gama": 0.3}}, "gama"),
    ({"members": [{"name": "aar"}], "idr": {"alpha": 1.0}}, "idr"),
])
def test_a_bad_member_setting_names_it(params, field):
    with pytest.raises(ValueError, match=field):
        build_defense(DefenseConfig("stack", params))


@pytest.mark.parametrize("members, field", [
    ([], "members"), ("idr", "members"), ([{"params": {}}], r"members\[0\]"),
    ([{"name": "idr", "extra": 1}], r"members\[0\]"), ([{"name": "aar"}, {"name": "aar"}], r"members\[1\]"),
    ([{"name": "idr", "params": {"alpha": -1}}], "alpha"),
])
def test_a_bad_stack_names_the_member(members, field):
    with pytest.raises(ValueError, match=field):
        build_defense(DefenseConfig("stack", {"members": members}))


@pytest.mark.parametrize("combination", ["robustit-repaired-prompt-filter", "robustit-repaired-pruning"])
def test_combinations_run_robustit_repaired_with_its_packaged_settings(combination):
    with resources.as_file(DEFENSE_CONFIGS / "robustit-repaired.yaml") as file:
        repaired = build_defense(load_config(file).defense)
    with resources.as_file(DEFENSE_CONFIGS / f"{combination}.yaml") as file:
        stack = build_defense(load_config(file).defense)
    assert stack.name == "stack" and stack.defenses[0].params == repaired.params


def test_robustit_grounded_is_robustit_repaired_without_the_instruction_swap():
    built = {}
    for name in ("robustit-repaired", "robustit-grounded"):
        with resources.as_file(DEFENSE_CONFIGS / f"{name}.yaml") as file:
            built[name] = build_defense(load_config(file).defense)
    repaired, grounded = built["robustit-repaired"], built["robustit-grounded"]
    assert repaired.params["instruction_swap"] == 1.0 and grounded.params["instruction_swap"] == 0.0
    assert {**grounded.params, "instruction_swap": 1.0} == repaired.params


def test_robustit_grounded_aar_is_robustit_grounded_then_aar_at_its_defaults():
    built = {}
    for name in ("robustit-grounded", "robustit-grounded-aar", "aar"):
        with resources.as_file(DEFENSE_CONFIGS / f"{name}.yaml") as file:
            built[name] = build_defense(load_config(file).defense)
    both = built["robustit-grounded-aar"]
    assert [d.name for d in both.defenses] == ["idr", "aar"]
    assert both.defenses[0].params == built["robustit-grounded"].params
    assert both.defenses[1].params == built["aar"].params
