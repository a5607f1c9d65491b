"""Batched greedy generation over samples, with frozen features from the cache, zero-shot or
after one in-context demonstration."""
from __future__ import annotations

from typing import Sequence

from tqdm.auto import tqdm

from robustit.data.sample import Sample
from robustit.models.base import Demonstration, VisionLanguageModel
from robustit.models.features import FeatureCache


def generate_responses(
    model: VisionLanguageModel,
    samples: Sequence[Sample],
    features: FeatureCache,
    batch_size: int = 32,
    max_new_tokens: int = 24,
    desc: str = "generating",
    progress: bool = True,
    demonstration: Sample | None = None,
) -> list[str]:
    """One greedy response per sample, in order, with the training prompt layout; with a
    `demonstration`, every sample's prompt follows it (its image, instruction and response)."""
    model.eval()
    shown = None
    if demonstration is not None:
        shown = Demonstration(features.features([demonstration.image])[0], demonstration.instruction, demonstration.response)
    outputs: list[str] = []
    starts = range(0, len(samples), batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, unit="batch"):
        chunk = [samples[i] for i in range(start, min(start + batch_size, len(samples)))]
        feats = features.features([s.image for s in chunk])
        outputs.extend(model.generate(feats, [s.instruction for s in chunk], max_new_tokens, shown))
    return outputs
