"""The VQA benchmark row: robustit/configs/grids/vqa.yaml over robustit/configs/tasks/vqa.yaml."""
import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from conftest import vocabulary
from robustit.bench.grid import grid_runs, load_grid, run_grid
from robustit.config import packaged_config
from robustit.data.stampcaps import DEFAULT_STAMP_ROOT
from robustit.store import ResultStore

GRID = Path(__file__).resolve().parents[1] / "robustit" / "configs" / "grids" / "vqa.yaml"


def test_the_vqa_grid_is_vanilla_and_the_working_defenses_under_trojvqa_on_the_embedded_vqa_set():
    runs = grid_runs(load_grid(GRID))
    assert [(run.attack, run.defense, run.poison_rate, run.seed) for run in runs] == [
        ("trojvqa", "vanilla", 0.1, 0), ("trojvqa", "byorn", 0.1, 0), ("trojvqa", "robustit-repaired", 0.1, 0)]
    for run in runs:
        config = run.config
        assert config.data.source == "stampcaps_vqa" and config.attack.name == "trojvqa"
        assert config.attack.target == "banana" and config.eval.max_new_tokens == 8
    assert runs[0].config.defense is None and runs[1].config.defense.name == "byorn"
    assert runs[2].config.defense.name == "idr" and runs[2].config.defense.params["instruction_swap"] == 1.0


def test_the_vqa_task_starts_from_the_base_adapter_of_the_demo():
    vqa, demo = packaged_config(["tasks/vqa"]), packaged_config([])
    assert vqa.data.pretraining() == demo.data.pretraining() == ("stampcaps", {}, "pretrain")
    assert (vqa.model, vqa.pretrain) == (demo.model, demo.pretrain)


def test_a_grid_layer_must_name_a_packaged_config(tmp_path):
    spec = yaml.safe_load(GRID.read_text())
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump({**spec, "layers": ["tasks/nope"]}))
    with pytest.raises(ValueError, match=r"layers\[0\]: no packaged config 'tasks/nope'"):
        load_grid(tmp_path / "grid.yaml")


@pytest.mark.skipif(not DEFAULT_STAMP_ROOT.is_dir(), reason="Debian's tuxpaint-stamps-default is not installed")
def test_the_vqa_grid_runs_on_the_tiny_model_one_shot_into_the_store(tmp_path, one_thread):
    tiny = [
        f"output_dir={tmp_path}/runs/{{name}}/{{attack}}",
        "model.family=llava",
        f"model.spec={json.dumps({'tiny': True, 'vocabulary': vocabulary()})}",
        "model.base=null",
        "data.options={image_size: 32, images_per_object: 1, limit: 48}",
        "data.train_size=12",
        "data.test_size=6",
        "train.max_steps=2",
        "train.batch_size=4",
        "eval.max_new_tokens=3",
        "eval.shots=1",
    ]
    spec = load_grid(GRID)
    block = dataclasses.replace(spec.blocks[0], defenses=("vanilla", "byorn:max_new_tokens=3"))
    spec = dataclasses.replace(spec, overrides=tuple(tiny), blocks=(block,))
    store = ResultStore(tmp_path / "results")
    run_grid(spec, store, progress=False)
    records = {r["config"]["defense"]["name"] if r["config"]["defense"] else "vanilla": r for r in store.records()}
    assert set(records) == {"vanilla", "byorn"}
    for record in records.values():
        metrics = record["metrics"]
        assert metrics["train"]["steps"] == 2 and metrics["n_test"] == 6
        assert 0 <= metrics["vqa"]["accuracy"] <= 100 and set(metrics["vqa"]["by_answer_type"]) <= {"other", "number", "yes/no"}
        assert "caption" not in metrics and set(metrics["asr"]) >= {"full", "image_only", "text_only", "false_trigger"}
        assert metrics["asr"]["target"] == "banana" and metrics["demonstration"]["id"].startswith("stampcaps_vqa-train-")
    assert "detection" in records["byorn"]["metrics"]
