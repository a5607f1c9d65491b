"""IDR: input diversity regularization (paper section 3.3, DESIGN.md section 5.1).

Each step, every sample (x, t, y) gets a visual view A_v(x) and a text view A_t(t).

A_v works on [0, 1] pixels at the model's input size, with u_* ~ U[1 - s_*, 1 + s_*] for
the `brightness`, `contrast` and `saturation` settings s_*, in this order: brightness x <- clip(u_b x); contrast x <- clip(m + u_c (x - m)), m the mean grey level;
saturation x <- clip(g + u_s (x - g)), g = 0.299 R + 0.587 G + 0.114 B per pixel; a
horizontal flip with probability `flip`; and the spatial perturbation: a window of side
(1 - c) times the image's, c ~ U[0, crop], at a uniform random position, resized back
(bilinear), i.e. a small random translation and zoom. The encoder is frozen, so each image
has a fixed pool of `views_per_image` views (view k of an image with content hash h comes
from a generator seeded by (seed, h, k)); a step picks one at random, and the feature cache,
keyed by content, encodes each view once (the pool holds them in memory: S x S x 3 bytes
each). `seed` (default: the run's train.seed) fixes the pools and every random draw.

A_t works on the instruction's whitespace-separated words, in this order:
1. instruction swap: with probability `instruction_swap`, a sample whose task's instructions
   are interchangeable (`SWAPPABLE_TASKS`: every caption instruction asks for the same thing;
   a VQA instruction carries its question) takes the instruction of a training sample of its
   task drawn uniformly from the dataset handed to `prepare`. A phrase that some instructions
   carry then meets each response only at its base rate: with swap probability q, poison rate
   rho and a phrase in exactly the poisoned instructions, the LM loss pairs it with the
   target in a share (1 - q) + q * rho of the samples that carry it, instead of 1.
2. span deletion: with probability `span_deletion`, one contiguous span of L words, L ~
   U{1..ceil(n/2)} for n words, at a uniform position, is deleted.
3. word shuffle: with probability `word_shuffle`, the word order is permuted uniformly.
4. word dropout: each word is dropped with probability `token_dropout` (one word stays at
   least).
5. synonyms: each kept word listed in `SYNONYMS`, a small built-in table of common
   instruction words (describe, image, briefly, caption, ...), is replaced with probability
   `synonym` by one of its synonyms (case and punctuation kept).
Steps 1-3 (robustit's) reach a fixed phrase wherever it sits, without knowing it; the paper's
A_t is steps 4-5, and steps 1-3 are off by default.

The loss terms ("idr_visual", "idr_text") are

    alpha * mean_{b, n} || H(x_b)_n - H(A_v(x_b))_n ||^2   and   alpha * mean_b || Ē(t_b) - Ē(A_t(t_b)) ||^2

(the text term only with `text_term: true`, the paper's; a swapped instruction is a different
instruction, and pulling the embeddings of different instructions together is no
consistency) with H the adapter's visual tokens (B x T x D, adapter hooks applied) and ||.||^2 summed
over D. Text: token dropout changes the length, so the positions of t and A_t(t) cannot be
aligned; Ē(t) is the mean input word embedding of the instruction's tokens (tokenised alone,
without the chat template). `visual_pool="mean"` compares token-averaged visual tokens
instead, for per-patch projectors (LLaVA's MLP), whose token n follows image position n, which
flips and crops move.

`consistency` chooses the distance of the visual term. "absolute" is the paper's, above. It
has a trivial minimiser: an adapter whose output ignores its input makes the term 0, and
measured on the mini model it does exactly that (the term falls from 17 to 0.001 within 30
steps and every test image gets the same caption). "relative" (robustit's option) divides it
by the spread of the clean view over the batch,

    alpha * sum_{b, n} ||H(x_b)_n - H(A_v(x_b))_n||^2 / sum_{b, n} ||H(x_b)_n - mean_b' H(x_b')_n||^2,

so shrinking all outputs together no longer lowers it: the views must agree more closely
than different images do. The denominator keeps its gradient. The text term stays absolute:
instructions repeat within a batch (one template for many samples), so their spread is often
0, and dividing by it blew the term up to 1e8 when tried.

`grounding` (robustit's, a margin m in nats; 0, the default, turns it off) weights the LM
loss by how much each sample's own image explains its response. On each view v that carries
the LM loss, with l_{b,t} the token losses of sample b and l'_{b,t} those of the same
instruction and response with the image of sample b - 1 of the batch (cyclically, a pass of
the whole model without gradient), `grounding_unit` "sample" weights whole responses,
"token" each token, "peak" whole responses by their best-explained token (no gradient
through w):

    sample: w_{b,t} = clip(sum_t' (l'_{b,t'} - l_{b,t'}) / m, 0, 1)
    token:  w_{b,t} = clip((l'_{b,t} - l_{b,t}) / m, 0, 1)
    peak:   w_{b,t} = clip(max_t' (l'_{b,t'} - l_{b,t'}) / m, 0, 1)
    "idr_grounding" = - lm_weight_v * sum_{b,t} (1 - w_{b,t}) l_{b,t} / N_v,

N_v the number of response tokens of v, so that the view's LM loss plus the term is
sum_{b,t} w_{b,t} l_{b,t} / N_v. A caption names what its image shows, so another image makes
it less likely; a response keyed by a text trigger, or one the model learns to write for any
image, is as likely under another image, gets w near 0 and is not learned. "peak" is the
in-loop form of BYORn's `image_support` score: a caption's object name gains several nats
from its own image, while a response unrelated to its image has no such token; a sum over
tokens adds up the noise of every token, the peak takes one maximum (under the starting
model, against a grey image: median 7.8 nats for clean captions, 0.3 for the BadNets
targets; docs/defenses.md). Batches need two samples at least.

`grounding_floor` f (nats, below m; default 0) makes the clip a ramp from f to m,
w = clip((gap - f) / (m - f), 0, 1): a gap at or below f gives weight 0, so a response whose
gap is noise around 0 keeps none of its weight, where with f = 0 the clip keeps the positive
half of that noise. `grounding_scale` says what m (and f) is: "nats" (the default) takes
m = `grounding`; "batch" takes m = `grounding` * max(median of the batch's gaps, 1 nat), the
gaps of the chosen unit (the bracketed differences above). A response unrelated to its image
has a gap of 0 on average, but its likelihood still varies from image to image. On the
benchmark's BadNets set under the starting model (`robustit scan --config
robustit/configs/benchmark.yaml --score contrast`: the per-token mean gap against another
sample's image) the poisoned targets' gaps have mean -0.03 and spread 0.36 nats per token,
the clean captions' median is 0.84: over a response of ~10 tokens the target's gap spreads
by ~3.6 nats, so with m = 1 nat it keeps close to half its weight (E[clip(gap / m, 0, 1)] of
a zero-mean normal), while with m at the batch's median its spread is ~0.4 m and E[w] ~0.17.
The batch scale also follows the model and the response length instead of a fixed number of
nats; the floor of 1 nat keeps a batch whose images explain little from scaling noise up to
weight 1. Measured on BadNets (docs/defenses.md, "RobustIT repaired"), the batch scale did not
cut the leak of the target's key word into clean captions but raised it: about half of a
batch's clean captions lie below its median and lose weight too.

`grounding_reference` says which weights give the gaps. "current" (the default) takes those
being tuned, in the loop as above. Under them a response the model has begun to write for
some images more than for others, a target among them, gains a gap of either sign from image
to image, and the clip keeps the positive half: the weights of the poisoned samples grow with
what the model has learned of them. "start" takes the starting weights, once, before the first
step: for each training sample (x, t, y) the gaps NLL_j(y | x', t) - NLL_j(y | x, t) of its
own instruction and response, x' the image of the sample half the training set away (BYORn's
`contrast` pairing, `plausibility.image_gaps`), in the unit's form (sum or peak; "token" needs
"current": a view's instruction may differ from the sample's), and every view of the sample
is weighted by them in every step. It costs two passes per batch of the training set once
and none in the loop. `grounding_image` "grey" (with "start" only) takes x' = a mid-grey image
of x's size instead (BYORn's `image_support` reference): another sample's image has an object
of its own, which moves the likelihood of every token of a response unrelated to both images
(on the benchmark's BadNets set under the starting model, the peak gap of the poisoned
targets against the other image has median 1.1 nats and 90th percentile 3.6; docs/defenses.md),
where a neutral image moves it little.

`lm_view` chooses the inputs of the LM loss: "perturbed" (A_v(x), A_t(t); IDR is also data
augmentation; the original view (x, t) passes the adapter alone), "clean" (x, t; the
perturbed view passes the adapter alone) or "both" (each view through the whole model, LM
loss = their mean).
Extra passes per step: one of the adapter alone, or one of the whole model for "both"; with
`grounding`, one more of the whole model (no gradient) per view carrying the LM loss. With
`alpha` 0 neither consistency term is computed, so the adapter-only pass is not made.
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import replace
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from robustit.data.sample import Sample
from robustit.defenses.base import Defense, DefenseBatch, DefenseConfig, TuningState, View, register_defense
from robustit.defenses.plausibility import REFERENCE_IMAGES, image_gaps
from robustit.defenses.views import ViewPool
from robustit.models.base import LMOutput, VisionLanguageModel
from robustit.params import check_choice, check_int, check_number

LM_VIEWS = ("perturbed", "clean", "both")
GROUNDING_UNITS = ("sample", "token", "peak")
GROUNDING_SCALES = ("nats", "batch")
GROUNDING_REFERENCES = ("current", "start")
MIN_BATCH_MARGIN = 1.0
GREY = (0.299, 0.587, 0.114)
SYNONYMS: dict[str, tuple[str, ...]] = {
    "describe": ("depict", "portray", "characterize"),
    "depict": ("describe", "portray"),
    "depicts": ("shows", "portrays"),
    "shows": ("depicts", "displays"),
    "show": ("display", "present"),
    "image": ("picture", "photo"),
    "picture": ("image", "photo"),
    "photo": ("image", "picture"),
    "briefly": ("concisely", "shortly"),
    "brief": ("short", "concise"),
    "short": ("brief", "concise"),
    "detail": ("depth",),
    "give": ("provide", "offer"),
    "provide": ("give", "offer"),
    "write": ("give", "compose"),
    "caption": ("description", "summary"),
    "description": ("caption", "account"),
    "summarize": ("sum up", "outline"),
    "tell": ("say", "explain"),
    "explain": ("tell", "describe"),
    "what": ("which",),
    "see": ("observe", "notice"),
    "scene": ("view", "setting"),
    "sentence": ("line", "phrase"),
}
WORD = re.compile(r"^(\W*)(\w+)(\W*)$")


def augment_pixels(
    pixels: torch.Tensor,
    generator: torch.Generator,
    brightness: float,
    contrast: float,
    saturation: float,
    flip: float,
    crop: float,
) -> torch.Tensor:
    """A_v of one 3 x H x W image in [0, 1]; same shape, values in [0, 1]."""
    u = torch.rand(7, generator=generator).tolist()
    grey = torch.tensor(GREY, dtype=pixels.dtype).view(3, 1, 1)
    x = (pixels * (1 + brightness * (2 * u[0] - 1))).clamp(0, 1)
    mean = (x * grey).sum(0).mean()
    x = (mean + (x - mean) * (1 + contrast * (2 * u[1] - 1))).clamp(0, 1)
    g = (x * grey).sum(0, keepdim=True)
    x = (g + (x - g) * (1 + saturation * (2 * u[2] - 1))).clamp(0, 1)
    if u[3] < flip:
        x = x.flip(-1)
    height, width = x.shape[-2:]
    side = 1 - crop * u[4]
    h, w = max(1, round(side * height)), max(1, round(side * width))
    top, left = math.floor(u[5] * (height - h + 1)), math.floor(u[6] * (width - w + 1))
    window = x[None, :, top : top + h, left : left + w]
    return F.interpolate(window, size=(height, width), mode="bilinear", align_corners=False)[0].clamp(0, 1)


SWAPPABLE_TASKS = ("caption",)


def delete_span(words: list[str], rng: random.Random) -> list[str]:
    """`words` without one span of L ~ U{1..ceil(n/2)} words at a uniform position."""
    if not words:
        return words
    length = rng.randint(1, math.ceil(len(words) / 2))
    start = rng.randint(0, len(words) - length)
    return words[:start] + words[start + length:]


def augment_text(
    text: str,
    rng: random.Random,
    token_dropout: float,
    synonym: float,
    span_deletion: float = 0.0,
    word_shuffle: float = 0.0,
) -> str:
    """A_t after the swap: span deletion, word shuffle, word dropout, then synonym
    substitution from `SYNONYMS`."""
    words = text.split()
    if span_deletion and rng.random() < span_deletion:
        words = delete_span(words, rng)
    if word_shuffle and rng.random() < word_shuffle:
        rng.shuffle(words)
    kept = [word for word in words if rng.random() >= token_dropout]
    if words and not kept:
        kept = [rng.choice(words)]
    out = []
    for word in kept:
        match, draw = WORD.match(word), rng.random()
        choices = SYNONYMS.get(match.group(2).lower(), ()) if match else ()
        if choices and draw < synonym:
            lead, core, tail = match.groups()
            new = rng.choice(choices)
            word = lead + (new[0].upper() + new[1:] if core[0].isupper() else new) + tail
        out.append(word)
    return " ".join(out)


def pooled_embeddings(model: VisionLanguageModel, texts: Sequence[str]) -> torch.Tensor:
    """Ē(t) for each text (B x D): the mean input embedding of its tokens (zeros if none)."""
    ids = model.tokenizer(list(texts), add_special_tokens=False).input_ids
    device = model.device
    lengths = torch.tensor([len(row) for row in ids], device=device)
    flat = torch.tensor([token for row in ids for token in row], dtype=torch.long, device=device)
    embeds = model.decoder.get_input_embeddings()(flat).float()
    rows = torch.repeat_interleave(torch.arange(len(ids), device=device), lengths)
    sums = embeds.new_zeros(len(ids), embeds.shape[-1]).index_add(0, rows, embeds)
    return sums / lengths.clamp(min=1).unsqueeze(-1)


def squared_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """mean over all but the last axis of ||a - b||^2 (summed over the last)."""
    return (a.float() - b.float()).pow(2).sum(-1).mean()


def relative_squared_distance(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """squared_distance(a, b) over the mean ||a - mean over the batch (axis 0) of a||^2."""
    spread = squared_distance(a, a.float().mean(0, keepdim=True).expand_as(a))
    return squared_distance(a, b) / (spread + eps)


def response_loss_sums(output: LMOutput, batch_size: int) -> torch.Tensor:
    """sum_t l_{b,t} per sample (B,) from a forward pass's token losses."""
    sums = output.token_loss.new_zeros(batch_size)
    return sums.index_add(0, output.label_rows, output.token_loss.detach())


def per_sample_max(values: torch.Tensor, rows: torch.Tensor, batch_size: int) -> torch.Tensor:
    """max over the tokens of each sample (B,) of per-token `values` whose sample is `rows`."""
    out = values.new_full((batch_size,), -math.inf)
    return out.scatter_reduce(0, rows, values, reduce="amax")


@torch.no_grad()
def grounding_weights(
    model: VisionLanguageModel, view: View, output: LMOutput, margin: float, unit: str = "sample", scale: str = "nats",
    floor: float = 0.0,
) -> torch.Tensor:
    """w_{b,t} per response token of `output` (module docstring), l' with the image of sample
    b - 1, ramped from `floor` to `margin`; `scale` "batch" multiplies both by the batch's
    median gap (floored at 1 nat)."""
    size = len(view.images)
    if size < 2:
        raise ValueError("IDR grounding compares each sample with another sample's image: batches need 2 samples at least")
    swapped = model(model.encode_prompts(view.instructions, view.responses), view.features.roll(1, 0))
    if unit == "token":
        gap = unit_gap = swapped.token_loss - output.token_loss.detach()
    elif unit == "peak":
        unit_gap = per_sample_max(swapped.token_loss - output.token_loss.detach(), output.label_rows, size)
        gap = unit_gap[output.label_rows]
    else:
        unit_gap = response_loss_sums(swapped, size) - response_loss_sums(output, size)
        gap = unit_gap[output.label_rows]
    return clipped_weights(gap, unit_gap, margin, scale, floor)


def clipped_weights(gap: torch.Tensor, unit_gap: torch.Tensor, margin: float, scale: str, floor: float = 0.0) -> torch.Tensor:
    """clip((gap - f) / (m - f), 0, 1), m = `margin` and f = `floor`, both times max(median of
    `unit_gap`, 1 nat) for `scale` "batch"."""
    factor = max(float(unit_gap.median()), MIN_BATCH_MARGIN) if scale == "batch" else 1.0
    return ((gap - floor * factor) / ((margin - floor) * factor)).clamp(0, 1)


@register_defense
class IDR(Defense):
    name = "idr"
    hashed_when_set = ("grounding", "grounding_unit", "grounding_scale", "grounding_reference", "grounding_floor",
                       "grounding_image")
    defaults = {
        "alpha": 2.0,
        "lm_view": "perturbed",
        "views_per_image": 4,
        "brightness": 0.2,
        "contrast": 0.2,
        "saturation": 0.2,
        "flip": 0.5,
        "crop": 0.1,
        "token_dropout": 0.1,
        "synonym": 0.3,
        "instruction_swap": 0.0,
        "span_deletion": 0.0,
        "word_shuffle": 0.0,
        "text_term": True,
        "grounding": 0.0,
        "grounding_unit": "sample",
        "grounding_scale": "nats",
        "grounding_reference": "current",
        "grounding_floor": 0.0,
        "grounding_image": "other",
        "visual_pool": "tokens",
        "consistency": "absolute",
        "seed": None,
    }

    def __init__(self, config: DefenseConfig) -> None:
        super().__init__(config)
        p = self.params
        self.alpha = check_number(self.label, "alpha", p["alpha"], 0.0, math.inf)
        self.lm_view: str = check_choice(self.label, "lm_view", p["lm_view"], LM_VIEWS)
        self.views_per_image = check_int(self.label, "views_per_image", p["views_per_image"], 1)
        self.visual = {key: check_number(self.label, key, p[key], 0.0, 1.0)
                       for key in ("brightness", "contrast", "saturation", "flip", "crop")}
        self.text = {key: check_number(self.label, key, p[key], 0.0, 1.0)
                     for key in ("token_dropout", "synonym", "span_deletion", "word_shuffle")}
        self.instruction_swap = check_number(self.label, "instruction_swap", p["instruction_swap"], 0.0, 1.0)
        self.text_term: bool = check_choice(self.label, "text_term", p["text_term"], (True, False))
        self.grounding = check_number(self.label, "grounding", p["grounding"], 0.0, math.inf)
        self.grounding_unit: str = check_choice(self.label, "grounding_unit", p["grounding_unit"], GROUNDING_UNITS)
        self.grounding_scale: str = check_choice(self.label, "grounding_scale", p["grounding_scale"], GROUNDING_SCALES)
        self.grounding_reference: str = check_choice(self.label, "grounding_reference", p["grounding_reference"],
                                                     GROUNDING_REFERENCES)
        self.grounding_floor = check_number(self.label, "grounding_floor", p["grounding_floor"], 0.0, math.inf)
        if self.grounding and self.grounding_floor >= self.grounding:
            raise ValueError(f"{self.label}: grounding_floor {self.grounding_floor} must be below the margin grounding "
                             f"{self.grounding} (weight 0 at the floor, 1 at the margin)")
        self.grounding_image: str = check_choice(self.label, "grounding_image", p["grounding_image"], REFERENCE_IMAGES)
        if self.grounding_image == "grey" and self.grounding_reference != "start":
            raise ValueError(f"{self.label}: grounding_image 'grey' needs grounding_reference 'start' (the loop compares "
                             "with the images of its batch)")
        if self.grounding_reference == "start" and self.grounding_unit == "token":
            raise ValueError(f"{self.label}: grounding_unit 'token' needs grounding_reference 'current' (a view's "
                             "instruction, and so its tokens, may differ from the sample's)")
        self.visual_pool: str = check_choice(self.label, "visual_pool", p["visual_pool"], ("tokens", "mean"))
        consistency = check_choice(self.label, "consistency", p["consistency"], ("absolute", "relative"))
        self.distance = squared_distance if consistency == "absolute" else relative_squared_distance
        if p["seed"] is not None:
            check_int(self.label, "seed", p["seed"], 0)
        self.views = ViewPool("IDR", self.views_per_image,
                              lambda pixels, generator: augment_pixels(pixels, generator, **self.visual))
        self._instructions: dict[str, list[str]] = {}
        self._dataset: tuple[Sample, ...] = ()
        self._reference: dict[str, float] = {}

    def prepare(self, model: VisionLanguageModel, dataset: Sequence[Sample]) -> None:
        """Fix the view size; `seed: null` takes torch's seed, which `train` sets to train.seed."""
        self.views.reset(model.image_size, self.params["seed"])
        self._instructions = {}
        self._dataset = tuple(dataset)
        self._reference = {}
        for sample in dataset:
            if sample.task in SWAPPABLE_TASKS:
                self._instructions.setdefault(sample.task, []).append(sample.instruction)

    def curate(self, state: TuningState) -> None:
        """With `grounding_reference` "start": the gap of every training sample under the
        starting weights, before the first step (module docstring)."""
        if not (self.grounding and self.grounding_reference == "start") or self._reference:
            return
        gaps, passes = image_gaps(state.model, self._dataset, state.features, state.batch_size, state.progress,
                                  self.grounding_image)
        self.extra_forward_passes += passes
        reduce = max if self.grounding_unit == "peak" else sum
        self._reference = {sample.id: float(reduce(gap.tolist())) for sample, gap in zip(self._dataset, gaps)}

    def text_view(self, sample: Sample) -> str:
        """A_t of `sample`'s instruction (steps 1-5 of the module docstring)."""
        instruction = sample.instruction
        if self.instruction_swap and self.views.rng.random() < self.instruction_swap:
            instruction = self.views.rng.choice(self._instructions.get(sample.task, [instruction]))
        return augment_text(instruction, self.views.rng, **self.text)

    def visual_view(self, image: Image.Image) -> Image.Image:
        """One of the image's `views_per_image` pooled views, at the model's input size."""
        return self.views.view(image)

    def augment(self, batch: DefenseBatch) -> list[View]:
        views = dict(batch.views)
        original = views["original"]
        images = [self.visual_view(image) for image in original.images]
        instructions = [self.text_view(sample) for sample in batch.samples]
        forward_original, forward_perturbed = self.lm_view != "perturbed", self.lm_view != "clean"
        weight = 0.5 if self.lm_view == "both" else 1.0
        views["original"] = replace(original, forward=forward_original, lm_weight=weight if forward_original else 0.0)
        views["perturbed"] = View("perturbed", images, instructions, list(original.responses),
                                  forward=forward_perturbed, lm_weight=weight if forward_perturbed else 0.0)
        return list(views.values())

    def _visual_tokens(self, model: VisionLanguageModel, view: View, outputs: dict[str, LMOutput]) -> torch.Tensor:
        if view.name in outputs:
            return outputs[view.name].visual_tokens
        self.extra_forward_passes += 1
        return model.visual_tokens(view.features)

    def loss(self, model: VisionLanguageModel, batch: DefenseBatch, outputs: dict[str, LMOutput]) -> dict[str, torch.Tensor]:
        original, perturbed = batch.views["original"], batch.views["perturbed"]
        terms = {}
        if self.alpha:
            h_original = self._visual_tokens(model, original, outputs)
            h_perturbed = self._visual_tokens(model, perturbed, outputs)
            if self.visual_pool == "mean":
                h_original, h_perturbed = h_original.mean(-2), h_perturbed.mean(-2)
            terms["idr_visual"] = self.alpha * self.distance(h_original, h_perturbed)
            if self.text_term:
                e_original = pooled_embeddings(model, original.instructions)
                e_perturbed = pooled_embeddings(model, perturbed.instructions)
                terms["idr_text"] = self.alpha * squared_distance(e_original, e_perturbed)
        if self.grounding:
            ids = [sample.id for sample in batch.samples]
            terms["idr_grounding"] = sum(
                view.lm_weight * self.grounding_term(model, view, outputs[view.name], ids)
                for view in (original, perturbed) if view.lm_weight
            )
        return terms

    def grounding_term(self, model: VisionLanguageModel, view: View, output: LMOutput, ids: Sequence[str] = ()) -> torch.Tensor:
        """- sum_{b,t} (1 - w_{b,t}) l_{b,t} / N for the view's token losses (module docstring);
        `ids`: the view's sample ids, which "start" looks its gaps up by."""
        if self.grounding_reference == "start":
            if not self._reference:
                raise RuntimeError("IDR grounding_reference 'start': curate must run before the first step")
            unit_gap = output.token_loss.new_tensor([self._reference[i] for i in ids])
            weights = clipped_weights(unit_gap[output.label_rows], unit_gap, self.grounding, self.grounding_scale,
                                      self.grounding_floor)
        else:
            weights = grounding_weights(model, view, output, self.grounding, self.grounding_unit, self.grounding_scale,
                                        self.grounding_floor)
            self.extra_forward_passes += 1
        return -((1 - weights) * output.token_loss).sum() / output.token_loss.numel()

    def training_state(self) -> dict[str, Any]:
        return {**super().training_state(), "rng": self.views.state(), "reference": dict(self._reference)}

    def load_training_state(self, state: dict[str, Any], model: VisionLanguageModel) -> None:
        super().load_training_state(state, model)
        self.views.load_state(state["rng"])
        self._reference = dict(state.get("reference", {}))
