"""LoRA on the language model (peft), an option outside the paper's threat model.

The paper tunes the adapter psi and the embeddings phi only; a user whose threat model lets
the language model's blocks change a little may add low-rank updates to chosen linear layers
of them: each targeted layer W x becomes

    W x + (alpha / rank) * B A dropout(x),   A: rank x d_in, B: d_out x rank,

W frozen, A and B trained (B starts at zero, so the model starts unchanged). peft's
`inject_adapter_in_model` wraps the layers in place; `LoraSettings` says which and how.
Layers of the vision tower or of the adapter (an Idefics decoder holds both) are never
targeted. A starts from a generator seeded 0, so one setting builds one model in every
process.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Collection

import torch
from torch import nn

from robustit.params import FieldError, check_int, check_number

INIT_SEED = 0


@dataclass
class LoraSettings:
    """LoRA layers on the language model: `rank` of each update, its scale `alpha` (the
    update is multiplied by alpha / rank), `dropout` on the update's input while it trains,
    and `target_modules`, names of the language model's linear layers to wrap, each matching
    the layers whose dotted name is it or ends in "." + it ("q_proj": every block's query
    projection; "layers.0.self_attn.q_proj": the first block's)."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])

    def __post_init__(self) -> None:
        check_int(None, "rank", self.rank, 1)
        check_number(None, "alpha", self.alpha, 0.0, math.inf, low_open=True)
        if check_number(None, "dropout", self.dropout, 0.0, 1.0) == 1.0:
            raise FieldError("dropout", "must be below 1 (a dropout of 1 drops the whole update), got 1.0")
        targets = self.target_modules
        if not isinstance(targets, (list, tuple)) or not targets or not all(isinstance(t, str) and t for t in targets):
            raise FieldError("target_modules", f"must be a non-empty list of module names, got {targets!r}")
        self.target_modules = list(targets)


def is_lora_parameter(name: str) -> bool:
    """Whether the dotted parameter name is one of a LoRA layer's own weights (peft's
    `lora_A`, `lora_B` and kin), not the weight of the layer it wraps."""
    return any(part.startswith("lora_") for part in name.split("."))


def lora_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The LoRA weights inside `module`, in named order."""
    return [p for name, p in module.named_parameters() if is_lora_parameter(name)]


def set_lora_dropout(module: nn.Module, active: bool) -> None:
    """Put the dropout of every LoRA layer inside `module` in training mode (`active`) or
    eval mode, whatever mode the layers around it are in."""
    for name, child in module.named_modules():
        if name.rpartition(".")[2] == "lora_dropout":
            child.train(active)


def lora_targets(decoder: nn.Module, settings: LoraSettings, excluded: Collection[int], family: str) -> list[str]:
    """Dotted names of the linear layers of `decoder` that `settings.target_modules` name,
    leaving out layers whose weight is in `excluded` (ids); a ValueError naming each target
    that matches none."""
    candidates = [name for name, module in decoder.named_modules()
                  if isinstance(module, nn.Linear) and id(module.weight) not in excluded]
    chosen: set[str] = set()
    for target in settings.target_modules:
        matched = [name for name in candidates if name == target or name.endswith(f".{target}")]
        if not matched:
            known = sorted({name.rpartition(".")[2] for name in candidates})
            raise ValueError(f"model.lora.target_modules: {target!r} names no linear layer of the {family} language "
                             f"model's blocks; their layers are named {known}")
        chosen.update(matched)
    return sorted(chosen)


def inject_lora(decoder: nn.Module, settings: LoraSettings, excluded: Collection[int], family: str) -> list[str]:
    """Wrap the layers `lora_targets` chooses in peft LoRA layers, in place; returns their names."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = lora_targets(decoder, settings, excluded, family)
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules="|".join(map(re.escape, targets)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INIT_SEED)
        inject_adapter_in_model(config, decoder)
    return targets
