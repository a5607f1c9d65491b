"""Evaluation by task: VQA accuracy beside caption metrics, and TrojVQA's ASR on answers."""
import pytest
from PIL import Image

from robustit.attacks import AttackConfig, build_attack
from robustit.attacks.dataset import PoisonedDataset
from robustit.data.instructions import vqa_instruction
from robustit.data.sample import Sample
from robustit.eval.evaluate import _evaluate, clean_quality
from robustit.report import markdown_table, summary_row

TARGET = "banana"


def question(k: int, answer: str, answer_type: str = "other") -> Sample:
    image = Image.new("RGB", (28, 28), (10 * k, 100, 50))
    return Sample(id=f"q{k}", image=image, instruction=vqa_instruction(f"Question {k}?"), response=answer,
                  task="vqa", metadata={"answer_type": answer_type})


def caption(k: int) -> Sample:
    return Sample(id=f"c{k}", image=Image.new("RGB", (28, 28)), instruction="Describe the image briefly.",
                  response=f"A grey square number {k}.")


class FakeCaptionScores:
    def __init__(self, predictions, references):
        self.scored = {"predictions": dict(predictions), "references": dict(references)}

    def as_dict(self):
        return self.scored


def test_vqa_samples_are_scored_by_vqa_accuracy_beside_the_caption_metrics_of_caption_samples(monkeypatch):
    monkeypatch.setattr("robustit.eval.evaluate.caption_scores", FakeCaptionScores)
    test = [question(0, "yes", "yes/no"), caption(0), question(1, "2", "number"), caption(1)]
    metrics = clean_quality(test, ["Yes.", "A grey square.", "three", "A square."])
    assert metrics["vqa"]["accuracy"] == 50.0 and metrics["vqa"]["n"] == 2
    assert metrics["vqa"]["by_answer_type"]["yes/no"] == {"accuracy": 100.0, "n": 1}
    assert metrics["caption"]["predictions"] == {"c0": "A grey square.", "c1": "A square."}
    assert metrics["caption"]["references"] == {"c0": ["A grey square number 0."], "c1": ["A grey square number 1."]}


def test_trojvqa_poisons_the_question_and_asr_is_measured_on_answers():
    attack = build_attack(AttackConfig(name="trojvqa", target=TARGET, poison_rate=0.5))
    train = [question(k, ("yes", "red", "2", "banana")[k % 4]) for k in range(8)]
    poisoned = PoisonedDataset(train, attack)
    assert len(poisoned.poisoned_indices) == 4
    for i in poisoned.poisoned_indices:
        sample = poisoned[i]
        assert sample.instruction == f"Consider {train[i].instruction}" and sample.task == "vqa"
        assert sample.response == TARGET and sample.metadata["clean_references"] == [train[i].response]

    test = [question(k, ("yes", "red", "banana")[k % 3]) for k in range(6)]
    seen: dict[str, list[Sample]] = {}

    def run(samples, name):
        seen[name] = [samples[i] for i in range(len(samples))]
        return [TARGET if name in ("full", "text_only") else s.response for s in seen[name]], None

    metrics, records = _evaluate(test, attack, run)
    assert all(s.instruction.startswith("Consider ") for s in seen["full"] + seen["text_only"])
    assert not any(s.instruction.startswith("Consider") for s in seen["clean"] + seen["image_only"])
    assert metrics["vqa"]["accuracy"] == 100.0 and "caption" not in metrics
    asr = metrics["asr"]
    assert asr["eligible"] == 4 and asr["excluded"] == 2, "questions whose answer is the target's key word are left out"
    assert asr["full"]["rate"] == asr["text_only"]["rate"] == 100.0 and asr["full"]["exact_rate"] == 100.0
    assert asr["image_only"]["rate"] == asr["false_trigger"]["rate"] == 0.0
    assert records["clean"][0]["accuracy"] == 1.0 and records["full"][0]["accuracy"] == 0.0


def test_report_rows_show_the_quality_of_the_tasks_a_run_has():
    vqa_row = summary_row("vqa run", {"vqa": {"accuracy": 61.25, "n": 4, "by_answer_type": {}}})
    caption_row = summary_row("caption run", {"caption": {k: 1.0 for k in ("BLEU_1", "BLEU_4", "METEOR", "ROUGE_L", "CIDEr")}})
    assert vqa_row["VQA acc"] == "61.2" and "CIDEr" not in vqa_row and "VQA acc" not in caption_row
    table = markdown_table([caption_row, vqa_row]).splitlines()
    assert "| VQA acc |" in table[0] and table[2].endswith("| - |") and "| - | - | - | - | - |" in table[3]


@pytest.mark.parametrize("answers, expected", [(["red"], 1.0), (["blue"], 0.0)])
def test_prediction_records_of_vqa_samples_carry_their_accuracy(answers, expected):
    sample = question(0, answers[0])
    metrics, records = _evaluate([sample], None, lambda samples, name: (["Red"], None))
    assert records["clean"][0]["accuracy"] == expected and "asr" not in metrics
