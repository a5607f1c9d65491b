"""Evaluation of a tuned model: clean task quality and the attack's success.

Four generations over the same test samples and prompt layout: clean, full trigger
(image + text), image trigger only, text trigger only. The clean predictions are scored by
task (`Sample.task`): caption metrics over the "caption" samples against their references
(and, where they name their object, as StampCaps' do, object-naming accuracy,
`robustit.eval.objects`), VQA accuracy over the "vqa" samples against their human answers
(`robustit.eval.vqa`). ASR variants, key-word rates and the false-trigger rate follow
`robustit.eval.asr` on the eligible samples, for answers as for captions.

With `shots=1` every test input, clean or triggered, follows the same in-context
demonstration: one clean training sample with its own image (`choose_demonstration`), never
passed through the defense's input filter.

A defense's test-time part applies to all four: its `inference(model)` context is open for
the whole evaluation and each input passes through its `filter_inputs` (as a stripped sample,
without the trigger metadata) before generation.

A defense that refuses inputs (`Defense.refuse` returns flags, not None) has each refused
input's prediction replaced by `REFUSAL`, the empty string, which never hits a target, so
the ASR variants are those after refusal. Its metrics gain "refusal": per condition (clean,
and with an attack full, image_only, text_only) {"rate", "refused", "n"} over all n test
inputs, rate = 100 * refused / n: on clean inputs the false-alarm rate, on triggered ones
the detection rate. Its prediction records gain "refused". A defense that never refuses
gets neither.
"""
from __future__ import annotations

import random
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from robustit.attacks.base import Attack
from robustit.attacks.dataset import TriggeredView
from robustit.data.sample import Sample
from robustit.defenses.base import Defense, Generate, strip_poison_info
from robustit.eval.asr import eligibility, success_rate, target_keywords
from robustit.eval.caption_metrics import caption_scores
from robustit.eval.generate import generate_responses
from robustit.eval.objects import object_accuracy
from robustit.eval.vqa import answer_accuracy, vqa_accuracy
from robustit.models.base import VisionLanguageModel
from robustit.models.features import FeatureCache
from robustit.params import check_choice, check_int

SHOTS = (0, 1)
TRIGGER_CONDITIONS = {"full": (True, True), "image_only": (True, False), "text_only": (False, True)}
REFUSAL = ""
Predictions = tuple[list[str], list[bool] | None]


@dataclass
class EvalConfig:
    """Generation settings; the test set's size is `data.test_size`. `shots`: in-context
    demonstrations before each test input, 0 (zero-shot) or 1 (one-shot: one clean training
    sample with its own image, drawn by `data.seed`, the same before every clean and triggered
    input; needs a model family that takes several images per prompt)."""

    batch_size: int = 32
    max_new_tokens: int = 24
    shots: int = 0

    def __post_init__(self) -> None:
        check_int(None, "batch_size", self.batch_size, 1)
        check_int(None, "max_new_tokens", self.max_new_tokens, 1)
        check_choice(None, "shots", self.shots, SHOTS)


def choose_demonstration(train: Sequence[Sample], seed: int) -> Sample:
    """The training sample at index randrange(len(train)) of random.Random("demonstration:<seed>")."""
    if not train:
        raise ValueError("one-shot evaluation needs a training sample to show as its demonstration")
    return train[random.Random(f"demonstration:{seed}").randrange(len(train))]


def evaluate(
    model: VisionLanguageModel,
    test: Sequence[Sample],
    attack: Attack | None,
    config: EvalConfig,
    features: FeatureCache | None = None,
    progress: bool = True,
    defense: Defense | None = None,
    demonstration: Sample | None = None,
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """(metrics, predictions by condition); without an attack only clean quality is measured.
    `demonstration` is the in-context example `config.shots=1` needs (and zero-shot refuses)."""
    if (demonstration is not None) != (config.shots == 1):
        raise ValueError(f"eval.shots={config.shots} needs {config.shots} demonstration(s), got "
                         f"{'one' if demonstration is not None else 'none'}")
    test = list(test)
    features = features if features is not None else FeatureCache(model)

    def generate(samples: Sequence[Sample], name: str, cache: FeatureCache) -> list[str]:
        return generate_responses(model, samples, cache, config.batch_size, config.max_new_tokens, name, progress,
                                  demonstration)

    def run(samples: Sequence[Sample], name: str) -> Predictions:
        if defense is None:
            return generate(samples, name, features), None
        samples = defense.filter_inputs([strip_poison_info(samples[i]) for i in range(len(samples))])
        predictions = generate(samples, name, features)
        return refused_predictions(defense, samples, predictions,
                                   lambda chosen, label: generate(chosen, label, FeatureCache(model)))

    with defense.inference(model) if defense is not None else nullcontext():
        metrics, records = _evaluate(test, attack, run)
    if defense is not None and (stats := defense.test_time_stats()):
        metrics["defense_test_time"] = stats
    if demonstration is not None:
        metrics["demonstration"] = {"id": demonstration.id, "instruction": demonstration.instruction,
                                    "response": demonstration.response}
    return metrics, records


def refused_predictions(
    defense: Defense, samples: Sequence[Sample], predictions: list[str], generate: Generate
) -> Predictions:
    """`predictions` with those of the inputs `defense` refuses replaced by `REFUSAL`, and the
    refusal flags (None where the defense never refuses)."""
    refused = defense.refuse(samples, predictions, generate)
    if refused is None:
        return predictions, None
    if len(refused) != len(samples):
        raise ValueError(f"defense {defense.name!r} gave {len(refused)} refusal flags for {len(samples)} inputs")
    refused = [bool(r) for r in refused]
    return [REFUSAL if r else p for p, r in zip(predictions, refused)], refused


def refusal_rate(refused: Sequence[bool]) -> dict[str, float | int]:
    """{"rate": 100 * refused / n, "refused", "n"} of one condition's refusal flags."""
    return {"rate": 100.0 * sum(refused) / len(refused), "refused": sum(refused), "n": len(refused)}


def _evaluate(
    test: list[Sample], attack: Attack | None, run: Callable[[Sequence[Sample], str], Predictions]
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    refusals: dict[str, list[bool] | None] = {}
    clean, refusals["clean"] = run(test, "clean")
    metrics = clean_quality(test, clean)
    records = {"clean": [_record(s, p) for s, p in zip(test, clean)]}
    if attack is not None:
        keywords = target_keywords(attack.target)
        eligible = eligibility([s.references for s in test], attack.target)
        asr: dict[str, Any] = {
            "target": attack.target,
            "keywords": sorted(keywords),
            "eligible": sum(eligible),
            "excluded": len(test) - sum(eligible),
            "false_trigger": success_rate(clean, attack.target, eligible).as_dict(),
        }
        for name, (image, text) in TRIGGER_CONDITIONS.items():
            view = TriggeredView(test, attack, image=image, text=text)
            predictions, refusals[name] = run(view, name)
            asr[name] = success_rate(predictions, attack.target, eligible).as_dict()
            records[name] = [
                {**_record(view[i], p), "eligible": ok} for i, (p, ok) in enumerate(zip(predictions, eligible))
            ]
        metrics["asr"] = asr
    _mark_refusals(metrics, records, {name: flags for name, flags in refusals.items() if flags is not None})
    return metrics, records


def _mark_refusals(
    metrics: dict[str, Any], records: dict[str, list[dict[str, Any]]], refusals: dict[str, list[bool]]
) -> None:
    """Add the refusal rate of each condition to `metrics` and each input's flag to its record
    (nothing where no condition has refusal flags)."""
    if not refusals:
        return
    metrics["refusal"] = {name: refusal_rate(flags) for name, flags in refusals.items()}
    for name, flags in refusals.items():
        for record, flag in zip(records[name], flags):
            record["refused"] = flag


def clean_quality(test: Sequence[Sample], clean: Sequence[str]) -> dict[str, Any]:
    """{"caption": caption metrics, "objects": object naming} over the caption samples and
    {"vqa": VQA accuracy, overall and per answer type} over the VQA samples, each where the
    test set has such samples."""
    metrics: dict[str, Any] = {}
    captions = [(s, p) for s, p in zip(test, clean) if s.task == "caption"]
    if captions:
        scores = caption_scores({s.id: p for s, p in captions}, {s.id: s.references for s, _ in captions})
        metrics["caption"] = scores.as_dict()
        objects = [s.metadata.get("object") for s, _ in captions]
        if any(objects):
            metrics["objects"] = object_accuracy([p for _, p in captions], objects)
    questions = [(s, p) for s, p in zip(test, clean) if s.task == "vqa"]
    if questions:
        metrics["vqa"] = vqa_accuracy([p for _, p in questions], [s.references for s, _ in questions],
                                      [s.metadata.get("answer_type") for s, _ in questions])
    return metrics


def _record(sample: Sample, prediction: str) -> dict[str, Any]:
    record = {"id": sample.id, "instruction": sample.instruction, "prediction": prediction, "references": sample.references}
    if "object" in sample.metadata:
        record["object"] = sample.metadata["object"]
    if sample.task == "vqa":
        record["accuracy"] = answer_accuracy(prediction, sample.references)
    return record
