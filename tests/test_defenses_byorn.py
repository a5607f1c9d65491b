import json
from types import SimpleNamespace

import pytest
import torch

from robustit.attacks import AttackConfig, PoisonedDataset, build_attack
from robustit.config import load_config
from robustit.defenses import BYORn, DefenseConfig, strip_poison_info
from robustit.defenses.ema import ExponentialMovingAverage
from robustit.defenses.plausibility import SCORES, content_words, disagreement, image_gaps, neutral_image
from robustit.experiment import Experiment
from robustit.models.features import FeatureCache
from robustit.store import ResultStore
from robustit.train.config import TrainConfig
from robustit.train.loop import train
from test_experiment import tiny_overrides
from test_train import shape_samples


pytestmark = pytest.mark.usefixtures("one_thread")


def byorn(**params) -> BYORn:
    return BYORn(DefenseConfig("byorn", {"max_new_tokens": 4, **params}))


def poisoned_samples() -> list:
    dataset = PoisonedDataset(shape_samples(), build_attack(AttackConfig("badnets", poison_rate=0.25)))
    return [dataset[i] for i in range(len(dataset))]


def trained_responses(model, monkeypatch) -> list[str]:
    """The responses of every LM-loss forward while the model trains (the defense's own
    passes run in eval mode and are left out)."""
    seen: list[str] = []
    encode = model.encode_prompts

    def recording(instructions, responses=None):
        if model.training and responses is not None:
            seen.extend(responses)
        return encode(instructions, responses)

    monkeypatch.setattr(model, "encode_prompts", recording)
    return seen


def test_content_words_drop_case_punctuation_and_stop_words():
    assert content_words("The image depicts a photo of a Banana!") == ["image", "depicts", "photo", "banana"]
    assert disagreement("A red circle.", "a red square") == pytest.approx(0.5)
    assert disagreement("A red circle.", "The circle is red.") == 0.0
    assert disagreement("It is.", "anything") == 1.0
    assert neutral_image(shape_samples()[0].image).getcolors() == [(32 * 32, (128, 128, 128))]


@pytest.mark.parametrize("score", SCORES)
def test_scores_are_the_same_with_the_poison_information_stripped(tiny_model, score):
    samples = poisoned_samples()
    assert sum(bool(s.metadata.get("is_poisoned")) for s in samples) == 2

    def decisions(given) -> list[tuple[float, bool]]:
        defense = byorn(score=score, threshold="quantile")
        defense.prepare(tiny_model, given)
        defense.detect(tiny_model, FeatureCache(tiny_model), 4, progress=False)
        return [(f.score, f.flagged) for f in defense.flags()]

    assert decisions(samples) == decisions([strip_poison_info(s) for s in samples])


def detector_scores(model, samples, score, batch_size):
    defense = byorn(score=score)
    defense.prepare(model, samples)
    defense.detect(model, FeatureCache(model), batch_size, progress=False)
    return defense.scores


def test_image_gain_is_the_real_images_nll_minus_the_neutral_images(tiny_model):
    samples = shape_samples()[:4]
    grey = [s.replace(image=neutral_image(s.image)) for s in samples]
    assert detector_scores(tiny_model, samples, "image_gain", 4) == pytest.approx(
        detector_scores(tiny_model, samples, "nll", 4) - detector_scores(tiny_model, grey, "nll", 4), abs=1e-5)


def token_nlls_alone(model, sample) -> torch.Tensor:
    """NLL_j of one sample's response tokens, forwarded in a batch of its own."""
    with torch.no_grad():
        batch = model.eval().encode_prompts([sample.instruction], [sample.response])
        return model(batch, FeatureCache(model).features([sample.image])).token_loss


def test_image_support_is_minus_the_largest_token_gain_of_the_real_image_over_the_neutral_one(tiny_model):
    samples = shape_samples()[:4]
    expected = [-float((token_nlls_alone(tiny_model, s.replace(image=neutral_image(s.image)))
                        - token_nlls_alone(tiny_model, s)).max()) for s in samples]
    support = detector_scores(tiny_model, samples, "image_support", 4)
    assert support == pytest.approx(expected, abs=1e-4)
    assert all(support <= detector_scores(tiny_model, samples, "image_gain", 4) + 1e-6)


def test_contrast_is_the_own_images_nll_minus_that_of_the_image_half_the_set_away(tiny_model):
    samples = shape_samples()[:5]
    swapped = [s.replace(image=samples[(i + 2) % 5].image) for i, s in enumerate(samples)]
    contrast = detector_scores(tiny_model, samples, "contrast", 2)
    assert contrast == pytest.approx(
        detector_scores(tiny_model, samples, "nll", 2) - detector_scores(tiny_model, swapped, "nll", 2), abs=1e-5)
    assert max(abs(contrast)) > 1e-4


def test_contrast_support_is_minus_the_largest_token_gap_against_the_image_half_the_set_away(tiny_model):
    samples = shape_samples()[:5]
    gaps, _ = image_gaps(tiny_model, samples, FeatureCache(tiny_model), 2, progress=False)
    assert detector_scores(tiny_model, samples, "contrast_support", 2) == pytest.approx([-g.max() for g in gaps], abs=1e-5)


def test_flagged_samples_train_on_their_replacements(tiny_model, monkeypatch):
    seen = trained_responses(tiny_model, monkeypatch)
    samples = poisoned_samples()
    defense = byorn(threshold="quantile", quantile=0.5, replace="base")
    train(tiny_model, samples, TrainConfig(max_steps=2, batch_size=4), progress=False, defense=defense)
    assert all(s.metadata == {} for s in defense.dataset)
    flags = defense.flags()
    assert sum(f.flagged for f in flags) == 4 and all((f.replaced_response is not None) == f.flagged for f in flags)
    expected = [f.replaced_response if f.flagged else s.response for f, s in zip(flags, samples)]
    assert sorted(seen) == sorted(expected)
    assert all("starting model's greedy response" in f.reason for f in flags if f.flagged)


def test_drop_leaves_flagged_samples_out_of_the_lm_loss(tiny_model, monkeypatch):
    seen = trained_responses(tiny_model, monkeypatch)
    samples = shape_samples()
    defense = byorn(threshold="quantile", quantile=0.25, replace="drop")
    result = train(tiny_model, samples, TrainConfig(max_steps=2, batch_size=4), progress=False, defense=defense)
    kept = [s.response for s, f in zip(samples, defense.flags()) if not f.flagged]
    assert result.steps == 2 and sorted(seen) == sorted(kept) and len(kept) == 6
    with pytest.raises(ValueError, match="left every training sample out"):
        train(tiny_model, samples, TrainConfig(max_steps=2, batch_size=4), progress=False,
              defense=byorn(threshold="quantile", quantile=1.0, replace="drop"))


@pytest.mark.parametrize("refresh_every, generated_at", [(0, [0, 2]), (1, [0, 1, 2, 3])])
def test_ema_replacements_are_refreshed_on_schedule_but_not_after_the_last_step(tiny_model, refresh_every, generated_at):
    defense = byorn(threshold="quantile", refresh_every=refresh_every)
    steps: list[int] = []
    generate = defense.generate

    def recording(state, indices):
        steps.append(state.step)
        return generate(state, indices)

    defense.generate = recording
    train(tiny_model, shape_samples(), TrainConfig(max_steps=4, batch_size=4), progress=False, defense=defense)
    assert steps == generated_at
    if refresh_every:
        assert all(f.reason.endswith("EMA weights at step 3") for f in defense.flags() if f.flagged)


def test_every_pass_byorn_makes_is_counted(tiny_model):
    decoder_calls = []
    forward = tiny_model.decoder.forward

    def counting(*args, **kwargs):
        decoder_calls.append(1)
        return forward(*args, **kwargs)

    tiny_model.decoder.forward = counting
    defense = byorn(threshold="quantile", refresh_every=1)
    result = train(tiny_model, shape_samples(), TrainConfig(max_steps=3, batch_size=4), progress=False, defense=defense)
    assert result.forward_passes == len(decoder_calls)
    assert result.extra_forward_passes == defense.extra_forward_passes == len(decoder_calls) - 3


def test_ema_update_follows_the_decay_formula_and_swaps_in_for_a_block(tiny_model):
    ema = ExponentialMovingAverage(tiny_model, 0.9)
    start = [p.detach().clone() for p in ema.parameters]
    with torch.no_grad():
        for p in ema.parameters:
            p.add_(torch.randn_like(p))
    tuned = [p.detach().clone() for p in ema.parameters]
    ema.update()
    expected = [0.9 * s + 0.1 * t for s, t in zip(start, tuned)]
    assert all(torch.allclose(shadow, e, atol=1e-6) for shadow, e in zip(ema.shadow, expected))
    with ema.swapped_in():
        assert all(torch.allclose(p, e, atol=1e-6) for p, e in zip(ema.parameters, expected))
    assert all(torch.equal(p, t) for p, t in zip(ema.parameters, tuned))
    assert {id(p) for p in ema.parameters} == {id(p) for p in tiny_model.parameters() if p.requires_grad}


@pytest.mark.parametrize("params, key", [
    ({"score": "loss"}, "score"), ({"threshold": "otsu"}, "threshold"), ({"z": -1}, "z"), ({"quantile": 1.5}, "quantile"),
    ({"replace": "keep"}, "replace"), ({"ema_decay": 2}, "ema_decay"), ({"refresh_every": -1}, "refresh_every"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
])
def test_bad_parameters_are_named(params, key):
    with pytest.raises(ValueError, match=key):
        byorn(**params)


def test_repeated_sample_ids_are_refused(tiny_model):
    samples = shape_samples()
    with pytest.raises(ValueError, match="id 'red-circle' occurs twice"):
        byorn().prepare(tiny_model, [samples[0], samples[0]])


def test_a_run_with_byorn_writes_flags_and_detection_metrics(karpathy, tmp_path, monkeypatch):
    monkeypatch.setattr("robustit.eval.evaluate.caption_scores", lambda p, r: SimpleNamespace(as_dict=lambda: {}))
    overrides = tiny_overrides(karpathy, tmp_path) + [
        "evaluate_base=false", "defense.name=byorn", "defense.params.threshold=quantile", "defense.params.max_new_tokens=4",
    ]
    config = load_config(None, overrides)
    store = ResultStore(tmp_path / "store")
    run_dir = Experiment(config, progress=False).run(store)
    flags = [json.loads(line) for line in (run_dir / "flags.jsonl").read_text().splitlines()]
    assert len(flags) == 12 and sum(f["flagged"] for f in flags) == 5
    assert set(flags[0]) == {"id", "score", "flagged", "replaced_response", "reason"}
    manifest = run_dir.load_manifest()
    detection = run_dir.load_metrics()["detection"]
    hits = sum(f["flagged"] and f["id"] in manifest["poisoned_ids"] for f in flags)
    assert detection["n_flagged"] == 5 and detection["n_poisoned"] == 3 and detection["true_positives"] == hits
    assert detection["precision"] == pytest.approx(100 * hits / 5) and detection["recall"] == pytest.approx(100 * hits / 3)
    assert 0.0 <= detection["auroc"] <= 1.0
    assert store.get(config.config_hash())["metrics"]["detection"] == detection
    assert "## Detection" in (run_dir / "report.md").read_text()
