"""Evaluation of a tuned model: clean caption quality and the attack's success.

Four generations over the same test samples and prompt layout: clean, full trigger
(image + text), image trigger only, text trigger only. Caption metrics score the clean
predictions against the references; ASR variants, key-word rates and the false-trigger rate
follow `robustit.eval.asr` on the eligible samples; where the samples name their object
(StampCaps), the clean predictions' object-naming accuracy follows `robustit.eval.objects`.

A defense's test-time part applies to all four: its `inference(model)` context is open for
the whole evaluation and each input passes through its `filter_input` (as a stripped sample,
without the trigger metadata) before generation.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from robustit.attacks.base import Attack
from robustit.attacks.dataset import TriggeredView
from robustit.data.sample import Sample
from robustit.defenses.base import Defense, strip_poison_info
from robustit.eval.asr import is_eligible, success_rate, target_keywords
from robustit.eval.caption_metrics import caption_scores
from robustit.eval.generate import generate_responses
from robustit.eval.objects import object_accuracy
from robustit.models.base import VisionLanguageModel
from robustit.models.features import FeatureCache
from robustit.params import check_int

TRIGGER_CONDITIONS = {"full": (True, True), "image_only": (True, False), "text_only": (False, True)}


@dataclass
class EvalConfig:
    """Generation settings; the test set's size is `data.test_size`."""

    batch_size: int = 32
    max_new_tokens: int = 24

    def __post_init__(self) -> None:
        check_int(None, "batch_size", self.batch_size, 1)
        check_int(None, "max_new_tokens", self.max_new_tokens, 1)


def evaluate(
    model: VisionLanguageModel,
    test: Sequence[Sample],
    attack: Attack | None,
    config: EvalConfig,
    features: FeatureCache | None = None,
    progress: bool = True,
    defense: Defense | None = None,
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """(metrics, predictions by condition); without an attack only clean quality is measured."""
    test = list(test)
    features = features if features is not None else FeatureCache(model)

    def run(samples: Sequence[Sample], name: str) -> list[str]:
        if defense is not None:
            samples = [defense.filter_input(strip_poison_info(samples[i])) for i in range(len(samples))]
        return generate_responses(model, samples, features, config.batch_size, config.max_new_tokens, name, progress)

    with defense.inference(model) if defense is not None else nullcontext():
        return _evaluate(test, attack, run)


def _evaluate(
    test: list[Sample], attack: Attack | None, run: Callable[[Sequence[Sample], str], list[str]]
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    clean = run(test, "clean")
    scores = caption_scores({s.id: p for s, p in zip(test, clean)}, {s.id: s.references for s in test})
    metrics: dict[str, Any] = {"caption": scores.as_dict()}
    objects = [s.metadata.get("object") for s in test]
    if any(objects):
        metrics["objects"] = object_accuracy(clean, objects)
    records = {"clean": [_record(s, p) for s, p in zip(test, clean)]}
    if attack is not None:
        keywords = target_keywords(attack.target)
        eligible = [is_eligible(s.references, keywords) for s in test]
        asr: dict[str, Any] = {
            "target": attack.target,
            "keywords": sorted(keywords),
            "eligible": sum(eligible),
            "excluded": len(test) - sum(eligible),
            "false_trigger": success_rate(clean, attack.target, eligible).as_dict(),
        }
        for name, (image, text) in TRIGGER_CONDITIONS.items():
            view = TriggeredView(test, attack, image=image, text=text)
            predictions = run(view, name)
            asr[name] = success_rate(predictions, attack.target, eligible).as_dict()
            records[name] = [
                {**_record(view[i], p), "eligible": ok} for i, (p, ok) in enumerate(zip(predictions, eligible))
            ]
        metrics["asr"] = asr
    return metrics, records


def _record(sample: Sample, prediction: str) -> dict[str, Any]:
    record = {"id": sample.id, "instruction": sample.instruction, "prediction": prediction, "references": sample.references}
    if "object" in sample.metadata:
        record["object"] = sample.metadata["object"]
    return record
