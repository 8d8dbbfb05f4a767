"""Claims declared before their numbers, graded by one function, and each chapter's results as JSON.

A chapter first *declares* each claim it tests (`ClaimSpec`): the paper's claim and figure, the
metric the book computes, the paper's direction, the smallest effect that counts (with its
reason), the control or null, the resampling unit and the precondition. After the measurement,
`grade(spec, interval, ...)` turns the estimate and its interval into a `Verdict`:

* reproduced: the precondition holds, the interval excludes the null and the estimate reaches
  the smallest effect that counts, in the paper's direction;
* contradicted: the interval excludes the smallest effect that counts (the effect, if any, is
  smaller than what the claim needs, or has the other sign);
* inconclusive: neither; the graded claim carries the minimum detectable effect of the design and
  the number of units that would settle it;
* not testable: the precondition fails (e.g. the clean model does not learn the task, so there is
  nothing for an ablation to destroy);
* differs: a stated structural reason makes the book's setting unlike the paper's.

A claim that two things are *alike* (e.g. "ablating these heads does about as much as ablating
random ones") is declared with direction "equivalent": the smallest effect that counts is then the
margin of an equivalence test. Reproduced: the whole interval lies inside (-margin, +margin) around
the null; contradicted: the whole interval lies outside it; otherwise inconclusive.

No chapter writes a verdict by hand. (A results file written by an older version of a chapter may
still hold hand-written verdicts; the reproduction table shows such rows as "not graded".)
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from .stats import Interval, minimum_detectable_effect, units_to_settle

RESULTS_DIR = Path(os.environ.get("ICL_RESULTS_DIR", Path(__file__).resolve().parents[1] / "results"))


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
    unit: str  # what the interval resamples (demonstration sets, seeds, prompts)
    precondition: str = ""  # what must hold for the claim to be testable ("" for none)
    null: float = 0.0  # the metric's value when there is no effect

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
                "control / null": self.control, "resampled unit": self.unit,
                "precondition": self.precondition or "none"}


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
    reason: str = ""  # why not testable / why it differs
    task: str = ""  # the data set, when a claim is graded on several (see per_task_table)

    def row(self) -> dict:
        """One flat row for tables and the results file."""
        interval = "" if self.low is None else f"[{self.low:+.3f}, {self.high:+.3f}]"
        settle = ""
        if self.verdict is Verdict.INCONCLUSIVE and self.mde is not None:
            settle = f"detectable effect {self.mde:.3f}; ~{self.units_needed} {self.spec.unit}s would settle it"
            if self.n_units and self.units_needed > 100 * self.n_units:
                settle = (f"detectable effect {self.mde:.3f}; the estimate sits at the smallest effect that counts, "
                          f"so no affordable sample settles it (~{self.units_needed:.0e} {self.spec.unit}s)")
        return {
            "claim": self.spec.claim, "task": self.task, "paper": self.spec.paper, "book": self.book, "metric": self.spec.metric,
            "estimate": self.estimate, "interval": interval, "smallest effect": self.spec.smallest_effect,
            "direction": self.spec.direction, "n units": self.n_units, "unit": self.spec.unit,
            "verdict": self.verdict.value, "settle": settle or self.reason, "graded": True,
        }


def grade(spec: ClaimSpec, interval: Interval | None, book: str, precondition_met: bool = True,
          differs: str = "", reason: str = "", task: str = "") -> GradedClaim:
    """The verdict of `spec` given the estimate's `interval` (None when it could not be measured).

    precondition_met: whether the declared precondition holds in this run (its own interval
    decides it, e.g. clean accuracy's lower bound above chance). differs: a structural reason the
    book's setting is unlike the paper's; it overrides the statistics but the numbers are kept.
    task: the data set this grade is for, when the claim is graded on several.
    """
    graded = GradedClaim(spec, Verdict.NOT_TESTABLE, book, precondition_met=precondition_met, task=task)
    if interval is not None:
        graded.estimate, graded.low, graded.high, graded.n_units = (interval.estimate, interval.low, interval.high,
                                                                      interval.n_units)
    if differs:
        graded.verdict, graded.reason = Verdict.DIFFERS, differs
        return graded
    if not precondition_met or interval is None:
        graded.reason = reason or (f"precondition fails: {spec.precondition}" if not precondition_met
                                   else "could not be measured")
        return graded
    if spec.direction == "equivalent":
        return _grade_equivalence(spec, interval, graded)
    sign = DIRECTIONS[spec.direction]
    effect = sign * (interval.estimate - spec.null)
    low, high = sorted((sign * (interval.low - spec.null), sign * (interval.high - spec.null)))
    if low > 0 and effect >= spec.smallest_effect:
        graded.verdict = Verdict.REPRODUCED
    elif high < spec.smallest_effect:
        graded.verdict = Verdict.CONTRADICTED
    else:
        graded.verdict = Verdict.INCONCLUSIVE
        graded.mde = minimum_detectable_effect(interval.se, interval.confidence)
        graded.units_needed = units_to_settle(interval.se, interval.n_units, effect, spec.smallest_effect, interval.confidence)
    return graded


def _grade_equivalence(spec: ClaimSpec, interval: Interval, graded: GradedClaim) -> GradedClaim:
    """Equivalence test (two one-sided tests at the interval's confidence): the interval inside the
    margin reproduces the claim, entirely outside it contradicts it."""
    margin = spec.smallest_effect
    low, high = interval.low - spec.null, interval.high - spec.null
    if -margin < low and high < margin:
        graded.verdict = Verdict.REPRODUCED
    elif low >= margin or high <= -margin:
        graded.verdict = Verdict.CONTRADICTED
    else:
        graded.verdict = Verdict.INCONCLUSIVE
        graded.mde = minimum_detectable_effect(interval.se, interval.confidence)
        # units at which an interval around this estimate would fit inside (or outside) the margin:
        # its half-width must shrink below the estimate's distance to the margin
        distance = abs(margin - abs(interval.estimate - spec.null))
        graded.units_needed = units_to_settle(interval.se, interval.n_units, margin - distance, margin,
                                              interval.confidence)
    return graded


def declared_claims_table(specs: dict):
    """The declarations (name -> ClaimSpec) as a table, shown before any result."""
    import pandas as pd

    return pd.DataFrame({name: spec.declaration() for name, spec in specs.items()}).T


TABLE_COLUMNS = ["claim", "task", "paper", "book", "estimate", "interval", "smallest effect", "verdict", "settle"]


def claims_table(claims: list, columns: list | None = TABLE_COLUMNS):
    """The graded claims as a pandas DataFrame, one row each; `columns=None` keeps
    every field (metric, direction, unit, ...)."""
    import pandas as pd

    table = pd.DataFrame([c.row() for c in claims])
    return table if columns is None else table.reindex(columns=[c for c in columns if c in table.columns])


def per_task_table(graded: list):
    """Graded claims of several tasks side by side: one row per claim, per task its estimate,
    interval and verdict (the paper reports five data sets; the book shows each beside the others)."""
    import pandas as pd

    rows = [{"claim": g.spec.claim, "task": g.task or "(main)", "estimate": g.estimate,
             "interval": g.row()["interval"], "verdict": g.verdict.value} for g in graded]
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
