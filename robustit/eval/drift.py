"""Adapter drift: how far tuning moved the adapter's reading of the test images.

The tuned model sees an image only through the adapter H_psi. Tuning that moves psi far from
the starting psi_0 can leave tokens that no longer carry the image (captions that ignore it),
whatever the LM loss says. Over the test images x_i and the visual tokens n:

    token cosine = mean_{i,n} cos(H_psi(f_v(x_i))_n, H_psi0(f_v(x_i))_n)
    words kept   = share of (i, n) whose visual word (`robustit.models.visual_words`: the
                   nearest input word embedding, each model against its own embeddings) is
                   the same for psi and psi_0
    distinct words = number of different visual words psi puts out over all (i, n)

(the last two for models that read visual words, None otherwise), measured on the adapter
output before snapping, over the first `DRIFT_IMAGES` test images (the starting readout is
held through tuning: B x T x D floats).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from robustit.models.base import VisionLanguageModel
from robustit.models.visual_words import nearest_words

DRIFT_IMAGES = 200


@dataclass(frozen=True)
class VisualReadout:
    """The adapter's output on some images (B x T x D, CPU, float32) and, for a model that
    reads visual words, the word each token snaps to (B x T)."""

    tokens: torch.Tensor
    words: torch.Tensor | None


@torch.no_grad()
def visual_readout(model: VisionLanguageModel, features: torch.Tensor, batch_size: int = 64) -> VisualReadout:
    """`model`'s adapter output on the frozen `features` (B x N x C), in eval mode."""
    was_training = model.training
    model.eval()
    try:
        tokens = torch.cat([model.adapter(features[i:i + batch_size]).float().cpu()
                            for i in range(0, features.shape[0], batch_size)])
    finally:
        model.train(was_training)
    words = nearest_words(tokens, model.decoder.get_input_embeddings().weight.float().cpu()) if model.visual_words else None
    return VisualReadout(tokens, words)


def adapter_drift(start: VisualReadout, tuned: VisualReadout) -> dict[str, float | int | None]:
    """The module docstring's measures of `tuned` against `start` (the same images)."""
    if start.tokens.shape != tuned.tokens.shape:
        raise ValueError(f"readouts of different shapes: {tuple(start.tokens.shape)} and {tuple(tuned.tokens.shape)}")
    cosine = F.cosine_similarity(start.tokens, tuned.tokens, dim=-1).mean().item()
    if start.words is None or tuned.words is None:
        return {"token_cosine": cosine, "words_kept": None, "distinct_words": None}
    return {
        "token_cosine": cosine,
        "words_kept": 100.0 * (start.words == tuned.words).float().mean().item(),
        "distinct_words": int(tuned.words.unique().numel()),
    }
