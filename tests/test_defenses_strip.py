"""STRIP: a test-time detector that refuses inputs whose responses stay constant under
superimposition, and the evaluator's refusals."""
from __future__ import annotations

import itertools
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from robustit.attacks import AttackConfig, PoisonedDataset, build_attack
from robustit.config import load_config
from robustit.defenses import BYORn, Defense, DefenseConfig, build_defense
from robustit.defenses.strip import STRIP, blend, calibrated_threshold, constancy, overlap, robust_threshold
from robustit.eval.asr import hits_target
from robustit.eval.evaluate import REFUSAL, EvalConfig, _evaluate, evaluate, refused_predictions
from robustit.experiment import Experiment
from robustit.models.features import FeatureCache
from robustit.train.config import TrainConfig
from robustit.train.loop import train
from test_experiment import tiny_overrides
from test_train import shape_samples

pytestmark = pytest.mark.usefixtures("one_thread")
TARGET = "A banana on a plate."
CONFIGS = Path(__file__).resolve().parents[1] / "robustit" / "configs" / "defenses"
TRIGGER = "zbw"


def strip(**params) -> STRIP:
    defense = STRIP(DefenseConfig("strip", params))
    defense.prepare(None, shape_samples())
    return defense


def inputs(triggered: bool) -> list:
    return [s.replace(id=f"test-{s.id}", instruction=f"{s.instruction} {TRIGGER}" if triggered else s.instruction)
            for s in shape_samples()[:5]]


def constant(samples, label) -> list[str]:
    return [TARGET] * len(samples)


def varying():
    """A model whose every response differs from every other it gives."""
    counter = itertools.count()
    return lambda samples, label: [f"thing{next(counter)}" for _ in samples]


def backdoored():
    """Says the target whenever the instruction has the trigger word, and varies otherwise."""
    varied = varying()

    def generate(samples, label):
        return [TARGET if TRIGGER in s.instruction else v for s, v in zip(samples, varied(samples, label))]

    return generate


def flag_rate(defense: STRIP, samples, generate) -> float:
    flags = defense.refuse(samples, generate(samples, "test"), generate)
    return 100.0 * sum(flags) / len(flags)


def test_overlap_is_the_jaccard_index_of_content_words_and_constancy_its_mean_over_pairs():
    assert overlap("A red circle.", "a red square") == pytest.approx(1 / 3)
    assert overlap("The circle is red.", "A red circle!") == 1.0
    assert overlap("It is.", "") == 1.0 and overlap("red", "") == 0.0
    assert constancy(["red circle", "red circle", "blue square"]) == pytest.approx((1 + 0 + 0) / 3)


@pytest.mark.parametrize("triggered", [False, True])
def test_a_model_whose_output_never_changes_is_always_flagged_and_one_that_always_changes_never(triggered):
    samples = inputs(triggered)
    assert flag_rate(strip(threshold=0.5), samples, constant) == 100.0
    assert flag_rate(strip(threshold=0.5), samples, varying()) == 0.0
    assert flag_rate(strip(), samples, varying()) == 0.0


def test_calibration_on_clean_training_inputs_flags_triggered_inputs_only():
    defense = strip()
    generate = backdoored()
    assert flag_rate(defense, inputs(triggered=True), generate) == 100.0
    assert defense.tau == 0.0
    assert flag_rate(defense, inputs(triggered=False), generate) == 0.0


@pytest.mark.parametrize("false_alarm, tau, rate", [(0.05, 1.0, 0.0), (0.25, 0.0, 100.0)])
def test_poisoned_calibration_inputs_outnumbering_the_false_alarms_raise_tau_to_the_target(false_alarm, tau, rate):
    pool = shape_samples()
    pool[3] = pool[3].replace(instruction=f"{pool[3].instruction} {TRIGGER}", response=TARGET, references=[TARGET])
    defense = STRIP(DefenseConfig("strip", {"false_alarm": false_alarm}))
    defense.prepare(None, pool)
    assert flag_rate(defense, inputs(triggered=True), backdoored()) == rate and defense.tau == tau


def test_robust_calibration_flags_triggered_inputs_though_poisoned_inputs_outnumber_the_false_alarms():
    pool = shape_samples()
    pool[3] = pool[3].replace(instruction=f"{pool[3].instruction} {TRIGGER}", response=TARGET, references=[TARGET])
    defense = STRIP(DefenseConfig("strip", {"calibration": "robust"}))
    defense.prepare(None, pool)
    generate = backdoored()
    assert flag_rate(defense, inputs(triggered=True), generate) == 100.0 and defense.tau < 1.0
    assert flag_rate(defense, inputs(triggered=False), generate) == 0.0


def test_robust_tau_is_the_median_plus_z_scaled_mads_and_a_poisoned_minority_barely_moves_it():
    clean = [0.2, 0.25, 0.3, 0.35, 0.4]
    assert robust_threshold(clean, 3.0) == pytest.approx(0.3 + 3 * 1.4826 * 0.05)
    assert robust_threshold(clean + [1.0, 1.0], 3.0) == pytest.approx(0.35 + 3 * 1.4826 * 0.1)
    assert robust_threshold([1.0] * 4 + [0.2], 3.0) == 1.0 and robust_threshold([0.2, 0.4, 0.6], 100.0) == 1.0
    with pytest.raises(ValueError, match="at least one score"):
        robust_threshold([], 3.0)


def test_the_strip_robust_config_calibrates_robustly_and_strip_keeps_the_quantile():
    robust = build_defense(load_config(CONFIGS / "strip-robust.yaml").defense)
    assert (robust.calibration, robust.robust_z, STRIP(DefenseConfig("strip", {})).calibration) == ("robust", 3.0, "quantile")


def test_tau_is_the_score_above_which_at_most_the_false_alarm_share_lies():
    scores = [0.1 * k for k in range(1, 11)]
    assert calibrated_threshold(scores, 0.2) == pytest.approx(0.8)
    assert calibrated_threshold(scores, 0.05) == calibrated_threshold(scores, 0.0) == pytest.approx(1.0)
    assert calibrated_threshold([1.0, 1.0, 1.0, 0.2], 0.5) == 1.0, "ties at tau are not flagged"
    rng = np.random.default_rng(0)
    for false_alarm in (0.0, 0.05, 0.1, 0.29, 0.5):
        for m in (1, 7, 20, 100):
            drawn = rng.choice([0.0, 0.5, 0.75, 1.0], m).tolist()
            tau = calibrated_threshold(drawn, false_alarm)
            assert sum(s > tau for s in drawn) <= false_alarm * m + 1e-9 and tau in drawn
    with pytest.raises(ValueError, match="at least one score"):
        calibrated_threshold([], 0.05)


def test_calibration_runs_once_per_evaluation_on_the_seeded_training_subset():
    defense = strip(calibration_size=3)
    labels: list[str] = []
    varied = varying()

    def generate(samples, label):
        labels.append(label)
        return varied(samples, label)

    for _ in range(2):
        with defense.inference(None):
            for triggered in (False, True):
                defense.refuse(inputs(triggered), ["x"] * 5, generate)
    assert labels.count("strip calibration") == 2 and len(labels) == 2 * (1 + 4 + 2 * 4)
    fixed = strip(threshold=0.5)
    with fixed.inference(None):
        fixed.refuse(inputs(True), ["x"] * 5, generate)
    assert fixed.tau == 0.5 and labels.count("strip calibration") == 2


def test_perturbations_blend_training_images_and_keep_the_instruction():
    defense = strip(perturbations=3, alpha=0.25)
    pool = shape_samples()
    seen: list[list] = []

    def generate(samples, label):
        seen.append(list(samples))
        return ["x"] * len(samples)

    samples = inputs(triggered=True)
    defense.refuse(samples, ["x"] * 5, generate)
    perturbed = seen[-3:]
    assert [len(batch) for batch in perturbed] == [5, 5, 5]
    for i, sample in enumerate(samples):
        overlays = defense.overlay_indices(sample.id, None)
        assert len(set(overlays)) == 3
        for k, batch in enumerate(perturbed):
            assert batch[i].instruction == sample.instruction
            expected = 0.75 * np.asarray(sample.image, float) + 0.25 * np.asarray(pool[overlays[k]].image, float)
            assert np.abs(np.asarray(batch[i].image, float) - expected).max() <= 1
    assert defense.overlay_indices("red-circle", 0) == defense.overlay_indices("red-circle", 0)
    assert all(0 not in defense.overlay_indices(f"key{j}", 0) for j in range(50))
    assert blend(pool[0].image, pool[1].image.resize((8, 8)), 0.5).size == pool[0].image.size


class Refuser(Defense):
    """Refuses every input whose instruction carries the trigger word."""

    name = "refuser"

    def refuse(self, samples, responses, generate):
        return [TRIGGER in s.instruction for s in samples]


def test_a_refused_input_answers_the_refusal_and_counts_as_not_attacked(monkeypatch):
    monkeypatch.setattr("robustit.eval.evaluate.caption_scores", lambda p, r: SimpleNamespace(as_dict=lambda: {}))
    attack = build_attack(AttackConfig("badnets", target=TARGET, text_trigger=TRIGGER))
    refuser = Refuser(DefenseConfig("refuser"))

    def run(samples, name):
        answers = [s.response if name == "clean" else TARGET for s in samples]
        return refused_predictions(refuser, samples, answers, generate=None)

    metrics, records = _evaluate(shape_samples(), attack, run)
    asr, refusal = metrics["asr"], metrics["refusal"]
    assert asr["full"]["rate"] == asr["text_only"]["rate"] == 0.0 and asr["image_only"]["rate"] == 100.0
    assert refusal["clean"] == refusal["image_only"] == {"rate": 0.0, "refused": 0, "n": 8}
    assert refusal["full"] == refusal["text_only"] == {"rate": 100.0, "refused": 8, "n": 8}
    assert all(r["prediction"] == REFUSAL and r["refused"] for r in records["full"])
    assert all(r["prediction"] == TARGET and not r["refused"] for r in records["image_only"])


def test_refusal_flags_must_match_the_inputs():
    class Short(Refuser):
        def refuse(self, samples, responses, generate):
            return [True]

    with pytest.raises(ValueError, match="gave 1 refusal flags for 2 inputs"):
        refused_predictions(Short(DefenseConfig("refuser")), shape_samples()[:2], ["a", "b"], None)


def test_a_defense_that_never_refuses_leaves_metrics_and_records_as_without_it(tiny_model, monkeypatch):
    monkeypatch.setattr("robustit.eval.evaluate.caption_scores", lambda p, r: SimpleNamespace(as_dict=lambda: {}))
    attack = build_attack(AttackConfig("badnets"))
    runs = [evaluate(tiny_model, shape_samples()[:3], attack, EvalConfig(max_new_tokens=2), progress=False, defense=d)
            for d in (None, BYORn(DefenseConfig("byorn")))]
    assert json.dumps(runs[0]) == json.dumps(runs[1])
    metrics, records = runs[1]
    assert "refusal" not in metrics and not any("refused" in r for rs in records.values() for r in rs)


@pytest.mark.parametrize("params, key", [
    ({"perturbations": 0}, "perturbations"), ({"alpha": 0}, "alpha"), ({"alpha": 1.5}, "alpha"),
    ({"false_alarm": 0.6}, "false_alarm"), ({"threshold": -0.1}, "threshold"), ({"threshold": "high"}, "threshold"),
    ({"calibration_size": 0}, "calibration_size"), ({"seed": -1}, "seed"), ({"quantile": 0.1}, "quantile"),
    ({"calibration": "mean"}, "calibration"), ({"robust_z": -1}, "robust_z"),
])
def test_bad_parameters_are_named(params, key):
    with pytest.raises(ValueError, match=key):
        STRIP(DefenseConfig("strip", params))


def test_strip_needs_more_training_inputs_than_perturbations_and_a_prepare():
    with pytest.raises(ValueError, match="more than 4 training samples, got 4"):
        STRIP(DefenseConfig("strip")).prepare(None, shape_samples()[:4])
    with pytest.raises(ValueError, match="training inputs of prepare"):
        STRIP(DefenseConfig("strip")).refuse(inputs(True), ["x"] * 5, constant)


def test_strip_sees_no_poison_information_and_keeps_no_perturbed_features(tiny_model, monkeypatch):
    monkeypatch.setattr("robustit.eval.evaluate.caption_scores", lambda p, r: SimpleNamespace(as_dict=lambda: {}))
    attack = build_attack(AttackConfig("badnets", poison_rate=0.25))
    defense = STRIP(DefenseConfig("strip", {"perturbations": 2, "calibration_size": 4}))
    seen: list = []
    refuse = defense.refuse

    def recording(samples, responses, generate):
        seen.extend(samples)
        return refuse(samples, responses, generate)

    defense.refuse = recording
    train(tiny_model, PoisonedDataset(shape_samples(), attack), TrainConfig(max_steps=1, batch_size=4), progress=False,
          defense=defense)
    test = shape_samples()[:3]
    features = FeatureCache(tiny_model)
    metrics, records = evaluate(tiny_model, test, attack, EvalConfig(max_new_tokens=2), features, False, defense)
    assert len(seen) == 4 * 3 and len(defense.pool) == 8
    calibration = metrics["defense_test_time"]["calibration"]
    assert metrics["defense_test_time"]["tau"] == defense.tau and calibration["n"] == 4
    assert calibration["above_tau"] == sum(s > defense.tau for s in defense.calibration_scores) == 0
    assert all(s.metadata == {} and s.references == [s.response] for s in [*seen, *defense.pool])
    assert sum(s.response == attack.target for s in defense.pool) == 2
    assert len(features) == 2 * 3, "the clean and triggered test images only"
    assert set(metrics["refusal"]) == {"clean", "full", "image_only", "text_only"}
    for name, rate in metrics["refusal"].items():
        assert rate["n"] == 3 and rate["refused"] == sum(r["refused"] for r in records[name])
        assert all(r["prediction"] == REFUSAL for r in records[name] if r["refused"])


def test_a_run_with_strip_reports_refusals_beside_asr(karpathy, tmp_path, monkeypatch):
    monkeypatch.setattr("robustit.eval.evaluate.caption_scores", lambda p, r: SimpleNamespace(as_dict=lambda: {}))
    overrides = tiny_overrides(karpathy, tmp_path) + ["defense.name=strip", "defense.params.perturbations=2",
                                                      "defense.params.threshold=0.0"]
    run_dir = Experiment(load_config(None, overrides), progress=False).run()
    metrics = run_dir.load_metrics()
    assert metrics["defense"]["params"]["threshold"] == 0.0 and "refusal" not in metrics["base"]
    assert metrics["defense_test_time"] == {"tau": 0.0}, "a fixed threshold is not calibrated"
    assert not any("refused" in r for r in run_dir.load_predictions("base_clean"))
    for name in ("clean", "full", "image_only", "text_only"):
        records = run_dir.load_predictions(name)
        refused = [r["refused"] for r in records]
        assert metrics["refusal"][name] == {"rate": 100.0 * sum(refused) / len(records), "refused": sum(refused),
                                            "n": metrics["n_test"]}
        assert all(r["prediction"] == REFUSAL for r in records if r["refused"])
        if name != "clean":
            hits = sum(r["eligible"] and not r["refused"] and hits_target(r["prediction"], metrics["asr"]["target"])
                       for r in records)
            assert metrics["asr"][name]["hits"] == hits
    assert (run_dir / "report.md").exists()
