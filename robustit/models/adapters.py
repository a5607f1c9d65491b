"""Trainable adapters H_psi that map frozen vision features (B x N x C) to visual tokens
(B x T x D), and the contract every family's adapter follows (`Adapter`).

- `PerceiverResampler` (Flamingo / Otter): T learned latents attend, layer by layer, to
  the concatenation [features; latents]; then a feed-forward block; a final linear maps
  the latent width to D. Its `resampler` output (B x T x Dq) is the activation site.
- `Projector`: a released checkpoint's own projection module (LLaVA's MLP, PaliGemma's
  linear projector, Idefics3's pixel-shuffle connector), T fixed by the family.

Adapters made of one family's own parts live in that family's module (BLIP-2's
`QFormerAdapter`, Idefics's `FlamingoAdapter`).

Each adapter names its activation site in `hook_point`: the submodule whose output
defenses such as AAR see and may rewrite.
"""
from __future__ import annotations

import torch
from torch import nn


class Adapter(nn.Module):
    """H_psi and how its visual tokens reach the language model.

    Visual tokens enter the language model by two routes, both taken on every decoder call:
    they fill the prompt's `num_tokens` image slots (then D is the LM's width; 0 slots for a
    family whose LM reads them by cross-attention), and `decoder_inputs` turns them into
    keyword arguments of the decoder (none for slot-filling adapters; the cross-attention
    memory and its mask for Flamingo-style ones).
    """

    hook_point: str
    num_tokens: int

    def decoder_inputs(self, visual_tokens: torch.Tensor, token_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Keyword arguments of a decoder call that feeds tokens marked real (1) or padding (0)
        by `token_mask` (B x L, L the tokens of this call, not of its cache)."""
        return {}


class _ResamplerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, ff_mult: int) -> None:
        super().__init__()
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ff = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, ff_mult * dim), nn.GELU(), nn.Linear(ff_mult * dim, dim)
        )

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        q = self.norm_latents(latents)
        kv = torch.cat([self.norm_media(media), q], dim=1)
        latents = latents + self.attn(q, kv, kv, need_weights=False)[0]
        return latents + self.ff(latents)


class Resampler(nn.Module):
    """Learned latents cross-attending to projected media features."""

    def __init__(self, in_dim: int, dim: int, num_latents: int, depth: int, heads: int, ff_mult: int) -> None:
        super().__init__()
        self.input_proj = nn.Linear(in_dim, dim)
        self.latents = nn.Parameter(torch.randn(num_latents, dim) * 0.02)
        self.blocks = nn.ModuleList(_ResamplerBlock(dim, heads, ff_mult) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        media = self.input_proj(features)
        latents = self.latents.unsqueeze(0).expand(features.shape[0], -1, -1)
        for block in self.blocks:
            latents = block(media, latents)
        return self.norm(latents)


class PerceiverResampler(Adapter):
    hook_point = "resampler"

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        dim: int = 512,
        num_latents: int = 8,
        depth: int = 2,
        heads: int = 8,
        ff_mult: int = 2,
    ) -> None:
        super().__init__()
        self.num_tokens = num_latents
        self.resampler = Resampler(in_dim, dim, num_latents, depth, heads, ff_mult)
        self.out_proj = nn.Linear(dim, out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.resampler(features))


class Projector(Adapter):
    """A checkpoint's projection module as the adapter; its output is the activation site."""

    hook_point = "projector"

    def __init__(self, projector: nn.Module, num_tokens: int) -> None:
        super().__init__()
        self.projector = projector
        self.num_tokens = num_tokens

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.projector(features)
