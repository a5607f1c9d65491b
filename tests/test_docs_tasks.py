"""docs/tasks.md runs as written: each `robustit` command on files laid out as it says, with the
tiny model and tiny sizes appended."""
import json
import re
import shlex
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import vocabulary, write_karpathy
from robustit.cli import main
from robustit.data.stampcaps import DEFAULT_STAMP_ROOT
from robustit.store import ResultStore
from test_data_conversations import llava_record, mimic_line, write_images
from test_data_vqav2 import annotation, write_vqav2

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "tasks.md"
TINY = [
    "model.family=llava", f"model.spec={json.dumps({'tiny': True, 'vocabulary': vocabulary()})}", "model.base=null",
    "evaluate_base=false", "train.max_steps=2", "train.batch_size=4", "data.train_size=8", "data.test_size=4",
    "eval.max_new_tokens=3",
]


def commands() -> list[list[str]]:
    text = "\n".join(re.findall(r"```bash\n(.*?)```", DOC.read_text(), flags=re.S))
    return [shlex.split(line) for line in text.splitlines() if line.startswith("robustit")]


def write_data(data: Path) -> None:
    for split in ("train2014", "val2014"):
        questions = [{"image_id": 1 + k % 2, "question": f"Question {k}?", "question_id": k} for k in range(8)]
        write_vqav2(data / "vqav2", questions, [annotation(k, ["2"] * 9 + ["3"]) for k in range(8)], split)
    (data / "coco").mkdir()
    write_karpathy(data / "coco").rename(data / "coco" / "dataset_coco.json")
    write_images(data / "llava" / "images", "a.jpg", "b.jpg")
    write_images(data / "mimicit" / "images", "IMG_1.jpg", "IMG_2.jpg")
    for split in ("train", "test"):
        records = [llava_record(f"{split}{k}", "ab"[k % 2] + ".jpg", "<image>\nWhat is it?", "A red square.") for k in range(8)]
        (data / "llava" / f"llava_{split}.json").write_text(json.dumps(records))
        lines = [mimic_line(f"{split}{k}", "What colour?", "red", [f"{split}{k - 1}"] if k else [], f"IMG_{1 + k % 2}")
                 for k in range(8)]
        (data / "mimicit" / f"mimicit_{split}.jsonl").write_text("\n".join(lines) + "\n")


@pytest.mark.skipif(not DEFAULT_STAMP_ROOT.is_dir(), reason="Debian's tuxpaint-stamps-default is not installed")
def test_every_command_of_the_tasks_page_runs(tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.setattr("robustit.eval.evaluate.caption_scores", lambda p, r: SimpleNamespace(as_dict=lambda: {}))
    write_data(tmp_path / "data")
    done = []
    for command in commands():
        args = [arg.replace("/data/", f"{tmp_path}/data/").replace("robustit/configs/", f"{REPO}/robustit/configs/")
                for arg in command[1:]]
        if args[0] == "run":
            embedded = "tasks/vqa.yaml" in " ".join(args)
            tiny = TINY + (["data.options={image_size: 32, images_per_object: 1, limit: 40}"] if embedded else [])
            args += [arg for setting in tiny for arg in ("--set", setting)]
        elif args[:2] == ["bench", "grid"] and "--dry-run" not in args:
            continue
        assert main(args) == 0, command
        done.append(" ".join(command[1:3]))
    assert done == ["run --config", "bench grid", "bench table", "run --config", "run --config", "run --config",
                    "evaluate runs/vqa/vanilla/trojvqa-p0.1-seed0"]
    sources = [record["config"]["data"]["source"] for record in ResultStore("results").records()]
    assert sorted(sources) == ["llava", "mimicit", "stampcaps_vqa", "vqav2"]
    one_shot = json.loads(next(Path("runs/vqa/vanilla/trojvqa-p0.1-seed0/reevaluated").glob("*/metrics.json")).read_text())
    assert one_shot["demonstration"]["id"].startswith("stampcaps_vqa-train-") and "vqa" in one_shot
    assert "No run of grid 'vqa'" in Path("docs/vqa-table.md").read_text()
