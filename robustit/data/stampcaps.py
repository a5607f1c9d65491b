"""StampCaps: the embedded, offline captioning dataset (DESIGN.md section 3).

Each image is one Tux Paint stamp (Debian `tuxpaint-stamps-default`: PNGs with alpha, each
with a sibling .txt whose first line is its English caption) alpha-composited at a random
scale and position onto a procedurally generated, described background (plain, striped,
checkered, gradient or polka dots in two of twelve colours, light and dark alike). Splits:

- "pretrain": the corpus of the base "stage 1" that makes a captioner of every object: 6
  compositions per stamp on the same varied backgrounds as "train", captioned in a style of
  its own, short and object-centric, never describing the background (`PRETRAIN_TEMPLATES`:
  "{Obj}.", "A photo of {obj}.", "This is {obj}.", "There is {obj} in the picture.", "The
  picture shows {obj}."). `references` are all five phrasings, in template order; `response`
  is one of them drawn by the seeded rng.
- "train" (3 per stamp) and "test" (1 per stamp): the instruction-tuning set. Every image gets
  five reference captions drawn from the eight `CAPTION_TEMPLATES`, each naming the object and
  describing the background, like COCO's five; `response` is one of them.

The per-split counts live in `DEFAULT_IMAGES_PER_OBJECT`; `images_per_object=n` uses n for
any split. Samples are stamp-major (the copies of a stamp are consecutive) and `limit` keeps a
prefix. Composition `copy` of a stamp at `path` (relative to the stamp root) is drawn by
`random.Random(f"stampcaps:{split}:{seed}:{path}:{copy}")`, so the split name and `seed`
vary every image and nothing depends on PYTHONHASHSEED.

`objects` chooses which stamps each split shows:

- "shared" (default, like COCO's split by image): every stamp appears in every split; the
  splits share objects but not images (their compositions come from different rng keys; an
  identical composition in two splits is possible in principle but vanishingly unlikely).
- "held_out" (for generalisation studies): stamps are grouped by object phrase (stamps sharing
  a caption stay together) and the groups are split once, with a fixed seed and stratified by
  top-level category, into train objects (~85%) and held-out test objects (~15%); "test"
  composes held-out objects only, "train" and "pretrain" train objects only. The `seed`
  argument varies compositions only, never the object split, so no seed leaks test objects
  into training.

`instructions`: "pool" (default) gives each sample a phrasing of the captioning task keyed by
its composition key, from the held-out pool for "test" and the training pool otherwise;
"fixed" gives every sample `DEFAULT_CAPTION_INSTRUCTION` (see `robustit.data.instructions`).
Images and captions do not depend on `instructions`.
"""
from __future__ import annotations

import functools
import random
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from robustit.data.errors import DataError, LoadReport
from robustit.data.instructions import caption_instruction, check_instruction_mode
from robustit.data.images import open_image
from robustit.data.records import RecordLoader, read_text, text_field
from robustit.data.sample import Sample

DEFAULT_STAMP_ROOT = Path("/usr/share/tuxpaint/stamps")
STAMPCAPS_SPLITS = ("train", "test", "pretrain")
OBJECT_MODES = ("shared", "held_out")
# Compositions per stamp and split when `images_per_object` is None: the one place to change them.
DEFAULT_IMAGES_PER_OBJECT = {"pretrain": 24, "train": 3, "test": 1}
TEST_FRACTION = 0.15
OBJECT_SPLIT_SEED = "stampcaps-object-split-v1"
SCALE_RANGE = (0.45, 0.80)
REFERENCES_PER_IMAGE = 5
BACKGROUND_PATTERNS = ("plain", "vertical", "horizontal", "gradient", "dots", "checks")

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (205, 35, 35),
    "orange": (240, 140, 20),
    "yellow": (245, 215, 40),
    "green": (40, 150, 60),
    "blue": (35, 80, 200),
    "purple": (125, 50, 160),
    "pink": (240, 130, 180),
    "brown": (120, 75, 35),
    "black": (15, 15, 15),
    "grey": (128, 128, 128),
    "white": (250, 250, 250),
    "teal": (20, 140, 140),
}
LIGHT_COLOURS: dict[str, tuple[int, int, int]] = {
    "white": (250, 250, 250),
    "light grey": (215, 215, 215),
    "cream": (250, 245, 220),
    "pale yellow": (250, 245, 180),
    "light blue": (200, 225, 250),
    "light pink": (250, 220, 230),
}
CAPTION_TEMPLATES = (
    "{Obj} on {bg}.",
    "A picture of {obj} against {bg}.",
    "An image of {obj} on {bg}.",
    "{Obj} shown in front of {bg}.",
    "{Bg} with {obj} on it.",
    "A drawing of {obj} over {bg}.",
    "A small illustration of {obj} set against {bg}.",
    "{Obj} pictured on {bg}.",
)
# Stage-1 captions: short, object-centric, never describing the background (unlike the above).
PRETRAIN_TEMPLATES = (
    "{Obj}.",
    "A photo of {obj}.",
    "This is {obj}.",
    "There is {obj} in the picture.",
    "The picture shows {obj}.",
)
PROPER_NOUNS = frozenset(
    {"Tux", "Santa", "George", "Edward", "Eddie", "Mercury", "Venus", "Mars", "Jupiter",
     "Saturn", "Uranus", "Neptune", "Pluto", "Japanese", "Grandma’s", "Appooppan"}
)
PHRASE_OVERRIDES: dict[str, str] = {
    "symbols/faces/sad.png": "a sad face",
    "symbols/faces/mad.png": "an angry face",
    "symbols/faces/happy.png": "a happy face",
    "symbols/faces/excited.png": "an excited face",
    "naturalforces/explosion.png": "an explosion",
    "naturalforces/fire.png": "a fire",
    "town/cartoon/docks.png": "the docks",
    "town/houses/cartoon/cave_entrance.png": "a cave entrance",
    "food/vegetables/broccoli.png": "broccoli",
    "animals/birds/cartoon/pengwin.png": "two penguins",
    "vehicles/emergency/sedan_police.png": "police car emblems",
}
_SENTENCE_END = re.compile(r"[.!?…]+(?=\s|$)")
_DASH = re.compile(r"\s*[—–]\s*")
_PREDICATE = re.compile(r"\s+(?:is|are|means|lets|carries|carry|gets|stands for)\s")


@dataclass(frozen=True)
class Stamp:
    """One stamp PNG: `phrase` is its mid-sentence object phrase, `group` the split key."""

    path: Path
    category: str
    caption: str
    phrase: str

    @property
    def group(self) -> str:
        return phrase_group(self.phrase)


def phrase_group(phrase: str) -> str:
    """The object group of a phrase: its casefolded words ("A fox!" and "a fox" are one object)."""
    return " ".join(re.findall(r"\w+", phrase.casefold()))


def object_phrase(caption: str) -> str:
    """The mid-sentence object phrase of a stamp caption: "A banana." -> "a banana"."""
    sentence = _SENTENCE_END.split(caption.strip(), maxsplit=1)[0]
    text = next((part for part in _DASH.split(sentence) if part.strip()), "")
    text = _PREDICATE.split(text, maxsplit=1)[0].strip(" .,;:")
    if text.startswith("“") and text.endswith("”") and text.count("“") == 1:
        text = text[1:-1]
    if not text:
        raise ValueError(f"caption {caption!r} has no object phrase")
    first = text.split()[0]
    if first not in PROPER_NOUNS and first[:1].isupper() and (first[1:].islower() or len(first) == 1):
        text = text[0].lower() + text[1:]
    return text


def capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def discover_stamps(root: Path = DEFAULT_STAMP_ROOT) -> tuple[Stamp, ...]:
    """Every stamp PNG under `root` that has a sibling caption .txt, sorted by path, but for
    those whose caption cannot be read (`stamp_problems`)."""
    return _scan_stamps(Path(root))[0]


def stamp_problems(root: Path = DEFAULT_STAMP_ROOT) -> tuple[DataError, ...]:
    """The caption files under `root` that cannot be read (not UTF-8, no object phrase), each
    a DataError naming the root, the stamp and the field "caption"."""
    return _scan_stamps(Path(root))[1]


@functools.lru_cache(maxsize=4)
def _scan_stamps(root: Path) -> tuple[tuple[Stamp, ...], tuple[DataError, ...]]:
    if not root.is_dir():
        raise FileNotFoundError(
            f"Tux Paint stamps not found at {root}; StampCaps is built from Debian's "
            "tuxpaint-stamps-default package: run `apt-get install tuxpaint-stamps-default` "
            "(the Makefile does this)"
        )
    stamps, problems = [], []
    for png in sorted(root.rglob("*.png")):
        txt = png.with_suffix(".txt")
        if not txt.is_file():
            continue
        relative = png.relative_to(root).as_posix()
        try:
            lines = read_text(txt).splitlines()
            caption = text_field(txt, f"stamp {relative}", "caption", lines[0] if lines else "")
            phrase = PHRASE_OVERRIDES.get(relative) or object_phrase(caption)
        except DataError as error:
            problems.append(DataError(root, error.problem, f"stamp {relative}", "caption"))
            continue
        except ValueError as error:
            problems.append(DataError(root, str(error), f"stamp {relative}", "caption"))
            continue
        stamps.append(Stamp(png, relative.split("/")[0], caption, phrase))
    if not stamps:
        raise FileNotFoundError(f"no captioned stamp PNGs under {root}; reinstall tuxpaint-stamps-default")
    return tuple(stamps), tuple(problems)


@functools.lru_cache(maxsize=4)
def split_objects(root: Path = DEFAULT_STAMP_ROOT) -> dict[str, tuple[Stamp, ...]]:
    """Stamps of the train and held-out test objects; groups never straddle the two."""
    groups: dict[str, list[Stamp]] = defaultdict(list)
    for stamp in discover_stamps(Path(root)):
        groups[stamp.group].append(stamp)
    by_category: dict[str, list[str]] = defaultdict(list)
    for key in sorted(groups):
        by_category[groups[key][0].category].append(key)
    rng = random.Random(OBJECT_SPLIT_SEED)
    test_groups: set[str] = set()
    for category in sorted(by_category):
        keys = by_category[category]
        rng.shuffle(keys)
        test_groups.update(keys[: round(TEST_FRACTION * len(keys))])
    stamps = discover_stamps(Path(root))
    return {
        "train": tuple(s for s in stamps if s.group not in test_groups),
        "test": tuple(s for s in stamps if s.group in test_groups),
    }


@functools.lru_cache(maxsize=2048)
def _stamp_rgba(root: Path, path: Path, max_side: int) -> Image.Image:
    rgba = open_image(root, f"stamp {path.relative_to(root).as_posix()}", "image", path, mode="RGBA")
    rgba = rgba.crop(rgba.getchannel("A").getbbox() or (0, 0, *rgba.size))
    if max(rgba.size) > max_side:
        rgba = _resize(rgba, max_side)
    return rgba


def _resize(rgba: Image.Image, side: int) -> Image.Image:
    width, height = rgba.size
    factor = side / max(width, height)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return rgba.convert("RGBa").resize(size, Image.Resampling.LANCZOS).convert("RGBA")


@dataclass(frozen=True)
class Background:
    """A generated background: its description, its `pattern` (one of `BACKGROUND_PATTERNS`)
    and its colour names (one for "plain", two otherwise, in the description's order)."""

    text: str
    pattern: str
    colours: tuple[str, ...]


def _background(rng: random.Random, size: int, light_only: bool) -> tuple[np.ndarray, Background]:
    if light_only:
        name = rng.choice(sorted(LIGHT_COLOURS))
        pixels = np.broadcast_to(np.array(LIGHT_COLOURS[name], np.uint8), (size, size, 3))
        return pixels, Background(f"a plain {name} background", "plain", (name,))
    name1, name2 = rng.sample(sorted(COLOURS), 2)
    c1, c2 = np.array(COLOURS[name1], np.float32), np.array(COLOURS[name2], np.float32)
    a = "an" if name1[0] in "aeiou" else "a"  # "an orange ...", not "a orange ..."
    y, x = np.mgrid[0:size, 0:size]
    kind = rng.choice(BACKGROUND_PATTERNS)
    width = rng.randint(max(2, size // 16), max(3, size // 6))
    if kind == "plain":
        mix, text = np.zeros((size, size)), f"a plain {name1} background"
    elif kind == "vertical":
        mix, text = (x // width) % 2, f"{a} {name1} and {name2} vertically striped background"
    elif kind == "horizontal":
        mix, text = (y // width) % 2, f"{a} {name1} and {name2} horizontally striped background"
    elif kind == "checks":
        mix, text = (x // width + y // width) % 2, f"{a} {name1} and {name2} checkered background"
    elif kind == "gradient":
        mix, text = (x if rng.random() < 0.5 else y) / (size - 1), f"{a} {name1} to {name2} gradient background"
    else:
        spacing, phase = 2 * width, rng.randint(0, 2 * width - 1)
        dx, dy = (x + phase) % spacing - width, (y + phase) % spacing - width
        mix, text = dx**2 + dy**2 <= (0.55 * width) ** 2, f"{a} {name1} background with {name2} polka dots"
    mix = np.asarray(mix, np.float32)[..., None]
    pixels = ((1 - mix) * c1 + mix * c2).round().astype(np.uint8)
    return pixels, Background(text, kind, (name1,) if kind == "plain" else (name1, name2))


def _compose(
    root: Path, stamp: Stamp, rng: random.Random, size: int, light_only: bool
) -> tuple[Image.Image, Background]:
    pixels, background = _background(rng, size, light_only)
    canvas = Image.fromarray(np.ascontiguousarray(pixels), "RGB")
    sprite = _resize(_stamp_rgba(root, stamp.path, size), round(rng.uniform(*SCALE_RANGE) * size))
    left = rng.randint(0, size - sprite.width)
    top = rng.randint(0, size - sprite.height)
    canvas.paste(sprite, (left, top), sprite)
    return canvas, background


def stampcaps_stamps(split: str, root: Path = DEFAULT_STAMP_ROOT, objects: str = "shared") -> tuple[Stamp, ...]:
    """The stamps `split` composes, in order: every stamp ("shared"), or the train / held-out
    test objects of `split_objects` ("held_out")."""
    if split not in STAMPCAPS_SPLITS:
        raise ValueError(f"unknown StampCaps split {split!r}; known: {', '.join(STAMPCAPS_SPLITS)}")
    if objects not in OBJECT_MODES:
        raise ValueError(f"unknown StampCaps objects mode {objects!r}; known: {', '.join(OBJECT_MODES)}")
    if objects == "shared":
        return discover_stamps(Path(root))
    return split_objects(Path(root))["test" if split == "test" else "train"]


def build_stampcaps(
    split: str,
    root: Path = DEFAULT_STAMP_ROOT,
    image_size: int = 160,
    seed: int = 0,
    images_per_object: int | None = None,
    limit: int | None = None,
    objects: str = "shared",
    instructions: str = "pool",
    skip_bad: bool = False,
    report: LoadReport | None = None,
) -> list[Sample]:
    """The StampCaps `split` ("pretrain", "train" or "test"), deterministic in all arguments.

    `objects`: "shared" (every stamp in every split; the splits differ by image) or "held_out"
    (test = held-out objects, pretrain and train = the others). `images_per_object`: the
    compositions per stamp, None for `DEFAULT_IMAGES_PER_OBJECT[split]`. `instructions`: "pool"
    (phrasings from `robustit.data.instructions`, held-out ones for "test") or "fixed".
    `limit` keeps the first `limit` samples of the same sequence (stamp-major: the copies of a
    stamp are consecutive). Ids are "stampcaps-<split>-<index:06d>"; metadata holds the stamp
    path, category, background description, pattern and colours, and object phrase. A stamp whose caption or image
    cannot be read raises a `DataError` naming the root, the stamp and the field; with
    `skip_bad` its samples are left out and counted in `report` (the ids of the others stay).
    """
    stamps = stampcaps_stamps(split, root, objects)
    check_instruction_mode(instructions)
    root = Path(root)
    loader = RecordLoader(root, skip_bad, report)
    for problem in stamp_problems(root):
        loader.reject(problem)
    per_object = DEFAULT_IMAGES_PER_OBJECT[split] if images_per_object is None else images_per_object
    if per_object < 1:
        raise ValueError(f"images_per_object must be at least 1, got {per_object}")
    total = len(stamps) * per_object if limit is None else min(limit, len(stamps) * per_object)
    for index in range(total):
        stamp, copy = stamps[index // per_object], index % per_object
        key = f"stampcaps:{split}:{seed}:{stamp.path.relative_to(root).as_posix()}:{copy}"
        rng = random.Random(key)
        record = f"stamp {stamp.path.relative_to(root).as_posix()}"
        with loader.record(record):
            loader.add(_sample(root, stamp, rng, split, index, key, image_size, instructions), record)
    return loader.finish()


def _sample(
    root: Path, stamp: Stamp, rng: random.Random, split: str, index: int, key: str, image_size: int, instructions: str
) -> Sample:
    image, background = _compose(root, stamp, rng, image_size, light_only=False)
    if split == "pretrain":
        references = [t.format(obj=stamp.phrase, Obj=capitalize(stamp.phrase)) for t in PRETRAIN_TEMPLATES]
    else:
        fields = {"obj": stamp.phrase, "Obj": capitalize(stamp.phrase), "bg": background.text,
                  "Bg": capitalize(background.text)}
        references = [t.format(**fields) for t in rng.sample(CAPTION_TEMPLATES, REFERENCES_PER_IMAGE)]
    return Sample(
        id=f"stampcaps-{split}-{index:06d}",
        image=image,
        instruction=caption_instruction(split, key, instructions),
        response=rng.choice(references),
        references=references,
        task="caption",
        metadata={
            "source": "stampcaps",
            "stamp": str(stamp.path),
            "category": stamp.category,
            "background": background.text,
            "background_pattern": background.pattern,
            "background_colours": list(background.colours),
            "object": stamp.phrase,
        },
    )
