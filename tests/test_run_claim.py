"""A run directory belongs to one config and one live process: a second run that would share
it (same name, other settings; files that are no run; a run still going) is refused, naming
both and how to give it a folder of its own."""
import json
import socket
import subprocess

import pytest

from test_experiment import tiny_overrides
from robustit.cli import main
from robustit.config import load_config
from robustit.experiment import Experiment
from robustit.rundir import RunDirectory


def claim(config, resume=False, replace=False):
    run_dir = RunDirectory(config.run_dir())
    with run_dir.claimed(config, resume, replace):
        return sorted(p.name for p in run_dir.path.iterdir())


def test_a_run_of_another_config_under_the_same_name_is_refused(karpathy, tmp_path, capsys):
    first = load_config(None, tiny_overrides(karpathy, tmp_path))
    RunDirectory(first.run_dir()).save_config(first)
    (first.run_dir() / "metrics.json").write_text("{}")
    args = [arg for setting in [*tiny_overrides(karpathy, tmp_path), "train.max_steps=5"] for arg in ("--set", setting)]
    assert main(["run", *args]) == 2
    assert capsys.readouterr().err == (
        f"robustit: error: {first.run_dir()} holds the run of another config (name 'tiny'; train.max_steps: 4 there, "
        f"5 here) than this one (name 'tiny'); give this run a folder of its own (--set name=... or --set "
        f"output_dir=...) or delete {first.run_dir()}\n")
    assert (first.run_dir() / "metrics.json").read_text() == "{}"


def test_replace_clears_the_run_of_another_config_even_when_resuming(karpathy, tmp_path):
    first = load_config(None, tiny_overrides(karpathy, tmp_path))
    RunDirectory(first.run_dir()).save_config(first)
    (first.run_dir() / "checkpoint-2").mkdir()
    second = load_config(None, [*tiny_overrides(karpathy, tmp_path), "train.max_steps=5"])
    assert claim(second, resume=True, replace=True) == ["run.lock"]


def test_the_same_config_may_run_again_in_its_folder_and_resume_there(karpathy, tmp_path):
    config = load_config(None, tiny_overrides(karpathy, tmp_path))
    RunDirectory(config.run_dir()).save_config(config)
    (config.run_dir() / "checkpoint-2").mkdir()
    renamed = load_config(None, [*tiny_overrides(karpathy, tmp_path), "evaluate_base=false"])
    assert claim(renamed, resume=True) == ["checkpoint-2", "config.yaml", "run.lock"]
    assert claim(renamed) == ["run.lock"]


def test_a_folder_holding_other_files_is_not_taken(karpathy, tmp_path):
    config = load_config(None, tiny_overrides(karpathy, tmp_path))
    config.run_dir().mkdir(parents=True)
    (config.run_dir() / "thesis.tex").write_text("mine")
    with pytest.raises(ValueError, match=r"holds files that are not a robustit run \(thesis.tex, ...\)"):
        claim(config)
    assert (config.run_dir() / "thesis.tex").read_text() == "mine"


def test_a_live_run_keeps_its_folder_and_a_killed_one_leaves_it(karpathy, tmp_path):
    config = load_config(None, tiny_overrides(karpathy, tmp_path))
    lock = config.run_dir() / "run.lock"
    lock.parent.mkdir(parents=True)
    with subprocess.Popen(["sleep", "60"]) as live:
        lock.write_text(json.dumps({"host": socket.gethostname(), "pid": live.pid}))
        with pytest.raises(ValueError, match=rf"is in use by process {live.pid} \(another robustit run\)"):
            claim(config)
        with pytest.raises(ValueError, match="in use"):
            Experiment(config, progress=False).run()
        live.kill()
    assert claim(config) == ["run.lock"] and not lock.exists()
