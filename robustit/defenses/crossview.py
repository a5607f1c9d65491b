"""Cross-view defense (DESIGN.md section 5.2, seed 002): patch views, output-distribution
repulsion, an entropy band.

The patch view P(x) of an image works on [0, 1] pixels at the model's input size, cut into a
`grid` x `grid` lattice of cells (cell edges at round(i * S / grid)); k = max(1, round(`share`
* grid^2)) cells, drawn uniformly without replacement, are changed by `operation`:
  shuffle: the k chosen cells' contents are moved by a cyclic shift among the chosen cells
           (cell j takes the content of the next chosen cell, resized to its own; k >= 2), so
           no chosen cell keeps its own content and no pixel leaves the image;
  erase:   the chosen cells are set to mid-grey (0.5);
  noise:   the chosen cells get N(0, `noise`^2) added per pixel and channel, clipped to [0, 1].
Cells not chosen are left exactly as they are. As IDR's views, each image has a fixed pool of
`views_per_image` patch views (view j of the image with content hash h from a generator
seeded by (seed, h, j)); a step picks one at random, so the feature cache encodes each once.

The step's views are "original" (the batch as it is, LM weight 1) and "patch" (P(x), the same
instruction and response, LM weight `patch_lm_weight`), both forwarded: one whole-model pass
per step beyond VanillaIT's. With p_t and q_t the next-token distributions at response
position t of the original and the patch view (the same positions: the image takes a fixed
number of tokens), per sample b over its T_b response positions,

    D_b    = (1 / T_b) sum_t d(p_t, q_t)
    L_x    = lambda * (1 / B) sum_b max(0, delta - D_b)                         ("crossview_repel")
    H_t    = - sum_v p_t(v) log p_t(v)
    L_H    = mu * (1 / N) sum_t [max(0, h_low - H_t) + max(0, H_t - h_high)]    ("crossview_entropy")
    L      = L_it(original) + patch_lm_weight * L_it(patch) + L_x + L_H,

N all response positions of the batch; lambda = `repel`, delta = `margin`, mu = `entropy`,
[h_low, h_high] = [`entropy_low`, `entropy_high`] nats. d is `divergence`:
  js: the Jensen-Shannon divergence 1/2 KL(p || m) + 1/2 KL(q || m), m = (p + q) / 2, in nats
      (bounded by ln 2);
  tv: the total variation 1/2 sum_v |p(v) - q(v)| (bounded by 1).
The hinge bounds the repulsion: a sample whose views already differ by `margin` feels none, so
a grounded caption (whose words follow the image) is left alone and an output that ignores the
image (the backdoor's target, keyed by the text trigger) is pushed to depend on it. The band
is zero inside [h_low, h_high] and keeps the repulsion from flattening the original's output.
Both views carry gradients. A smooth divergence has a zero gradient where p = q, so the
repulsion is weakest on outputs that are exactly invariant; "tv" has a non-vanishing
(sub)gradient there.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from robustit.data.sample import Sample
from robustit.defenses.base import Defense, DefenseBatch, DefenseConfig, View, register_defense
from robustit.defenses.views import ViewPool
from robustit.models.base import LMOutput, VisionLanguageModel
from robustit.params import check_choice, check_int, check_number

OPERATIONS = ("shuffle", "erase", "noise")
DIVERGENCES = ("js", "tv")


def cell_bounds(size: int, grid: int) -> list[tuple[int, int]]:
    """[start, end) of each of the `grid` cells along an edge of `size` pixels."""
    edges = [round(i * size / grid) for i in range(grid + 1)]
    return list(zip(edges[:-1], edges[1:]))


def patch_view(pixels: torch.Tensor, generator: torch.Generator, grid: int, share: float, operation: str,
               noise: float) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """P(x) of one 3 x H x W image in [0, 1] (module docstring) and the (row, column) cells changed."""
    rows, cols = cell_bounds(pixels.shape[-2], grid), cell_bounds(pixels.shape[-1], grid)
    k = changed_cells(grid, share)
    chosen = [divmod(int(i), grid) for i in torch.randperm(grid * grid, generator=generator)[:k]]
    out = pixels.clone()

    def window(cell: tuple[int, int]) -> tuple[slice, slice]:
        (top, bottom), (left, right) = rows[cell[0]], cols[cell[1]]
        return slice(top, bottom), slice(left, right)

    for j, cell in enumerate(chosen):
        r, c = window(cell)
        if operation == "shuffle":
            source = pixels[(slice(None), *window(chosen[(j + 1) % k]))]
            size = (r.stop - r.start, c.stop - c.start)
            out[:, r, c] = F.interpolate(source[None], size=size, mode="bilinear", align_corners=False)[0]
        elif operation == "erase":
            out[:, r, c] = 0.5
        else:
            out[:, r, c] = (pixels[:, r, c] + noise * torch.randn(pixels[:, r, c].shape, generator=generator)).clamp(0, 1)
    return out, chosen


def changed_cells(grid: int, share: float) -> int:
    """k = max(1, round(share * grid^2)), the number of cells a patch view changes."""
    return max(1, round(share * grid * grid))


def js_divergence(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """JS(p, q) per row of log-probabilities (nats)."""
    log_m = torch.logaddexp(log_p, log_q) - math.log(2)
    return 0.5 * ((log_p.exp() * (log_p - log_m)).sum(-1) + (log_q.exp() * (log_q - log_m)).sum(-1))


def tv_distance(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """1/2 sum_v |p(v) - q(v)| per row of log-probabilities."""
    return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)


def per_sample_mean(values: torch.Tensor, rows: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The mean of `values` over the positions of each batch row (B,); rows without positions get 0."""
    sums = values.new_zeros(batch_size).index_add(0, rows, values)
    counts = values.new_zeros(batch_size).index_add(0, rows, torch.ones_like(values))
    return sums / counts.clamp_min(1)


def band_penalty(entropy: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """max(0, low - H) + max(0, H - high), elementwise: zero inside the band."""
    return (low - entropy).clamp_min(0) + (entropy - high).clamp_min(0)


def token_entropy(log_p: torch.Tensor) -> torch.Tensor:
    """H = - sum_v p(v) log p(v) per row (nats)."""
    return -(log_p.exp() * log_p).sum(-1)


@register_defense
class CrossView(Defense):
    name = "crossview"
    defaults = {
        "grid": 4,
        "share": 0.5,
        "operation": "shuffle",
        "noise": 0.3,
        "views_per_image": 4,
        "patch_lm_weight": 0.0,
        "divergence": "js",
        "repel": 1.0,
        "margin": 0.05,
        "entropy": 1.0,
        "entropy_low": 0.0,
        "entropy_high": 4.0,
        "seed": None,
    }

    def __init__(self, config: DefenseConfig) -> None:
        super().__init__(config)
        p = self.params
        self.grid = check_int(self.label, "grid", p["grid"], 1)
        self.share = check_number(self.label, "share", p["share"], 0.0, 1.0, low_open=True)
        self.operation: str = check_choice(self.label, "operation", p["operation"], OPERATIONS)
        self.noise = check_number(self.label, "noise", p["noise"], 0.0, math.inf)
        self.views_per_image = check_int(self.label, "views_per_image", p["views_per_image"], 1)
        self.patch_lm_weight = check_number(self.label, "patch_lm_weight", p["patch_lm_weight"], 0.0, math.inf)
        divergence = check_choice(self.label, "divergence", p["divergence"], DIVERGENCES)
        self.divergence = js_divergence if divergence == "js" else tv_distance
        self.repel = check_number(self.label, "repel", p["repel"], 0.0, math.inf)
        self.margin = check_number(self.label, "margin", p["margin"], 0.0, math.inf)
        self.entropy = check_number(self.label, "entropy", p["entropy"], 0.0, math.inf)
        self.entropy_low = check_number(self.label, "entropy_low", p["entropy_low"], 0.0, math.inf)
        self.entropy_high = check_number(self.label, "entropy_high", p["entropy_high"], 0.0, math.inf)
        if self.entropy_low > self.entropy_high:
            raise ValueError(f"{self.label}: entropy_low {self.entropy_low} must not exceed entropy_high "
                             f"{self.entropy_high}")
        if self.operation == "shuffle" and changed_cells(self.grid, self.share) < 2:
            raise ValueError(f"{self.label}: operation 'shuffle' needs round(share * grid^2) >= 2 cells, got grid "
                             f"{self.grid} and share {self.share} (one cell has nowhere to move)")
        if p["seed"] is not None:
            check_int(self.label, "seed", p["seed"], 0)
        self.views = ViewPool("CrossView", self.views_per_image, lambda pixels, generator: patch_view(
            pixels, generator, self.grid, self.share, self.operation, self.noise)[0])

    def prepare(self, model: VisionLanguageModel, dataset: Sequence[Sample]) -> None:
        """Fix the view size; `seed: null` takes torch's seed, which `train` sets to train.seed."""
        self.views.reset(model.image_size, self.params["seed"])

    def view(self, image: Image.Image) -> Image.Image:
        """One of the image's `views_per_image` pooled patch views, at the model's input size."""
        return self.views.view(image)

    def augment(self, batch: DefenseBatch) -> list[View]:
        views = dict(batch.views)
        original = views["original"]
        views["patch"] = replace(original, name="patch", images=[self.view(image) for image in original.images],
                                 forward=True, lm_weight=self.patch_lm_weight)
        return list(views.values())

    def loss(self, model: VisionLanguageModel, batch: DefenseBatch, outputs: dict[str, LMOutput]) -> dict[str, torch.Tensor]:
        original, patch = outputs["original"], outputs["patch"]
        log_p = F.log_softmax(original.logits.float(), -1)
        log_q = F.log_softmax(patch.logits.float(), -1)
        distance = per_sample_mean(self.divergence(log_p, log_q), original.label_rows, len(batch.samples))
        terms = {}
        if self.repel:
            terms["crossview_repel"] = self.repel * (self.margin - distance).clamp_min(0).mean()
        if self.entropy:
            terms["crossview_entropy"] = self.entropy * band_penalty(token_entropy(log_p), self.entropy_low,
                                                                     self.entropy_high).mean()
        return terms

    def training_state(self) -> dict[str, Any]:
        return {**super().training_state(), "rng": self.views.state()}

    def load_training_state(self, state: dict[str, Any], model: VisionLanguageModel) -> None:
        super().load_training_state(state, model)
        self.views.load_state(state["rng"])
