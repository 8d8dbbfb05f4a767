"""Intervals, nulls and the size of a design, for every claim the book grades (on scipy.stats).

The rule everywhere: the unit of an interval is what was actually drawn at random. Prompts that share one
set of demonstrations are not independent (they share the context that makes them right or
wrong), so an interval over such prompts treats *whole demonstration sets* (clusters) as the
units; an interval over training runs treats seeds as the units.

Every interval is a Student-t interval with G - 1 degrees of freedom on G independent units.
Measured by simulation (tests/test_stats.py): the percentile bootstrap over clusters covers a
nominal 95% in only 76% of runs at 3 clusters and 88% at 8; a t interval on the cluster means
keeps 95% at every G. The standard error comes from the delete-one-unit jackknife, which for a
mean of equally sized clusters *is* the standard error of the cluster means, and which serves any
smooth statistic (a ratio, a rank correlation); a statistic of a selection (top-k heads, a
percentile) leaves out random halves of the units instead (the delete-d jackknife, `leave_out`):

* `jackknife_interval(estimate, *samples)`: the interval from jackknife replicates of one or more
  independent samples (e.g. selection sets and evaluation sets), so a statistic that depends on a
  selection is recomputed with its selection redone; `leave_out` says which units each replicate
  drops: one at a time for smooth statistics, random halves for selections (delete-d).
* `cluster_jackknife(statistic, clusters)`: any statistic of rows, one cluster left out at a time.
* `mean_interval`, `paired_difference`: the two statistics most claims need.
* `difference_from_random(treated, random_draws, clusters)`: a chosen intervention minus random
  ones (>= 20 draws) on the same rows; rows' clusters and random draws are two independent samples.
* `null_standard_error(random_draws, clusters)`: the noise of a comparison with no effect on this
  design (one random draw against the others), the yardstick of a design's power.
* `percentile_of(value, null)`: where a value falls among draws of a null (e.g. random heads).
* `minimum_detectable_effect`, `units_to_settle`: what a design could have detected, and the number
  of units (demonstration sets, seeds) at which an interval around the current estimate would
  settle a claim.
* `spearman`, `pearson`, `auc`: scipy's rank correlation, correlation and Mann-Whitney AUC.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats as _st

CONFIDENCE = 0.95
POWER = 0.8


@dataclass(frozen=True)
class Interval:
    """A point estimate with a Student-t interval over `n_units` independent units (df = n_units - 1)."""

    estimate: float
    low: float
    high: float
    se: float  # jackknife standard error
    n_units: int
    unit: str
    confidence: float = CONFIDENCE

    def __str__(self) -> str:
        return f"{self.estimate:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"

    @property
    def df(self) -> int:
        return max(1, self.n_units - 1)

    def shifted(self, by: float) -> "Interval":
        """The same interval with `by` subtracted (e.g. an accuracy minus chance)."""
        return Interval(self.estimate - by, self.low - by, self.high - by, self.se, self.n_units, self.unit,
                        self.confidence)

    def p_value(self, null: float = 0.0, side: str = "two-sided") -> float:
        """The t test that matches the interval: two-sided against `null`, or one-sided ("less":
        the estimate below `null`; "greater": above). The standard error is read off the interval's
        half-width (the same as `se` for every interval built here), so the test and the interval
        always agree. A zero standard error gives 0 or 1."""
        se = (self.high - self.low) / (2 * t_quantile(self.confidence, self.n_units)) if self.high > self.low else self.se
        t = (self.estimate - null) / se if se > 0 else math.copysign(math.inf, self.estimate - null or 1.0)
        if side == "less":
            return float(_st.t.cdf(t, self.df))
        if side == "greater":
            return float(_st.t.sf(t, self.df))
        return float(2 * _st.t.sf(abs(t), self.df))


def _as_array(x) -> np.ndarray:
    if torch.is_tensor(x):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=float)


def _check_confidence(confidence) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence is a fraction between 0 and 1 (0.95 for a 95% interval), not {confidence!r}")


def t_quantile(confidence: float, n_units: int) -> float:
    """The two-sided Student-t multiplier of an interval on `n_units` units (df = n_units - 1)."""
    return float(_st.t.ppf(1 - (1 - confidence) / 2, max(1, n_units - 1)))


@dataclass(frozen=True)
class Replicates:
    """A statistic recomputed without some of its units: `values[i]` is the statistic with the units
    `left_out[i]` left out, `n_units` in all. From `leave_out`; a plain array of n values is the
    delete-one jackknife (value i without unit i)."""

    values: np.ndarray
    left_out: list
    n_units: int


def leave_out(n_units: int, smooth: bool = True, n_subsets: int = 200, seed: int = 0) -> list:
    """Which units each jackknife replicate leaves out (a list of index arrays).

    smooth: each unit alone (the delete-one jackknife), right for a mean, a ratio of means, a
    correlation of means. A statistic that goes through a *selection* (the top-k heads of a ranking,
    a percentile, a median) is not smooth: one unit rarely changes the selection, so delete-one
    sees almost no variance (its 95% interval covered 67-85% in a simulation of a top-4 head
    selection at 8-16 units; tests/test_stats.py). For such statistics (smooth=False), `n_subsets`
    random halves of the units (the delete-d jackknife, d = n_units // 2), which covered 98%.
    """
    if n_units < 2:
        raise ValueError(f"a jackknife needs at least two units; got {n_units}")
    if smooth:
        return [np.array([i]) for i in range(n_units)]
    rng = np.random.default_rng(seed)
    return [np.sort(rng.choice(n_units, n_units // 2, replace=False)) for _ in range(n_subsets)]


def jackknife_interval(estimate: float, *samples, unit: str = "demonstration set",
                       confidence: float = CONFIDENCE) -> Interval:
    """Student-t interval around `estimate` from jackknife replicates.

    samples: for each independent sample of units (e.g. the selection pool's demonstration sets,
    the evaluation pool's), the statistic recomputed without some of its units: a plain sequence of
    n values, each with one unit left out (delete-one), or `Replicates` (delete-d, from
    `leave_out(n, smooth=False)`). The delete-d variance is (n - d) / (d N) times the sum of squares
    of the N replicates about their mean (delete-one: (n - 1) / n). The variances of independent
    samples add; the degrees of freedom are those of the smallest sample (n_units = its size),
    which keeps the interval conservative.
    """
    _check_confidence(confidence)
    if not samples:
        raise ValueError("give the jackknife replicates of at least one sample of units")
    variance, sizes = 0.0, []
    for sample in samples:
        if isinstance(sample, Replicates):
            values, n, d = _as_array(sample.values).ravel(), sample.n_units, len(sample.left_out[0])
        else:
            values = _as_array(sample).ravel()
            n, d = len(values), 1
        if n < 2:
            raise ValueError(f"An interval needs at least two independent {unit}s; got {n}. "
                             f"Draw more {unit}s (e.g. more demonstration sets or seeds).")
        if not np.all(np.isfinite(values)):
            raise ValueError(f"a jackknife replicate is not finite: the statistic needs more {unit}s than are left "
                             f"(e.g. a class missing without them); draw more {unit}s")
        variance += (n - d) / (d * len(values)) * float(np.sum((values - values.mean()) ** 2))
        sizes.append(n)
    n_units = min(sizes)
    se = math.sqrt(variance)
    half = t_quantile(confidence, n_units) * se
    return Interval(float(estimate), float(estimate) - half, float(estimate) + half, se, n_units, unit, confidence)


def _cluster_members(clusters, unit: str) -> list:
    labels = np.asarray(clusters)
    if labels.ndim != 1 or len(labels) == 0:
        raise ValueError("clusters must be a non-empty 1-d sequence: one label per row")
    members = [np.flatnonzero(labels == u) for u in np.unique(labels)]
    if len(members) < 2:
        raise ValueError(
            f"An interval needs at least two independent {unit}s; got {len(members)}. "
            f"Draw more {unit}s (e.g. more demonstration sets or seeds).")
    return members


def cluster_jackknife(statistic, clusters, smooth: bool = True, confidence: float = CONFIDENCE,
                      unit: str = "demonstration set") -> Interval:
    """Student-t interval of `statistic(rows)` over clusters of rows, its standard error from the
    statistic recomputed without whole clusters: one at a time for a smooth statistic (a ratio, a
    rank correlation of means), random halves of them for one that is not (smooth=False: a
    percentile, a statistic of a selection; see `leave_out`).

    statistic: a function of an integer array of row indices returning a float.
    clusters: one label per row (e.g. the demonstration set each prompt was built with). With one
    row per cluster the units are the rows.
    """
    members = _cluster_members(clusters, unit)
    everything = np.arange(len(np.asarray(clusters)))
    subsets = leave_out(len(members), smooth)
    values = [statistic(np.concatenate([m for j, m in enumerate(members) if j not in set(out)])) for out in subsets]
    return jackknife_interval(float(statistic(everything)), Replicates(np.asarray(values), subsets, len(members)),
                              unit=unit, confidence=confidence)


def mean_interval(values, clusters, confidence: float = CONFIDENCE, unit: str = "demonstration set") -> Interval:
    """Mean of per-row values, its units the clusters (e.g. prompts grouped by demonstration set):
    with equally sized clusters, exactly the t interval on the cluster means."""
    values = _as_array(values)
    if len(values) != len(clusters):
        raise ValueError(f"{len(values)} values but {len(clusters)} cluster labels")
    members = _cluster_members(clusters, unit)
    sums = np.array([values[m].sum() for m in members])
    counts = np.array([len(m) for m in members], dtype=float)
    without = (sums.sum() - sums) / (counts.sum() - counts)  # the mean with each cluster left out
    return jackknife_interval(float(values.mean()), without, unit=unit, confidence=confidence)


def paired_difference(treated, control, clusters, **kwargs) -> Interval:
    """Mean of treated - control over the same rows (e.g. ablated minus clean on the same prompts)."""
    treated, control = _as_array(treated), _as_array(control)
    if treated.shape != control.shape:
        raise ValueError(f"paired values must have one shape; got {treated.shape} and {control.shape}")
    return mean_interval(treated - control, clusters, **kwargs)


def difference_from_random(treated, random_draws, clusters, reselected=None, confidence: float = CONFIDENCE,
                           unit: str = "demonstration set") -> Interval:
    """Mean of `treated` (n_rows,) minus the mean of `random_draws` (n_rows, n_draws): a chosen
    intervention against random ones (e.g. random head sets) on the same rows. The clusters of rows
    and the random draws are two independent samples: each is left out one at a time, so the
    interval carries both the rows' sampling error and which random sets happened to be drawn.

    reselected: when the chosen intervention was *selected* on data of its own (heads ranked on a
    selection pool): `treated` again with the selection redone without some selection units, a
    third independent sample, so the interval carries how stable the choice is too: `Replicates`
    whose values are (n_replicates, n_rows) arrays (from `leave_out(n, smooth=False)`: a selection
    is not smooth), or an (n_selection_units, n_rows) array, each row without one unit.
    """
    treated, random_draws = _as_array(treated), _as_array(random_draws)
    if random_draws.ndim != 2 or random_draws.shape[0] != len(treated):
        raise ValueError(f"random_draws must be (n_rows, n_draws) with n_rows = {len(treated)}; got {random_draws.shape}")
    if random_draws.shape[1] < 2:
        raise ValueError("an interval against random draws needs at least two draws (the book uses >= 20)")
    if len(clusters) != len(treated):
        raise ValueError(f"{len(treated)} rows but {len(clusters)} cluster labels")
    members = _cluster_members(clusters, unit)
    n_rows, n_draws = random_draws.shape
    rows_in = np.array([len(m) for m in members], dtype=float)
    treated_sum = np.array([treated[m].sum() for m in members])
    random_sum = np.stack([random_draws[m].sum(0) for m in members])  # (clusters, draws)
    without_cluster = ((treated_sum.sum() - treated_sum) / (n_rows - rows_in)
                       - (random_sum.sum() - random_sum.sum(1)) / ((n_rows - rows_in) * n_draws))
    draw_means = random_draws.mean(0)
    without_draw = treated.mean() - (draw_means.sum() - draw_means) / (n_draws - 1)
    samples = [without_cluster, without_draw]
    if reselected is not None:
        values = _as_array(reselected.values if isinstance(reselected, Replicates) else reselected)
        if values.ndim != 2 or values.shape[1] != n_rows:
            raise ValueError(f"reselected must hold one row of {n_rows} values per replicate; got {values.shape}")
        differences = values.mean(1) - random_draws.mean()
        samples.append(Replicates(differences, reselected.left_out, reselected.n_units) if isinstance(reselected, Replicates)
                       else differences)
    return jackknife_interval(float(treated.mean() - random_draws.mean()), *samples, unit=unit, confidence=confidence)


def null_standard_error(random_draws, clusters, unit: str = "demonstration set") -> float:
    """The noise of a comparison that has no effect, on this design: each random draw (a column of
    `random_draws`, (n_rows, n_draws)) taken as if it were the chosen one and compared with the
    others by `difference_from_random`; the median of their standard errors. The yardstick of the
    *able to detect* check (reporting.able_to_detect): it does not depend on the chosen effect."""
    random_draws = _as_array(random_draws)
    if random_draws.ndim != 2 or random_draws.shape[1] < 3:
        raise ValueError("the null's noise needs (n_rows, n_draws) random draws with at least 3 draws (the book uses >= 20)")
    return float(np.median([difference_from_random(random_draws[:, j], np.delete(random_draws, j, axis=1), clusters,
                                                   unit=unit).se for j in range(random_draws.shape[1])]))


def percentile_of(value: float, null) -> float:
    """Percentage of the null draws below `value` (ties count half): 100 = above every draw."""
    null = _as_array(null).ravel()
    if len(null) == 0:
        raise ValueError("the null distribution is empty: draw some baselines first")
    return float(_st.percentileofscore(null, value, kind="mean"))


def minimum_detectable_effect(se: float, n_units: int, confidence: float = CONFIDENCE, power: float = POWER) -> float:
    """Smallest true effect a design with standard error `se` on `n_units` units detects with
    probability `power` at the given two-sided confidence: (t_{1-alpha/2} + t_power) * se on
    n_units - 1 degrees of freedom (about 2.8 se with many units, 3.4 se with 8)."""
    df = max(1, n_units - 1)
    return (t_quantile(confidence, n_units) + float(_st.t.ppf(power, df))) * se


def units_to_settle(se: float, n_units: int, effect: float, threshold: float, confidence: float = CONFIDENCE) -> int:
    """Units at which a t interval around the same estimate would settle a claim: exclude 0 when the
    estimated `effect` (in the claim's direction) reaches `threshold` (> 0), else exclude `threshold`
    from above. The standard error shrinks as 1 / sqrt(units); the t quantile with it."""
    if threshold <= 0:
        raise ValueError("threshold (the smallest effect that counts) must be positive")
    gap = effect if effect >= threshold else threshold - effect

    def settles(n: int) -> bool:
        return t_quantile(confidence, n) * se * math.sqrt(n_units / n) < gap

    high = n_units + 1
    while not settles(high) and high < 10 ** 12:
        high *= 2
    low = max(n_units + 1, high // 2)
    while low < high:  # the fewest units that settle it
        middle = (low + high) // 2
        low, high = (low, middle) if settles(middle) else (middle + 1, high)
    return low


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
