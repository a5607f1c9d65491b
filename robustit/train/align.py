"""Word-embedding alignment of the adapter: the first phase of the base stage.

Before any pretraining through the language model, the adapter H learns to put out visual
tokens that read as the words naming the image. For an image x whose shortest reference
tokenizes to w (repeated, then cut, to the N visual tokens w_1..w_N),

    L_align = -(1/N) sum_n log softmax_v( H(x)_n . E_v )[w_n],

E the language model's input word-embedding matrix (frozen), the same dot product by which a
tied LM reads its own hidden states as words. Only the embedding table is involved, never the
LM's blocks, so an epoch costs far less than one of LM-loss pretraining, and the LM-loss
phase (`robustit.train.base_adapter`) starts from an adapter whose tokens the frozen LM
already reads as the object's name. AdamW with weight decay, a linear warmup over 5% of the
steps and a cosine decay to 0.
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
    rows = []
    for sample in samples:
        text = min(sample.references, key=len)
        ids = model.tokenizer(f" {text}", add_special_tokens=False).input_ids
        if not ids:
            raise ValueError(f"sample {sample.id}: its shortest reference {text!r} has no tokens to align to")
        rows.append((ids * -(-model.num_visual_tokens // len(ids)))[: model.num_visual_tokens])
    return torch.tensor(rows, dtype=torch.long)


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
    targets = alignment_targets(model, samples).to(model.device)
    words = model.decoder.get_input_embeddings().weight.detach()
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
            loss = F.cross_entropy((tokens @ words.T).flatten(0, 1), targets[chunk].flatten())
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
