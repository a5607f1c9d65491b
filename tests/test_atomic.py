"""A full disk or a refused permission while writing a run says which path failed and why, and
leaves what was written before as it was."""
import errno
import os

import pytest

from robustit.atomic import WriteError, write_atomic

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

