"""Nothing robustit reads executes code: no pickle anywhere in the package, and a run directory
from someone else is re-evaluated from plain data, safetensors and images only."""
import ast
import pickle
from pathlib import Path

import pytest
import torch

from test_experiment import tiny_overrides
from robustit.config import load_config
from robustit.experiment import Experiment
from robustit.rundir import RunDirectory
from robustit.tensors import save_tensors

PACKAGE = Path(__file__).parents[1] / "robustit"
UNPICKLING_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def pickle_uses(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, what) for every way of unpickling or of writing a pickle in a module."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [alias.name for alias in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            found += [(node.lineno, f"import {n}") for n in names if n and n.split(".")[0] in UNPICKLING_MODULES]
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        if name.endswith("torch.load") and not is_true(keyword(node, "weights_only")):
            found.append((node.lineno, "torch.load without weights_only=True"))
        if name in ("torch.save", "pd.read_pickle", "pandas.read_pickle", "yaml.unsafe_load", "yaml.full_load"):
            found.append((node.lineno, name))
        if name.endswith(("np.load", "numpy.load")) and not (keyword(node, "allow_pickle") is not None
                                                             and not is_true(keyword(node, "allow_pickle"))):
            found.append((node.lineno, f"{name} without allow_pickle=False"))
        if name == "yaml.load" and "SafeLoader" not in ast.unparse(keyword(node, "Loader") or ast.Constant(None)):
            found.append((node.lineno, "yaml.load without SafeLoader"))
        if name in ("eval", "exec") or is_true(keyword(node, "trust_remote_code")):
            found.append((node.lineno, name if name in ("eval", "exec") else "trust_remote_code=True"))
    return found


def test_the_package_never_unpickles_nor_writes_pickles():
    uses = [f"{path.relative_to(PACKAGE.parent)}:{line}: {what}"
            for path in sorted(PACKAGE.rglob("*.py")) for line, what in pickle_uses(ast.parse(path.read_text()))]
    assert uses == []


def test_the_scan_finds_each_kind_of_pickle_use():
    source = """
import pickle
from joblib import load
torch.load(path)
torch.load(path, weights_only=False)
torch.save(state, path)
np.load(path)
np.load(path, allow_pickle=True)
yaml.load(text, Loader=yaml.Loader)
AutoModel.from_pretrained(name, trust_remote_code=True)
torch.load(path, weights_only=True)
np.load(path, allow_pickle=False)
yaml.load(text, Loader=yaml.SafeLoader)
"""
    assert [line for line, _ in pickle_uses(ast.parse(source))] == [2, 3, 4, 5, 6, 7, 8, 9, 10]


class Payload:
    """Unpickling this creates the file `marker`: proof that something executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def someone_elses_run(karpathy, tmp_path) -> RunDirectory:
    """A run directory as a stranger could hand it over: a config, a checkpoint and a
    defense state, each of which the tests replace with something that would run code."""
    config = load_config(None, [*tiny_overrides(karpathy, tmp_path), "defense.name=aar"])
    run_dir = RunDirectory(tmp_path / "theirs")
    run_dir.save_config(config)
    model = Experiment(config, progress=False).model
    model.save_trainable(run_dir.checkpoint_dir())
    save_tensors(run_dir.checkpoint_dir() / "defense.safetensors", {"importance": torch.zeros(4), "mask": torch.ones(4)})
    return run_dir


@pytest.mark.parametrize("planted, problem", [
    ("config.yaml", "could not determine a constructor"),
    ("checkpoint/trainable.safetensors", "not a readable safetensors file"),
    ("checkpoint/defense.safetensors", "not a readable safetensors file"),
])
def test_reevaluating_someone_elses_run_executes_nothing_from_it(karpathy, tmp_path, planted, problem, one_thread):
    run_dir = someone_elses_run(karpathy, tmp_path)
    marker = tmp_path / "executed"
    if planted == "config.yaml":
        (run_dir / planted).write_text(f"!!python/object/apply:builtins.open [{str(marker)!r}, w]\n")
    else:
        (run_dir / planted).write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(ValueError, match=problem):
        Experiment.from_run(run_dir, progress=False).model
    assert not marker.exists()
