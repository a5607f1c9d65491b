"""Pruning baselines of the RobustIT paper (appendix F, C.5), on the trainable adapter.

Both count with k(rate, n) = floor(rate * n) (the product's rounding error aside, as AAR's
keep count) and break ties between equal values by the lower (row-major) index.

Fine-Pruning (`fine-pruning`; Liu et al. 2018, adapted from a CNN's last convolutional layer
to the adapter's activation site, `hook_point`, the site AAR masks). After the last step
(`finalize`), on m = min(`samples`, n) training inputs chosen uniformly without replacement by
random.Random(`seed`) among the n stripped samples handed to `prepare`, with X the site's
output (... x D) under the tuned weights (eval mode, no gradient, no mask yet):

    a_d = mean over the m inputs and every other axis of |X_{..., d}|   channel activation
    P   = the k(rate, D) channels of smallest a                         the least active ones
    M_d = 0 for d in P, 1 otherwise;   X <- X * M                        at test time only.

Liu et al. prune in order of increasing activation until clean validation accuracy drops by a
set margin, then fine-tune on clean data; the defense has no clean held-out data (only the
possibly poisoned training set) and `finalize` is not given the tuning's settings, so it prunes
a fixed share, `rate` 0.2 by default (the share of the paper's magnitude-pruning baseline), and
does not fine-tune again. `seed: null` takes torch's seed, which `train` sets to train.seed.
Cost: the activation pass runs once, after tuning, through the adapter alone, in batches of
`BATCH_SIZE` inputs; each batch counts one pass in `extra_forward_passes`, the unit of the
loop's adapter-only passes (IDR's).

Magnitude pruning (`magnitude-pruning`): "20% magnitude pruning of the adapter before each
forward pass". The pruned tensors are the adapter's trainable weight matrices: parameters whose
name ends in "weight" with two or more dimensions (linear, convolution and attention
projections); biases, norms, learned latents or query tokens and gates are left as they are.
Before every forward pass of the adapter (a forward pre-hook, from `prepare` to `finalize`,
and in the `inference` block), each such W with n entries is pruned in place:

    P = the k(rate, n) entries of smallest |W| (flattened, row-major),   W_P <- 0.

Pruning is idempotent (a pruned W holds k zeros, which are its k smallest), so a pass whose
weights have not changed since the last one writes nothing, and several passes in one step do
not disturb autograd. Pruned entries still get gradients: an optimizer step may move them off
zero, and the next forward pass prunes again, by the new magnitudes. `finalize` prunes once
more, so the saved checkpoint holds the pruned adapter; the `inference` block restores the
weights it found when it ends. No extra forward pass.
"""
from __future__ import annotations

import math
import random
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from PIL import Image
from torch import nn
from torch.utils.hooks import RemovableHandle

from robustit.data.sample import Sample
from robustit.defenses.aar import hooked_adapter
from robustit.defenses.base import Defense, DefenseConfig, register_defense
from robustit.defenses.plausibility import batches, frozen
from robustit.defenses.views import run_seed
from robustit.models.base import VisionLanguageModel
from robustit.models.features import FeatureCache
from robustit.params import check_int, check_number

BATCH_SIZE = 32


def smallest(values: torch.Tensor, rate: float) -> torch.Tensor:
    """Flat indices of the floor(rate * n) smallest of the n `values`, ties to the lower index."""
    count = math.floor(rate * values.numel() + 1e-9)
    return values.detach().flatten().argsort(stable=True)[:count]


def pruning_mask(activation: torch.Tensor, rate: float) -> torch.Tensor:
    """The {0, 1} mask (D,) that zeroes the floor(rate * D) channels of smallest `activation`."""
    mask = torch.ones_like(activation)
    mask[smallest(activation, rate)] = 0.0
    return mask


def channel_activation(model: VisionLanguageModel, images: Sequence[Image.Image]) -> tuple[torch.Tensor, int]:
    """(a (D,), passes): the mean |X| of each channel of the adapter's activation site over
    `images` and every other axis, and the adapter passes it took."""
    totals: list[torch.Tensor] = []
    counts: list[int] = []

    def record(activations: torch.Tensor) -> torch.Tensor:
        flat = activations.detach().abs().flatten(0, -2)
        totals.append(flat.sum(0, dtype=torch.float64))
        counts.append(flat.shape[0])
        return activations

    features = FeatureCache(model)
    remove = model.add_adapter_hook(record)
    try:
        with frozen(model):
            for chunk in batches(images, BATCH_SIZE, "fine-pruning activations", progress=False):
                model.adapter(features.features(chunk))
    finally:
        remove()
    return (torch.stack(totals).sum(0) / sum(counts)).float().cpu(), len(totals)


def pruned_weights(adapter: nn.Module) -> list[nn.Parameter]:
    """The adapter's trainable weight matrices: names ending in "weight", two dimensions or more."""
    return [p for name, p in adapter.named_parameters() if p.requires_grad and p.dim() >= 2 and name.endswith("weight")]


@torch.no_grad()
def prune_smallest_(weight: torch.Tensor, rate: float) -> None:
    """Zero the floor(rate * n) entries of smallest |weight| in place; nothing is written when
    they are zero already."""
    flat = weight.view(-1)
    indices = smallest(flat.abs(), rate)
    if flat[indices].any():
        flat[indices] = 0


def register_pruning(adapter: nn.Module, rate: float) -> RemovableHandle:
    """A forward pre-hook that prunes the adapter's weight matrices before each of its passes."""
    weights = pruned_weights(adapter)

    def prune(module: nn.Module, inputs: tuple) -> None:
        for weight in weights:
            prune_smallest_(weight, rate)

    return adapter.register_forward_pre_hook(prune)


@register_defense
class FinePruning(Defense):
    name = "fine-pruning"
    test_time_only = True
    defaults = {"rate": 0.2, "samples": 256, "seed": None}

    def __init__(self, config: DefenseConfig) -> None:
        super().__init__(config)
        self.rate = check_number(self.label, "rate", self.params["rate"], 0.0, 1.0)
        self.samples = check_int(self.label, "samples", self.params["samples"], 1)
        if self.params["seed"] is not None:
            check_int(self.label, "seed", self.params["seed"], 0)
        self.images: list[Image.Image] = []
        self.activation: torch.Tensor | None = None
        self.mask: torch.Tensor | None = None

    def prepare(self, model: VisionLanguageModel, dataset: Sequence[Sample]) -> None:
        """Choose the inputs the activations will be measured on."""
        seed = run_seed(self.params["seed"])
        chosen = sorted(random.Random(seed).sample(range(len(dataset)), min(self.samples, len(dataset))))
        self.images = [dataset[i].image for i in chosen]
        self.activation = self.mask = None

    def finalize(self, model: VisionLanguageModel) -> None:
        activation, passes = channel_activation(model, self.images)
        self.extra_forward_passes += passes
        self.activation, self.mask = activation, pruning_mask(activation, self.rate)

    def adapter_hook(self, activations: torch.Tensor) -> torch.Tensor:
        if self.mask is None:
            return activations
        return activations * self.mask.to(activations.device, activations.dtype)

    @contextmanager
    def inference(self, model: VisionLanguageModel) -> Iterator[None]:
        with hooked_adapter(model, self.adapter_hook if self.mask is not None else None):
            yield

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.activation is None or self.mask is None:
            return {}
        return {"activation": self.activation.detach().cpu(), "mask": self.mask.detach().cpu()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state and set(state) != {"activation", "mask"}:
            raise ValueError(f"defense {self.name!r} state holds activation and mask, got {sorted(state)}")
        self.activation, self.mask = state.get("activation"), state.get("mask")


@register_defense
class MagnitudePruning(Defense):
    name = "magnitude-pruning"
    defaults = {"rate": 0.2}

    def __init__(self, config: DefenseConfig) -> None:
        super().__init__(config)
        self.rate = check_number(self.label, "rate", self.params["rate"], 0.0, 1.0)
        self.handle: RemovableHandle | None = None

    def prepare(self, model: VisionLanguageModel, dataset: Sequence[Sample]) -> None:
        self._remove()
        self.handle = register_pruning(model.adapter, self.rate)

    def finalize(self, model: VisionLanguageModel) -> None:
        self._remove()
        for weight in pruned_weights(model.adapter):
            prune_smallest_(weight, self.rate)

    def _remove(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None

    @contextmanager
    def inference(self, model: VisionLanguageModel) -> Iterator[None]:
        weights = pruned_weights(model.adapter)
        found = [weight.detach().clone() for weight in weights]
        handle = register_pruning(model.adapter, self.rate)
        try:
            yield
        finally:
            handle.remove()
            with torch.no_grad():
                for weight, value in zip(weights, found):
                    weight.copy_(value)
