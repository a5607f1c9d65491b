"""Word-embedding alignment of the adapter: the first phase of the base stage.

Before any pretraining through the language model, the adapter H learns to put out visual
tokens that the frozen LM reads as the words naming the image, at the place and the scale of
those words' input embeddings. For an image x whose shortest reference tokenizes to w
(repeated, then cut, to the N visual tokens w_1..w_N), with E the LM's input word-embedding
matrix (frozen) and V the token ids occurring in the targets of the whole corpus,

    L_align = (1/N) sum_n [ -log softmax_{v in V}( s * cos(H(x)_n, E_v) )[w_n]
                            + lambda * |H(x)_n - E_{w_n}|^2 / |E_{w_n}|^2 ],

s = `align_scale`, lambda = `align_distance_weight`. The cosine logits tell the words apart
by direction; the second term pulls each token onto its word's embedding itself. Both are
needed: a plain dot product with E rewards tokens of ever larger norm, and the cosine logits
alone leave tokens that point nearest to the right word but far from it (cosine about 0.6),
where the frozen LM reads neither as the word; it reads a token as the word only close to
its embedding. The softmax runs over the corpus's own
vocabulary V: the words the tokens must tell apart, at a small share of the cost of all of E.
Only the embedding table is involved, never the LM's blocks. AdamW with weight decay, a
linear warmup over 5% of the steps and a cosine decay to 0.
"""
from __future__ import annotations

import math
import random
from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from robustit.data.sample import Sample
from robustit.models.base import VisionLanguageModel
from robustit.models.features import FeatureCache
from robustit.train.config import PretrainConfig

WARMUP_SHARE = 0.05


def alignment_targets(model: VisionLanguageModel, samples: Sequence[Sample]) -> torch.Tensor:
    """n x N token ids: each sample's shortest reference, tokenized with a leading space,
    repeated and cut to the N visual tokens."""
    if model.num_visual_tokens == 0:
        raise ValueError(f"family {model.family!r} reads its visual tokens by cross-attention, not from prompt slots, so "
                         "they have no word embeddings to align to; start from the released adapter (model.base: null)")
    rows = []
    for sample in samples:
        text = min(sample.references, key=len)
        ids = model.tokenizer(f" {text}", add_special_tokens=False).input_ids
        if not ids:
            raise ValueError(f"sample {sample.id}: its shortest reference {text!r} has no tokens to align to")
        rows.append((ids * -(-model.num_visual_tokens // len(ids)))[: model.num_visual_tokens])
    return torch.tensor(rows, dtype=torch.long)


def alignment_loss(
    tokens: torch.Tensor, targets: torch.Tensor, words: torch.Tensor, scale: float, distance_weight: float
) -> torch.Tensor:
    """L_align of B x N visual `tokens` for B x N `targets`, indices into the rows of `words`
    (the embeddings of the vocabulary V)."""
    cosine = F.normalize(tokens, dim=-1) @ F.normalize(words, dim=-1).T
    choice = F.cross_entropy(scale * cosine.flatten(0, 1), targets.flatten())
    target = words[targets]
    distance = (tokens - target).pow(2).sum(-1) / target.pow(2).sum(-1)
    return choice + distance_weight * distance.mean()


def align_adapter(
    model: VisionLanguageModel,
    samples: Sequence[Sample],
    config: PretrainConfig,
    features: FeatureCache | None = None,
    progress: bool = True,
) -> list[float]:
    """Train the adapter of `model` in place on L_align over `samples` for
    `config.align_epochs` epochs; returns the loss of each step."""
    features = features if features is not None else FeatureCache(model)
    targets = alignment_targets(model, samples)
    vocabulary, targets = torch.unique(targets, return_inverse=True)
    targets = targets.to(model.device)
    words = model.decoder.get_input_embeddings().weight.detach()[vocabulary.to(model.device)]
    batch = config.align_batch_size
    per_epoch = -(-len(samples) // batch)
    total = max(1, round(config.align_epochs * per_epoch))
    warmup = max(1, round(WARMUP_SHARE * total))
    optimizer = torch.optim.AdamW(model.adapter.parameters(), lr=config.align_lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda t: t / warmup if t < warmup else 0.5 * (1 + math.cos(math.pi * (t - warmup) / max(1, total - warmup)))
    )
    order = random.Random(f"align:{config.seed}")
    model.adapter.train()
    losses: list[float] = []
    bar = tqdm(total=total, desc="aligning", disable=not progress, unit="step")
    while len(losses) < total:
        indices = list(range(len(samples)))
        order.shuffle(indices)
        for start in range(0, len(indices), batch):
            chunk = indices[start : start + batch]
            tokens = model.adapter(features.features([samples[i].image for i in chunk]))
            loss = alignment_loss(tokens, targets[chunk], words, config.align_scale, config.align_distance_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.adapter.parameters(), config.max_grad_norm)
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if len(losses) >= total:
                break
    bar.close()
    model.adapter.eval()
    return losses
