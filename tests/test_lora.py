"""LoRA on the language model (`model.lora`, robustit/models/lora.py): off by default; on, only
the adapter, the embeddings and the LoRA weights train, the layers they wrap stay as built,
checkpoints rebuild the same model, and the audit says so."""
import json
from dataclasses import asdict

import pytest
import torch

from conftest import vocabulary
from robustit.config import ConfigError, load_config
from robustit.eval.generate import generate_responses
from robustit.experiment import Experiment
from robustit.models import VisionLanguageModel, build_model
from robustit.models.features import FeatureCache
from robustit.models.lora import LoraSettings, is_lora_parameter
from robustit.rundir import RunDirectory
from robustit.train.config import TrainConfig
from robustit.train.loop import set_trainable, train
from test_experiment import tiny_overrides
from test_train import shape_samples

pytestmark = pytest.mark.usefixtures("one_thread")
SETTINGS = LoraSettings(rank=4, alpha=8.0, dropout=0.1, target_modules=["q_proj", "v_proj"])
TUNING = TrainConfig(max_steps=3, batch_size=4, lr_adapter=3e-3, lr_embeddings=3e-3)


def tiny(family: str = "llava", seed: int = 0, lora: LoraSettings | None = SETTINGS) -> VisionLanguageModel:
    return build_model(family, tiny=True, vocabulary=vocabulary(), seed=seed, lora=lora)


def lora_names(model: VisionLanguageModel) -> list[str]:
    return [name for name, _ in model.named_parameters() if is_lora_parameter(name)]


def test_lora_is_off_by_default(tiny_model):
    assert load_config(None, []).model.lora is None
    assert tiny_model.lora is None and lora_names(tiny_model) == []
    assert set(tiny_model.trainable_groups()) == {"adapter", "embeddings"}
    audit = tiny_model.parameter_audit()
    assert audit["lora"] is None and "decoder_lora" not in audit["modules"]


def test_lora_layers_start_as_the_model_without_them(tiny_model):
    with_lora = tiny()
    features = FeatureCache(tiny_model)
    samples = shape_samples()
    expected = generate_responses(tiny_model, samples, features, batch_size=4, max_new_tokens=6, progress=False)
    assert generate_responses(with_lora, samples, features, batch_size=4, max_new_tokens=6, progress=False) == expected
    wrapped = {name.partition(".lora_")[0] for name in lora_names(with_lora)}
    assert wrapped == {f"decoder.layers.{i}.self_attn.{p}" for i in (0, 1) for p in ("q_proj", "v_proj")}


@pytest.mark.parametrize("family", ["llava", "idefics"])
def test_with_lora_only_the_adapter_embeddings_and_lora_weights_train(family, tmp_path):
    model = tiny(family)
    lora = set(lora_names(model))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    embedding = {id(p) for p in model.decoder.get_input_embeddings().parameters()}
    parts = {n for n, p in model.named_parameters() if n.startswith(("adapter.", "lm_head.")) or id(p) in embedding}
    assert lora and trainable == parts | lora and not parts & lora
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    train(model, shape_samples(), TUNING, run_dir=RunDirectory(tmp_path), progress=False)

    audit = json.loads((tmp_path / "audit.json").read_text())
    assert audit["frozen_with_grad"] == [] and audit["trainable_without_grad"] == []
    assert audit["lora"] == asdict(SETTINGS)
    modules = audit["modules"]
    assert modules["decoder_lora"] == {"trainable": sum(p.numel() for n, p in model.named_parameters() if n in lora),
                                       "frozen": 0}
    assert modules["decoder"]["trainable"] == modules["vision"]["trainable"] == 0
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], p) for n, p in frozen.items())
    assert all(not torch.equal(params[n], before[n]) for n in lora)  # A and B of every wrapped layer
    assert {id(p) for p in model.trainable_groups()["lora"]} == {id(params[n]) for n in lora}


def test_lora_dropout_is_active_only_while_the_lora_weights_train():
    model = tiny()
    dropouts = [m for n, m in model.decoder.named_modules() if n.endswith("lora_dropout")]
    model.train()
    assert dropouts and all(d.training for d in dropouts) and not model.decoder.training
    set_trainable(model, embeddings=False)  # the adapter alone: LoRA frozen with the embeddings
    model.train()
    assert not any(d.training for d in dropouts)
    assert not any(p.requires_grad for p in model.trainable_groups()["lora"])
    model.eval()
    assert not any(d.training for d in dropouts)


@pytest.mark.parametrize("family", ["llava", "idefics"])
def test_a_lora_checkpoint_rebuilds_from_its_spec_and_generates_identically(family, tmp_path):
    model = tiny(family)
    train(model, shape_samples(), TUNING, progress=False)
    directory = model.save_trainable(tmp_path / "checkpoint")
    spec = json.loads((directory / "model_spec.json").read_text())
    assert spec["lora"] == asdict(SETTINGS)
    samples = shape_samples()
    expected = generate_responses(model, samples, FeatureCache(model), batch_size=4, max_new_tokens=6, progress=False)

    rebuilt = build_model(spec.pop("family"), **{**spec, "seed": 1})  # other starting weights of the trainable parts
    rebuilt.load_trainable(directory)
    assert rebuilt.lora == SETTINGS
    after = generate_responses(rebuilt, samples, FeatureCache(rebuilt), batch_size=4, max_new_tokens=6, progress=False)
    assert after == expected


def test_a_lora_checkpoint_is_refused_by_a_model_without_lora(tiny_model, tmp_path):
    directory = tiny().save_trainable(tmp_path / "checkpoint")
    with pytest.raises(ValueError, match=r"unexpected \['decoder.layers.0.self_attn.q_proj.lora_A.*LoRA settings"):
        tiny_model.load_trainable(directory)


def test_an_unknown_target_module_is_an_error_naming_it(tiny_model):
    with pytest.raises(ValueError, match=r"'qq_proj' names no linear layer of the llava language model.*'v_proj'"):
        tiny(lora=LoraSettings(target_modules=["q_proj", "qq_proj"]))
    with pytest.raises(ValueError, match="'linear_1' names no linear layer"):  # the adapter's, not the LM's
        tiny(lora=LoraSettings(target_modules=["linear_1"]))
    with pytest.raises(ValueError, match="already has LoRA layers"):
        tiny().add_lora(SETTINGS)


def test_lora_settings_load_from_the_command_line_and_are_checked():
    assert load_config(None, ["model.lora={}"]).model.lora == LoraSettings()
    config = load_config(None, ["model.lora.rank=16", "model.lora.target_modules=[q_proj, k_proj, v_proj]"])
    assert config.model.lora == LoraSettings(rank=16, target_modules=["q_proj", "k_proj", "v_proj"])
    for override, key in (("model.lora.rank=0", "model.lora.rank"), ("model.lora.dropout=1", "model.lora.dropout"),
                          ("model.lora.target_modules=q_proj", "model.lora.target_modules"),
                          ("model.lora.ranks=4", "model.lora.ranks")):
        with pytest.raises(ConfigError, match=key):
            load_config(None, [override])


def test_a_run_with_lora_records_it_and_reevaluates_identically(karpathy, tmp_path):
    config = load_config(None, [*tiny_overrides(karpathy, tmp_path), "model.lora={}", "evaluate_base=false"])
    run_dir = Experiment(config, progress=False).run()
    audit = json.loads((run_dir / "audit.json").read_text())
    assert audit["lora"] == asdict(LoraSettings()) and audit["modules"]["decoder_lora"]["trainable"] > 0
    assert audit["frozen_with_grad"] == []
    assert json.loads((run_dir / "checkpoint" / "model_spec.json").read_text())["lora"] == asdict(LoraSettings())
    report = (run_dir / "report.md").read_text()
    assert "LoRA on the language model (outside the paper's threat model): rank 8" in report
    again = Experiment.from_run(run_dir, []).reevaluate(RunDirectory(tmp_path / "again"))
    for condition in ("clean", "full"):
        predictions = (run_dir / "predictions" / f"{condition}.jsonl").read_text()
        assert (again / "predictions" / f"{condition}.jsonl").read_text() == predictions
