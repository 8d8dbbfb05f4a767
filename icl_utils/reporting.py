"""Claims declared before their numbers, graded by one function, and each chapter's results as JSON.

A chapter first *declares* each claim it tests (`ClaimSpec`): the paper's claim and figure, the
metric the book computes, the paper's direction, the smallest effect that counts (with its
reason), the control or null, the unit of the interval, the precondition, and whether the row is the
claim's *primary* row or exploratory. After the measurement, `grade(spec, interval, ...)` turns the
estimate and its Student-t interval (`icl_utils.stats`) into a `Verdict`, in this order:

1. differs: a stated structural reason makes the book's setting unlike the paper's;
2. not testable: the declared precondition fails, or a measured check fails (`Check`): *room to
   move* (a bounded measure's clean value is at least the smallest effect away from the bound it
   must move towards) or *able to detect* (the design's minimum detectable effect at 80% power is at
   most the smallest effect that counts);
3. inconclusive, "n units < 8": fewer than `MIN_UNITS` independent units (demonstration sets,
   seeds, tasks) never count as evidence either way;
4. reproduced: the interval excludes the null and the estimate reaches the smallest effect, in
   the paper's direction; contradicted: the whole interval lies below the smallest effect; else
   inconclusive, with the minimum detectable effect and the units that would settle it.

A claim that two things are *alike* (e.g. "ablating these heads does about as much as ablating
random ones") is declared with direction "equivalent": reproduced when the whole interval lies
inside (-margin, +margin) around the null, contradicted when it lies wholly outside.

Multiplicity: a chapter grades many rows at 95% each. Each paper claim has one declared primary row
(`ClaimSpec(primary=True)`, on the chapter's main task); the primary rows of a chapter form one
family, and their reproduced/contradicted decisions use Holm's step-down correction over that
family (`family_verdicts`, applied by `claims_table`, `per_task_table` and `save_results`). Other
rows are exploratory and keep the single-row rule. A claim declared after its data were seen is
marked `post_hoc=True`. The column "clears" says whether the *whole* interval is past the smallest
effect, so a strong result and a borderline one do not look alike.

`grade` refuses a zero-width interval from several units as evidence unless the spec declares the
statistic exact: the row is *not testable*, since such an interval comes from a measure that takes
one value on every unit or from a resampling that holds a selection fixed; a statistic of a
selection that no replicate moves is shown beside the table instead (`grade_or_describe`). (A row
already not testable, by its precondition or a failed check, or inconclusive for too few units,
is reported as such first.)

No chapter writes a verdict by hand. (A results file written by an older version of a chapter may
still hold hand-written verdicts; the reproduction table shows such rows as "not graded".)
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from .stats import CONFIDENCE, Interval, minimum_detectable_effect, units_to_settle

RESULTS_DIR = Path(os.environ.get("ICL_RESULTS_DIR", Path(__file__).resolve().parents[1] / "results"))
MIN_UNITS = 8  # fewer independent units than this is inconclusive, whatever the interval says


class Verdict(str, Enum):
    REPRODUCED = "reproduced"
    CONTRADICTED = "contradicted"
    INCONCLUSIVE = "inconclusive"
    NOT_TESTABLE = "not testable"
    DIFFERS = "differs"

    def __str__(self) -> str:
        return self.value


DIRECTIONS = {"increase": 1.0, "decrease": -1.0, "equivalent": 0.0}


@dataclass(frozen=True)
class ClaimSpec:
    """A claim as declared before any number is seen."""

    claim: str  # what the paper says, in one line
    paper: str  # the paper's figure, with its setting (model, data)
    metric: str  # what the book computes, and its unit
    direction: str  # "increase" or "decrease": the paper's direction of the metric (relative to `null`);
    # "equivalent": the paper says the metric is close to `null` (an equivalence test)
    smallest_effect: float  # > 0, in the metric's units: an effect below this does not count (equivalent: the margin)
    smallest_effect_reason: str  # why that size
    control: str  # the control or null distribution the estimate is compared with
    unit: str  # the interval's independent unit (demonstration sets, seeds, prompts)
    precondition: str = ""  # what must hold for the claim to be testable ("" for none)
    null: float = 0.0  # the metric's value when there is no effect
    primary: bool = False  # the paper claim's one primary row (Holm-corrected over the chapter's primary rows)
    post_hoc: bool = False  # declared after its data were seen
    exact: bool = False  # the statistic has no sampling error (a zero-width interval is then allowed)

    def __post_init__(self):
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {sorted(DIRECTIONS)}, not {self.direction!r}")
        if not self.smallest_effect > 0:
            raise ValueError(f"smallest_effect must be positive (in the paper's direction), not {self.smallest_effect}")

    def declaration(self) -> dict:
        return {"claim": self.claim, "paper": self.paper, "metric": self.metric,
                "paper's direction": (f"within ±{self.smallest_effect:g} of {self.null:g}" if self.direction == "equivalent"
                                      else f"{self.direction} from {self.null:g}"),
                "smallest effect that counts": f"{self.smallest_effect:g} ({self.smallest_effect_reason})",
                "control / null": self.control, "unit": f"{self.unit} (at least {MIN_UNITS})",
                "precondition": self.precondition or "none",
                "role": ("primary" if self.primary else "exploratory") + (", declared after the data (post hoc)" if self.post_hoc else "")}


@dataclass(frozen=True)
class Check:
    """A precondition measured in this run: its name, whether it holds, and the numbers behind it."""

    name: str
    met: bool
    detail: str

    def __str__(self) -> str:
        return f"{self.name}: {'holds' if self.met else 'FAILS'} ({self.detail})"


def room_to_move(clean: float, bound: float, smallest_effect: float, measure: str) -> Check:
    """A bounded measure (accuracy, MRR, probability) can move by the smallest effect that counts
    only if its clean value lies at least that far from the bound it has to move towards (for a fall
    of calibrated accuracy under symmetric zeroing: chance; for a fall of MRR: its floor)."""
    room = abs(bound - clean)
    return Check("room to move", room >= smallest_effect,
                 f"{measure}: clean {clean:.3f}, bound {bound:g}, room {room:.3f} vs smallest effect {smallest_effect:g}")


def moves_at_all(values_by_arm: dict, measure: str) -> Check:
    """A measure that takes one value on every unit in every arm (clean, treated, control; e.g. MRR
    at its ceiling of 1 on every prompt however many neurons are zeroed) cannot move: no comparison
    of arms on it is evidence either way."""
    import numpy as np

    values = np.concatenate([np.ravel(np.asarray(v, dtype=float)) for v in values_by_arm.values()])
    spread = float(np.ptp(values)) if len(values) else 0.0
    return Check("room to move", spread > 0,
                 f"{measure}: {'varies' if spread > 0 else 'takes the single value ' + format(values[0], '.3f') + ' on every unit in'} "
                 f"{', '.join(values_by_arm)}")


def able_to_detect(se: float, n_units: int, smallest_effect: float, measure: str) -> Check:
    """The design's minimum detectable effect at 80% power (t on n_units - 1 df) is at most the
    smallest effect that counts. `se`: the standard error of a comparison on this design that has
    no effect of its own (`stats.null_standard_error`: one random control against the others), or,
    where the claim has no random control, of the clean measure over the same units."""
    mde = minimum_detectable_effect(se, n_units)
    return Check("able to detect", mde <= smallest_effect,
                 f"{measure}: detectable effect at 80% power {mde:.3f} on {n_units} units vs smallest effect {smallest_effect:g}")


def design_checks(clean: Interval, bound: float, smallest_effect: float, measure: str, null_se: float | None = None) -> list:
    """The two standard preconditions of a claim about a change of a bounded measure: room to move
    from the clean value to `bound`, and able to detect, from `null_se` (the noise of a comparison
    with no effect, `stats.null_standard_error`) or, without one, the clean measure's own standard error."""
    return [room_to_move(clean.estimate, bound, smallest_effect, measure),
            able_to_detect(clean.se if null_se is None else null_se, clean.n_units, smallest_effect,
                           measure + ("" if null_se is None else ", noise of a random control against the others"))]


@dataclass
class GradedClaim:
    spec: ClaimSpec
    verdict: Verdict
    book: str  # the book's setting and figure, computed in this run
    estimate: float | None = None
    low: float | None = None
    high: float | None = None
    n_units: int | None = None
    mde: float | None = None  # minimum detectable effect of this design, at 80% power (when inconclusive)
    units_needed: int | None = None  # units at which an interval around this estimate would settle the claim
    precondition_met: bool | None = None
    reason: str = ""  # why not testable / why it differs / why inconclusive
    task: str = ""  # the data set, when a claim is graded on several (see per_task_table)
    primary: bool = False  # a primary row: its verdict is decided with the chapter's other primary rows (Holm)
    interval: Interval | None = None
    checks: list = field(default_factory=list)
    single_verdict: Verdict | None = None  # the verdict of this row alone, before any multiplicity correction
    p_value: float | None = None  # the row's test: for reproduced, against the null; for contradicted, against the smallest effect
    p_holm: float | None = None  # that p-value, Holm-adjusted over the chapter's primary rows
    shown: Verdict | None = None  # the verdict a table last showed for this row (save_results checks it still holds)

    def clears(self) -> str:
        """'yes' when the whole interval is past the smallest effect in the paper's direction (inside
        the margin, for an equivalence claim); '' when there is no interval."""
        if self.low is None:
            return ""
        if self.spec.direction == "equivalent":
            inside = -self.spec.smallest_effect < self.low - self.spec.null and self.high - self.spec.null < self.spec.smallest_effect
            return "yes" if inside else "no"
        sign = DIRECTIONS[self.spec.direction]
        near = min(sign * (self.low - self.spec.null), sign * (self.high - self.spec.null))
        return "yes" if near >= self.spec.smallest_effect else "no"

    def row(self) -> dict:
        """One flat row for tables and the results file."""
        interval = "" if self.low is None else f"[{self.low:+.3f}, {self.high:+.3f}]"
        settle = ""
        if self.verdict is Verdict.INCONCLUSIVE and self.mde is not None and not self.reason:
            settle = f"detectable effect {self.mde:.3f}; ~{self.units_needed} {self.spec.unit}s would settle it"
            if self.n_units and self.units_needed > 100 * self.n_units:
                settle = (f"detectable effect {self.mde:.3f}; the estimate sits at the smallest effect that counts, "
                          f"so no affordable sample settles it (~{self.units_needed:.0e} {self.spec.unit}s)")
        if self.primary and self.single_verdict is not None and self.single_verdict != self.verdict:
            settle = (settle + "; " if settle else "") + f"alone: {self.single_verdict.value}, Holm-adjusted p {self.p_holm:.3f}"
        return {
            "claim": self.spec.claim, "task": self.task, "paper": self.spec.paper, "book": self.book, "metric": self.spec.metric,
            "estimate": self.estimate, "interval": interval, "smallest effect": self.spec.smallest_effect,
            "clears": self.clears(), "direction": self.spec.direction, "n units": self.n_units, "unit": self.spec.unit,
            "verdict": self.verdict.value, "settle": settle or self.reason, "graded": True,
            "role": "primary" if self.primary else "exploratory", "post hoc": self.spec.post_hoc,
            "p": self.p_value, "p (Holm)": self.p_holm, "checks": "; ".join(str(c) for c in self.checks),
        }


def grade(spec: ClaimSpec, interval: Interval | None, book: str, precondition_met: bool | None = None,
          checks: list = (), differs: str = "", reason: str = "", task: str = "", exploratory: bool = False) -> GradedClaim:
    """The verdict of `spec` given the estimate's `interval` (None when it could not be measured).

    precondition_met: whether the declared precondition holds in this run (its own interval
    decides it, e.g. clean accuracy's lower bound above chance); required when the spec declares a
    precondition. checks: measured preconditions (`room_to_move`, `able_to_detect`,
    `design_checks`); any that fails makes the claim not testable. differs: a structural reason the
    book's setting is unlike the paper's; it overrides the statistics but the numbers are kept.
    task: the data set this grade is for, when the claim is graded on several; exploratory: this
    row of a primary spec is not its primary row (e.g. the same claim on a second task).
    """
    if spec.precondition and precondition_met is None:
        raise ValueError(f"the claim {spec.claim!r} declares a precondition ({spec.precondition}); say whether it held "
                         f"in this run: grade(..., precondition_met=<bool>)")
    met = True if precondition_met is None else bool(precondition_met)
    graded = GradedClaim(spec, Verdict.NOT_TESTABLE, book, precondition_met=met, task=task,
                         primary=spec.primary and not exploratory, interval=interval, checks=list(checks))
    if interval is not None:
        graded.estimate, graded.low, graded.high, graded.n_units = (interval.estimate, interval.low, interval.high,
                                                                      interval.n_units)
    failed = [c for c in checks if not c.met]
    if differs:
        graded.verdict, graded.reason = Verdict.DIFFERS, differs
    elif not met or interval is None or failed:
        graded.reason = reason or "; ".join([f"precondition fails: {spec.precondition}"] * (not met)
                                            + [str(c) for c in failed]) or "could not be measured"
    elif interval.n_units < MIN_UNITS:
        graded.verdict = Verdict.INCONCLUSIVE
        graded.reason = f"n units < {MIN_UNITS}: {interval.n_units} {interval.unit}s are too few to count as evidence either way"
    elif _zero_width(interval) and not spec.exact:  # refused as evidence: not testable, never reproduced or contradicted
        graded.reason = (f"a zero-width interval from {interval.n_units} {interval.unit}s: every unit gives "
                         f"{interval.estimate:.3g}, so the measure does not move here (e.g. a model that always answers one "
                         f"word), or the resampling holds a selection fixed (redo it per replicate, stats.jackknife_interval); "
                         f"no interval, no verdict")
    else:
        graded.verdict = _interval_verdict(spec, interval)
        graded.p_value = _row_p_value(spec, interval)
        if graded.verdict is Verdict.INCONCLUSIVE:
            _settle(spec, interval, graded)
    graded.single_verdict = graded.verdict
    return graded


def _zero_width(interval: Interval) -> bool:
    """No spread beyond float rounding (identical leave-one-out replicates can differ in the last bit)."""
    return interval.high - interval.low <= 1e-12 * max(1.0, abs(interval.estimate))


def grade_or_describe(spec: ClaimSpec, interval: Interval | None, book: str, described: list, **kwargs) -> GradedClaim | None:
    """`grade(spec, interval, book, **kwargs)`, unless the statistic is *pinned*: it took the same
    value whichever unit was left out (a zero-width interval from several units, e.g. a head
    selection that no single unit changes) while the row would otherwise be graded. No interval can
    be formed around such a value, so it is appended to `described` (a row: claim, task, metric,
    value, book, why) to be shown beside the table, not graded, and None is returned."""
    pinned = interval is not None and interval.n_units >= MIN_UNITS and _zero_width(interval) and not spec.exact
    blocked = kwargs.get("precondition_met") is False or kwargs.get("differs") or any(not c.met for c in kwargs.get("checks", ()))
    if pinned and not blocked:
        described.append({"claim": spec.claim, "task": kwargs.get("task", ""), "metric": spec.metric, "value": interval.estimate,
                          "book": book, "why not graded": f"the same value whichever of the {interval.n_units} "
                                                          f"{interval.unit}s is left out: no interval can be formed"})
        print(f"{spec.claim} ({kwargs.get('task') or 'main'}): {interval.estimate:.3g} whichever {interval.unit} is left out; "
              f"a description beside the table, not graded")
        return None
    return grade(spec, interval, book, **kwargs)


def _interval_verdict(spec: ClaimSpec, interval: Interval) -> Verdict:
    """The single-row rule, read off the 95% interval."""
    if spec.direction == "equivalent":
        margin = spec.smallest_effect
        low, high = interval.low - spec.null, interval.high - spec.null
        if -margin < low and high < margin:
            return Verdict.REPRODUCED
        return Verdict.CONTRADICTED if low >= margin or high <= -margin else Verdict.INCONCLUSIVE
    sign = DIRECTIONS[spec.direction]
    effect = sign * (interval.estimate - spec.null)
    low, high = sorted((sign * (interval.low - spec.null), sign * (interval.high - spec.null)))
    if low > 0 and effect >= spec.smallest_effect:
        return Verdict.REPRODUCED
    return Verdict.CONTRADICTED if high < spec.smallest_effect else Verdict.INCONCLUSIVE


def _row_p_value(spec: ClaimSpec, interval: Interval) -> float:
    """The p-value of the one test a row can pass, on the two-sided scale of its t interval (p < 0.05
    exactly when the 95% interval settles it): towards reproduced when the estimate reaches the
    smallest effect (equivalence: lies inside the margin), against the null; towards contradicted
    otherwise, against the smallest effect. Holm's correction adjusts these (`family_verdicts`)."""
    if spec.direction == "equivalent":
        margin, estimate = spec.smallest_effect, interval.estimate - spec.null
        if abs(estimate) < margin:  # two one-sided tests: inside both bounds
            return min(1.0, 2 * max(interval.p_value(spec.null + margin, "less"),
                                    interval.p_value(spec.null - margin, "greater")))
        side = "greater" if estimate >= margin else "less"
        return min(1.0, 2 * interval.p_value(spec.null + math.copysign(margin, estimate), side))
    sign = DIRECTIONS[spec.direction]
    if sign * (interval.estimate - spec.null) >= spec.smallest_effect:
        return interval.p_value(spec.null)
    threshold = spec.null + sign * spec.smallest_effect
    return min(1.0, 2 * interval.p_value(threshold, "less" if sign > 0 else "greater"))


def _settle(spec: ClaimSpec, interval: Interval, graded: GradedClaim) -> None:
    """What an inconclusive row would need: the design's detectable effect and the units that would settle it."""
    graded.mde = minimum_detectable_effect(interval.se, interval.n_units, interval.confidence)
    if spec.direction == "equivalent":
        # units at which an interval around this estimate would fit inside (or outside) the margin
        distance = abs(spec.smallest_effect - abs(interval.estimate - spec.null))
        graded.units_needed = units_to_settle(interval.se, interval.n_units, spec.smallest_effect - distance,
                                              spec.smallest_effect, interval.confidence)
    else:
        effect = DIRECTIONS[spec.direction] * (interval.estimate - spec.null)
        graded.units_needed = units_to_settle(interval.se, interval.n_units, effect, spec.smallest_effect, interval.confidence)


def family_verdicts(graded: list, alpha: float = 1 - CONFIDENCE) -> list:
    """Holm's step-down correction over the primary rows in `graded` that reached a statistical
    test: each keeps reproduced/contradicted only if its Holm-adjusted p-value is below `alpha`;
    the others become inconclusive. Exploratory rows keep their single-row verdict. Idempotent: it
    starts from each row's own verdict every time. Pass the chapter's whole list: the family is the
    primary rows it holds (`claims_table` and `save_results` do; a spec graded primary twice on one
    task is refused, since a forgotten exploratory=True would silently enlarge the family)."""
    tested = [g for g in graded if g.primary and g.p_value is not None]
    twice = {(id(g.spec), g.task) for g in tested if sum(h.spec is g.spec and h.task == g.task for h in tested) > 1}
    if twice:
        raise ValueError(f"{len(twice)} primary claim(s) graded more than once on one task (e.g. "
                         f"{next(g.spec.claim for g in tested if (id(g.spec), g.task) in twice)!r}): a claim has one "
                         f"primary row; grade the others with exploratory=True")
    order = sorted(tested, key=lambda g: g.p_value)
    running = 0.0
    for i, g in enumerate(order):
        running = max(running, min(1.0, (len(order) - i) * g.p_value))
        g.p_holm = running
    for g in tested:  # a row inconclusive only after the correction says so (row()), with no sample size to settle it
        g.verdict = g.single_verdict if g.p_holm < alpha else Verdict.INCONCLUSIVE
    return graded


def _shown(graded: list) -> list:
    for g in graded:
        g.shown = g.verdict
    return graded


def declared_claims_table(specs: dict):
    """The declarations (name -> ClaimSpec) as a table, shown before any result."""
    import pandas as pd

    return pd.DataFrame({name: spec.declaration() for name, spec in specs.items()}).T


TABLE_COLUMNS = ["claim", "role", "task", "paper", "book", "estimate", "interval", "smallest effect", "clears", "verdict",
                 "settle"]


def claims_table(claims: list, columns: list | None = TABLE_COLUMNS):
    """The graded claims as a pandas DataFrame, one row each; `columns=None` keeps
    every field (metric, direction, unit, ...)."""
    import pandas as pd

    table = pd.DataFrame([c.row() for c in _shown(family_verdicts(list(claims)))])
    return table if columns is None else table.reindex(columns=[c for c in columns if c in table.columns])


def per_task_table(graded: list):
    """Graded claims of several tasks side by side: one row per claim, per task its estimate,
    interval and verdict (the paper reports five data sets; the book shows each beside the others).
    Shows the verdicts as `claims_table` decided them (or decides the primary rows' family over
    these rows, if no table has yet)."""
    import pandas as pd

    graded = list(graded)
    if any(g.primary and g.p_value is not None and g.p_holm is None for g in graded):
        family_verdicts(graded)  # shown before claims_table decided the family: decide it over these rows
    rows = [{"claim": g.spec.claim, "task": g.task or "(main)", "estimate": g.estimate,
             "interval": g.row()["interval"], "verdict": g.verdict.value} for g in _shown(graded)]
    table = pd.DataFrame(rows)
    tasks = list(dict.fromkeys(table["task"]))
    wide = table.pivot(index="claim", columns="task", values=["estimate", "interval", "verdict"])
    wide = wide.reorder_levels([1, 0], axis=1).reindex(columns=pd.MultiIndex.from_product(
        [tasks, ["estimate", "interval", "verdict"]]))
    return wide.reindex(list(dict.fromkeys(table["claim"])))


def save_results(chapter: str, results: dict, claims: list = ()) -> Path:
    """Write results/<chapter>.json: headline numbers plus one row per claim."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{chapter}.json"
    claims = family_verdicts(list(claims))
    changed = [c for c in claims if c.shown is not None and c.shown != c.verdict]
    if changed:
        raise ValueError(f"{len(changed)} verdict(s) shown in a table differ from the chapter's whole family of primary rows "
                         f"(e.g. {changed[0].spec.claim!r}: shown {changed[0].shown.value}, now {changed[0].verdict.value}): "
                         f"show claims_table of every graded row before per_task_table of a part of them")
    payload = {"chapter": chapter, "results": results, "claims": [c.row() for c in claims]}
    path.write_text(json.dumps(payload, indent=2, default=_jsonable))
    return path


def _jsonable(value):
    if isinstance(value, Enum):
        return value.value
    if hasattr(value, "tolist"):
        return value.tolist()
    return float(value)


def load_results(chapter: str) -> dict:
    """Read results/<chapter>.json back: {"chapter", "results", "claims" (rows as dicts), "written"}.

    "written" is the file's modification time (seconds since the epoch), so a reader can tell
    results older than the chapter's source. A chapter that has not run raises FileNotFoundError.
    """
    path = RESULTS_DIR / f"{chapter}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run chapter {chapter} first (it ends with save_results)")
    payload = json.loads(path.read_text())
    payload["claims"] = [{"graded": False, **c} for c in payload.get("claims", [])]
    payload["written"] = path.stat().st_mtime
    return payload
