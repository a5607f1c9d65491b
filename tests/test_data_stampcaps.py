"""robustit.data.stampcaps: the offline StampCaps dataset built from Debian's Tux Paint stamps.

Builds use `limit=` and a small `image_size` so that the whole file stays fast; the object split
is checked on the installed stamps and on a small stamp tree written here. The fingerprint of
sample lists (robustit.data.fingerprint) is checked on StampCaps samples at the end.
"""
import hashlib
import os
import random
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from robustit.data.fingerprint import samples_fingerprint
from robustit.data.instructions import (
    DEFAULT_CAPTION_INSTRUCTION,
    HELD_OUT_CAPTION_INSTRUCTIONS,
    TRAIN_CAPTION_INSTRUCTIONS,
)
from robustit.data.sources import load_split
from robustit.data.stampcaps import (
    CAPTION_TEMPLATES,
    COLOURS,
    DEFAULT_IMAGES_PER_OBJECT,
    DEFAULT_STAMP_ROOT,
    LIGHT_COLOURS,
    PRETRAIN_TEMPLATES,
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


def pixel_hash(sample) -> str:
    return hashlib.sha256(sample.image.tobytes()).hexdigest()


def group(phrase: str) -> str:
    return " ".join(re.findall(r"\w+", phrase.casefold()))


def template_pattern(template: str) -> re.Pattern:
    """A regex matching any formatting of a caption template."""
    return re.compile("(.+)".join(re.escape(piece) for piece in re.split(r"\{\w+\}", template)))


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
        array, background = _background(random.Random(seed), 24, light_only=False)
        text = background.text
        assert array.shape == (24, 24, 3) and array.dtype == np.uint8
        named = re.findall(r"\b(" + "|".join(COLOURS) + r")\b", text)
        assert 1 <= len(named) <= 2 and text.endswith(("background", "polka dots"))
        assert background.colours == tuple(named) and (background.pattern == "plain") == (len(named) == 1)
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
    texts = [_background(random.Random(seed), 16, light_only=False)[1].text for seed in range(300)]
    assert not any(re.match(r"a [aeiou]", text) for text in texts), [t for t in texts if re.match(r"a [aeiou]", t)]
    assert any(text.startswith("an orange") for text in texts)


def test_light_backgrounds_are_plain_and_light():
    for seed in range(40):
        array, background = _background(random.Random(seed), 16, light_only=True)
        name = re.fullmatch(r"a plain (.+) background", background.text).group(1)
        assert background.colours == (name,) and background.pattern == "plain"
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


def test_default_counts_and_stamp_major_order_from_a_custom_root(stamp_root):
    stamps = discover_stamps(stamp_root)
    assert DEFAULT_IMAGES_PER_OBJECT == {"pretrain": 24, "train": 3, "test": 1}
    for split, per in DEFAULT_IMAGES_PER_OBJECT.items():
        samples = build_stampcaps(split, root=stamp_root, image_size=16)
        assert len(samples) == per * len(stamps)  # shared: every stamp in every split
        assert [s.metadata["stamp"] for s in samples] == [str(st.path) for st in stamps for _ in range(per)]
        assert all(s.image.size == (16, 16) for s in samples)
    assert len(build_stampcaps("test", root=stamp_root, image_size=16, images_per_object=2)) == 2 * len(stamps)


def test_held_out_builds_held_out_objects_from_a_custom_root(stamp_root):
    split = split_objects(stamp_root)
    held_out = {s.group for s in split["test"]}
    test = build_stampcaps("test", root=stamp_root, image_size=SIZE, objects="held_out")
    assert len(test) == len(split["test"])  # 1 image per test stamp
    assert {group(s.metadata["object"]) for s in test} == held_out
    for name in ("train", "pretrain"):
        samples = build_stampcaps(name, root=stamp_root, image_size=16, objects="held_out")
        assert len(samples) == DEFAULT_IMAGES_PER_OBJECT[name] * len(split["train"])
        assert not {group(s.metadata["object"]) for s in samples} & held_out


def test_held_out_only_changes_which_stamps_are_composed(stamp_root):
    """A stamp's compositions and captions are the same in both modes."""
    for split in ("train", "test"):
        shared = build_stampcaps(split, root=stamp_root, image_size=16)
        by_stamp = defaultdict(list)
        for sample in shared:
            by_stamp[sample.metadata["stamp"]].append((pixel_hash(sample), sample.references))
        held_out = build_stampcaps(split, root=stamp_root, image_size=16, objects="held_out")
        assert 0 < len(held_out) < len(shared)
        for sample in held_out:
            assert (pixel_hash(sample), sample.references) in by_stamp[sample.metadata["stamp"]]


def test_bad_options_are_clear_errors(stamp_root):
    with pytest.raises(ValueError, match="unknown StampCaps objects mode 'unseen'"):
        build_stampcaps("train", root=stamp_root, objects="unseen", limit=1)
    with pytest.raises(ValueError, match="unknown instructions mode 'one'"):
        build_stampcaps("train", root=stamp_root, instructions="one", limit=1)
    with pytest.raises(ValueError, match="images_per_object must be at least 1"):
        build_stampcaps("train", root=stamp_root, images_per_object=0, limit=1)


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
def test_shared_objects_split_by_image():
    """Default: test objects all appear in train and pretrain, but no image is repeated."""
    n = 24
    test = build_stampcaps("test", image_size=SIZE, limit=n)
    train = build_stampcaps("train", image_size=SIZE, limit=3 * n)
    pretrain = build_stampcaps("pretrain", image_size=SIZE, limit=DEFAULT_IMAGES_PER_OBJECT["pretrain"] * n)
    stamps = [s.metadata["stamp"] for s in test]
    assert len(set(stamps)) == n  # one image per stamp
    assert set(stamps) == {s.metadata["stamp"] for s in train} == {s.metadata["stamp"] for s in pretrain}
    assert {s.metadata["object"] for s in test} <= {s.metadata["object"] for s in train}
    hashes = {name: [pixel_hash(s) for s in samples] for name, samples in
              (("test", test), ("train", train), ("pretrain", pretrain))}
    assert all(len(set(h)) == len(h) for h in hashes.values())
    assert not set(hashes["test"]) & set(hashes["train"])
    assert not set(hashes["test"]) & set(hashes["pretrain"])
    assert not set(hashes["train"]) & set(hashes["pretrain"])


@needs_stamps
def test_held_out_samples_use_their_own_objects():
    split = split_objects(DEFAULT_STAMP_ROOT)
    train_phrases = {s.phrase for s in split["train"]}
    test_phrases = {s.phrase for s in split["test"]}
    train = build_stampcaps("train", image_size=SIZE, limit=9, objects="held_out")
    test = build_stampcaps("test", image_size=SIZE, limit=6, objects="held_out")
    pretrain = build_stampcaps("pretrain", image_size=SIZE, limit=4, objects="held_out")
    assert {s.metadata["object"] for s in train + pretrain} <= train_phrases
    assert {s.metadata["object"] for s in test} <= test_phrases
    train_stamps = {str(s.path) for s in split["train"]}
    assert all(s.metadata["stamp"] not in train_stamps for s in test)
    assert len({s.metadata["stamp"] for s in test}) == 6  # one image per held-out stamp


@needs_stamps
@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("objects", ["shared", "held_out"])
def test_five_references_each_naming_object_and_background(split, objects):
    samples = build_stampcaps(split, image_size=SIZE, limit=8, objects=objects)
    assert len(samples) == 8
    for index, sample in enumerate(samples):
        assert sample.id == f"stampcaps-{split}-{index:06d}"
        assert sample.task == "caption"
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
            assert any(template_pattern(t).fullmatch(reference) for t in CAPTION_TEMPLATES), reference


@needs_stamps
def test_instructions_come_from_the_training_pool_and_held_out_ones_for_test():
    assert not set(TRAIN_CAPTION_INSTRUCTIONS) & set(HELD_OUT_CAPTION_INSTRUCTIONS)
    test = build_stampcaps("test", image_size=8, limit=60)
    train = build_stampcaps("train", image_size=8, limit=60)
    pretrain = build_stampcaps("pretrain", image_size=8, limit=60)
    assert {s.instruction for s in test} == set(HELD_OUT_CAPTION_INSTRUCTIONS)
    for samples in (train, pretrain):
        used = {s.instruction for s in samples}
        assert used <= set(TRAIN_CAPTION_INSTRUCTIONS) and len(used) >= 6
    held_out_test = build_stampcaps("test", image_size=8, limit=20, objects="held_out")
    assert {s.instruction for s in held_out_test} <= set(HELD_OUT_CAPTION_INSTRUCTIONS)


@needs_stamps
@pytest.mark.parametrize("split", ["pretrain", "train", "test"])
def test_fixed_instructions_change_nothing_but_the_instruction(split):
    pool = build_stampcaps(split, image_size=SIZE, limit=6)
    fixed = build_stampcaps(split, image_size=SIZE, limit=6, instructions="fixed")
    assert [s.instruction for s in fixed] == [DEFAULT_CAPTION_INSTRUCTION] * 6
    assert [(s.id, s.response, s.references, s.metadata) for s in pool] == \
        [(s.id, s.response, s.references, s.metadata) for s in fixed]
    assert [pixel_hash(s) for s in pool] == [pixel_hash(s) for s in fixed]


@needs_stamps
def test_pretrain_captions_are_short_object_phrasings_on_varied_backgrounds():
    per = DEFAULT_IMAGES_PER_OBJECT["pretrain"]
    samples = build_stampcaps("pretrain", image_size=SIZE, limit=3 * per)
    assert 4 <= len(PRETRAIN_TEMPLATES) <= 6
    tuning = [template_pattern(t) for t in CAPTION_TEMPLATES]
    for sample in samples:
        phrase, background = sample.metadata["object"], sample.metadata["background"]
        fields = {"obj": phrase, "Obj": capitalize(phrase)}
        assert sample.references == [t.format(**fields) for t in PRETRAIN_TEMPLATES]
        assert sample.response in sample.references
        for reference in sample.references:
            assert mentions(reference, phrase) and not mentions(reference, background)
            assert not any(p.fullmatch(reference) for p in tuning), reference
    # every pretraining phrasing is used as the response
    assert {s.references.index(s.response) for s in samples} == set(range(len(PRETRAIN_TEMPLATES)))
    # backgrounds as varied as train's: patterns and dark colours, not only plain light ones
    backgrounds = [s.metadata["background"] for s in samples]
    assert any(not b.startswith("a plain ") for b in backgrounds)
    assert any(re.search(r"\b(black|blue|purple|brown)\b", b) for b in backgrounds)
    assert len(set(backgrounds)) > 30
    # the compositions of a stamp are consecutive
    stamps = [s.metadata["stamp"] for s in samples]
    assert stamps[:per] == [stamps[0]] * per and stamps[per] != stamps[0]


@needs_stamps
@pytest.mark.parametrize("split", ["pretrain", "train", "test"])
def test_same_arguments_give_identical_samples(split):
    first = build_stampcaps(split, image_size=SIZE, seed=3, limit=6)
    second = build_stampcaps(split, image_size=SIZE, seed=3, limit=6)
    assert [(s.id, s.instruction, s.response, s.references, s.metadata) for s in first] == \
        [(s.id, s.instruction, s.response, s.references, s.metadata) for s in second]
    assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(first, second))


@needs_stamps
def test_build_does_not_depend_on_the_hash_seed():
    code = (
        "from robustit.data.stampcaps import build_stampcaps as b; "
        "from robustit.data.fingerprint import samples_fingerprint as f; "
        "print(f(b('train', image_size=16, limit=4) + b('test', image_size=16, limit=4, objects='held_out')))"
    )
    outputs = [
        subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": seed},
                       capture_output=True, text=True, check=True).stdout.strip()
        for seed in ("1", "2")
    ]
    local = build_stampcaps("train", image_size=16, limit=4) + build_stampcaps("test", image_size=16, limit=4, objects="held_out")
    assert outputs == [samples_fingerprint(local)] * 2


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
    # the first copies do not depend on how many copies there are
    assert pixel_hash(two_per[0]) == pixel_hash(samples[0]) and pixel_hash(two_per[3]) == pixel_hash(samples[4])


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
    samples = load_split("stampcaps", "train", {"image_size": 40, "limit": 2, "objects": "held_out"})
    assert [s.image.size for s in samples] == [(40, 40), (40, 40)]
    assert [s.id for s in samples] == ["stampcaps-train-000000", "stampcaps-train-000001"]


# ---- samples fingerprint ---------------------------------------------------------------------


@needs_stamps
def test_fingerprint_is_stable_and_sees_every_field():
    samples = build_stampcaps("train", image_size=16, limit=4)
    fingerprint = samples_fingerprint(samples)
    assert re.fullmatch(r"[0-9a-f]{64}", fingerprint)
    assert samples_fingerprint(build_stampcaps("train", image_size=16, limit=4)) == fingerprint
    assert samples_fingerprint([s.replace() for s in samples]) == fingerprint  # metadata is not part of it
    changed = [
        [samples[0].replace(instruction=samples[0].instruction + " ")] + samples[1:],
        [samples[0].replace(id="other")] + samples[1:],
        samples[:1] + [samples[1].replace(response=samples[1].response.lower())] + samples[2:],
        samples[:3] + [samples[3].replace(references=samples[3].references[:-1])],
        samples[::-1],
        samples[:3],
        samples + samples[:1],
    ]
    one_pixel = samples[2].image.copy()
    r, g, b = one_pixel.getpixel((5, 7))
    one_pixel.putpixel((5, 7), (r, g, b ^ 1))
    changed.append(samples[:2] + [samples[2].replace(image=one_pixel)] + samples[3:])
    resized = samples[2].image.crop((0, 0, 16, 8))
    changed.append(samples[:2] + [samples[2].replace(image=resized)] + samples[3:])
    prints = [samples_fingerprint(c) for c in changed]
    assert fingerprint not in prints and len(set(prints)) == len(prints)


def test_fingerprint_of_hand_made_samples():
    from robustit.data.sample import Sample

    def sample(text: str, colour=(1, 2, 3)) -> Sample:
        return Sample(id="s", image=Image.new("RGB", (2, 2), colour), instruction="Describe.", response=text)

    assert samples_fingerprint([]) == samples_fingerprint([])
    assert samples_fingerprint([sample("a")]) == samples_fingerprint([sample("a")])
    assert samples_fingerprint([sample("a")]) != samples_fingerprint([sample("b")])
    assert samples_fingerprint([sample("a")]) != samples_fingerprint([sample("a", (1, 2, 4))])
    # field boundaries are unambiguous: moving text between response and references changes it
    a = sample("x").replace(references=["y z"])
    b = sample("x y").replace(references=["z"])
    assert samples_fingerprint([a]) != samples_fingerprint([b])
    # an image given in another mode is fingerprinted by its RGB pixels
    grey = Sample(id="s", image=Image.new("L", (2, 2), 9), instruction="Describe.", response="a")
    assert samples_fingerprint([grey]) == samples_fingerprint([sample("a", (9, 9, 9))])
