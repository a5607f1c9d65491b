"""Data-parallel tuning (`robustit.train.parallel`): `accelerate launch` with two CPU processes
joined by gloo tunes the tiny model to the weights one process reaches with the same global
batch, and writes the run directory once, as one process writes it."""
import json
import os
import re
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType

from conftest import write_karpathy
from test_experiment import tiny_overrides
from robustit.checkpoint import checkpoint_problem
from robustit.defenses import DefenseConfig, build_defense
from robustit.rundir import RunDirectory
from robustit.tensors import load_tensors
from robustit.train.parallel import check_set_up, process_state, refuse

# Float rounding apart (each process pads its slice to its own longest prompt; DDP sums the
# gradient in another order), two processes take the steps one process takes.
TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}
REPOSITORY = Path(__file__).parents[1]
# Every file or folder a process puts under WATCHED (renamed into place by robustit.atomic, or
# opened for writing; what it fills inside its temporaries left out), one JSON line per write
# in WRITES_LOG/<rank>.jsonl, and the ids of the samples each tuning step of the rank trains on
# in WRITES_LOG/<rank>-batches.jsonl. METEOR's JVM (~10 s) is left out of the evaluation.
DRIVER = r"""
import json, os, sys

RANK = os.environ.get("RANK", "0")
LOG = os.path.join(os.environ["WRITES_LOG"], f"{RANK}.jsonl")
WATCHED = os.environ["WATCHED"]


def record(path):
    path = os.fsdecode(path)
    if path.startswith(WATCHED + os.sep) and not any(part.endswith(".tmp") for part in path.split(os.sep)):
        with open(LOG, "a") as handle:
            handle.write(json.dumps(os.path.relpath(path, WATCHED)) + "\n")


def audit(event, args):
    if event == "os.rename":
        record(args[1])
    elif event == "open" and isinstance(args[0], (str, bytes)) and args[2] & (os.O_WRONLY | os.O_RDWR):
        record(args[0])


sys.addaudithook(audit)
import robustit.eval.caption_metrics as caption_metrics
import robustit.train.loop as loop

caption_metrics._meteor_score = lambda gts, res: 0.0
objective = loop.tuning_objective


def logged(model, samples, *args, **kwargs):
    with open(os.path.join(os.environ["WRITES_LOG"], f"{RANK}-batches.jsonl"), "a") as handle:
        handle.write(json.dumps([sample.id for sample in samples]) + "\n")
    return objective(model, samples, *args, **kwargs)


loop.tuning_objective = logged
from robustit.cli import main

sys.exit(main(sys.argv[1:]))
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_cli(folder: Path, settings: list[str], processes: int) -> None:
    """`robustit run` of `settings` in `processes` processes (`accelerate launch` with gloo for
    more than one), all it writes in `folder` (run/, store/, cache/), the log of those writes
    beside it (`writes`)."""
    folder.mkdir()
    log = folder.with_name(f"{folder.name}-writes")
    log.mkdir()
    driver = log / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPOSITORY), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "ROBUSTIT_CACHE": str(folder / "cache"), "HF_HOME": str(folder / "hf"),
           "WRITES_LOG": str(log), "WATCHED": str(folder)}
    launcher = [sys.executable]
    if processes > 1:
        env["ACCELERATE_USE_CPU"] = "1"
        launcher += ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                     "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                     "--main_process_port", str(free_port())]
    command = [*launcher, str(driver), "run", "--threads", "1", "--store", str(folder / "store"),
               *[arg for setting in [*settings, f"output_dir={folder / 'run'}"] for arg in ("--set", setting)]]
    done = subprocess.run(command, env=env, cwd=folder, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]


def writes(folder: Path) -> dict[int, Counter]:
    """What each rank wrote under `folder`: relative paths (the shared tuning's cache key as
    KEY, since the process count is part of it), with how often."""
    return {int(log.stem): Counter(re.sub(r"^cache/tuned/[0-9a-f]{16}/", "cache/tuned/KEY/", json.loads(line))
                                   for line in log.read_text().splitlines())
            for log in folder.with_name(f"{folder.name}-writes").glob("[0-9].jsonl")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """The same tiny run (4 steps of a global batch of 4, checkpoints every 2) tuned by one
    process (one/) and by two (two/)."""
    root = tmp_path_factory.mktemp("multiprocess")
    karpathy = {"json_path": str(write_karpathy(root)), "image_root": str(root)}
    settings = [*tiny_overrides(karpathy, root), "evaluate_base=false", "train.checkpoint_every=2"]
    run_cli(root / "one", settings, processes=1)
    run_cli(root / "two", settings, processes=2)
    return root


def test_two_processes_reach_the_weights_and_losses_of_one(runs):
    one, two = RunDirectory(runs / "one" / "run"), RunDirectory(runs / "two" / "run")
    assert one.load_inputs()["model_weights"] == two.load_inputs()["model_weights"]
    weights, _ = load_tensors(two.checkpoint_dir() / "trainable.safetensors")
    weights_1, _ = load_tensors(one.checkpoint_dir() / "trainable.safetensors")
    assert weights.keys() == weights_1.keys()
    assert all(torch.allclose(weights[k], weights_1[k], **TOLERANCE) for k in weights)
    train, train_1 = two.load_train_result(), one.load_train_result()
    assert train["steps"] == train_1["steps"] == 4 and train["forward_passes"] == train_1["forward_passes"]
    assert torch.allclose(torch.tensor(train["losses"]), torch.tensor(train_1["losses"]), **TOLERANCE)
    assert train["audit"] == train_1["audit"]


def test_each_process_trains_on_its_half_of_every_global_batch(runs):
    batches = {rank: [json.loads(line) for line in (runs / f"two-writes/{rank}-batches.jsonl").read_text().splitlines()]
               for rank in (0, 1)}
    global_batches = [json.loads(line) for line in (runs / "one-writes/0-batches.jsonl").read_text().splitlines()]
    assert len(global_batches) == 4 and all(len(batch) == 4 for batch in global_batches)
    assert [first + second for first, second in zip(batches[0], batches[1])] == global_batches
    assert all(len(batch) == 2 for rank in (0, 1) for batch in batches[rank])


def test_the_main_process_alone_writes_and_writes_what_one_process_writes(runs):
    written = writes(runs / "two")
    assert set(written) == {0}, f"rank 1 wrote {sorted(written.get(1, {}))}"
    assert written[0] == writes(runs / "one")[0]
    two = RunDirectory(runs / "two" / "run")
    assert two.is_complete() and checkpoint_problem(two.checkpoint_dir()) is None
    assert two.checkpoint_steps() == [2, 4] and all(checkpoint_problem(two.checkpoint_dir(s)) is None for s in (2, 4))
    for condition in ("clean", "full", "image_only", "text_only"):
        lines = (two / "predictions" / f"{condition}.jsonl").read_text().splitlines()
        assert len(lines) == len(set(lines)) == two.load_metrics()["n_test"]
    records = list((runs / "two" / "store").glob("*.json"))
    assert len(records) == 1 and json.loads(records[0].read_text())["machine"]["processes"] == 2


@pytest.mark.parametrize("name", ["aar", "idr", "robustit", "byorn"])
def test_a_defense_acting_on_the_tuning_steps_is_refused_across_processes(name):
    with pytest.raises(ValueError, match=f"defense '{name}' cannot tune data-parallel"):
        refuse(build_defense(DefenseConfig(name)), resume=False, processes=2)


def test_test_time_defenses_and_one_process_are_not_refused():
    refuse(build_defense(DefenseConfig("prompt-filter")), resume=False, processes=2)
    refuse(build_defense(DefenseConfig("byorn")), resume=True, processes=1)


def test_resuming_across_processes_is_refused():
    with pytest.raises(ValueError, match="resuming is not supported across 2 processes"):
        refuse(None, resume=True, processes=2)


@pytest.mark.parametrize("kind", [DistributedType.FSDP, DistributedType.DEEPSPEED])
def test_set_ups_that_shard_the_trainable_weights_are_refused(kind):
    with pytest.raises(ValueError, match=f"set up for {kind.value}"):
        check_set_up(SimpleNamespace(distributed_type=kind))


def test_a_launch_whose_processes_accelerate_did_not_join_is_refused(monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"started 2 processes \(WORLD_SIZE\) but Accelerate joined 1"):
        process_state()
