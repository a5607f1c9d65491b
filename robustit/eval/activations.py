"""Per-channel adapter activation of tuned runs (paper appendix E, the motivation of AAR).

For a model and images x_1..x_n, at the adapter's activation site (the output AAR masks,
X of shape n x ... x D):

    a_d = mean_{all but d} |X_{..., d}|,
    peak ratio = max_d a_d / median_d a_d,    top-1% share = sum of the ceil(D / 100) largest a_d / sum_d a_d.

`figure` draws a_d against the channel index d, one panel per run (e.g. VanillaIT tuned on
clean data above VanillaIT tuned on poisoned data), on the same triggered test inputs.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from robustit.atomic import write_atomic
from robustit.models.base import VisionLanguageModel
from robustit.models.features import FeatureCache
from robustit.plotting import png_bytes, pyplot


@torch.no_grad()
def channel_activations(model: VisionLanguageModel, images: Sequence[Image.Image], batch_size: int = 32) -> torch.Tensor:
    """a (D,): mean absolute activation of each channel of the adapter's activation site."""
    seen: list[torch.Tensor] = []

    def record(activations: torch.Tensor) -> torch.Tensor:
        seen.append(activations.detach().abs().float().flatten(0, -2).cpu())
        return activations

    features = FeatureCache(model)
    remove = model.add_adapter_hook(record)
    try:
        model.eval()
        for start in range(0, len(images), batch_size):
            model.adapter(features.features(images[start : start + batch_size]))
    finally:
        remove()
    return torch.cat(seen).mean(0)


def peak_statistics(activation: torch.Tensor) -> dict[str, float]:
    """Peak ratio and top-1% share of a channel activation vector (see the module docstring)."""
    top = activation.topk(math.ceil(activation.numel() / 100)).values
    return {
        "peak_ratio": float(activation.max() / activation.median()),
        "top1pct_share": float(top.sum() / activation.sum()),
        "mean": float(activation.mean()),
    }


def figure(labels: Sequence[str], activations: Sequence[torch.Tensor], path: Path) -> Path:
    """The per-channel bar charts, one panel per run, sharing the y axis, as a PNG."""
    plt = pyplot()
    fig, axes = plt.subplots(len(labels), 1, figsize=(9, 2.4 * len(labels)), sharex=True, sharey=True, squeeze=False)
    for axis, label, activation in zip(axes[:, 0], labels, activations):
        stats = peak_statistics(activation)
        axis.bar(range(activation.numel()), activation.numpy(), width=1.0, color="tab:blue")
        axis.set_title(f"{label}: peak/median {stats['peak_ratio']:.1f}, top-1% share {100 * stats['top1pct_share']:.1f}%", fontsize=9)
        axis.set_ylabel("mean |activation|")
    axes[-1, 0].set_xlabel("adapter channel")
    fig.tight_layout()
    return write_atomic(path, png_bytes(fig))
