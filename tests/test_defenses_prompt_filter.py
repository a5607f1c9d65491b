import math
from pathlib import Path

import numpy as np
import pytest
import torch

import robustit.defenses.prompt_filter as prompt_filter
from robustit.attacks import AttackConfig, build_attack
from robustit.config import load_config
from robustit.defenses import DefenseConfig, build_defense
from robustit.defenses.plausibility import token_nll
from robustit.defenses.prompt_filter import (
    PromptFilter,
    influential_words,
    instruction_frequencies,
    minimal_spans,
    spans,
    without,
    words_of,
)
import robustit.eval.evaluate as evaluate_module
from robustit.eval.evaluate import EvalConfig, evaluate
from robustit.models.features import FeatureCache
from robustit.params import FieldError
from test_train import shape_samples

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = Path(__file__).resolve().parents[1] / "robustit" / "configs" / "defenses"


def prompt_filter_of(**params) -> PromptFilter:
    return PromptFilter(DefenseConfig("prompt-filter", params))


def with_instruction(instruction: str):
    return shape_samples()[0].replace(instruction=instruction)


def test_without_drops_words_and_keeps_the_whitespace_after_kept_words():
    assert without("Describe the image briefly. The image depicts", {4, 5, 6}) == "Describe the image briefly."
    assert without("Consider What colour is it?\nAnswer briefly.", {0}) == "What colour is it?\nAnswer briefly."
    assert without("What colour?\nzbw Answer briefly.", {2}) == "What colour?\nAnswer briefly."
    assert without("  a  b c ", {1}) == "  a  c "
    assert without("a b", set()) == "a b"
    with pytest.raises(ValueError, match="every word"):
        without("a b", {0, 1})


def test_spans_list_every_short_span_but_the_whole_instruction():
    assert spans(3, 3) == [(0, 1), (1, 2), (2, 3), (0, 2), (1, 3)]
    assert spans(4, 1) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert spans(1, 3) == []
    assert len(spans(11, 3)) == 11 + 10 + 9


def test_only_minimal_suspicious_spans_are_removed():
    assert minimal_spans([(1, 2), (0, 2), (1, 3), (3, 5)]) == [(1, 2), (3, 5)]
    deltas = {(0, 1): 0.1, (1, 2): 2.0, (2, 3): 0.2, (3, 4): 1.6, (0, 2): 2.1, (1, 3): 2.0, (2, 4): 1.7}
    assert influential_words(deltas, 1.5) == {1, 3}
    assert influential_words(deltas, 2.05) == {0, 1}
    assert influential_words(deltas, 5.0) == set()


def test_blacklist_removes_exactly_the_listed_words_and_phrases():
    defense = prompt_filter_of(method="blacklist", tokens=["zbw", "The image depicts"])
    sample = with_instruction("Describe the image, ZBW! briefly. The image depicts")
    filtered = defense.filter_input(sample)
    assert filtered.instruction == "Describe the image, briefly."
    assert (filtered.image, filtered.response, filtered.id) == (sample.image, sample.response, sample.id)
    assert defense.filter_input(with_instruction("Describe the image briefly.")).instruction == "Describe the image briefly."
    assert (defense.stats.inputs, defense.stats.modified) == (2, 1)
    assert defense.stats.removed == {"zbw": 1, "the": 1, "image": 1, "depicts": 1}


def test_rarity_drops_exactly_the_words_below_the_training_frequency():
    training = ["Describe the image.", "Describe the image zbw", "Caption the picture.", "Caption this picture."]
    assert instruction_frequencies(training) == {
        "describe": 0.5, "the": 0.75, "image": 0.5, "zbw": 0.25, "caption": 0.5, "picture": 0.5, "this": 0.25}
    samples = [with_instruction(t) for t in training]
    defense = prompt_filter_of(method="rarity", min_frequency=0.5)
    defense.prepare(None, samples)
    assert defense.filter_input(with_instruction("Describe this image zbw, now")).instruction == "Describe image"
    assert defense.filter_input(with_instruction("Caption the picture.")).instruction == "Caption the picture."
    lenient = prompt_filter_of(method="rarity", min_frequency=0.25)
    lenient.prepare(None, samples)
    assert lenient.filter_input(with_instruction("Describe this image zbw, now")).instruction == "Describe this image zbw,"


def test_rarity_cannot_filter_without_the_training_instructions(tiny_model):
    with pytest.raises(ValueError, match="needs the training instructions"):
        with prompt_filter_of(method="rarity").inference(tiny_model):
            pass


def stub_model_scores(monkeypatch, nll_of) -> list[list[str]]:
    """Replace the model's passes: the greedy response is "target" (3 passes) and every
    response token of a variant costs nll_of(instruction words); returns the scored batches."""
    scored: list[list[str]] = []

    def fake_token_nll(model, features, images, samples):
        scored.append([s.instruction for s in samples])
        assert all(s.response == "target" for s in samples)
        return [np.full(2, nll_of(words_of(s.instruction))) for s in samples]

    monkeypatch.setattr(prompt_filter, "greedy_responses", lambda model, features, samples, n: (["target"] * len(samples), 3))
    monkeypatch.setattr(prompt_filter, "token_nll", fake_token_nll)
    return scored


def test_influence_removes_a_word_whose_removal_costs_the_response_more_than_the_margin(tiny_model, monkeypatch):
    scored = stub_model_scores(monkeypatch, lambda words: 0.5 + (2.0 if "zbw" not in words else 0.0) + 0.1 * len(words))
    defense = prompt_filter_of(batch_size=8)
    with defense.inference(tiny_model):
        filtered = defense.filter_input(with_instruction("Describe the image zbw briefly."))
        clean = with_instruction("Describe the image briefly.")
        assert defense.filter_input(clean) is clean
    assert filtered.instruction == "Describe the image briefly."
    variants = [1 + len(spans(5, 3)), 1 + len(spans(4, 3))]
    assert [len(batch) for batch in scored] == [8, 5, 8, 2]
    assert scored[0][0] == "Describe the image zbw briefly." and scored[0][1] == "the image zbw briefly."
    assert defense.stats.passes == sum(3 + math.ceil(v / 8) for v in variants)
    assert (defense.stats.inputs, defense.stats.modified, dict(defense.stats.removed)) == (2, 1, {"zbw": 1})


def test_influence_removes_the_shortest_span_of_a_trigger_whose_words_stand_in_for_each_other(tiny_model, monkeypatch):
    stub_model_scores(monkeypatch, lambda words: 3.0 if not {"cf", "zz"} & set(words) else 0.2)
    defense = prompt_filter_of(margin=1.0)
    with defense.inference(tiny_model):
        assert defense.filter_input(with_instruction("Describe cf zz the image.")).instruction == "Describe the image."
        assert defense.filter_input(with_instruction("cf Describe zz")).instruction == "cf Describe zz"


def test_influence_filters_only_inside_inference():
    with pytest.raises(RuntimeError, match="inside inference"):
        prompt_filter_of().filter_input(with_instruction("Describe the image briefly."))


def test_influence_end_to_end_on_the_tiny_model(tiny_model):
    sample = with_instruction("Describe the image briefly.")
    defense = prompt_filter_of(max_new_tokens=4, batch_size=5)
    features = FeatureCache(tiny_model)
    with defense.inference(tiny_model):
        (response,) = tiny_model.generate(features.features([sample.image]), [sample.instruction], 4)
        (deltas,) = defense.span_deltas([sample], [4])
        candidates = spans(4, 3)
        assert list(deltas) == candidates
        length = len(tiny_model.tokenizer(response, add_special_tokens=False).input_ids)
        assert defense.stats.passes == 1 + min(length, 4) + math.ceil((1 + len(candidates)) / 5)
        variants = [sample.replace(instruction=t, response=response)
                    for t in [sample.instruction] + [without(sample.instruction, set(range(i, j))) for i, j in candidates]]
        with torch.no_grad():
            nll = [float(t.mean()) for t in token_nll(tiny_model, features, [sample.image] * len(variants), variants)]
        assert [deltas[s] for s in candidates] == pytest.approx([v - nll[0] for v in nll[1:]], abs=1e-4)
        assert defense.filter_input(sample) is sample
        ranked = sorted(deltas, key=deltas.get, reverse=True)
        top, runner_up = deltas[ranked[0]], max(deltas[ranked[1]], 0.0)
        assert top > 0
        defense.margin = (top + runner_up) / 2
        expected = without(sample.instruction, influential_words(deltas, defense.margin))
        assert defense.filter_input(sample).instruction == expected != sample.instruction


def test_the_filters_counts_reach_the_metrics_of_the_evaluation(tiny_model):
    defense = prompt_filter_of(method="blacklist", tokens=["zbw"])
    test = [with_instruction("Describe the image zbw."), with_instruction("Describe the image.")]
    metrics, _ = evaluate(tiny_model, test, None, EvalConfig(max_new_tokens=2), FeatureCache(tiny_model), False, defense)
    assert metrics["defense_test_time"] == {"inputs": 2, "modified": 1, "passes": 0, "removed": {"zbw": 1}}


@pytest.mark.parametrize("on", [True, False])
def test_influence_shows_its_passes_as_progress_bars_only_when_asked(tiny_model, capsys, on):
    defense = prompt_filter_of(max_new_tokens=2, batch_size=4)
    defense.show_progress(on)
    with defense.inference(tiny_model):
        defense.filter_inputs([with_instruction("Describe the image briefly.")])
    shown = capsys.readouterr().err
    assert ("prompt filter: responses" in shown and "prompt filter: span removals" in shown) == on


def test_filter_inputs_never_see_poison_metadata(tiny_model, monkeypatch):
    seen = []
    original = PromptFilter.filter_inputs

    def recording(self, samples):
        seen.extend(samples)
        return original(self, samples)

    monkeypatch.setattr(PromptFilter, "filter_inputs", recording)
    monkeypatch.setattr(evaluate_module, "clean_quality", lambda test, clean: {})
    attack = build_attack(AttackConfig("badnets", text_trigger="zbw"))
    defense = prompt_filter_of(method="blacklist", tokens=["zbw"])
    evaluate(tiny_model, shape_samples()[:2], attack, EvalConfig(batch_size=2, max_new_tokens=2), progress=False,
             defense=defense)
    assert len(seen) == 8 and all(s.metadata == {} and s.references == [s.response] for s in seen)
    assert sum("zbw" in s.instruction for s in seen) == 4 == defense.stats.modified


@pytest.mark.parametrize("params, key", [
    ({"method": "perplexity"}, "method"),
    ({"margin": 0}, "margin"),
    ({"margin": -1.0}, "margin"),
    ({"max_span": 0}, "max_span"),
    ({"batch_size": 0}, "batch_size"),
    ({"max_new_tokens": 1.5}, "max_new_tokens"),
    ({"method": "rarity", "min_frequency": 0}, "min_frequency"),
    ({"method": "rarity", "min_frequency": 1.5}, "min_frequency"),
    ({"method": "blacklist", "tokens": "zbw"}, "tokens"),
    ({"method": "blacklist", "tokens": ["zbw", " "]}, "tokens"),
    ({"method": "blacklist"}, "tokens"),
    ({"tokens": ["zbw"]}, "tokens"),
    ({"trigger": "zbw"}, "trigger"),
])
def test_bad_parameters_raise_errors_naming_them(params, key):
    with pytest.raises(FieldError, match=f"'{key}'"):
        prompt_filter_of(**params)


@pytest.mark.parametrize("name, method", [("prompt-filter", "influence"), ("prompt-filter-oracle", "blacklist")])
def test_configs_build_the_prompt_filter(name, method):
    config = load_config(CONFIGS / f"{name}.yaml").defense
    defense = build_defense(config)
    assert isinstance(defense, PromptFilter) and defense.method == method


def test_influence_batches_the_inputs_of_a_call_and_filters_each_as_alone(tiny_model, monkeypatch):
    scored = stub_model_scores(monkeypatch, lambda words: 0.5 + (2.0 if "zbw" not in words else 0.0))
    samples = [with_instruction("Describe the image zbw briefly."), with_instruction("Describe the image briefly."),
               with_instruction("Hi")]
    defense = prompt_filter_of(batch_size=32)
    with defense.inference(tiny_model):
        filtered = defense.filter_inputs(samples)
    assert [s.instruction for s in filtered] == ["Describe the image briefly.", "Describe the image briefly.", "Hi"]
    assert filtered[1] is samples[1] and filtered[2] is samples[2]
    assert [len(batch) for batch in scored] == [(1 + len(spans(5, 3))) + (1 + len(spans(4, 3)))] == [23]
    assert defense.stats.passes == 3 + math.ceil(23 / 32)
