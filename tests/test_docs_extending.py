"""docs/extending.md runs as written: its defense module, its grid file and its commands,
on the tiny model."""
import json
import re
import sys
from pathlib import Path

import yaml

from robustit.cli import main
from robustit.defenses import DEFENSES
from robustit.store import ResultStore
from test_experiment import tiny_overrides

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)


def commands() -> list[list[str]]:
    lines = " ".join(blocks("bash")).replace("\\\n", " ").splitlines()
    return [line.split("#")[0].split() for line in lines if line.strip().startswith("robustit")]


def test_the_walkthrough_defense_runs_alone_and_in_a_grid_into_the_store(karpathy, tmp_path, monkeypatch, capsys):
    (module,) = blocks("python")
    (tmp_path / "my_defense.py").write_text(module)
    (grid,) = blocks("yaml")
    spec = yaml.safe_load(grid)
    spec["overrides"] = tiny_overrides(karpathy, tmp_path)
    spec["blocks"][0]["seeds"] = [0]
    (tmp_path / "my-grid.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(DEFENSES, "_entries", dict(DEFENSES._entries))
    monkeypatch.delitem(sys.modules, "my_defense", raising=False)
    run, dry, full, table = commands()
    benchmark = str(DOC.parents[1] / "robustit" / "configs" / "benchmark.yaml")
    tiny = [arg for o in tiny_overrides(karpathy, tmp_path) for arg in ("--set", o)]
    assert main([benchmark if arg.endswith("benchmark.yaml") else arg for arg in run[1:]] + tiny) == 0
    store = ResultStore(tmp_path / "results")
    (record,) = store.records()
    assert record["config"]["defense"] == {"name": "visual-norm", "params": {"weight": 0.1}}
    assert record["metrics"]["train"]["loss_terms"]["visual_norm"] > 0
    assert main(dry[1:]) == 0 and "to run" in capsys.readouterr().out
    assert main(full[1:]) == 0
    assert len(store) == 4, "the grid reuses the single run's record (same config) and adds the other three"
    assert main(table[1:]) == 0
    rendered = Path("docs/my-defense.md").read_text()
    assert "visual-norm:weight=0.1" in rendered and "| blended | vanilla |" in rendered
    assert json.loads(next(store.root.glob("*.json")).read_text())["config_hash"]
