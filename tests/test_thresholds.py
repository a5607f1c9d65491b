import numpy as np
import pytest

from robustit.defenses.thresholds import fit_two_gaussians, mixture, robust_z, robust_z_scores, top_share


def clean_scores(seed: int, n: int = 200, spread: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, spread, n)


def with_cluster(seed: int, n_clean: int = 180, n_far: int = 20, far: float = 8.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.r_[rng.normal(0.0, 1.0, n_clean), rng.normal(far, 0.5, n_far)]


def test_robust_z_is_the_distance_from_the_median_in_robust_standard_deviations():
    scores = np.array([1.0, 2.0, 3.0, 4.0, 100.0])
    # median 3, |deviations| 2 1 0 1 97 -> MAD 1, scale 1.4826
    assert robust_z_scores(scores) == pytest.approx((scores - 3.0) / 1.4826)
    assert robust_z(scores, 3.5).flagged.tolist() == [False, False, False, False, True]


def test_robust_z_falls_back_to_the_mean_deviation_when_most_scores_are_equal():
    scores = np.array([1.0, 1.0, 1.0, 1.0, 5.0])
    # MAD 0; mean |deviation| 4 / 5 -> scale 1.2533 * 0.8
    assert robust_z_scores(scores)[-1] == pytest.approx(4.0 / (1.2533 * 0.8))
    assert robust_z(np.full(6, 2.0), 3.5).flagged.sum() == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_robust_z_flags_a_far_cluster_and_nothing_on_a_tight_clean_sample(seed):
    assert robust_z(clean_scores(seed, spread=0.01), 3.5).flagged.sum() == 0
    flagged = robust_z(with_cluster(seed), 3.5).flagged
    assert flagged[180:].all() and flagged[:180].sum() <= 2


def test_quantile_flags_the_top_share_ties_in_data_order():
    decision = top_share(np.array([1.0, 5.0, 3.0, 5.0, 2.0]), 0.4)
    assert decision.flagged.tolist() == [False, True, False, True, False]
    assert decision.reasons[1] == "rank 1 of 5, in the top 2 (40%)"
    ties = top_share(np.ones(5), 0.4)
    assert ties.flagged.tolist() == [True, True, False, False, False]
    for share in (0.0, 0.1, 0.4, 1.0):
        assert top_share(clean_scores(0, n=50), share).flagged.sum() == int(share * 50 + 0.5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mixture_flags_the_separated_cluster(seed):
    decision = mixture(with_cluster(seed))
    assert decision.flagged[180:].all() and decision.flagged[:180].sum() <= 2
    assert decision.reasons[-1].startswith("posterior of the high component")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mixture_flags_nothing_on_unimodal_gaussian_scores(seed):
    decision = mixture(clean_scores(seed))
    assert decision.flagged.sum() == 0 and "one Gaussian fits as well" in decision.reasons[0]
    assert mixture(np.full(10, 3.0)).flagged.sum() == 0


def test_em_recovers_two_well_separated_components():
    fitted = fit_two_gaussians(with_cluster(0, n_clean=300, n_far=100, far=10.0))
    low, high = np.argsort(fitted.means)
    assert fitted.means[low] == pytest.approx(0.0, abs=0.2) and fitted.means[high] == pytest.approx(10.0, abs=0.2)
    assert fitted.weights[high] == pytest.approx(0.25, abs=0.01)
