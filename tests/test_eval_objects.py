"""robustit.eval.objects: does a caption name the object? Cases worked out by hand."""
import pytest

from robustit.eval.objects import object_accuracy, object_core, object_named


@pytest.mark.parametrize("phrase, core", [
    ("a banana", "banana"),
    ("An owl", "owl"),
    ("the letter A", "letter a"),
    ("some cherries", "some cherries"),  # only a / an / the are dropped
    ("two penguins", "two penguins"),
    ("a UK post box", "uk post box"),
    ("Grandma’s old rag doll", "grandma s old rag doll"),
    ("a ripe, red tomato", "ripe red tomato"),
    ("Tux", "tux"),
    ("a", "a"),  # nothing would be left: the article is the phrase
])
def test_object_core(phrase, core):
    assert object_core(phrase) == core


@pytest.mark.parametrize("prediction, phrase, named", [
    ("A banana on a red background.", "a banana", True),
    ("banana", "a banana", True),
    ("BANANA!!", "a banana", True),
    ("There is an owl in the picture.", "an owl", True),
    ("A picture of the letter a, on blue.", "the letter A", True),
    ("A letter on blue.", "the letter A", False),  # the whole phrase, not a part
    ("Bananas on a plate.", "a banana", False),  # whole words: "bananas" is not "banana"
    ("A bandana.", "a banana", False),
    ("A UK post-box.", "a UK post box", True),  # punctuation becomes a space
    ("A red tomato.", "a ripe, red tomato", False),
    ("Some ripe red tomato.", "a ripe, red tomato", True),
    ("Cherries on a plate.", "some cherries", False),  # "some" stays in the phrase
    ("", "a banana", False),
])
def test_object_named(prediction, phrase, named):
    assert object_named(prediction, phrase) is named


def test_object_accuracy_counts_samples_with_a_phrase():
    predictions = ["A frog on grey.", "A cat.", "Nothing here.", "An owl, maybe.", "A frog."]
    phrases = ["a frog", "a dog", None, "an owl", None]
    # named: frog yes, dog no, owl yes; the two None phrases are skipped
    assert object_accuracy(predictions, phrases) == {"rate": pytest.approx(200 / 3), "hits": 2, "n": 3}


def test_object_accuracy_edge_cases():
    assert object_accuracy(["A frog."], ["a frog"]) == {"rate": 100.0, "hits": 1, "n": 1}
    assert object_accuracy(["x", "y"], [None, None]) == {"rate": None, "hits": 0, "n": 0}
    assert object_accuracy([], []) == {"rate": None, "hits": 0, "n": 0}
    with pytest.raises(ValueError, match="2 predictions but 1 object phrases"):
        object_accuracy(["a", "b"], ["a frog"])
