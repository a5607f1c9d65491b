"""robustit bench loading: the loading benchmark's fixture and table, on a small fixture."""
import json

from robustit.bench.loading import SHARED_IMAGES, write_fixture
from robustit.cli import main


def test_the_fixture_names_a_file_per_group_of_records_and_keeps_a_few_on_disk(tmp_path):
    data = json.loads(write_fixture(tmp_path, 12, records_per_file=3).read_text())
    names = [record["filename"] for record in data["images"]]
    assert len(set(names)) == 4 and names[:4] == [names[0]] * 3 + [names[3]]
    assert len(list((tmp_path / "shared").iterdir())) == SHARED_IMAGES
    assert all(len(record["sentences"]) == 5 for record in data["images"])


def test_bench_loading_writes_a_row_per_case_and_loading_decodes_nothing(tmp_path, capsys):
    out = tmp_path / "loading.md"
    assert main(["bench", "loading", "--records", "20", "--out", str(out)]) == 0
    table = out.read_text()
    assert table in capsys.readouterr().out
    header, _, *rows = [line.strip("|").split(" | ") for line in table.splitlines() if line.startswith("|")]
    column = {name.strip(): [row[i].strip() for row in rows] for i, name in enumerate(header)}
    assert column["case"] == ["read_json", "load", "load, skip_bad", "up-front decode"] + ["fingerprint"] * 4
    assert column["records"] == ["20", "20"] + ["2"] * 6
    assert column["records per file"] == ["1"] * 6 + ["5"] * 2
    assert column["decoded on access"] == ["0", "0", "0", "2", "2", "2", "1", "2"]
    assert main(["bench", "loading", "--records", "20", "--set", "data.limit=3", "--out", str(out)]) == 2
