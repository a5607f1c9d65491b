"""Visual words: visual tokens snapped onto the language model's own input word embeddings.

An adapter trained by word-embedding alignment (`robustit.train.align`) puts out tokens that
point at the words naming the image but sit near, not on, their embeddings, and the frozen
LM reads a token as a word only close to it. Snapping reads each token as its nearest word
(the image becomes a phrase in the LM's vocabulary, as in language-quantised autoencoders):

    forward:   t~_n = E_{k_n},   k_n = argmax_v cos(t_n, E_v)
    backward:  d t~_n / d t_n  through  sum_{v in K_n} softmax_{v in K_n}(s cos(t_n, E_v)) E_v,

E the input word-embedding matrix, K_n the `SOFT_NEIGHBOURS` words nearest t_n and s =
`SOFT_SCALE`: a straight-through estimator, so the adapter keeps a gradient. The chosen rows
E_{k_n} receive the gradient of the tokens as embeddings of written words do (through
`F.embedding`, whose CPU backward sums the rows of repeated words in a fixed order, where
indexing E[k] accumulates them in thread order and makes runs with several threads differ in
the last bits); the choice itself gives E none.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

SOFT_SCALE = 20.0
SOFT_NEIGHBOURS = 64


def _cosine(tokens: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    return F.normalize(tokens, dim=-1) @ F.normalize(embeddings, dim=-1).T


def nearest_words(tokens: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """B x T word ids k_n of the B x T x D `tokens` against the V x D `embeddings`."""
    return _cosine(tokens.detach(), embeddings.detach()).argmax(-1)


def snap_to_words(tokens: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """B x T x D `tokens` -> the same shape, each token replaced by its nearest (cosine) row
    of the V x D `embeddings`, with the straight-through gradient of the module docstring."""
    frozen = embeddings.detach()
    nearest, indices = _cosine(tokens, frozen).topk(min(SOFT_NEIGHBOURS, frozen.shape[0]), dim=-1)
    soft = torch.einsum("btk,btkd->btd", torch.softmax(SOFT_SCALE * nearest, dim=-1), frozen[indices])
    return F.embedding(indices[..., 0], embeddings) + (soft - soft.detach())
