"""Chat prompt layout and completion-only labels.

One sequence is ``user_prefix <image slots> image_suffix instruction user_suffix | response
response_suffix``.
Training and evaluation use this one layout, so clean and triggered prompts never differ
except by the trigger itself. Labels are -100 everywhere but on the response and its eos
token (completion-only loss). A demonstration (one-shot evaluation) comes first as a whole
turn with visual slots of its own:

    user_prefix <demo image slots> image_suffix demo_instruction user_suffix demo_response
    response_suffix turn_separator user_prefix <image slots> image_suffix instruction user_suffix | ...
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


@dataclass(frozen=True)
class PromptFormat:
    """Literal pieces of a chat turn around the image and the instruction. `image_suffix`
    stands between the image slots and the instruction: the begin-of-text token of families
    whose image precedes it (PaliGemma, BLIP-2), the image's closing marker (Idefics3)."""

    user_prefix: str = "<|im_start|>user\n"
    user_suffix: str = "<|im_end|>\n<|im_start|>assistant\n"
    response_suffix: str = "<|im_end|>"
    turn_separator: str = "\n"
    image_suffix: str = ""


@dataclass
class EncodedBatch:
    """Left-padded token ids with the slots where visual tokens go."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    visual_mask: torch.Tensor
    labels: torch.Tensor | None

    def to(self, device: torch.device | str) -> "EncodedBatch":
        return EncodedBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.visual_mask.to(device),
            None if self.labels is None else self.labels.to(device),
        )


def encode_prompts(
    tokenizer,
    fmt: PromptFormat,
    num_visual_tokens: int,
    instructions: list[str],
    responses: list[str] | None = None,
    demonstration: tuple[str, str] | None = None,
) -> EncodedBatch:
    """Token ids for a batch, left-padded; with `responses`, labels cover only the response;
    with a `demonstration` (instruction, response), every row starts with it as a completed
    turn (no labels on it)."""
    pad_id = tokenizer.pad_token_id
    prefix = tokenizer(fmt.user_prefix, add_special_tokens=False).input_ids
    after_image = tokenizer(fmt.image_suffix, add_special_tokens=False).input_ids
    head: list[int] = []
    head_visual: list[bool] = []
    if demonstration is not None:
        turn = after_image + tokenizer(demonstration[0] + fmt.user_suffix, add_special_tokens=False).input_ids
        answer = tokenizer(demonstration[1] + fmt.response_suffix + fmt.turn_separator, add_special_tokens=False).input_ids
        head = prefix + [pad_id] * num_visual_tokens + turn + answer
        head_visual = [False] * len(prefix) + [True] * num_visual_tokens + [False] * (len(turn) + len(answer))
    rows: list[tuple[list[int], list[bool], list[int]]] = []
    for i, instruction in enumerate(instructions):
        prompt = after_image + tokenizer(instruction + fmt.user_suffix, add_special_tokens=False).input_ids
        ids = head + prefix + [pad_id] * num_visual_tokens + prompt
        visual = head_visual + [False] * len(prefix) + [True] * num_visual_tokens + [False] * len(prompt)
        labels = [IGNORE_INDEX] * len(ids)
        if responses is not None:
            answer = tokenizer(responses[i] + fmt.response_suffix, add_special_tokens=False).input_ids
            ids = ids + answer
            visual = visual + [False] * len(answer)
            labels = labels + answer
        rows.append((ids, visual, labels))
    width = max(len(r[0]) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    visual_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    label_ids = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for i, (ids, visual, labels) in enumerate(rows):
        start = width - len(ids)
        input_ids[i, start:] = torch.tensor(ids)
        attention[i, start:] = 1
        visual_mask[i, start:] = torch.tensor(visual)
        label_ids[i, start:] = torch.tensor(labels)
    return EncodedBatch(input_ids, attention, visual_mask, label_ids if responses is not None else None)
