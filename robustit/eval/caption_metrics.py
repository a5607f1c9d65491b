"""Caption metrics through pycocoevalcap, the way the COCO caption evaluation computes them.

Every caption (prediction and references) is first lowercased and tokenised by the Stanford
PTBTokenizer with punctuation removed; then, over the whole corpus:

- BLEU-n (Papineni et al. 2002), corpus level: (prod_{k<=n} p_k)^(1/n) * BP, where p_k is the
  clipped k-gram precision summed over all images, and BP = exp(1 - r/c) when c < r, else 1,
  with c the total prediction length and r the sum over images of the reference length
  *closest* to the prediction's length (ties go to the shorter reference).
- METEOR 1.5 (Denkowski and Lavie 2014), `-l en -norm`, aggregated by the METEOR jar.
- ROUGE-L (Lin 2004): per image F = (1 + b^2) P R / (R + b^2 P), b = 1.2, where P and R are the
  largest LCS precision and recall over the references; averaged over images.
- CIDEr-D-style CIDEr (Vedantam et al. 2015): TF-IDF n-gram cosine similarity (n = 1..4) with
  a Gaussian length penalty (sigma = 6), IDF taken from the corpus references, times 10.
- SPICE (Anderson et al. 2016) only when its Stanford CoreNLP jars are already installed next
  to pycocoevalcap's spice jar; robustit never downloads them, and reports why SPICE is missing
  instead of a number.

All scores are reported in percent (x100), like the tables of the RobustIT paper; CIDEr
therefore reads e.g. 105.3 for a raw CIDEr of 1.053.

METEOR and the tokenizer run in Java, so a Java runtime must be on PATH.
"""
from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import pycocoevalcap.spice.get_stanford_models as _stanford
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.spice.spice import SPICE_JAR, Spice
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

SPICE_DIR = Path(_stanford.SPICEDIR)


@dataclass(frozen=True)
class CaptionScores:
    """Corpus-level caption scores in percent; `spice` is None exactly when
    `spice_unavailable_reason` says why."""

    bleu_1: float
    bleu_2: float
    bleu_3: float
    bleu_4: float
    meteor: float
    rouge_l: float
    cider: float
    spice: float | None
    spice_unavailable_reason: str | None
    n: int

    def as_dict(self) -> dict[str, float | str | int | None]:
        """The scores under the COCO caption evaluation's names (BLEU_1, ..., CIDEr, SPICE)."""
        names = {"bleu_1": "BLEU_1", "bleu_2": "BLEU_2", "bleu_3": "BLEU_3", "bleu_4": "BLEU_4",
                 "meteor": "METEOR", "rouge_l": "ROUGE_L", "cider": "CIDEr", "spice": "SPICE"}
        return {names.get(key, key): value for key, value in asdict(self).items()}


def spice_unavailable_reason() -> str | None:
    """None when SPICE can run offline, else why not (its jars are missing)."""
    lib = SPICE_DIR / _stanford.SPICELIB
    needed = [SPICE_DIR / SPICE_JAR, lib / f"{_stanford.JAR}.jar", lib / f"{_stanford.JAR}-models.jar"]
    missing = [path.name for path in needed if not path.is_file()]
    if not missing:
        return None
    return (f"Stanford CoreNLP jars not found in {SPICE_DIR} (missing: {', '.join(missing)}); "
            "SPICE needs them and robustit never downloads at run time")


def _check_inputs(predictions: Mapping[str, str], references: Mapping[str, list[str]]) -> None:
    if not predictions or not references:
        raise ValueError("caption_scores needs at least one prediction and its references; got none")
    only_pred = sorted(set(predictions) - set(references), key=str)
    only_ref = sorted(set(references) - set(predictions), key=str)
    if only_pred or only_ref:
        raise ValueError(
            "predictions and references must have the same ids; "
            f"ids without references: {only_pred[:10]} ({len(only_pred)} in all), "
            f"ids without a prediction: {only_ref[:10]} ({len(only_ref)} in all)")
    for key, refs in references.items():
        if isinstance(refs, str) or not refs or not all(isinstance(r, str) for r in refs):
            raise ValueError(f"references[{key!r}] must be a non-empty list of strings, got {refs!r}")
        if not isinstance(predictions[key], str):
            raise ValueError(f"predictions[{key!r}] must be a string, got {predictions[key]!r}")


def _meteor_score(gts: dict, res: dict) -> float:
    meteor = Meteor()
    try:
        return meteor.compute_score(gts, res)[0]
    finally:
        process = meteor.meteor_p
        process.stdin.close()
        process.kill()
        process.wait()
        process.stdout.close()
        process.stderr.close()


def caption_scores(predictions: Mapping[str, str], references: Mapping[str, list[str]]) -> CaptionScores:
    """Score one prediction per id against that id's references; see the module docstring.

    Raises ValueError on empty input or when the ids of the two mappings differ (naming the
    ids), and RuntimeError when no `java` is on PATH.
    """
    _check_inputs(predictions, references)
    if shutil.which("java") is None:
        raise RuntimeError(
            "caption metrics need a Java runtime: pycocoevalcap's METEOR and PTBTokenizer run in "
            "Java, and no `java` is on PATH (install one, e.g. `apt-get install default-jre-headless`)")
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({key: [{"caption": ref} for ref in refs] for key, refs in references.items()})
    res = tokenizer.tokenize({key: [{"caption": predictions[key]}] for key in references})
    bleu = Bleu(4).compute_score(gts, res, verbose=0)[0]
    reason = spice_unavailable_reason()
    spice = None if reason is not None else 100.0 * float(Spice().compute_score(gts, res)[0])
    return CaptionScores(
        bleu_1=100.0 * bleu[0],
        bleu_2=100.0 * bleu[1],
        bleu_3=100.0 * bleu[2],
        bleu_4=100.0 * bleu[3],
        meteor=100.0 * _meteor_score(gts, res),
        rouge_l=100.0 * float(Rouge().compute_score(gts, res)[0]),
        cider=100.0 * float(Cider().compute_score(gts, res)[0]),
        spice=spice,
        spice_unavailable_reason=reason,
        n=len(references),
    )
