import json

import pytest

from conftest import vocabulary
from robustit.cli import main
from robustit.config import load_config
from robustit.pipeline import run_experiment, subsample
from robustit.train.base_adapter import ensure_base_adapter
from robustit.models import build_model
from robustit.train.config import TrainConfig


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


def test_run_directory_holds_config_metrics_predictions_and_report(karpathy, tmp_path):
    run_dir = run_experiment(load_config(None, tiny_overrides(karpathy, tmp_path)), progress=False)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert metrics["n_train"] == manifest["n_samples"] == 12
    assert manifest["n_poisoned"] == 3 and len(manifest["poisoned_ids"]) == 3
    assert metrics["train"]["steps"] == 4
    assert set(metrics["caption"]) >= {"BLEU_1", "BLEU_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE"}
    assert set(metrics["asr"]) >= {"full", "image_only", "text_only", "false_trigger"}
    assert metrics["asr"]["eligible"] == metrics["n_test"] == 2
    assert "base" in metrics and set(metrics["timings"]) >= {"tuning", "evaluation"}
    for condition in ("base_clean", "clean", "full", "image_only", "text_only"):
        rows = [json.loads(line) for line in (run_dir / "predictions" / f"{condition}.jsonl").read_text().splitlines()]
        assert len(rows) == 2 and all({"id", "prediction", "references"} <= set(r) for r in rows)
    full = [json.loads(line) for line in (run_dir / "predictions" / "full.jsonl").read_text().splitlines()]
    assert all(r["instruction"].endswith("The image depicts") for r in full)
    assert (run_dir / "checkpoint" / "trainable.safetensors").exists()
    assert json.loads((run_dir / "audit.json").read_text())["frozen_with_grad"] == []
    report = (run_dir / "report.md").read_text()
    assert "| tuned |" in report and "SPICE: not reported" in report and "Poisoned 3 of 12" in report


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
    config = TrainConfig(max_steps=2, batch_size=4, train_embeddings=False)
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
    other = ensure_base_adapter(model, "karpathy", karpathy, "val", TrainConfig(max_steps=3, batch_size=4, train_embeddings=False), progress=False)
    assert other != first
    with pytest.raises(ValueError, match="adapter alone"):
        ensure_base_adapter(model, "karpathy", karpathy, "val", TrainConfig(max_steps=2), progress=False)


def test_fitted_trigger_is_prepared_on_the_model_and_saved(karpathy, tmp_path):
    overrides = tiny_overrides(karpathy, tmp_path) + [
        "attack.name=vltrojan", "attack.params={steps: 2, surrogate_samples: 2, patch_size: 4}", "evaluate_base=false",
    ]
    run_dir = run_experiment(load_config(None, overrides), progress=False)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["patch"]["source"] == "optimized" and manifest["patch"]["steps"] == 2
    saved = load_config(None, overrides + [f"attack.params.patch_path={run_dir / 'vltrojan_patch.png'}"])
    from robustit.attacks import build_attack

    assert build_attack(saved.attack).trigger_hash() == manifest["trigger_hash"]


def test_attack_benchmark_writes_one_row_per_attack(karpathy, tmp_path):
    from robustit.bench.attacks import run_attack_benchmark

    out = run_attack_benchmark(["badnets", "trojvqa"], tiny_overrides(karpathy, tmp_path), tmp_path / "table.md")
    lines = out.read_text().splitlines()
    assert lines[0].startswith("| attack | ASR | ASR img | ASR txt | false trig.")
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["badnets", "trojvqa"]
    assert (tmp_path / "runs" / "tiny" / "trojvqa" / "metrics.json").exists()


def test_attack_benchmark_reuses_finished_runs_of_the_same_config(karpathy, tmp_path, capsys):
    from robustit.bench.attacks import run_attack_benchmark

    overrides = tiny_overrides(karpathy, tmp_path)
    first = run_attack_benchmark(["badnets"], overrides, tmp_path / "a.md").read_text()
    again = run_attack_benchmark(["badnets"], overrides, tmp_path / "b.md").read_text()
    assert again == first and "reusing the finished run" in capsys.readouterr().out
    run_attack_benchmark(["badnets"], overrides + ["train.max_steps=5"], tmp_path / "c.md")
    assert "reusing" not in capsys.readouterr().out.split("attack benchmark: badnets")[-1]
