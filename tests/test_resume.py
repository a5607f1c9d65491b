"""A killed run resumes from its last checkpoint and ends where an uninterrupted run with the
same seed ends: the same trainable weights, losses, defense decisions and metrics."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import vocabulary
from test_defenses_byorn import poisoned_samples
from test_experiment import tiny_overrides
from robustit.cli import main
from robustit.defenses import DefenseConfig, build_defense
from robustit.models import build_model
from robustit.rundir import RunDirectory
from robustit.tensors import load_tensors
from robustit.train.config import TrainConfig
from robustit.train.loop import train

pytestmark = pytest.mark.usefixtures("one_thread")
DEFENSES = {
    "vanilla": None,
    "robustit": DefenseConfig("robustit"),
    "byorn": DefenseConfig("byorn", {"threshold": "quantile", "refresh_every": 3, "max_new_tokens": 4}),
}
CONFIG = TrainConfig(max_steps=8, batch_size=3, checkpoint_every=2, lr_adapter=3e-3, lr_embeddings=3e-3)
# 8 samples in batches of 3, the last dropped: 2 batches an epoch, so the 8 steps cross 3 epoch
# boundaries and the kill (during step 7) falls after the checkpoint of step 6, mid-epoch.
KILLED_IN_STEP = 7
# METEOR starts a JVM that takes ~10 s; the evaluation is not what these tests check.
FAST_METEOR = "robustit.eval.caption_metrics._meteor_score"


class Killed(Exception):
    pass


def tune(run_dir: Path, defense: str, resume: bool = False):
    model = build_model("llava", tiny=True, vocabulary=vocabulary(), seed=0)
    config = DEFENSES[defense]
    guard = build_defense(config) if config is not None else None
    result = train(model, poisoned_samples(), CONFIG, RunDirectory(run_dir), progress=False, defense=guard, resume=resume)
    return model.trainable_state_dict(), result, guard.flags() if guard is not None else []


def killed_during_step(step: int, monkeypatch) -> None:
    """Make the step `step` of the next tuning raise `Killed` before its forward pass."""
    import robustit.train.loop as loop

    objective, calls = loop.tuning_objective, []

    def counting(*args, **kwargs):
        calls.append(1)
        if len(calls) == step:
            raise Killed
        return objective(*args, **kwargs)

    monkeypatch.setattr(loop, "tuning_objective", counting)


def assert_same_tuning(resumed, uninterrupted) -> None:
    (weights, result, flags), (weights_0, result_0, flags_0) = resumed, uninterrupted
    assert weights.keys() == weights_0.keys() and all(torch.equal(weights[k], weights_0[k]) for k in weights)
    assert (result.losses, result.loss_terms, result.steps) == (result_0.losses, result_0.loss_terms, result_0.steps)
    assert (result.forward_passes, result.audit) == (result_0.forward_passes, result_0.audit)
    assert flags == flags_0


@pytest.mark.parametrize("defense", DEFENSES)
def test_a_tuning_stopped_mid_epoch_resumes_to_the_uninterrupted_result(defense, tmp_path, monkeypatch):
    uninterrupted = tune(tmp_path / "whole", defense)
    with monkeypatch.context() as patch:
        killed_during_step(KILLED_IN_STEP, patch)
        with pytest.raises(Killed):
            tune(tmp_path / "killed", defense)
    run_dir = RunDirectory(tmp_path / "killed")
    assert run_dir.checkpoint_steps() == [4, 6] and not run_dir.tuning_finished()
    assert_same_tuning(tune(tmp_path / "killed", defense, resume=True), uninterrupted)
    assert run_dir.tuning_finished() and run_dir.checkpoint_steps() == [6, 8]


def test_a_damaged_last_checkpoint_is_passed_over_for_the_one_before(tmp_path, monkeypatch, caplog):
    uninterrupted = tune(tmp_path / "whole", "byorn")
    with monkeypatch.context() as patch:
        killed_during_step(KILLED_IN_STEP, patch)
        with pytest.raises(Killed):
            tune(tmp_path / "killed", "byorn")
    weights = tmp_path / "killed" / "checkpoint-6" / "trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with caplog.at_level("WARNING"):
        resumed = tune(tmp_path / "killed", "byorn", resume=True)
    assert "checkpoint-6 is damaged (trainable.safetensors does not match the sha256" in caplog.text
    assert_same_tuning(resumed, uninterrupted)


def test_a_finished_tuning_is_given_back_without_tuning_again(tmp_path, monkeypatch):
    uninterrupted = tune(tmp_path / "run", "robustit")
    killed_during_step(1, monkeypatch)
    assert_same_tuning(tune(tmp_path / "run", "robustit", resume=True), uninterrupted)


DRIVER = """
import os, sys, time
import robustit.train.loop as loop

marker, step = sys.argv[1], int(sys.argv[2])
objective, calls = loop.tuning_objective, []

def blocking(*args, **kwargs):
    calls.append(1)
    if len(calls) == step:
        open(marker, "w").close()
        time.sleep(600)
    return objective(*args, **kwargs)

loop.tuning_objective = blocking
from robustit.cli import main
sys.exit(main(sys.argv[3:]))
"""
TIMING = ("seconds", "seconds_per_step", "samples_per_second", "peak_memory_mb")


def comparable(metrics: dict) -> dict:
    """metrics.json without wall times and memory, which no two runs share."""
    return {**{k: v for k, v in metrics.items() if k != "timings"},
            "train": {k: v for k, v in metrics["train"].items() if k not in TIMING}}


def test_a_run_killed_by_sigkill_mid_tuning_resumes_to_the_uninterrupted_run(karpathy, tmp_path, monkeypatch):
    monkeypatch.setattr(FAST_METEOR, lambda gts, res: 0.0)
    settings = [*tiny_overrides(karpathy, tmp_path), "evaluate_base=false", "train.max_steps=6", "train.checkpoint_every=2",
                "defense.name=byorn", "defense.params={threshold: quantile, refresh_every: 2, max_new_tokens: 4}"]
    args = [arg for setting in settings for arg in ("--set", setting)]
    killed = RunDirectory(tmp_path / "runs" / "tiny" / "badnets")
    driver, marker = tmp_path / "driver.py", tmp_path / "blocked"
    driver.write_text(DRIVER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, str(driver), str(marker), "5", "run", "--threads", "1", *args,
                                "--store", str(tmp_path / "store")], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marker.exists(), process.stderr.read().decode()[-2000:] if process.poll() is not None else "never blocked"
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
    assert killed.checkpoint_steps() == [2, 4] and not killed.is_complete() and (killed / "run.lock").exists()

    assert main(["run", *args, "--store", str(tmp_path / "store"), "--resume"]) == 0
    whole = RunDirectory(tmp_path / "whole")
    assert main(["run", *args, "--set", f"output_dir={whole}", "--store", str(tmp_path / "whole-store")]) == 0
    final, _ = load_tensors(killed.checkpoint_dir() / "trainable.safetensors")
    final_0, _ = load_tensors(whole.checkpoint_dir() / "trainable.safetensors")
    assert final.keys() == final_0.keys() and all(torch.equal(final[k], final_0[k]) for k in final)
    assert comparable(killed.load_metrics()) == comparable(whole.load_metrics())
    assert killed.load_flags() == whole.load_flags()
    stamp = (killed / "metrics.json").stat().st_mtime_ns
    assert main(["run", *args, "--store", str(tmp_path / "store"), "--resume"]) == 0
    assert (killed / "metrics.json").stat().st_mtime_ns == stamp
    assert json.loads(next((tmp_path / "store").glob("*.json")).read_text())["metrics"] == killed.load_metrics()
