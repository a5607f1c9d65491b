import pytest

from robustit.defenses import Flag
from robustit.eval.detection import auroc, detection_metrics, detection_of, mid_ranks
from robustit.rundir import RunDirectory


def flags(scores: dict[str, float], flagged: set[str]) -> list[Flag]:
    return [Flag(key, score, key in flagged, None, "") for key, score in scores.items()]


def test_tied_values_share_the_mean_of_their_ranks():
    assert mid_ranks([3.0, 1.0, 3.0, 2.0]).tolist() == [3.5, 1.0, 3.5, 2.0]
    assert mid_ranks([5.0, 5.0, 5.0]).tolist() == [2.0, 2.0, 2.0]


def test_auroc_is_the_share_of_poisoned_clean_pairs_ordered_right_ties_half():
    assert auroc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    assert auroc([0.1, 0.2, 0.9, 0.8], [True, True, False, False]) == 0.0
    assert auroc([0.5, 0.5, 0.5, 0.5], [True, False, True, False]) == 0.5
    # pairs (poisoned, clean): (0.9, 0.1) 1, (0.9, 0.5) 1, (0.5, 0.1) 1, (0.5, 0.5) 1/2 -> 3.5 / 4
    assert auroc([0.9, 0.1, 0.5, 0.5], [True, False, True, False]) == pytest.approx(3.5 / 4)
    # (0.3 vs 0.2, 0.4, 0.1): 1 + 0 + 1; (0.6 vs ...): 3 -> 5 / 6
    assert auroc([0.3, 0.6, 0.2, 0.4, 0.1], [True, True, False, False, False]) == pytest.approx(5 / 6)


def test_auroc_is_undefined_without_both_classes():
    assert auroc([0.1, 0.2], [False, False]) is None
    assert auroc([0.1, 0.2], [True, True]) is None


def test_precision_and_recall_count_flags_against_the_manifest():
    scored = flags({"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.1, "e": 0.0}, flagged={"a", "b", "c"})
    metrics = detection_metrics(scored, ["a", "d"])
    assert metrics["n_samples"] == 5 and metrics["n_flagged"] == 3 and metrics["n_poisoned"] == 2
    assert metrics["true_positives"] == 1
    assert metrics["precision"] == pytest.approx(100 / 3) and metrics["recall"] == 50.0
    # a beats c, d, e (3 of 3); d beats e only (1 of 3) -> 4 / 6
    assert metrics["auroc"] == pytest.approx(4 / 6)


def test_undefined_rates_are_none_and_no_manifest_gives_counts_only():
    nothing = detection_metrics(flags({"a": 0.2, "b": 0.1}, flagged=set()), ["a"])
    assert nothing["precision"] is None and nothing["recall"] == 0.0 and nothing["auroc"] == 1.0
    clean = detection_metrics(flags({"a": 0.2, "b": 0.1}, flagged={"a"}), [])
    assert clean["precision"] == 0.0 and clean["recall"] is None and clean["auroc"] is None
    assert detection_metrics(flags({"a": 0.2, "b": 0.1}, flagged={"a"}), None) == {"n_samples": 2, "n_flagged": 1}


def test_bad_flags_are_named():
    with pytest.raises(ValueError, match=r"more than once: \['a'\]"):
        detection_metrics([Flag("a", 1.0, True, None, ""), Flag("a", 0.0, False, None, "")], ["a"])
    with pytest.raises(ValueError, match=r"do not score: \['z'\]"):
        detection_metrics(flags({"a": 0.2}, set()), ["z"])


def test_run_directory_flags_round_trip_into_detection(tmp_path):
    run_dir = RunDirectory(tmp_path)
    assert run_dir.load_flags() == [] and detection_of(run_dir) is None
    written = [Flag("a", 0.9, True, "A red circle.", "high"), Flag("b", 0.1, False, None, "low")]
    run_dir.save_flags(written)
    assert run_dir.load_flags() == written
    assert detection_of(run_dir) == {"n_samples": 2, "n_flagged": 1}
    run_dir.save_manifest({"poisoned_ids": ["a"]})
    assert detection_of(run_dir)["recall"] == 100.0
    (tmp_path / "flags.jsonl").write_text('{"id": "a", "score": 1.0}\n')
    with pytest.raises(ValueError, match=r"flags.jsonl line 1: not a flag record .*flagged"):
        run_dir.load_flags()
