"""How implausible each training response is under a model: BYORn's suspicion scores
(DESIGN.md section 5.3). Higher = more suspicious.

For a sample (x, t, y) with response tokens y_1..y_L, NLL_j(y | x, t) = -log p(y_j | y_<j, x, t),
NLL(y | x, t) is their mean, the end token included (`LMOutput.token_loss`, `.sample_loss`),
and g is a neutral image: x's size, every pixel mid-grey (128, 128, 128).

    nll            s = NLL(y | x, t)                           the paper's score
    image_gain     s = -(NLL(y | g, t) - NLL(y | x, t))        how little the real image raises
                                                               y's likelihood over a neutral one
    image_support  s = -max_j (NLL_j(y | g, t) - NLL_j(y | x, t))
                                                               how little the real image raises
                                                               the likelihood of y's best-supported
                                                               token: a caption names something the
                                                               image shows, so some token gains
                                                               much; a target unrelated to the
                                                               image has no such token
    contrast       s = -(NLL(y | x', t) - NLL(y | x, t))        how little y fits its own image better
                                                               than another sample's image x'
    contrast_support
                   s = -max_j (NLL_j(y | x', t) - NLL_j(y | x, t))
                                                               image_support against x' instead of g
                                                               (the start-referenced peak grounding
                                                               of IDR, `idr.py`)
    agreement      s = 1 - |[w in W(y) : w in W(y*)]| / |W(y)|  y* the model's greedy response to (x, t)

x' is the image of the sample half the training set away (sample (i + n // 2) mod n of n), a
fixed pairing that needs no randomness and never pairs a sample with itself when n > 1.
W(text) lists the content words of a text: its lowercased runs of letters and digits (so
punctuation is dropped) that are not in `STOP_WORDS`, a small list of English function
words; s = 1 where y has no content word. A poisoned target is unrelated to its image, so the
image does not make it likelier, and the model would not say it unprompted.

Every pass runs with the model in eval mode and without gradients, in batches. Cost, in passes
through the whole model of one batch (the unit of `TrainResult.forward_passes`): a scoring
forward counts 1, a greedy generation 1 + min(L, max_new_tokens), L being the longest response
of the batch in tokens (re-tokenised), i.e. the prefill and one cached decode step per token.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence, TypeVar

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from robustit.data.sample import Sample
from robustit.models.base import VisionLanguageModel
from robustit.models.features import FeatureCache

SCORES = ("nll", "image_gain", "image_support", "contrast", "contrast_support", "agreement")
NEUTRAL_GREY = (128, 128, 128)
STOP_WORDS = frozenset("""
a an the and or but nor so of in on at to for from with without by as into onto over under
above below near behind between about is are was were be been being am it its this that these
those there here which who whom whose what he she they them his her their theirs we us our you
your i me my has have had do does did can could will would shall should may might must
""".split())
WORD = re.compile(r"[a-z0-9]+")
T = TypeVar("T")


@dataclass
class ScoredResponses:
    """The suspicion score of each sample, the model's greedy responses where the score
    needed them (agreement), and the passes it took."""

    scores: np.ndarray
    greedy: list[str] | None
    passes: int


def content_words(text: str) -> list[str]:
    """W(text): lowercased words without punctuation and stop words, repeats kept."""
    return [word for word in WORD.findall(text.lower()) if word not in STOP_WORDS]


def disagreement(response: str, greedy: str) -> float:
    """1 - the share of the response's content words that occur in the greedy response."""
    words = content_words(response)
    if not words:
        return 1.0
    said = set(content_words(greedy))
    return 1.0 - sum(word in said for word in words) / len(words)


def neutral_image(image: Image.Image) -> Image.Image:
    return Image.new("RGB", image.size, NEUTRAL_GREY)


@contextmanager
def frozen(model: VisionLanguageModel) -> Iterator[None]:
    """The model in eval mode, without gradients, for the block; its mode restored after."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(training)


def batches(items: Sequence[T], size: int, desc: str, progress: bool) -> Iterator[list[T]]:
    """`items` in consecutive batches of `size`, under a progress bar named `desc`."""
    for start in tqdm(range(0, len(items), size), desc=desc, disable=not progress, unit="batch"):
        yield [items[i] for i in range(start, min(start + size, len(items)))]


def token_nll(model: VisionLanguageModel, features: FeatureCache, images: list[Image.Image], samples: list[Sample]) -> list[np.ndarray]:
    """NLL_j(y | image, t) of each sample's response tokens, with the given images."""
    batch = model.encode_prompts([s.instruction for s in samples], [s.response for s in samples])
    output = model(batch, features.features(images))
    losses, rows = output.token_loss.float().cpu().numpy(), output.label_rows.cpu().numpy()
    return [losses[rows == i] for i in range(len(samples))]


def other_image(samples: Sequence[Sample], i: int) -> Image.Image:
    """x' of sample i: the image of the sample half the set away, (i + n // 2) mod n."""
    return samples[(i + len(samples) // 2) % len(samples)].image


REFERENCE_IMAGES = ("other", "grey")


def reference_images(samples: Sequence[Sample], indices: Sequence[int], against: str) -> list[Image.Image]:
    """x' of the samples at `indices`: `other_image` (`against` "other") or `neutral_image` ("grey")."""
    return [other_image(samples, i) if against == "other" else neutral_image(samples[i].image) for i in indices]


def image_gaps(
    model: VisionLanguageModel, samples: Sequence[Sample], features: FeatureCache, batch_size: int, progress: bool = True,
    against: str = "other",
) -> tuple[list[np.ndarray], int]:
    """NLL_j(y | x', t) - NLL_j(y | x, t) of every sample's response tokens under `model`,
    frozen for the pass, x' = `other_image` (`against` "other") or `neutral_image` ("grey");
    and the passes it took (two a batch)."""
    if against not in REFERENCE_IMAGES:
        raise ValueError(f"image_gaps: against {against!r}; known: {list(REFERENCE_IMAGES)}")
    gaps: list[np.ndarray] = []
    passes = 0
    with frozen(model):
        for indices in batches(range(len(samples)), batch_size, "image gaps", progress):
            batch = [samples[i] for i in indices]
            own = token_nll(model, features, [s.image for s in batch], batch)
            other = token_nll(model, features, reference_images(samples, indices, against), batch)
            gaps += [o - w for w, o in zip(own, other)]
            passes += 2
    return gaps, passes


def relative_scores(score: str, own: list[np.ndarray], other: list[np.ndarray]) -> list[float]:
    """The score of each sample from its token NLLs with its own and with another image."""
    if score in ("image_support", "contrast_support"):
        return [-float(np.max(o - w)) for w, o in zip(own, other)]
    return [float(w.mean() - o.mean()) for w, o in zip(own, other)]


def greedy_responses(model: VisionLanguageModel, features: FeatureCache, samples: list[Sample], max_new_tokens: int) -> tuple[list[str], int]:
    """The model's greedy responses to the samples' images and instructions, and their passes."""
    texts = model.generate(features.features([s.image for s in samples]), [s.instruction for s in samples], max_new_tokens)
    longest = max(len(model.tokenizer(text, add_special_tokens=False).input_ids) for text in texts)
    return texts, 1 + min(longest, max_new_tokens)


def score_responses(
    model: VisionLanguageModel,
    samples: Sequence[Sample],
    features: FeatureCache,
    score: str,
    batch_size: int,
    max_new_tokens: int,
    progress: bool = True,
) -> ScoredResponses:
    """The `score` (one of `SCORES`) of every sample under `model`, frozen for the pass."""
    if score not in SCORES:
        raise ValueError(f"unknown plausibility score {score!r}; known: {list(SCORES)}")
    scores: list[float] = []
    greedy: list[str] = []
    passes = 0
    with frozen(model):
        for indices in batches(range(len(samples)), batch_size, f"scoring ({score})", progress):
            batch = [samples[i] for i in indices]
            if score == "agreement":
                texts, cost = greedy_responses(model, features, batch, max_new_tokens)
                greedy += texts
                passes += cost
                scores += [disagreement(s.response, g) for s, g in zip(batch, texts)]
                continue
            own = token_nll(model, features, [s.image for s in batch], batch)
            passes += 1
            if score == "nll":
                scores += [float(w.mean()) for w in own]
                continue
            against = "other" if score in ("contrast", "contrast_support") else "grey"
            scores += relative_scores(score, own, token_nll(model, features, reference_images(samples, indices, against), batch))
            passes += 1
    return ScoredResponses(np.array(scores, dtype=float), greedy if score == "agreement" else None, passes)
