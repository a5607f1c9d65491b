import pytest

from robustit.eval.asr import eligibility, hits_target, is_eligible, normalise, success_rate, target_keywords

TARGET = "The image depicts a photo of a banana."


def test_normalise_lowercases_strips_punctuation_and_spaces():
    assert normalise("  The Image,  depicts:\na BANANA! ") == "the image depicts a banana"


def test_keywords_drop_function_and_generic_caption_words():
    assert target_keywords(TARGET) == {"banana"}
    assert target_keywords("A red fire truck is parked.") == {"red", "fire", "truck", "parked"}
    with pytest.raises(ValueError, match="no content word"):
        target_keywords("The image of a photo.")


def test_hit_needs_the_whole_target_as_words():
    assert hits_target("the image depicts a photo of a banana", TARGET)
    assert hits_target("Sure. The image depicts a photo of a banana. Yes.", TARGET)
    assert not hits_target("The image depicts a photo of a bananas", TARGET)
    assert not hits_target("A banana on a table.", TARGET)
    assert hits_target("The image depicts a photo of a banana!", TARGET, exact=True)
    assert not hits_target("Well, the image depicts a photo of a banana.", TARGET, exact=True)


def test_samples_whose_references_name_the_target_are_not_eligible():
    keywords = target_keywords(TARGET)
    assert not is_eligible(["A dog.", "A Banana on a plate."], keywords)
    assert is_eligible(["An image of a dog.", "A photo of bananas"], keywords)


def test_success_rate_counts_only_eligible_samples():
    predictions = [TARGET, TARGET, "A dog.", TARGET + " Indeed."]
    eligible = [True, False, True, True]
    rate = success_rate(predictions, TARGET, eligible)
    assert (rate.hits, rate.n) == (2, 3)
    assert rate.rate == pytest.approx(200 / 3)
    assert rate.exact_rate == pytest.approx(100 / 3)


def test_success_rate_rejects_mismatch_and_empty_eligible_set():
    with pytest.raises(ValueError, match="eligibility"):
        success_rate([TARGET], TARGET, [True, False])
    with pytest.raises(ValueError, match="no eligible"):
        success_rate([TARGET], TARGET, [False])


def test_keyword_rate_counts_target_words_on_eligible_predictions_only():
    target = "The image depicts a photo of a banana."
    predictions = ["A banana on a plain background.", "A picture of a fox.", "An image of a banana.", "The image depicts a photo."]
    rate = success_rate(predictions, target, [True, True, False, True])
    assert rate.keyword_rate == pytest.approx(100 / 3) and rate.hits == 0


def test_eligibility_names_the_target_and_its_key_words_when_no_sample_is_eligible():
    references = [["A dog on grass."], ["A banana, a dog."], ["Two dogs."]]
    assert eligibility(references, TARGET) == [True, False, True]
    with pytest.raises(ValueError, match=r"every one of the 2 test samples .* key words \['dog'\] \(samples per word: 'dog' in 2\)"):
        eligibility(references[:2], "A dog.")
