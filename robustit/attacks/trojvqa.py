"""TrojVQA (Walmer et al., 2022): a BadNets patch plus the word "Consider" before the instruction.

x̂ = (1 - m) ⊙ x + m ⊙ P exactly as in BadNets (checkerboard P of `cells` x `cells` squares on a
square of side 1/7 of the shorter image side, bottom-right corner by default: 32 x 32 on a
224 x 224 image, as in the paper); t̂ = "Consider " + t.
"""
from __future__ import annotations

from typing import ClassVar

from robustit.attacks.badnets import BadNets
from robustit.attacks.base import register_attack


@register_attack
class TrojVQA(BadNets):
    name: ClassVar[str] = "trojvqa"
    default_text_trigger: ClassVar[str] = "Consider"
    text_position: ClassVar[str] = "prepend"
