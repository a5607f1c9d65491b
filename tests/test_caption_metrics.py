"""robustit.eval.caption_metrics against hand-computed values.

METEOR runs a Java process that takes seconds to start, so exactly one test runs it; the others
replace `_meteor_score` with a recorder (the PTBTokenizer, also Java, is fast and always runs).
"""
import math
import shutil

import pytest

import robustit.eval.caption_metrics as cm
from robustit.eval.caption_metrics import CaptionScores, caption_scores, spice_unavailable_reason

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="caption metrics need a Java runtime")
BETA2 = 1.2**2  # ROUGE-L's beta squared


@pytest.fixture
def meteor_calls(monkeypatch):
    """Stand-in for the METEOR jar: records what it is given and scores 0.25."""
    calls = []

    def fake(gts, res):
        calls.append((gts, res))
        return 0.25

    monkeypatch.setattr(cm, "_meteor_score", fake)
    return calls


@needs_java
def test_identical_caption_scores_perfectly_with_real_meteor():
    sentence = "A man is riding a brown horse on the beach."
    scores = caption_scores({"img": sentence}, {"img": [sentence.lower().rstrip(".")]})
    for value in (scores.bleu_1, scores.bleu_2, scores.bleu_3, scores.bleu_4, scores.rouge_l):
        assert value == pytest.approx(100.0, abs=1e-5)
    # METEOR 1.5 gives no fragmentation penalty to a complete match in one chunk: F_mean = 1
    assert scores.meteor == pytest.approx(100.0, abs=1e-6)
    assert scores.n == 1
    if spice_unavailable_reason() is not None:
        assert scores.spice is None and scores.spice_unavailable_reason == spice_unavailable_reason()


@needs_java
def test_captions_are_lowercased_and_tokenised_without_punctuation(meteor_calls):
    scores = caption_scores({"a": "A Cat, sat."}, {"a": ["The cat sat on the MAT!", "A cat."]})
    assert len(meteor_calls) == 1
    gts, res = meteor_calls[0]
    assert gts == {"a": ["the cat sat on the mat", "a cat"]}
    assert res == {"a": ["a cat sat"]}
    assert scores.meteor == pytest.approx(25.0)  # reported in percent


@needs_java
def test_bleu_with_brevity_penalty_by_hand(meteor_calls):
    """Image 1: "a cat sat" vs one 6-token reference. Image 2: "a dog runs fast" vs references of
    3 and 5 tokens, equally close to its 4 tokens: the tie goes to the shorter, r = 3.

    clipped matches: 1-grams 2/3 and 3/4; 2-grams 1/2 and 2/3; 3-grams 0/1 and 1/2; 4-grams 0/1
    c = 3 + 4 = 7 < r = 6 + 3 = 9, so BP = exp(1 - 9/7).
    """
    predictions = {"1": "A cat sat.", "2": "A dog runs fast."}
    references = {"1": ["The cat sat on the mat."], "2": ["A dog runs.", "The dog is running now."]}
    scores = caption_scores(predictions, references)
    bp = math.exp(1 - 9 / 7)
    p1, p2, p3 = 5 / 7, 3 / 5, 1 / 3
    assert scores.bleu_1 == pytest.approx(100 * p1 * bp, rel=1e-6)
    assert scores.bleu_2 == pytest.approx(100 * (p1 * p2) ** (1 / 2) * bp, rel=1e-6)
    assert scores.bleu_3 == pytest.approx(100 * (p1 * p2 * p3) ** (1 / 3) * bp, rel=1e-6)
    assert scores.bleu_4 < 0.01  # no 4-gram matches anywhere
    assert scores.n == 2


@needs_java
def test_bleu_without_brevity_penalty_when_prediction_is_long_enough(meteor_calls):
    # 5 tokens vs references of 4 and 7 tokens: the closest is 4 < 5, so BP = 1. Counts are clipped
    # by the largest count in any one reference: "a red bus" match the first, "on" and "road" the
    # second, so all 5 unigrams match; against the first reference alone only 3 of 5 do.
    scores = caption_scores({"x": "a red bus on road"}, {"x": ["a red bus stops", "the red bus drives on the road"]})
    assert scores.bleu_1 == pytest.approx(100 * 5 / 5, rel=1e-6)
    one_ref = caption_scores({"x": "a red bus on road"}, {"x": ["a red bus stops"]})
    assert one_ref.bleu_1 == pytest.approx(100 * 3 / 5, rel=1e-6)


@needs_java
def test_rouge_l_by_hand(meteor_calls):
    """Image 1: LCS("a cat sat on the mat", "the cat sat on a red mat") = "cat sat on mat" = 4,
    P = 4/6, R = 4/7. Image 2: "a dog" vs "a big dog" (P = 1, R = 2/3) and "dog" (P = 1/2, R = 1):
    the largest P and the largest R, from different references, give F = 1."""
    scores = caption_scores(
        {"1": "A cat sat on the mat.", "2": "A dog."},
        {"1": ["The cat sat on a red mat."], "2": ["A big dog.", "Dog."]},
    )
    p, r = 4 / 6, 4 / 7
    f1 = (1 + BETA2) * p * r / (r + BETA2 * p)
    assert scores.rouge_l == pytest.approx(100 * (f1 + 1.0) / 2, rel=1e-6)


@needs_java
def test_cider_prefers_the_right_caption(meteor_calls):
    references = {
        "bus": ["a red bus parked on a street", "a red double decker bus"],
        "cat": ["a cat sleeping on a sofa", "a grey cat asleep on the couch"],
        "pizza": ["a pizza with cheese and tomato", "a large cheese pizza on a plate"],
        "kite": ["children flying a kite in a park", "a kite in the blue sky"],
    }
    right = {"bus": "a red bus on a street", "cat": "a cat asleep on a sofa",
             "pizza": "a cheese pizza on a plate", "kite": "a kite flying in the sky"}
    keys = list(right)
    wrong = {key: right[keys[(i + 1) % len(keys)]] for i, key in enumerate(keys)}
    good, bad = caption_scores(right, references), caption_scores(wrong, references)
    assert good.cider > 100.0 and good.cider > 5 * bad.cider >= 0.0
    assert good.bleu_4 > bad.bleu_4 and good.rouge_l > bad.rouge_l
    assert good.n == bad.n == 4


@needs_java
def test_scores_do_not_depend_on_id_order(meteor_calls):
    predictions = {"1": "a cat on a mat", "2": "a dog in the park", "3": "two birds"}
    references = {"1": ["a cat sitting on a mat"], "2": ["a dog running in a park"], "3": ["two birds on a wire"]}
    forward = caption_scores(predictions, references)
    backward = caption_scores(dict(reversed(predictions.items())), dict(reversed(references.items())))
    assert forward.as_dict() == pytest.approx(backward.as_dict())


@needs_java
def test_spice_missing_jars_are_reported_not_scored(meteor_calls):
    reason = spice_unavailable_reason()
    if reason is None:
        pytest.skip("the Stanford CoreNLP jars are installed here")
    assert isinstance(reason, str) and reason.strip()
    assert "stanford-corenlp" in reason and str(cm.SPICE_DIR) in reason
    scores = caption_scores({"a": "a cat"}, {"a": ["a cat"]})
    assert scores.spice is None and scores.spice_unavailable_reason == reason
    assert scores.as_dict()["SPICE"] is None


def test_spice_reason_lists_exactly_the_missing_jars(tmp_path, monkeypatch):
    from pycocoevalcap.spice import get_stanford_models as stanford
    from pycocoevalcap.spice.spice import SPICE_JAR

    monkeypatch.setattr(cm, "SPICE_DIR", tmp_path)
    lib = tmp_path / stanford.SPICELIB
    lib.mkdir(parents=True)
    (tmp_path / SPICE_JAR).write_bytes(b"jar")
    (lib / f"{stanford.JAR}.jar").write_bytes(b"jar")
    reason = spice_unavailable_reason()
    assert reason is not None and f"{stanford.JAR}-models.jar" in reason
    assert f"{stanford.JAR}.jar," not in reason and f"missing: {stanford.JAR}.jar" not in reason
    (lib / f"{stanford.JAR}-models.jar").write_bytes(b"jar")
    assert spice_unavailable_reason() is None


def test_as_dict_uses_coco_names():
    scores = CaptionScores(1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, None, "no jars", 3)
    assert scores.as_dict() == {
        "BLEU_1": 1.0, "BLEU_2": 2.0, "BLEU_3": 3.0, "BLEU_4": 4.0, "METEOR": 5.0, "ROUGE_L": 6.0,
        "CIDEr": 7.0, "SPICE": None, "spice_unavailable_reason": "no jars", "n": 3,
    }


# ---- input checks (no Java reached) ------------------------------------------------------------


def test_mismatched_ids_are_named():
    with pytest.raises(ValueError) as caught:
        caption_scores({"a": "x", "b": "y"}, {"a": ["x"], "c": ["z"]})
    message = str(caught.value)
    assert "same ids" in message
    assert "ids without references: ['b'] (1 in all)" in message
    assert "ids without a prediction: ['c'] (1 in all)" in message


def test_many_mismatched_ids_are_listed_up_to_ten_and_counted():
    predictions = {f"p{i:02d}": "x" for i in range(12)}
    with pytest.raises(ValueError, match=r"ids without references: \['p00', .*'p09'\] \(12 in all\)") as caught:
        caption_scores(predictions, {"q": ["x"]})
    assert "p10" not in str(caught.value) and "ids without a prediction: ['q'] (1 in all)" in str(caught.value)


@pytest.mark.parametrize("predictions, references", [({}, {}), ({}, {"a": ["x"]}), ({"a": "x"}, {})])
def test_empty_input_is_rejected(predictions, references):
    with pytest.raises(ValueError, match="at least one prediction"):
        caption_scores(predictions, references)


@pytest.mark.parametrize("refs", ["a cat on a mat", [], ["a cat", 3], None])
def test_references_must_be_a_non_empty_list_of_strings(refs):
    references = {"good": ["a dog"], "bad-id": refs}
    with pytest.raises(ValueError, match=r"references\['bad-id'\] must be a non-empty list of strings"):
        caption_scores({"good": "a dog", "bad-id": "a cat"}, references)


@pytest.mark.parametrize("prediction", [None, ["a cat"], 3])
def test_prediction_must_be_a_string(prediction):
    with pytest.raises(ValueError, match=r"predictions\['k7'\] must be a string"):
        caption_scores({"k7": prediction}, {"k7": ["a cat"]})


def test_missing_java_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(cm.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="Java runtime"):
        caption_scores({"a": "a cat"}, {"a": ["a cat"]})
