import json

import pytest

from robustit.attacks import build_attack
from robustit.attacks.base import AttackConfig
from robustit.cli import main
from robustit.config import load_config
from robustit.pipeline import run_experiment
from robustit.reevaluate import reevaluate
from test_pipeline import tiny_overrides


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def defended_run(karpathy, tmp_path):
    overrides = tiny_overrides(karpathy, tmp_path) + ["evaluate_base=false", "defense.name=robustit"]
    return run_experiment(load_config(None, overrides), progress=False)


def test_reevaluation_with_the_same_settings_reproduces_the_run(defended_run, tmp_path):
    out = reevaluate(defended_run, [], tmp_path / "same", progress=False)
    for condition in ("clean", "full", "image_only", "text_only"):
        assert lines(out / "predictions" / f"{condition}.jsonl") == lines(defended_run / "predictions" / f"{condition}.jsonl")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["changed"] == [] and metrics["asr"] == json.loads((defended_run / "metrics.json").read_text())["asr"]


def test_reevaluation_changes_test_time_settings_only(defended_run, tmp_path, capsys):
    out = reevaluate(defended_run, ["defense.params.at_inference=false", "attack.text_trigger=Consider"], tmp_path / "off", progress=False)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["changed"] == ["attack.text_trigger", "defense.params.at_inference"]
    assert metrics["defense"]["params"]["at_inference"] is False
    assert all(r["instruction"].endswith("Consider") for r in lines(out / "predictions" / "full.jsonl"))
    with pytest.raises(ValueError, match=r"only test-time settings .*\['train.max_steps'\]"):
        reevaluate(defended_run, ["train.max_steps=9"], tmp_path / "bad", progress=False)
    assert main(["evaluate", str(defended_run), "--set", "defense.params.at_inference=false"]) == 0
    printed = capsys.readouterr().out
    assert "| as tuned |" in printed and "| re-evaluated |" in printed
    assert [p.parent.name for p in (defended_run / "reevaluated").glob("*/report.md")] == ["defense.params.at-inference-false"]


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
