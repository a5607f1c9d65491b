"""AAR: anomalous activation regularization (paper section 3.4, DESIGN.md section 5.1).

On the adapter's activation site (`hook_point`; X of shape ... x D, e.g. B x N x D or
B x T x N x D), with importance momentum beta and keep ratio gamma:

    b_d = - mean_{all but d} |X_{..., d}|                  batch importance (high = weakly activated)
    g  <- b                                                on the first batch
    g  <- beta * g + (1 - beta) * b                        on every later one
    M_d = 1[d in top_k(g)],  k = floor(gamma * D)          keep the k least activated channels
    X  <- X * M                                            M broadcast over every axis but the last.

While training, the first adapter pass of each step (the first forwarded view) updates g
and M from its own activations before the mask is applied, so the mask of step t uses
b^t as in the paper's equations (10)-(11); later passes of that step (e.g. IDR's
adapter-only pass) reuse M. Training runs from `prepare` to `finalize`; the mask then stays
fixed, and `at_inference` says whether evaluation applies it (the adapter learned with it
on, so it defaults to on).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch

from robustit.data.sample import Sample
from robustit.defenses.base import Defense, DefenseConfig, register_defense
from robustit.params import check_choice, check_number
from robustit.models.base import VisionLanguageModel


@contextmanager
def hooked_adapter(model: VisionLanguageModel, hook: Callable[[torch.Tensor], torch.Tensor] | None) -> Iterator[None]:
    """`hook` on the adapter's activation site for the block (nothing where None)."""
    if hook is None:
        yield
        return
    remove = model.add_adapter_hook(hook)
    try:
        yield
    finally:
        remove()


def batch_importance(activations: torch.Tensor) -> torch.Tensor:
    """b (D,): minus the mean absolute activation of each channel over all but the last axis."""
    return -activations.detach().abs().float().flatten(0, -2).mean(0)


def keep_mask(importance: torch.Tensor, gamma: float) -> torch.Tensor:
    """The {0, 1} mask (D,) keeping the floor(gamma * D) channels of highest importance."""
    keep = math.floor(gamma * importance.numel() + 1e-9)
    if keep < 1:
        raise ValueError(f"gamma={gamma} keeps no channel of {importance.numel()}")
    mask = torch.zeros_like(importance)
    mask[importance.topk(keep).indices] = 1.0
    return mask


@register_defense
class AAR(Defense):
    name = "aar"
    defaults = {"gamma": 0.5, "beta": 0.9, "at_inference": True}

    def __init__(self, config: DefenseConfig) -> None:
        super().__init__(config)
        self.gamma = check_number(self.label, "gamma", self.params["gamma"], 0.0, 1.0, low_open=True)
        self.beta = check_number(self.label, "beta", self.params["beta"], 0.0, 1.0)
        self.at_inference: bool = check_choice(self.label, "at_inference", self.params["at_inference"], (True, False))
        self.importance: torch.Tensor | None = None
        self.mask: torch.Tensor | None = None
        self.training = False
        self._updated = False

    def update(self, activations: torch.Tensor) -> None:
        """Fold the batch importance of `activations` into g and rebuild the mask."""
        b = batch_importance(activations)
        self.importance = b if self.importance is None else self.beta * self.importance + (1 - self.beta) * b
        self.mask = keep_mask(self.importance, self.gamma)

    def prepare(self, model: VisionLanguageModel, dataset: Sequence[Sample]) -> None:
        self.training, self._updated = True, False

    def adapter_hook(self, activations: torch.Tensor) -> torch.Tensor:
        if self.training and not self._updated:
            self.update(activations)
            self._updated = True
        if self.mask is None:
            return activations
        return activations * self.mask.to(activations.device, activations.dtype)

    def after_step(self, step: int) -> None:
        self._updated = False

    def finalize(self, model: VisionLanguageModel) -> None:
        self.training = False

    @contextmanager
    def inference(self, model: VisionLanguageModel) -> Iterator[None]:
        with hooked_adapter(model, self.adapter_hook if self.at_inference and self.mask is not None else None):
            yield

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.importance is None or self.mask is None:
            return {}
        return {"importance": self.importance.detach().cpu(), "mask": self.mask.detach().cpu()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) - {"importance", "mask"}:
            raise ValueError(f"defense {self.name!r} state holds importance and mask, got {sorted(state)}")
        self.importance, self.mask = state.get("importance"), state.get("mask")
