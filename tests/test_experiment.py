import json

import pytest
from safetensors.torch import load_file

from conftest import vocabulary
from robustit.cli import main
from robustit.config import load_config
from robustit.experiment import Experiment, subsample
from robustit.attacks import VLTrojan, build_attack
from robustit.attacks.base import AttackConfig
from robustit.models import build_model
from robustit.rundir import RunDirectory
from robustit.store import ResultStore
from robustit.train.base_adapter import ensure_base_adapter
from robustit.train.config import PretrainConfig


def tiny_overrides(karpathy, tmp_path) -> list[str]:
    return [
        "name=tiny",
        f"output_dir={tmp_path}/runs/{{name}}/{{attack}}",
        "model.family=llava",
        f"model.spec={json.dumps({'tiny': True, 'vocabulary': vocabulary()})}",
        "model.base=null",
        "data.source=karpathy",
        f"data.options={json.dumps(karpathy)}",
        "attack.poison_rate=0.25",
        "train.max_steps=4",
        "train.batch_size=4",
        "eval.max_new_tokens=4",
    ]


def run_experiment(config, store=None):
    return Experiment(config, progress=False).run(store)


def test_run_directory_holds_config_metrics_predictions_and_report(karpathy, tmp_path):
    config = load_config(None, tiny_overrides(karpathy, tmp_path))
    store = ResultStore(tmp_path / "store")
    run_dir = run_experiment(config, store)
    assert run_dir.is_complete()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert metrics["n_train"] == manifest["n_samples"] == 12
    assert manifest["n_poisoned"] == 3 and len(manifest["poisoned_ids"]) == 3
    assert metrics["train"]["steps"] == 4
    assert set(metrics["caption"]) >= {"BLEU_1", "BLEU_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE"}
    assert set(metrics["asr"]) >= {"full", "image_only", "text_only", "false_trigger"}
    assert metrics["asr"]["eligible"] == metrics["n_test"] == 2
    assert 0 <= metrics["asr"]["false_trigger"]["keyword_rate"] <= 100
    assert "base" in metrics and set(metrics["timings"]) >= {"tuning", "evaluation"}
    drift = metrics["adapter_drift"]
    assert -1.0 <= drift["token_cosine"] < 1.0 and drift["words_kept"] is None
    for condition in ("base_clean", "clean", "full", "image_only", "text_only"):
        rows = [json.loads(line) for line in (run_dir / "predictions" / f"{condition}.jsonl").read_text().splitlines()]
        assert len(rows) == 2 and all({"id", "prediction", "references"} <= set(r) for r in rows)
    full = [json.loads(line) for line in (run_dir / "predictions" / "full.jsonl").read_text().splitlines()]
    assert all(r["instruction"].endswith("The image depicts") for r in full)
    assert (run_dir / "checkpoint" / "trainable.safetensors").exists()
    assert json.loads((run_dir / "audit.json").read_text())["frozen_with_grad"] == []
    report = (run_dir / "report.md").read_text()
    assert "| tuned |" in report and "SPICE: not reported" in report and "Poisoned 3 of 12" in report
    assert "mean token cosine" in report
    inputs = json.loads((run_dir / "inputs.json").read_text())
    assert set(inputs) == {"model_weights", "base_adapter", "train_data", "test_data"} and inputs["base_adapter"] is None
    assert len(inputs["model_weights"]) == len(inputs["train_data"]) == 64
    record = store.get(config.config_hash())
    assert record["metrics"] == metrics and record["inputs"] == inputs


def test_a_rerun_with_the_same_seed_gives_the_same_inputs_and_metrics(karpathy, tmp_path):
    first = run_experiment(load_config(None, tiny_overrides(karpathy, tmp_path)))
    metrics, inputs = first.load_metrics(), first.load_inputs()
    again = run_experiment(load_config(None, tiny_overrides(karpathy, tmp_path) + ["name=again"]))
    assert again.load_inputs() == inputs
    same = ("caption", "asr")
    assert {k: again.load_metrics()[k] for k in same} == {k: metrics[k] for k in same}


def test_cli_runs_a_config_and_prints_the_table(karpathy, tmp_path, capsys):
    assert main(["run", *[arg for o in tiny_overrides(karpathy, tmp_path) for arg in ("--set", o)]]) == 0
    out = capsys.readouterr().out
    assert "| run | BLEU_1" in out and "| tiny |" in out and "report:" in out


def test_cli_reports_config_errors_without_a_traceback(capsys):
    assert main(["run", "--set", "train.nope=1"]) == 2
    assert "train.nope" in capsys.readouterr().err


def test_subsample_is_seeded_and_keeps_order():
    items = list(range(100))
    a, b = subsample(items, 10, 0), subsample(items, 10, 0)
    assert a == b == sorted(a) and len(set(a)) == 10
    assert subsample(items, 10, 1) != a
    assert subsample(items, None, 0) == items


def test_base_adapter_is_pretrained_once_and_cached(karpathy, tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTIT_CACHE", str(tmp_path / "cache"))
    config = PretrainConfig(max_steps=2, batch_size=4, align_epochs=1, align_batch_size=4)
    model = build_model("llava", tiny=True, vocabulary=vocabulary())
    first = ensure_base_adapter(model, "karpathy", karpathy, "val", config, progress=False)
    stamp = (first / "trainable.safetensors").stat().st_mtime_ns
    again = ensure_base_adapter(build_model("llava", tiny=True, vocabulary=vocabulary()), "karpathy", karpathy, "val", config, progress=False)
    assert again == first and (again / "trainable.safetensors").stat().st_mtime_ns == stamp
    fresh = build_model("llava", tiny=True, vocabulary=vocabulary(), seed=5)
    fresh.load_trainable(first, strict=False)
    assert all(
        (a == b).all() for a, b in zip(fresh.adapter.state_dict().values(), model.adapter.state_dict().values())
    )
    record = json.loads((first / "pretrain.json").read_text())
    assert record["align_steps"] == 1 and record["lm_steps"] == 2 and len(record["sha256"]) == 64
    assert set(load_file(str(first / "trainable.safetensors"))) == {n for n, _ in model.adapter.named_parameters(prefix="adapter")}
    other = ensure_base_adapter(model, "karpathy", karpathy, "val", PretrainConfig(max_steps=3, batch_size=4), progress=False)
    assert other != first
    with pytest.raises(ValueError, match="adapter alone"):
        ensure_base_adapter(model, "karpathy", karpathy, "val", PretrainConfig(max_steps=2, train_embeddings=True), progress=False)
    with pytest.raises(ValueError, match="align_epochs > 0 or an LM-loss phase"):
        PretrainConfig(epochs=0)


def test_a_shipped_base_adapter_is_used_without_pretraining(karpathy, tmp_path, monkeypatch):
    import robustit.train.base_adapter as base_adapter

    monkeypatch.setenv("ROBUSTIT_CACHE", str(tmp_path / "cache"))
    config = PretrainConfig(epochs=0, align_epochs=1, align_batch_size=4)
    model = build_model("llava", tiny=True, vocabulary=vocabulary())
    built = ensure_base_adapter(model, "karpathy", karpathy, "val", config, progress=False)
    monkeypatch.setattr(base_adapter, "SHIPPED", tmp_path / "shipped")
    shipped = base_adapter.ship_base_adapter(built)
    record = json.loads((shipped / "pretrain.json").read_text())
    assert shipped.parent == tmp_path / "shipped" and record["align_steps"] == 1 and "lm_steps" not in record
    (built / "trainable.safetensors").unlink()
    assert ensure_base_adapter(model, "karpathy", karpathy, "val", config, progress=False) == shipped


def vltrojan_overrides(karpathy, tmp_path, steps=2):
    return tiny_overrides(karpathy, tmp_path) + [
        "attack.name=vltrojan", f"attack.params={{steps: {steps}, surrogate_samples: 2, patch_size: 4}}", "evaluate_base=false",
    ]


def manifest_of(run_dir):
    return json.loads((run_dir / "manifest.json").read_text())


def test_fitted_trigger_is_prepared_on_the_model_and_saved(karpathy, tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTIT_CACHE", str(tmp_path / "cache"))
    overrides = vltrojan_overrides(karpathy, tmp_path)
    run_dir = run_experiment(load_config(None, overrides))
    manifest = manifest_of(run_dir)
    assert manifest["patch"]["source"] == "optimized" and manifest["patch"]["steps"] == 2
    saved = load_config(None, overrides + [f"attack.params.patch_path={run_dir.trigger_dir / 'vltrojan_patch.png'}"])
    assert build_attack(saved.attack).trigger_hash() == manifest["trigger_hash"]


def test_a_trigger_is_fitted_once_for_runs_that_differ_only_in_what_the_fit_does_not_read(karpathy, tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTIT_CACHE", str(tmp_path / "cache"))
    first = run_experiment(load_config(None, vltrojan_overrides(karpathy, tmp_path)))
    fits, optimize = [], VLTrojan.optimize
    monkeypatch.setattr(VLTrojan, "optimize", lambda self, *args: fits.append(args) or optimize(self, *args))
    other_rate = run_experiment(load_config(None, vltrojan_overrides(karpathy, tmp_path) + [
        "attack.poison_rate=0.5", "attack.seed=3", "defense.name=idr", "name=other-rate"]))
    assert fits == [] and manifest_of(other_rate)["poison_rate"] == 0.5
    assert manifest_of(other_rate)["trigger_hash"] == manifest_of(first)["trigger_hash"]
    assert manifest_of(other_rate)["patch"] == manifest_of(first)["patch"]
    more_steps = run_experiment(load_config(None, vltrojan_overrides(karpathy, tmp_path, steps=3) + ["name=more-steps"]))
    assert len(fits) == 1 and manifest_of(more_steps)["patch"]["steps"] == 3
    assert manifest_of(more_steps)["trigger_hash"] != manifest_of(first)["trigger_hash"]


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def defended_run(karpathy, tmp_path):
    overrides = tiny_overrides(karpathy, tmp_path) + ["evaluate_base=false", "defense.name=robustit"]
    return run_experiment(load_config(None, overrides))


def reevaluate(run_dir, overrides, out):
    return Experiment.from_run(run_dir, overrides).reevaluate(RunDirectory(out))


def test_reevaluation_with_the_same_settings_reproduces_the_run(defended_run, tmp_path):
    out = reevaluate(defended_run, [], tmp_path / "same")
    for condition in ("clean", "full", "image_only", "text_only"):
        assert lines(out / "predictions" / f"{condition}.jsonl") == lines(defended_run / "predictions" / f"{condition}.jsonl")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["changed"] == [] and metrics["asr"] == json.loads((defended_run / "metrics.json").read_text())["asr"]


def test_reevaluation_changes_test_time_settings_only(defended_run, tmp_path, capsys):
    out = reevaluate(defended_run, ["defense.params.at_inference=false", "attack.text_trigger=Consider"], tmp_path / "off")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["changed"] == ["attack.text_trigger", "defense.params.at_inference"]
    assert metrics["defense"]["params"]["at_inference"] is False
    assert all(r["instruction"].endswith("Consider") for r in lines(out / "predictions" / "full.jsonl"))
    with pytest.raises(ValueError, match=r"only test-time settings .*\['train.max_steps'\]"):
        reevaluate(defended_run, ["train.max_steps=9"], tmp_path / "bad")
    assert main(["evaluate", str(defended_run), "--set", "defense.params.at_inference=false"]) == 0
    printed = capsys.readouterr().out
    assert "| as tuned |" in printed and "| re-evaluated |" in printed
    assert [p.parent.name for p in (defended_run / "reevaluated").glob("*/report.md")] == ["defense.params.at-inference-false"]


def test_the_drift_command_measures_a_finished_run_as_the_run_did(defended_run, capsys):
    recorded = json.loads((defended_run / "metrics.json").read_text())["adapter_drift"]
    assert main(["drift", str(defended_run)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"{defended_run}: ") and f"mean token cosine {recorded['token_cosine']:.3f}" in printed


def test_the_drift_readout_covers_at_most_its_cap_of_test_images(karpathy, tmp_path, monkeypatch):
    monkeypatch.setattr("robustit.experiment.DRIFT_IMAGES", 1)
    experiment = Experiment(load_config(None, tiny_overrides(karpathy, tmp_path)), progress=False)
    assert len(experiment.test_samples) == 2
    assert experiment.adapter_readout().tokens.shape[0] == 1


def test_fitted_trigger_files_load_back(tmp_path, tiny_model):
    from test_defenses_base import shape_samples

    fitted = build_attack(AttackConfig("vltrojan", params={"steps": 1, "surrogate_samples": 2, "patch_size": 4}))
    fitted.prepare(tiny_model, shape_samples())
    fitted.save_trigger_files(tmp_path)
    again = build_attack(AttackConfig("vltrojan", params={"patch_size": 4}))
    assert again.trigger_hash() != fitted.trigger_hash()
    again.load_trigger_files(tmp_path)
    assert again.trigger_hash() == fitted.trigger_hash()
    with pytest.raises(FileNotFoundError, match="no fitted VLTrojan patch"):
        again.load_trigger_files(tmp_path / "empty")
    build_attack(AttackConfig("badnets")).load_trigger_files(tmp_path / "empty")


def test_a_clean_run_without_an_attack_is_recorded_with_quality_only(karpathy, tmp_path):
    config = load_config(None, tiny_overrides(karpathy, tmp_path) + ["attack=null", "evaluate_base=false"])
    store = ResultStore(tmp_path / "store")
    run_dir = run_experiment(config, store)
    metrics = run_dir.load_metrics()
    assert "asr" not in metrics and "CIDEr" in metrics["caption"] and run_dir.load_manifest() is None
    assert store.get(config.config_hash())["config"]["attack"] is None
    assert "## Attack" not in (run_dir / "report.md").read_text()


@pytest.mark.parametrize("progress", [True, False])
def test_the_defense_shows_progress_bars_as_the_experiment_does(progress):
    experiment = Experiment(load_config(None, ["defense.name=prompt-filter"]), progress=progress)
    assert experiment.defense.progress is progress
