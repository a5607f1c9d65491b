"""robustit.eval.vqa: the official answer normalisation and VQA accuracy."""
import pytest
from PIL import Image

from robustit.data.sample import Sample
from robustit.eval.vqa import answer_accuracy, normalise_answer, vqa_accuracy


@pytest.mark.parametrize("raw, normalised", [
    ("Yes.", "yes"),
    ("Two", "2"),
    ("none", "0"),
    ("The red ball", "red ball"),
    ("an apple", "apple"),
    ("dont know", "don't know"),
    ("1,000", "1000"),
    ("red-and-blue", "red and blue"),
    ("red - blue", "red blue"),
    ("3.5", "3.5"),
    ("  yes!\n", "yes"),
])
def test_answers_are_normalised_as_the_official_script_does(raw, normalised):
    assert normalise_answer(raw) == normalised


def test_one_answer_is_scored_by_exact_match_after_normalisation():
    assert answer_accuracy("The banana.", ["banana"]) == 1.0
    assert answer_accuracy("a yellow banana", ["banana"]) == 0.0


def test_ten_answers_average_min_of_matches_over_three_across_the_leave_one_out_subsets():
    three_yes = ["yes"] * 3 + ["no"] * 7
    assert answer_accuracy("yes", three_yes) == pytest.approx((3 * 2 / 3 + 7 * 1) / 10)
    assert answer_accuracy("Yes", ["yes"] * 2 + ["no"] * 8) == pytest.approx(0.6)
    assert answer_accuracy("no", three_yes) == 1.0
    assert answer_accuracy("maybe", three_yes) == 0.0
    assert answer_accuracy("two", ["2"] * 10) == 1.0


def test_set_accuracy_is_the_mean_in_percent_and_split_by_answer_type():
    result = vqa_accuracy(["yes", "2", "cat"], [["yes"], ["3"], ["a cat"]], ["yes/no", "number", None])
    assert result["accuracy"] == pytest.approx(200 / 3)
    assert result["n"] == 3
    assert result["by_answer_type"] == {"number": {"accuracy": 0.0, "n": 1}, "yes/no": {"accuracy": 100.0, "n": 1}}


def test_mismatched_or_empty_inputs_are_errors():
    with pytest.raises(ValueError, match="2 predictions but 1 answer lists"):
        vqa_accuracy(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="non-empty list of answers"):
        answer_accuracy("a", [])
    with pytest.raises(ValueError, match="at least one question"):
        vqa_accuracy([], [])


def test_a_sample_names_a_known_task():
    with pytest.raises(ValueError, match="unknown task 'chat'"):
        Sample(id="x", image=Image.new("RGB", (2, 2)), instruction="q", response="a", task="chat")
