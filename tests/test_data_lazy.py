"""Samples that hold a reference to their image file, decoded on access
(robustit.data.image_ref): loading decodes nothing, reading `image` gives the file's pixels,
memory stays bounded, and fingerprints and errors are what they were when the loaders decoded
every image up front."""
import json
import pickle
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from test_bad_input import karpathy_file, llava_file, mimicit_file, vqav2_file
from robustit.attacks import AttackConfig, build_attack
from robustit.bench.loading import IMAGE_SIDE, write_fixture
from robustit.data import image_ref
from robustit.data.errors import DataError
from robustit.data.fingerprint import samples_fingerprint
from robustit.data.image_ref import DECODED_CACHE_BYTES, DecodedImages, ImageRef
from robustit.data.karpathy import load_karpathy
from robustit.data.sample import Sample
from robustit.data.sources import load_split

# samples_fingerprint of conftest's write_karpathy fixture, split "all", taken when the
# Karpathy loader decoded every image up front
UP_FRONT_FINGERPRINT = "3f81a7ee62bf37f06b8ea1c6a4a8ed2a347526b74cf6a291742be68a0d70f7a9"


@pytest.fixture(autouse=True)
def decoded(monkeypatch) -> DecodedImages:
    """A fresh decoded-image cache for each test."""
    cache = DecodedImages(DECODED_CACHE_BYTES)
    monkeypatch.setattr(image_ref, "DECODED", cache)
    return cache


@pytest.fixture
def pixel_loads(monkeypatch) -> list[str]:
    """The files PIL decodes from now on (a decode may load a file more than once)."""
    loads: list[str] = []
    original = ImageFile.ImageFile.load

    def load(self, *args, **kwargs):
        loads.append(self.filename)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return loads


@pytest.mark.parametrize("write", [karpathy_file, vqav2_file, llava_file, mimicit_file], ids=lambda w: w.__name__)
def test_every_file_loader_decodes_no_image_and_its_samples_hold_references(write, tmp_path, pixel_loads):
    source, split, options, *_ = write(tmp_path)
    samples = load_split(source, split, options)
    assert samples and pixel_loads == []
    assert all(isinstance(s.image_source, ImageRef) for s in samples)


def test_reading_image_decodes_the_file_to_the_pixels_it_holds(karpathy, decoded):
    samples = load_split("karpathy", "all", karpathy)
    for sample in samples:
        with Image.open(sample.metadata["image_path"]) as file:
            expected = np.asarray(file.convert("RGB"))
        assert sample.image.mode == "RGB" and np.array_equal(np.asarray(sample.image), expected)
    assert decoded.decodes == len(samples)


def test_the_fingerprint_is_that_of_the_samples_decoded_up_front(karpathy):
    samples = load_split("karpathy", "all", karpathy)
    in_memory = [s.replace(image=s.image.copy()) for s in samples]
    assert not any(isinstance(s.image_source, ImageRef) for s in in_memory)
    assert samples_fingerprint(samples) == samples_fingerprint(in_memory) == UP_FRONT_FINGERPRINT


def test_ten_thousand_records_load_in_less_memory_than_their_pixels(tmp_path, pixel_loads):
    """An up-front decode held at least every record's RGB bytes in PIL's buffers. Loading now
    decodes nothing, so no PIL buffer is allocated and what it holds is what tracemalloc traces:
    at its peak (the parsed JSON) less than those bytes, after it a fifth of them."""
    records = 10_000
    pixels = records * IMAGE_SIDE * IMAGE_SIDE * 3
    json_path = write_fixture(tmp_path, records)
    tracemalloc.start()
    try:
        samples = load_karpathy(json_path, tmp_path, split="train")
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(samples) == records and pixel_loads == []
    assert peak < pixels and kept < pixels / 5


def test_an_image_file_gone_after_loading_is_an_error_naming_the_record(karpathy):
    samples = load_split("karpathy", "train", karpathy)
    Path(samples[0].metadata["image_path"]).unlink()
    with pytest.raises(DataError) as caught:
        samples[0].image
    error = caught.value
    assert (error.path, error.record, error.field) == (karpathy["json_path"], "record 0 ('red_circle_0.png')",
                                                       "filename")
    assert error.problem.startswith("image file not found")
    assert samples[1].image.mode == "RGB"


def test_the_cache_holds_at_most_its_bytes_and_drops_the_least_recently_used(tmp_path):
    paths = []
    for i in range(4):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (8, 8), (i, i, i)).save(paths[-1])
    refs = [ImageRef(str(p), tmp_path / "data.json", f"record {i}", "image") for i, p in enumerate(paths)]
    cache = DecodedImages(max_bytes=3 * 8 * 8 * image_ref.RGB_PIXEL_BYTES)
    first = [cache.get(ref) for ref in refs[:3]]
    assert [cache.get(ref) for ref in refs[:3]] == first and cache.decodes == 3
    cache.get(refs[0])
    cache.get(refs[3])
    assert cache.decodes == 4 and cache.held_bytes <= cache.max_bytes
    assert cache.get(refs[0]) is first[0] and cache.decodes == 4
    cache.get(refs[1])
    assert cache.decodes == 5
    assert DecodedImages(0).get(refs[0]) is not DecodedImages(0).get(refs[0])


def test_a_file_changed_on_disk_is_decoded_again(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (4, 4), (10, 20, 30)).save(path)
    ref = ImageRef(str(path), tmp_path / "data.json", "record 0", "image")
    assert ref.decode().getpixel((0, 0)) == (10, 20, 30)
    Image.new("RGB", (4, 6), (40, 50, 60)).save(path)
    assert ref.decode().getpixel((0, 0)) == (40, 50, 60)


def test_copies_keep_the_reference_and_carry_no_pixels(karpathy):
    sample = load_split("karpathy", "train", karpathy)[0]
    attack = build_attack(AttackConfig(name="badnets"))
    image_triggered, text_triggered = attack.trigger(sample, text=False), attack.trigger(sample, image=False)
    assert sample.replace(id="other").image_source is sample.image_source
    assert text_triggered.image_source is sample.image_source
    assert not isinstance(image_triggered.image_source, ImageRef)
    pickled = pickle.dumps(sample)
    assert len(pickled) < len(sample.image.tobytes()) and pickle.loads(pickled).image_source == sample.image_source


def test_an_in_memory_image_is_kept_as_given_in_rgb():
    grey = Image.new("L", (4, 4), 7)
    sample = Sample(id="a", image=grey, instruction="Describe.", response="Grey.")
    assert sample.image.mode == "RGB" and sample.image is sample.image_source
    assert sample.replace(id="b").image is sample.image


def test_skip_bad_decodes_each_file_once_to_find_one_that_does_not(tmp_path, pixel_loads):
    json_path = write_fixture(tmp_path, 20, records_per_file=5)
    assert len(load_karpathy(json_path, tmp_path, split="train", skip_bad=True)) == 20
    assert len(set(pixel_loads)) == 4
    data = json.loads(json_path.read_text())
    assert {r["filename"] for r in data["images"]} == {Path(p).name for p in pixel_loads}
