"""robustit.data.instructions: the pools of captioning phrasings and the keyed draw."""
import os
import subprocess
import sys
from collections import Counter

import pytest

from robustit.data.instructions import (
    DEFAULT_CAPTION_INSTRUCTION,
    HELD_OUT_CAPTION_INSTRUCTIONS,
    INSTRUCTION_MODES,
    TRAIN_CAPTION_INSTRUCTIONS,
    caption_instruction,
    instruction_pool,
)


def test_pools_are_disjoint_distinct_and_sized():
    assert len(TRAIN_CAPTION_INSTRUCTIONS) == len(set(TRAIN_CAPTION_INSTRUCTIONS)) == 12
    assert len(HELD_OUT_CAPTION_INSTRUCTIONS) == len(set(HELD_OUT_CAPTION_INSTRUCTIONS)) == 4
    assert not set(TRAIN_CAPTION_INSTRUCTIONS) & set(HELD_OUT_CAPTION_INSTRUCTIONS)
    normalised = lambda pool: {" ".join(t.lower().split()) for t in pool}  # noqa: E731
    assert not normalised(TRAIN_CAPTION_INSTRUCTIONS) & normalised(HELD_OUT_CAPTION_INSTRUCTIONS)
    assert DEFAULT_CAPTION_INSTRUCTION == "Describe the image briefly."
    assert DEFAULT_CAPTION_INSTRUCTION in TRAIN_CAPTION_INSTRUCTIONS
    assert all(t.strip() == t and t.endswith((".", "?")) for t in TRAIN_CAPTION_INSTRUCTIONS + HELD_OUT_CAPTION_INSTRUCTIONS)


@pytest.mark.parametrize("split, pool", [
    ("test", HELD_OUT_CAPTION_INSTRUCTIONS),
    ("train", TRAIN_CAPTION_INSTRUCTIONS),
    ("pretrain", TRAIN_CAPTION_INSTRUCTIONS),
    ("val", TRAIN_CAPTION_INSTRUCTIONS),
    ("all", TRAIN_CAPTION_INSTRUCTIONS),
])
def test_test_split_draws_held_out_phrasings_and_others_training_ones(split, pool):
    assert instruction_pool(split) == pool
    drawn = Counter(caption_instruction(split, f"sample-{i}") for i in range(600))
    assert set(drawn) == set(pool)  # every phrasing is used ...
    assert max(drawn.values()) < 3 * 600 / len(pool)  # ... about evenly


def test_draw_is_deterministic_in_the_key_and_varies_with_it():
    keys = [f"coco-{i}" for i in range(50)]
    first = [caption_instruction("train", k) for k in keys]
    assert first == [caption_instruction("train", k, "pool") for k in keys]
    assert len(set(first)) > 5


def test_draw_does_not_depend_on_the_hash_seed():
    code = "from robustit.data.instructions import caption_instruction as c; print([c('train', str(i)) for i in range(20)])"
    outputs = {
        subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": seed}, capture_output=True, text=True, check=True).stdout
        for seed in ("1", "2")
    }
    assert len(outputs) == 1
    assert outputs.pop().strip() == str([caption_instruction("train", str(i)) for i in range(20)])


def test_fixed_mode_is_the_single_default_instruction():
    assert INSTRUCTION_MODES == ("pool", "fixed")
    assert {caption_instruction(split, str(i), "fixed") for split in ("train", "test") for i in range(30)} == {
        DEFAULT_CAPTION_INSTRUCTION
    }


def test_unknown_mode():
    with pytest.raises(ValueError, match="unknown instructions mode 'random'"):
        caption_instruction("train", "x", "random")
