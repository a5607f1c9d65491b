import json
import os

import pytest

from robustit.config import packaged_config
from robustit.store import CorruptRecord, ResultStore, machine_info, make_record


def record(key: str, attack: str = "badnets", defense: str | None = None, asr: float = 50.0) -> dict:
    """A hand-made record (no config hashing) with a 64-hex hash made of `key`."""
    return {
        "config_hash": (key * 64)[:64],
        "config": {"attack": {"name": attack, "poison_rate": 0.1}, "defense": {"name": defense} if defense else None},
        "name": f"test/{defense or 'vanilla'}",
        "metrics": {"asr": {"full": {"rate": asr}}, "timings": {"tuning": 1.0}},
        "inputs": {"train_data": "abc"},
        "machine": {"cpu": "test"},
        "robustit_version": "0",
        "finished": "2025-01-01T00:00:00+00:00",
    }


def test_a_record_is_one_small_sorted_json_file_named_by_its_hash(tmp_path):
    store = ResultStore(tmp_path / "results")
    assert store.get("a" * 64) is None and "a" * 64 not in store and store.records() == []
    path = store.put(record("a"))
    assert path == tmp_path / "results" / f"{'a' * 16}.json"
    text = path.read_text()
    assert text.endswith("}\n") and text == json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    assert store.get("a" * 64) == record("a") and "a" * 64 in store and len(store) == 1
    store.put(record("a", asr=70.0))
    assert store.get("a" * 64)["metrics"]["asr"]["full"]["rate"] == 70.0 and len(store) == 1
    with pytest.raises(ValueError, match="missing key"):
        store.put({"config_hash": "b" * 64})
    with pytest.raises(ValueError, match="64 lowercase hex"):
        store.put({**record("a"), "config_hash": "xyz"})


def test_make_record_holds_the_resolved_config_its_hash_and_the_machine():
    config = packaged_config(["attacks/sig", "defenses/robustit"], ["name=x"])
    made = make_record(config, {"asr": {}}, {"train_data": "f00"})
    assert made["config_hash"] == config.config_hash() and made["config"] == config.resolved()
    assert made["config"]["defense"]["params"]["consistency"] == "absolute"  # a default the YAML leaves out
    assert made["name"] == "x" and made["inputs"] == {"train_data": "f00"} and made["finished"].endswith("+00:00")
    assert {"platform", "python", "torch", "torch_threads", "cpu", "logical_cores", "cuda_device"} <= set(machine_info())
    assert made["machine"]["logical_cores"] == os.cpu_count()


def test_records_filter_on_dotted_config_keys_and_a_predicate(tmp_path):
    store = ResultStore(tmp_path)
    for key, attack, defense, asr in (("a", "badnets", None, 90.0), ("b", "sig", None, 80.0), ("c", "sig", "robustit", 5.0)):
        store.put(record(key, attack, defense, asr))
    assert [r["config_hash"][0] for r in store.records(**{"attack.name": "sig"})] == ["b", "c"]
    assert [r["config_hash"][0] for r in store.records(defense=None)] == ["a", "b"]
    assert [r["config_hash"][0] for r in store.records(**{"defense.name": "robustit", "attack.name": "sig"})] == ["c"]
    assert [r["config_hash"][0] for r in store.records(lambda r: r["metrics"]["asr"]["full"]["rate"] > 50)] == ["a", "b"]
    assert store.records(**{"attack.nope.deeper": 1}) == []


def test_a_crash_while_writing_keeps_the_old_record_and_leaves_no_partial_one(tmp_path, monkeypatch):
    store = ResultStore(tmp_path)
    store.put(record("a", asr=10.0))

    def crash(*args, **kwargs):
        raise OSError("disk gone")

    with monkeypatch.context() as patched:
        patched.setattr(os, "replace", crash)
        with pytest.raises(OSError, match="disk gone"):
            store.put(record("a", asr=99.0))
        with pytest.raises(OSError, match="disk gone"):
            store.put(record("b"))
    assert store.get("a" * 64)["metrics"]["asr"]["full"]["rate"] == 10.0
    assert "b" * 64 not in store and sorted(p.name for p in tmp_path.iterdir()) == [f"{'a' * 16}.json"]
    # a hard kill between the write and the rename leaves only a hidden temporary file: no record
    (tmp_path / f".{'b' * 16}.json.x1y2.tmp").write_text('{"config_hash": "bbb')
    assert [r["config_hash"] for r in store.records()] == ["a" * 64] and "b" * 64 not in store and len(store) == 1


@pytest.mark.parametrize("content, problem", [
    ("{not json", "Expecting property name"),
    ("[1, 2]", "expected a JSON object"),
    ('{"config_hash": "' + "c" * 64 + '"}', "missing key"),
])
def test_a_corrupt_record_is_an_error_naming_its_file(tmp_path, content, problem):
    store = ResultStore(tmp_path)
    store.put(record("a"))
    path = tmp_path / f"{'c' * 16}.json"
    path.write_text(content)
    for read in (lambda: store.get("c" * 64), store.records, lambda: "c" * 64 in store):
        with pytest.raises(CorruptRecord, match=rf"corrupt result record {path}: .*{problem}"):
            read()


def test_a_record_under_another_hash_s_file_name_is_corrupt(tmp_path):
    store = ResultStore(tmp_path)
    (tmp_path / f"{'d' * 16}.json").write_text(json.dumps(record("a")))
    with pytest.raises(CorruptRecord, match=rf"{'d' * 16}\.json: its config_hash {'a' * 16}\.\.\. does not match"):
        store.records()


def test_merge_adds_missing_records_and_reports_same_and_conflicting_ones(tmp_path, caplog):
    mine, theirs = ResultStore(tmp_path / "mine"), ResultStore(tmp_path / "theirs")
    mine.put(record("a", asr=1.0))
    mine.put(record("b", asr=2.0))
    theirs.put({**record("a", asr=1.0), "machine": {"cpu": "other"}, "finished": "2025-02-02T00:00:00+00:00"})
    theirs.put(record("b", asr=3.0))
    theirs.put(record("c", asr=4.0))
    added, same, conflicting = mine.merge(tmp_path / "theirs")
    assert (added, same, conflicting) == (["c" * 64], ["a" * 64], ["b" * 64])
    assert mine.get("b" * 64)["metrics"]["asr"]["full"]["rate"] == 2.0  # kept as is
    assert mine.get("c" * 64) == record("c", asr=4.0)
    assert "other metrics for config bbbbbbbbbbbbbbbb" in caplog.text
    assert mine.merge(tmp_path / "theirs") == ([], ["a" * 64, "c" * 64], ["b" * 64])
    with pytest.raises(FileNotFoundError, match="no result store"):
        mine.merge(tmp_path / "nowhere")
