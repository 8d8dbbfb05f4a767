"""Declared claims are graded by one function; save_results / load_results round-trip them."""
import json
import math

import pytest

import icl_utils.reporting as reporting
from icl_utils.reporting import ClaimSpec, Verdict, grade, load_results, save_results
from icl_utils.stats import Interval

SPEC = ClaimSpec(
    claim="zeroing the heads lowers accuracy", paper="87.6% -> 24.4%", metric="accuracy drop",
    direction="increase", smallest_effect=0.10, smallest_effect_reason="a tenth of the range",
    control="random heads", unit="demonstration set", precondition="clean accuracy above chance",
)


def interval(estimate, low, high, se=0.05, n=8):
    return Interval(estimate, low, high, se, n, "demonstration set")


@pytest.mark.parametrize("est,low,high,expected", [
    (0.30, 0.20, 0.40, Verdict.REPRODUCED),  # excludes 0, reaches 0.10
    (0.02, -0.03, 0.07, Verdict.CONTRADICTED),  # excludes the smallest effect that counts
    (0.05, 0.01, 0.09, Verdict.CONTRADICTED),  # real but smaller than what counts
    (-0.30, -0.40, -0.20, Verdict.CONTRADICTED),  # the other direction
    (0.08, -0.05, 0.21, Verdict.INCONCLUSIVE),  # neither
    (0.08, 0.02, 0.21, Verdict.INCONCLUSIVE),  # real, but may or may not reach 0.10
])
def test_grade_follows_the_declared_rule(est, low, high, expected):
    graded = grade(SPEC, interval(est, low, high), book="x")
    assert graded.verdict is expected
    if expected is Verdict.INCONCLUSIVE:
        assert graded.mde == pytest.approx(2.8016 * 0.05, rel=1e-3)
        # an interval of half-width 1.96 se around 0.08 excludes 0.10 from above once se shrinks enough
        assert graded.units_needed == math.ceil(8 * (1.959964 * 0.05 / (0.10 - 0.08)) ** 2)
        assert "would settle it" in graded.row()["settle"]
    else:
        assert graded.mde is None


def test_a_decrease_claim_mirrors_the_rule():
    spec = ClaimSpec(**{**SPEC.__dict__, "direction": "decrease", "null": 0.5})
    assert grade(spec, interval(0.2, 0.1, 0.3), "x").verdict is Verdict.REPRODUCED
    assert grade(spec, interval(0.55, 0.45, 0.65), "x").verdict is Verdict.CONTRADICTED


@pytest.mark.parametrize("est, low, high, expected", [
    (0.01, -0.03, 0.04, Verdict.REPRODUCED),  # the whole interval inside the +-0.05 margin
    (-0.12, -0.20, -0.06, Verdict.CONTRADICTED),  # the whole interval below -0.05
    (0.09, 0.06, 0.12, Verdict.CONTRADICTED),  # the whole interval above +0.05
    (0.02, -0.04, 0.08, Verdict.INCONCLUSIVE),  # straddles the margin
])
def test_an_equivalence_claim_needs_its_interval_inside_the_margin(est, low, high, expected):
    spec = ClaimSpec(**{**SPEC.__dict__, "direction": "equivalent", "smallest_effect": 0.05})
    graded = grade(spec, interval(est, low, high), "x")
    assert graded.verdict is expected
    assert "within ±0.05" in spec.declaration()["paper's direction"]
    if expected is Verdict.INCONCLUSIVE:
        # the half-width must shrink below the distance from 0.02 to the margin, 0.03
        assert graded.units_needed == math.ceil(8 * (1.959964 * 0.05 / 0.03) ** 2)


def test_failed_precondition_is_not_testable_even_for_a_large_effect():
    graded = grade(SPEC, interval(0.3, 0.2, 0.4), "x", precondition_met=False)
    assert graded.verdict is Verdict.NOT_TESTABLE and "precondition" in graded.reason
    assert graded.estimate == 0.3  # the numbers are kept
    assert grade(SPEC, None, "x").verdict is Verdict.NOT_TESTABLE


def test_differs_needs_a_reason_and_overrides():
    graded = grade(SPEC, interval(0.3, 0.2, 0.4), "x", differs="the model has no rotary positions")
    assert graded.verdict is Verdict.DIFFERS and graded.reason


def test_a_spec_refuses_a_bad_direction_or_effect():
    with pytest.raises(ValueError, match="direction"):
        ClaimSpec(**{**SPEC.__dict__, "direction": "up"})
    with pytest.raises(ValueError, match="positive"):
        ClaimSpec(**{**SPEC.__dict__, "smallest_effect": 0})


@pytest.fixture
def results_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(reporting, "RESULTS_DIR", tmp_path / "results")
    return tmp_path / "results"


def test_save_then_load_round_trips(results_dir):
    claims = [grade(SPEC, interval(0.3, 0.2, 0.4), "1 of 72 heads"),
              grade(SPEC, interval(0.01, -0.05, 0.07), "AUC 0.53")]
    path = save_results("07_demo", {"model": "tiny", "accuracy": 0.75, "auc": float("nan")}, claims)
    assert path == results_dir / "07_demo.json"
    loaded = load_results("07_demo")
    assert loaded["chapter"] == "07_demo"
    assert [c["verdict"] for c in loaded["claims"]] == ["reproduced", "contradicted"]
    assert [c["graded"] for c in loaded["claims"]] == [True, True]
    assert loaded["claims"][0]["interval"] == "[+0.200, +0.400]"
    assert loaded["results"]["accuracy"] == 0.75 and math.isnan(loaded["results"]["auc"])
    assert loaded["written"] == pytest.approx(path.stat().st_mtime)
    assert json.loads(path.read_text())["claims"][1]["verdict"] == "contradicted"


def test_load_results_of_a_chapter_that_never_ran_says_what_to_do(results_dir):
    with pytest.raises(FileNotFoundError, match="run chapter 08_missing first"):
        load_results("08_missing")


def test_per_task_table_puts_each_task_beside_the_others():
    graded = [grade(SPEC, interval(0.30, 0.20, 0.40), "a", task="words"),
              grade(SPEC, interval(0.02, -0.03, 0.07), "b", task="sentences")]
    table = reporting.per_task_table(graded)
    assert list(table.index) == [SPEC.claim]
    assert table.loc[SPEC.claim, ("words", "verdict")] == "reproduced"
    assert table.loc[SPEC.claim, ("sentences", "verdict")] == "contradicted"
    assert graded[1].row()["task"] == "sentences"


def test_an_estimate_at_the_threshold_says_no_affordable_sample_settles_it():
    graded = grade(SPEC, interval(0.099, -0.04, 0.24, se=0.07, n=20), "at the threshold")
    assert graded.verdict is Verdict.INCONCLUSIVE
    assert "no affordable sample" in graded.row()["settle"]
    assert "would settle it" in grade(SPEC, interval(0.3, -0.01, 0.61, se=0.15, n=8), "far").row()["settle"]
