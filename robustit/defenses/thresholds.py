"""Rules that flag samples from their suspicion scores s_1..s_n (higher = more suspicious)
alone: none needs the poison rate, and none may be tuned to an attack's trigger, target or rate.

    robust_z  flag i when z_i = (s_i - m) / (1.4826 MAD) > z, m the median and
              MAD = median_i |s_i - m| (1.4826 MAD estimates a normal standard deviation);
              where MAD = 0, the scale is 1.2533 * mean_i |s_i - m| instead (Iglewicz and
              Hoaglin's fallback), and where that is 0 too (all scores equal) z_i = 0.
    quantile  flag the k = floor(q n + 1/2) highest scores (the top share q; ties broken by
              order in the data).
    mixture   fit a two-component Gaussian mixture to the scores by EM (initial means at the
              25th and 75th percentiles, both variances var(s), weights 1/2; each variance at
              least 1e-4 var(s), so a component cannot collapse onto a few equal scores) and
              flag i when the posterior of the higher-mean component is > 1/2. Nothing is
              flagged when one Gaussian explains the scores as well, BIC_1 <= BIC_2, with
              BIC_k = -2 log L_k + p_k ln n (p_1 = 2, p_2 = 5 free parameters), or when all
              scores are equal.

Each rule returns a `Decision`: the flags and, per sample, the reason in words.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MAD_TO_SD = 1.4826
MEAN_AD_TO_SD = 1.2533
VARIANCE_FLOOR = 1e-4
EM_ITERATIONS = 1000
EM_TOLERANCE = 1e-10


@dataclass
class Decision:
    """`flagged[i]` says whether sample i is flagged; `reasons[i]` why, in words."""

    flagged: np.ndarray
    reasons: list[str]


def robust_z_scores(scores: np.ndarray) -> np.ndarray:
    """z_i = (s_i - median) / robust scale (see the module docstring)."""
    deviation = scores - np.median(scores)
    scale = MAD_TO_SD * np.median(np.abs(deviation))
    if scale == 0:
        scale = MEAN_AD_TO_SD * np.mean(np.abs(deviation))
    return deviation / scale if scale > 0 else np.zeros_like(scores)


def robust_z(scores: np.ndarray, z: float) -> Decision:
    """Flag the scores more than `z` robust standard deviations above the median."""
    values = robust_z_scores(np.asarray(scores, dtype=float))
    flagged = values > z
    return Decision(flagged, [f"robust z {v:.2f} {'>' if f else '<='} {z:g}" for v, f in zip(values, flagged)])


def top_share(scores: np.ndarray, share: float) -> Decision:
    """Flag the floor(share * n + 1/2) highest scores."""
    scores = np.asarray(scores, dtype=float)
    k = math.floor(share * len(scores) + 0.5)
    ranks = np.empty(len(scores), dtype=int)
    ranks[np.argsort(-scores, kind="stable")] = np.arange(1, len(scores) + 1)
    flagged = ranks <= k
    return Decision(flagged, [f"rank {r} of {len(scores)}, {'in' if f else 'not in'} the top {k} ({share:.0%})"
                              for r, f in zip(ranks, flagged)])


@dataclass
class GaussianMixture:
    """A 1-D mixture: component weights, means, variances and the log-likelihood of the data."""

    weights: np.ndarray
    means: np.ndarray
    variances: np.ndarray
    log_likelihood: float

    def log_densities(self, x: np.ndarray) -> np.ndarray:
        """n x k: log(weight_k N(x_i; mean_k, variance_k))."""
        return (np.log(self.weights) - 0.5 * np.log(2 * np.pi * self.variances)
                - (x[:, None] - self.means) ** 2 / (2 * self.variances))

    def posteriors(self, x: np.ndarray) -> np.ndarray:
        """n x k: the probability that x_i came from component k."""
        log_densities = self.log_densities(x)
        return np.exp(log_densities - np.logaddexp.reduce(log_densities, axis=1, keepdims=True))


def fit_two_gaussians(x: np.ndarray) -> GaussianMixture:
    """EM for a two-component mixture of `x` (var(x) > 0), started as the module docstring says."""
    floor = VARIANCE_FLOOR * x.var()
    mixture = GaussianMixture(np.full(2, 0.5), np.percentile(x, [25, 75]), np.full(2, x.var()), -math.inf)
    for _ in range(EM_ITERATIONS):
        log_densities = mixture.log_densities(x)
        totals = np.logaddexp.reduce(log_densities, axis=1, keepdims=True)
        log_likelihood = float(totals.sum())
        converged = log_likelihood - mixture.log_likelihood <= EM_TOLERANCE * abs(log_likelihood)
        mixture.log_likelihood = log_likelihood
        if converged:
            break
        responsibility = np.exp(log_densities - totals)
        mass = np.maximum(responsibility.sum(0), np.finfo(float).tiny)
        means = (responsibility * x[:, None]).sum(0) / mass
        variances = np.maximum((responsibility * (x[:, None] - means) ** 2).sum(0) / mass, floor)
        mixture = GaussianMixture(mass / len(x), means, variances, log_likelihood)
    return mixture


def mixture(scores: np.ndarray) -> Decision:
    """Flag the samples of the higher-mean component of a two-Gaussian fit, where it beats one Gaussian."""
    x = np.asarray(scores, dtype=float)
    if len(x) < 2 or x.var() == 0:
        return Decision(np.zeros(len(x), dtype=bool), ["all scores equal: nothing to separate"] * len(x))
    n = len(x)
    one_gaussian = -0.5 * n * (math.log(2 * math.pi * x.var()) + 1)
    fitted = fit_two_gaussians(x)
    bic_one, bic_two = -2 * one_gaussian + 2 * math.log(n), -2 * fitted.log_likelihood + 5 * math.log(n)
    if bic_one <= bic_two:
        reason = f"one Gaussian fits as well (BIC {bic_one:.1f} <= {bic_two:.1f} for two): nothing flagged"
        return Decision(np.zeros(n, dtype=bool), [reason] * n)
    posterior = fitted.posteriors(x)[:, int(np.argmax(fitted.means))]
    flagged = posterior > 0.5
    return Decision(flagged, [f"posterior of the high component {p:.3f} {'>' if f else '<='} 0.5"
                              for p, f in zip(posterior, flagged)])
