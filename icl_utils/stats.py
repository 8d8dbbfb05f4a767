"""Intervals, nulls and the size of a design, for every claim the book grades (on scipy.stats).

The rule everywhere: resample the unit that was actually drawn at random. Prompts that share one
set of demonstrations are not independent (they share the context that makes them right or
wrong), so an interval over such prompts resamples *whole demonstration sets* (clusters), with
every prompt of a set kept together; an interval over training runs resamples seeds.

* `cluster_bootstrap(statistic, clusters)`: a percentile bootstrap over clusters of rows, for any
  statistic of the rows (a mean, a paired difference, an AUC, a rank correlation...).
* `mean_interval`, `paired_difference`: the two statistics most claims need.
* `difference_from_random(treated, random_draws, clusters)`: a chosen intervention minus random
  ones (>= 20 draws) on the same rows, resampling rows and draws.
* `percentile_of(value, null)`: where a value falls among draws of a null (e.g. random heads).
* `minimum_detectable_effect`, `units_to_settle`: what a design could have detected, and the number
  of units (demonstration sets, seeds) at which an interval around the current estimate would
  settle a claim.
* `spearman`, `pearson`, `auc`: scipy's rank correlation, correlation and Mann-Whitney AUC.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats as _st

CONFIDENCE = 0.95
N_RESAMPLES = 2000
POWER = 0.8


@dataclass(frozen=True)
class Interval:
    """A point estimate with a bootstrap interval over `n_units` resampled units."""

    estimate: float
    low: float
    high: float
    se: float  # bootstrap standard error
    n_units: int
    unit: str
    confidence: float = CONFIDENCE

    def __str__(self) -> str:
        return f"{self.estimate:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"

    def shifted(self, by: float) -> "Interval":
        """The same interval with `by` subtracted (e.g. an accuracy minus chance)."""
        return Interval(self.estimate - by, self.low - by, self.high - by, self.se, self.n_units, self.unit,
                        self.confidence)


def _as_array(x) -> np.ndarray:
    if torch.is_tensor(x):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=float)


def _check_confidence(confidence) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence is a fraction between 0 and 1 (0.95 for a 95% interval), not {confidence!r}")


def cluster_bootstrap(statistic, clusters, n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE,
                      seed: int = 0, unit: str = "demonstration set") -> Interval:
    """Percentile bootstrap of `statistic(rows)` resampling whole clusters of rows.

    statistic: a function of an integer array of row indices (rows of one cluster stay together;
    a cluster drawn twice contributes its rows twice) returning a float.
    clusters: one label per row (e.g. the demonstration set each prompt was built with). With one
    row per cluster this is the ordinary bootstrap over rows.
    """
    _check_confidence(confidence)
    labels = np.asarray(clusters)
    if labels.ndim != 1 or len(labels) == 0:
        raise ValueError("clusters must be a non-empty 1-d sequence: one label per row")
    members = [np.flatnonzero(labels == u) for u in np.unique(labels)]
    if len(members) < 2:
        raise ValueError(
            f"An interval needs at least two independent {unit}s; got {len(members)}. "
            f"Draw more {unit}s (e.g. more demonstration sets or seeds).")

    def on_clusters(picked):
        return statistic(np.concatenate([members[int(i)] for i in picked]))

    estimate = float(statistic(np.arange(len(labels))))
    with warnings.catch_warnings():  # a statistic constant over resamples is a valid (zero-width) answer
        warnings.simplefilter("ignore", category=getattr(_st, "DegenerateDataWarning", RuntimeWarning))
        result = _st.bootstrap((np.arange(len(members)),), on_clusters, vectorized=False, n_resamples=n_resamples,
                               confidence_level=confidence, method="percentile",
                               rng=np.random.default_rng(seed))
    low, high = result.confidence_interval
    return Interval(estimate, float(low), float(high), float(result.standard_error), len(members), unit, confidence)


def interval_from_draws(estimate: float, draws, n_units: int, unit: str, confidence: float = CONFIDENCE) -> Interval:
    """A percentile interval from bootstrap draws made elsewhere (e.g. a ranking recomputed on
    resampled demonstration sets, HeadRanking.resampled_importance)."""
    _check_confidence(confidence)
    draws = _as_array(draws).ravel()
    draws = draws[np.isfinite(draws)]
    if len(draws) < 2:
        raise ValueError("need at least two finite bootstrap draws")
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return Interval(float(estimate), float(low), float(high), float(draws.std(ddof=1)), n_units, unit, confidence)


def mean_interval(values, clusters, **kwargs) -> Interval:
    """Mean of per-row values, resampling clusters (e.g. prompts grouped by demonstration set)."""
    values = _as_array(values)
    if len(values) != len(clusters):
        raise ValueError(f"{len(values)} values but {len(clusters)} cluster labels")
    return cluster_bootstrap(lambda rows: values[rows].mean(), clusters, **kwargs)


def paired_difference(treated, control, clusters, **kwargs) -> Interval:
    """Mean of treated - control over the same rows (e.g. ablated minus clean on the same prompts)."""
    treated, control = _as_array(treated), _as_array(control)
    if treated.shape != control.shape:
        raise ValueError(f"paired values must have one shape; got {treated.shape} and {control.shape}")
    return mean_interval(treated - control, clusters, **kwargs)


def difference_from_random(treated, random_draws, clusters, n_resamples: int = N_RESAMPLES,
                           confidence: float = CONFIDENCE, seed: int = 0, unit: str = "demonstration set") -> Interval:
    """Mean of `treated` (n_rows,) minus the mean of `random_draws` (n_rows, n_draws): a chosen
    intervention against random ones (e.g. random head sets) on the same rows. Two-way bootstrap:
    clusters of rows and random draws are resampled independently, so the interval carries both the
    rows' sampling error and which random sets happened to be drawn."""
    treated, random_draws = _as_array(treated), _as_array(random_draws)
    if random_draws.ndim != 2 or random_draws.shape[0] != len(treated):
        raise ValueError(f"random_draws must be (n_rows, n_draws) with n_rows = {len(treated)}; got {random_draws.shape}")
    if random_draws.shape[1] < 2:
        raise ValueError("an interval against random draws needs at least two draws (the book uses >= 20)")
    labels = np.asarray(clusters)
    if len(labels) != len(treated):
        raise ValueError(f"{len(treated)} rows but {len(labels)} cluster labels")
    _, cluster_of = np.unique(labels, return_inverse=True)
    n_clusters, n_draws = cluster_of.max() + 1, random_draws.shape[1]
    if n_clusters < 2:
        raise ValueError(f"An interval needs at least two independent {unit}s; got {n_clusters}.")
    rows_in = np.bincount(cluster_of, minlength=n_clusters).astype(float)
    treated_sum = np.bincount(cluster_of, treated, minlength=n_clusters)
    random_sum = np.stack([np.bincount(cluster_of, random_draws[:, j], minlength=n_clusters) for j in range(n_draws)], 1)
    rng = np.random.default_rng(seed)
    cluster_weight = np.zeros((n_resamples, n_clusters))
    np.add.at(cluster_weight, (np.arange(n_resamples)[:, None], rng.integers(n_clusters, size=(n_resamples, n_clusters))), 1)
    draw_weight = np.zeros((n_resamples, n_draws))
    np.add.at(draw_weight, (np.arange(n_resamples)[:, None], rng.integers(n_draws, size=(n_resamples, n_draws))), 1)
    rows = cluster_weight @ rows_in
    draws = (cluster_weight @ treated_sum) / rows - np.einsum("rc,cd,rd->r", cluster_weight, random_sum, draw_weight) / (rows * n_draws)
    estimate = treated.mean() - random_draws.mean()
    return interval_from_draws(estimate, draws, int(n_clusters), unit, confidence)


def percentile_of(value: float, null) -> float:
    """Percentage of the null draws below `value` (ties count half): 100 = above every draw."""
    null = _as_array(null).ravel()
    if len(null) == 0:
        raise ValueError("the null distribution is empty: draw some baselines first")
    return float(_st.percentileofscore(null, value, kind="mean"))


def _z(p: float) -> float:
    return float(_st.norm.ppf(p))


def minimum_detectable_effect(se: float, confidence: float = CONFIDENCE, power: float = POWER) -> float:
    """Smallest true effect a design with standard error `se` detects with probability `power`
    at the given two-sided confidence: (z_{1-alpha/2} + z_power) * se (about 2.8 se)."""
    return (_z(1 - (1 - confidence) / 2) + _z(power)) * se


def units_to_settle(se: float, n_units: int, effect: float, threshold: float, confidence: float = CONFIDENCE) -> int:
    """Units at which an interval around the same estimate would settle a claim: exclude 0 when the
    estimated `effect` (in the claim's direction) reaches `threshold` (> 0), else exclude `threshold`
    from above."""
    if threshold <= 0:
        raise ValueError("threshold (the smallest effect that counts) must be positive")
    gap = effect if effect >= threshold else threshold - effect
    half_width = _z(1 - (1 - confidence) / 2) * se
    return max(n_units + 1, math.ceil(n_units * (half_width / gap) ** 2))


def spearman(a, b) -> float:
    """Spearman rank correlation of two equally long sequences or equally shaped tensors (flattened)."""
    a, b = _as_array(a).ravel(), _as_array(b).ravel()
    if a.shape != b.shape:
        raise ValueError(f"spearman needs equally many values; got {a.size} and {b.size}")
    return float(_st.spearmanr(a, b).statistic)


def pearson(a, b) -> float:
    """Pearson correlation of two equally long sequences or equally shaped tensors (flattened)."""
    a, b = _as_array(a).ravel(), _as_array(b).ravel()
    if a.shape != b.shape:
        raise ValueError(f"pearson needs equally many values; got {a.size} and {b.size}")
    return float(_st.pearsonr(a, b).statistic)


def auc(positive, negative) -> float:
    """P(a random positive score > a random negative score), ties counting half (Mann-Whitney U / n+ n-)."""
    positive, negative = _as_array(positive).ravel(), _as_array(negative).ravel()
    if len(positive) == 0 or len(negative) == 0:
        return float("nan")
    return float(_st.mannwhitneyu(positive, negative).statistic / (len(positive) * len(negative)))


def nearest_matches(targets, candidates) -> np.ndarray:
    """For each target value, the index of the candidate with the nearest value, each candidate used
    at most once (greedy, targets taken from the largest down): a matched control set, e.g.
    non-label positions with attention like the label positions'. Needs len(candidates) >= len(targets)."""
    targets, candidates = _as_array(targets).ravel(), _as_array(candidates).ravel()
    if len(candidates) < len(targets):
        raise ValueError(f"{len(targets)} targets but only {len(candidates)} candidates to match them with")
    free = np.ones(len(candidates), dtype=bool)
    matches = np.empty(len(targets), dtype=int)
    for i in np.argsort(-targets, kind="stable"):
        distance = np.where(free, np.abs(candidates - targets[i]), np.inf)
        matches[i] = int(np.argmin(distance))
        free[matches[i]] = False
    return matches


def grouped_auc(scores, positive) -> np.ndarray:
    """Within-group AUC for many groups at once: scores (..., n) and positive (bool, broadcastable
    against scores, e.g. many permutations of the labels for one set of scores), one group per
    leading index; P(a positive outscores a negative of the same group), ties counting half.
    The same number as `auc` per group, vectorised so that a permutation null of thousands of
    draws stays cheap."""
    scores, positive = _as_array(scores), np.asarray(positive, dtype=bool)
    try:
        shape = np.broadcast_shapes(scores.shape, positive.shape)
    except ValueError:
        raise ValueError(f"scores {scores.shape} and positive {positive.shape} do not broadcast") from None
    wins = (scores[..., :, None] > scores[..., None, :]) + 0.5 * (scores[..., :, None] == scores[..., None, :])
    pos, neg = np.broadcast_to(positive, shape).astype(float), np.broadcast_to(~positive, shape).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.einsum("...i,...ij,...j->...", pos, wins, neg) / (pos.sum(-1) * neg.sum(-1))
