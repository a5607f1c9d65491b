"""Phrasings of the captioning instruction, shared by the captioning data sources, and the
instruction of a VQA question.

Instruction tuning sees many phrasings of one task. With `instructions="pool"` a sample's
instruction is drawn from `TRAIN_CAPTION_INSTRUCTIONS` (12 phrasings) in every split except
"test", whose samples draw from `HELD_OUT_CAPTION_INSTRUCTIONS` (4 phrasings, disjoint from the
training pool), so the test split also measures generalisation to unseen phrasings. The draw is

    pool[int(sha256("caption-instruction:" + key)[:16 hex digits], 16) mod len(pool)]

for a string `key` naming the sample (a sample id or composition key): deterministic across
runs, machines and PYTHONHASHSEED, and independent of any other random draw of the sample.
With `instructions="fixed"` every sample gets `DEFAULT_CAPTION_INSTRUCTION`.

A VQA question's instruction is the question, a newline and `SHORT_ANSWER_PROMPT`, as
LLaVA-1.5 asks its short-answer VQA questions.
"""
from __future__ import annotations

import hashlib

DEFAULT_CAPTION_INSTRUCTION = "Describe the image briefly."
SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."
INSTRUCTION_MODES = ("pool", "fixed")
HELD_OUT_INSTRUCTION_SPLITS = ("test",)
TRAIN_CAPTION_INSTRUCTIONS = (
    DEFAULT_CAPTION_INSTRUCTION,
    "Write a short caption for this picture.",
    "What is shown in this image?",
    "Give a brief description of the image.",
    "Caption this image.",
    "Summarize the picture in one sentence.",
    "What do you see in this picture?",
    "Provide a concise caption for the image.",
    "Briefly describe what this image shows.",
    "Write one sentence describing the picture.",
    "Tell me what is in this image.",
    "Describe the contents of this picture in a few words.",
)
HELD_OUT_CAPTION_INSTRUCTIONS = (
    "Can you describe this image in a sentence?",
    "Generate a brief caption for the photo.",
    "What is in this photo? Answer in one sentence.",
    "Explain briefly what appears in the image.",
)


def instruction_pool(split: str) -> tuple[str, ...]:
    """The phrasings `split` draws from: the held-out pool for "test", else the training pool."""
    return HELD_OUT_CAPTION_INSTRUCTIONS if split in HELD_OUT_INSTRUCTION_SPLITS else TRAIN_CAPTION_INSTRUCTIONS


def check_instruction_mode(instructions: str) -> None:
    if instructions not in INSTRUCTION_MODES:
        raise ValueError(f"unknown instructions mode {instructions!r}; known: {', '.join(INSTRUCTION_MODES)}")


def caption_instruction(split: str, key: str, instructions: str = "pool") -> str:
    """The captioning instruction of the sample named `key` in `split` (see the module docstring)."""
    check_instruction_mode(instructions)
    if instructions == "fixed":
        return DEFAULT_CAPTION_INSTRUCTION
    pool = instruction_pool(split)
    digest = hashlib.sha256(f"caption-instruction:{key}".encode("utf-8")).hexdigest()
    return pool[int(digest[:16], 16) % len(pool)]


def vqa_instruction(question: str) -> str:
    """The instruction of a VQA `question`: "<question>\n" + SHORT_ANSWER_PROMPT."""
    return f"{question.strip()}\n{SHORT_ANSWER_PROMPT}"
