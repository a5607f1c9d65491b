"""A full disk or a refused permission while writing a run says which path failed and why, and
leaves what was written before as it was: files, checkpoints and stored results."""
import errno
import json
import os

import pytest

from test_experiment import tiny_overrides
from robustit.atomic import WriteError, write_atomic
from robustit.checkpoint import checkpoint_problem
from robustit.cli import main
from robustit.rundir import RunDirectory

real_open = open


def failing_writes(monkeypatch, code: int, name: str = "") -> None:
    """Every write robustit makes to a file whose name contains `name` fails with `code`
    half-way through, as on a disk that fills up (or a folder made read-only) mid-write."""
    class Failing:
        def __init__(self, path, mode="r", *args, **kwargs) -> None:
            self.handle = real_open(path, mode, *args, **kwargs)
            self.fails = "w" in mode and name in os.fspath(path)

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self.handle.close()

        def write(self, data):
            if self.fails:
                self.handle.write(data[: len(data) // 2])
                raise OSError(code, os.strerror(code))
            return self.handle.write(data)

        def __getattr__(self, attribute):
            return getattr(self.handle, attribute)

    monkeypatch.setattr("robustit.atomic.open", Failing, raising=False)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES, errno.EROFS])
def test_a_failed_write_names_the_path_and_keeps_the_earlier_file(tmp_path, monkeypatch, code):
    target = tmp_path / "metrics.json"
    target.write_text("earlier")
    failing_writes(monkeypatch, code)
    with pytest.raises(WriteError) as caught:
        write_atomic(target, "x" * 1000)
    assert str(caught.value) == f"cannot write {target}: {os.strerror(code)}; files written before are unchanged"
    assert caught.value.errno == code
    assert target.read_text() == "earlier" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_a_checkpoint_that_cannot_be_written_leaves_the_one_before(tiny_model, tmp_path, monkeypatch):
    run_dir = RunDirectory(tmp_path)
    run_dir.save_checkpoint(tiny_model, None, step=2, training={"loop": {"step": 2}})
    failing_writes(monkeypatch, errno.ENOSPC, "trainable")
    with pytest.raises(WriteError, match=rf"cannot write {run_dir.checkpoint_dir(4)}: No space left on device"):
        run_dir.save_checkpoint(tiny_model, None, step=4, training={"loop": {"step": 4}})
    assert run_dir.checkpoint_steps() == [2] and run_dir.latest_checkpoint() == 2
    assert checkpoint_problem(run_dir.checkpoint_dir(2)) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]


def test_a_run_on_a_full_disk_stops_with_the_path_and_keeps_the_stored_results(karpathy, tmp_path, monkeypatch, capsys):
    store = tmp_path / "store"
    store.mkdir()
    earlier = store / "0123456789abcdef.json"
    earlier.write_text(json.dumps({"an": "earlier record"}))
    failing_writes(monkeypatch, errno.ENOSPC, "inputs.json")
    args = [arg for setting in [*tiny_overrides(karpathy, tmp_path), "evaluate_base=false"] for arg in ("--set", setting)]
    assert main(["run", *args, "--store", str(store)]) == 2
    run_dir = RunDirectory(tmp_path / "runs" / "tiny" / "badnets")
    assert capsys.readouterr().err == (f"robustit: error: cannot write {run_dir / 'inputs.json'}: No space left on device; "
                                       "files written before are unchanged\n")
    assert json.loads(earlier.read_text()) == {"an": "earlier record"} and [p.name for p in store.iterdir()] == [earlier.name]
    assert sorted(p.name for p in run_dir.path.iterdir()) == ["config.yaml"]
