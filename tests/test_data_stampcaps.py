"""robustit.data.stampcaps: the offline StampCaps dataset built from Debian's Tux Paint stamps.

Builds use `limit=` and a small `image_size` so that the whole file stays fast; the object split
is checked on the installed stamps and on a small stamp tree written here.
"""
import random
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from robustit.data.karpathy import DEFAULT_CAPTION_INSTRUCTION
from robustit.data.sources import load_split
from robustit.data.stampcaps import (
    COLOURS,
    DEFAULT_STAMP_ROOT,
    LIGHT_COLOURS,
    REFERENCES_PER_IMAGE,
    TEST_FRACTION,
    _background,
    build_stampcaps,
    capitalize,
    discover_stamps,
    object_phrase,
    split_objects,
)

needs_stamps = pytest.mark.skipif(
    not DEFAULT_STAMP_ROOT.is_dir(), reason="Debian's tuxpaint-stamps-default is not installed"
)
SIZE = 48


def pixels(sample) -> np.ndarray:
    return np.asarray(sample.image)


def mentions(text: str, phrase: str) -> bool:
    """`phrase` appears in `text`, allowing for a capitalised sentence start."""
    return phrase in text or capitalize(phrase) in text


# ---- object phrases --------------------------------------------------------------------------


@pytest.mark.parametrize("caption, phrase", [
    ("A banana.", "a banana"),
    ("An owl.", "an owl"),
    ("Some cherries.", "some cherries"),
    ("A UK post box. Put your letter in here!", "a UK post box"),
    ("A candy cane is a traditional Christmas treat in the United States.", "a candy cane"),
    ("Tankers carry bulk liquids.", "tankers"),
    ("The green light means you can go if it is safe to do so.", "the green light"),
    ("Gimel stands for gants or all.", "gimel"),
    ("Hard candy—yum!", "hard candy"),
    ("Tux—the Linux mascot!", "Tux"),
    ("Santa Claus.", "Santa Claus"),
    ("Grandma’s old rag doll.", "Grandma’s old rag doll"),
    ("UB2006 deep sea research vessel.", "UB2006 deep sea research vessel"),
    ("NASA rocket.", "NASA rocket"),
    ("The letter A.", "the letter A"),
    ("“Arrow”.", "arrow"),
    ("“Give Way” means you have to let other people go first.", "give Way"),
    ("– Because a brain is a terrible thing to waste…", "because a brain"),
    ("A ripe, red tomato!", "a ripe, red tomato"),
    ("Anthurium", "anthurium"),
    ("A Canadian 5 cent piece ($.05) called a nickel.", "a Canadian 5 cent piece ($.05) called a nickel"),
])
def test_object_phrase(caption, phrase):
    assert object_phrase(caption) == phrase


@pytest.mark.parametrize("caption", ["", "   ", "...", "—"])
def test_object_phrase_rejects_captions_without_one(caption):
    with pytest.raises(ValueError, match="no object phrase"):
        object_phrase(caption)


def test_capitalize_touches_only_the_first_character():
    assert capitalize("a UK post box") == "A UK post box"
    assert capitalize("Tux") == "Tux"
    assert capitalize("") == ""


# ---- backgrounds -----------------------------------------------------------------------------


def test_background_descriptions_match_their_pixels():
    kinds = defaultdict(int)
    for seed in range(150):
        array, text = _background(random.Random(seed), 24, light_only=False)
        assert array.shape == (24, 24, 3) and array.dtype == np.uint8
        named = re.findall(r"\b(" + "|".join(COLOURS) + r")\b", text)
        assert 1 <= len(named) <= 2 and text.endswith(("background", "polka dots"))
        if text.startswith("a plain "):
            kinds["plain"] += 1
            assert (array == np.array(COLOURS[named[0]], np.uint8)).all()
        elif "gradient" in text:
            kinds["gradient"] += 1  # runs from the first colour to the second
            corners = {tuple(array[0, 0]), tuple(array[-1, -1])}
            assert corners == {COLOURS[named[0]], COLOURS[named[1]]}
        else:
            kinds["two colours"] += 1  # stripes, checks and dots: exactly the two named colours
            colours = {tuple(int(v) for v in p) for p in array.reshape(-1, 3)}
            assert colours == {COLOURS[named[0]], COLOURS[named[1]]}
    assert set(kinds) == {"plain", "gradient", "two colours"}


def test_background_articles_agree_with_the_colour():
    texts = [_background(random.Random(seed), 16, light_only=False)[1] for seed in range(300)]
    assert not any(re.match(r"a [aeiou]", text) for text in texts), [t for t in texts if re.match(r"a [aeiou]", t)]
    assert any(text.startswith("an orange") for text in texts)


def test_light_backgrounds_are_plain_and_light():
    for seed in range(40):
        array, text = _background(random.Random(seed), 16, light_only=True)
        name = re.fullmatch(r"a plain (.+) background", text).group(1)
        assert name in LIGHT_COLOURS
        assert (array == np.array(LIGHT_COLOURS[name], np.uint8)).all()


# ---- a small stamp tree of our own -----------------------------------------------------------


def write_stamp(root: Path, relative: str, caption: str | None, colour=(200, 30, 30)) -> None:
    png = root / relative
    png.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGBA", (30, 20), (0, 0, 0, 0))
    image.paste(Image.new("RGBA", (10, 10), (*colour, 255)), (5, 5))
    image.save(png)
    if caption is not None:
        png.with_suffix(".txt").write_text(f"{caption}\nSecond line is ignored.\n", encoding="utf-8")


@pytest.fixture
def stamp_root(tmp_path: Path) -> Path:
    """Two categories of 20 objects; 'animals' has two stamps of each object (shared caption)."""
    root = tmp_path / "stamps"
    for i in range(20):
        write_stamp(root, f"animals/a{i:02d}.png", f"Animal number {i}.")
        write_stamp(root, f"animals/more/a{i:02d}-1.png", f"Animal number {i}!")  # same object
        write_stamp(root, f"food/f{i:02d}.png", f"Food item {i} is tasty.", colour=(30, 30, 200))
    write_stamp(root, "food/uncaptioned.png", None)
    write_stamp(root, "symbols/faces/sad.png", "Sad!")  # a PHRASE_OVERRIDES path
    return root


def test_discover_stamps_reads_first_caption_line_and_skips_uncaptioned(stamp_root):
    stamps = discover_stamps(stamp_root)
    assert len(stamps) == 20 * 3 + 1
    assert [s.path for s in stamps] == sorted(s.path for s in stamps)
    by_path = {s.path.relative_to(stamp_root).as_posix(): s for s in stamps}
    assert "food/uncaptioned.png" not in by_path
    food = by_path["food/f03.png"]
    assert (food.category, food.caption, food.phrase) == ("food", "Food item 3 is tasty.", "food item 3")
    assert by_path["animals/more/a07-1.png"].category == "animals"
    assert by_path["symbols/faces/sad.png"].phrase == "a sad face"
    assert by_path["animals/a07.png"].group == by_path["animals/more/a07-1.png"].group == "animal number 7"


def test_object_split_is_disjoint_stratified_and_keeps_groups_together(stamp_root):
    split = split_objects(stamp_root)
    train_groups = {s.group for s in split["train"]}
    test_groups = {s.group for s in split["test"]}
    assert not train_groups & test_groups
    assert len(split["train"]) + len(split["test"]) == len(discover_stamps(stamp_root))
    for category in ("animals", "food"):
        held_out = {s.group for s in split["test"] if s.category == category}
        assert len(held_out) == round(TEST_FRACTION * 20)
    # both stamps of a held-out animal are held out
    animal_test = [s for s in split["test"] if s.category == "animals"]
    assert len(animal_test) == 2 * len({s.group for s in animal_test})


def test_builds_from_a_custom_root(stamp_root):
    test = build_stampcaps("test", root=stamp_root, image_size=SIZE)
    held_out = {s.group for s in split_objects(stamp_root)["test"]}
    assert len(test) == 2 * len(split_objects(stamp_root)["test"])  # 2 images per test stamp
    assert {" ".join(re.findall(r"\w+", s.metadata["object"].casefold())) for s in test} == held_out
    assert all(s.image.size == (SIZE, SIZE) for s in test)


def test_empty_root_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    write_stamp(tmp_path / "empty", "x/uncaptioned.png", None)
    with pytest.raises(FileNotFoundError, match="no captioned stamp PNGs"):
        build_stampcaps("train", root=tmp_path / "empty")


def test_missing_root_is_a_clear_error(tmp_path):
    missing = tmp_path / "no-such-stamps"
    with pytest.raises(FileNotFoundError, match="tuxpaint-stamps-default") as caught:
        build_stampcaps("train", root=missing, limit=1)
    assert str(missing) in str(caught.value)


def test_unknown_split():
    with pytest.raises(ValueError, match="unknown StampCaps split 'val'"):
        build_stampcaps("val", limit=1)


# ---- the installed stamps --------------------------------------------------------------------


@needs_stamps
def test_installed_object_split_is_disjoint_and_about_fifteen_percent():
    split = split_objects(DEFAULT_STAMP_ROOT)
    train_groups = {s.group for s in split["train"]}
    test_groups = {s.group for s in split["test"]}
    assert train_groups and test_groups and not train_groups & test_groups
    assert {s.phrase for s in split["train"]}.isdisjoint(s.phrase for s in split["test"])
    assert 0.10 < len(test_groups) / len(train_groups | test_groups) < 0.20
    groups: dict[str, set[str]] = defaultdict(set)
    for stamp in discover_stamps(DEFAULT_STAMP_ROOT):
        groups[stamp.category].add(stamp.group)
    # stratified: every category with enough objects has some held out, and some kept
    for category, keys in groups.items():
        if len(keys) >= 4:
            assert keys & test_groups and keys - test_groups, category


@needs_stamps
def test_train_and_test_samples_use_their_own_objects():
    split = split_objects(DEFAULT_STAMP_ROOT)
    train_phrases = {s.phrase for s in split["train"]}
    test_phrases = {s.phrase for s in split["test"]}
    train = build_stampcaps("train", image_size=SIZE, limit=9)
    test = build_stampcaps("test", image_size=SIZE, limit=6)
    pretrain = build_stampcaps("pretrain", image_size=SIZE, limit=4)
    assert {s.metadata["object"] for s in train + pretrain} <= train_phrases
    assert {s.metadata["object"] for s in test} <= test_phrases
    train_stamps = {str(s.path) for s in split["train"]}
    assert all(s.metadata["stamp"] not in train_stamps for s in test)


@needs_stamps
@pytest.mark.parametrize("split", ["train", "test"])
def test_five_references_each_naming_object_and_background(split):
    samples = build_stampcaps(split, image_size=SIZE, limit=8)
    assert len(samples) == 8
    for index, sample in enumerate(samples):
        assert sample.id == f"stampcaps-{split}-{index:06d}"
        assert sample.instruction == DEFAULT_CAPTION_INSTRUCTION and sample.task == "caption"
        assert sample.image.mode == "RGB" and sample.image.size == (SIZE, SIZE)
        assert len(sample.references) == REFERENCES_PER_IMAGE == len(set(sample.references))
        assert sample.response in sample.references
        meta = sample.metadata
        assert meta["source"] == "stampcaps"
        assert Path(meta["stamp"]).is_file() and Path(meta["stamp"]).relative_to(DEFAULT_STAMP_ROOT).parts[0] == meta["category"]
        for reference in sample.references:
            assert mentions(reference, meta["object"]), (reference, meta["object"])
            assert mentions(reference, meta["background"]), (reference, meta["background"])
            assert reference == capitalize(reference) and reference.endswith(".")


@needs_stamps
def test_pretrain_captions_are_the_object_phrase_on_light_backgrounds():
    samples = build_stampcaps("pretrain", image_size=SIZE, limit=6)
    for sample in samples:
        phrase = sample.metadata["object"]
        assert sample.references == [f"{capitalize(phrase)}."] and sample.response == sample.references[0]
        assert re.fullmatch(r"a plain (.+) background", sample.metadata["background"]).group(1) in LIGHT_COLOURS
    # one composition per stamp: consecutive samples show consecutive stamps
    assert len({s.metadata["stamp"] for s in samples}) == 6


@needs_stamps
def test_same_arguments_give_identical_samples():
    first = build_stampcaps("train", image_size=SIZE, seed=3, limit=6)
    second = build_stampcaps("train", image_size=SIZE, seed=3, limit=6)
    assert [(s.id, s.response, s.references, s.metadata) for s in first] == \
        [(s.id, s.response, s.references, s.metadata) for s in second]
    assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(first, second))


@needs_stamps
@pytest.mark.parametrize("split", ["train", "test"])
def test_seed_changes_compositions_but_not_objects(split):
    one = build_stampcaps(split, image_size=SIZE, seed=0, limit=6)
    two = build_stampcaps(split, image_size=SIZE, seed=1, limit=6)
    assert [s.metadata["stamp"] for s in one] == [s.metadata["stamp"] for s in two]
    assert sum(not np.array_equal(pixels(a), pixels(b)) for a, b in zip(one, two)) >= 5
    assert [s.metadata["background"] for s in one] != [s.metadata["background"] for s in two]


@needs_stamps
def test_copies_of_a_stamp_are_distinct_compositions():
    samples = build_stampcaps("train", image_size=SIZE, images_per_object=3, limit=6)
    stamps = [s.metadata["stamp"] for s in samples]
    assert stamps[0] == stamps[1] == stamps[2] != stamps[3] == stamps[4] == stamps[5]
    assert not np.array_equal(pixels(samples[0]), pixels(samples[1]))
    two_per = build_stampcaps("train", image_size=SIZE, images_per_object=2, limit=4)
    assert [s.metadata["stamp"] for s in two_per] == [stamps[0], stamps[0], stamps[3], stamps[3]]


@needs_stamps
def test_limit_is_a_prefix_of_the_same_sequence():
    short = build_stampcaps("test", image_size=SIZE, limit=3)
    long = build_stampcaps("test", image_size=SIZE, limit=7)
    assert len(short) == 3 and len(long) == 7
    assert [s.id for s in short] == [s.id for s in long[:3]]
    assert all(np.array_equal(pixels(a), pixels(b)) and a.references == b.references for a, b in zip(short, long))
    assert build_stampcaps("test", image_size=SIZE, limit=0) == []


@needs_stamps
def test_image_size_and_registry():
    samples = load_split("stampcaps", "train", {"image_size": 40, "limit": 2})
    assert [s.image.size for s in samples] == [(40, 40), (40, 40)]
    assert [s.id for s in samples] == ["stampcaps-train-000000", "stampcaps-train-000001"]
