"""Declared claims are graded by one function; save_results / load_results round-trip them."""
import json
import math

import pytest

import icl_utils.reporting as reporting
from icl_utils.reporting import ClaimSpec, Verdict, grade, load_results, save_results
from icl_utils.stats import Interval, units_to_settle

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
    graded = grade(SPEC, interval(est, low, high), book="x", precondition_met=True)
    assert graded.verdict is expected
    if expected is Verdict.INCONCLUSIVE:
        assert graded.mde == pytest.approx((2.3646 + 0.8960) * 0.05, rel=1e-3)  # t quantiles on 7 df
        # a t interval around 0.08 excludes 0.10 from above once se shrinks enough (about 8 x (1.96 x 0.05 / 0.02)^2)
        assert graded.units_needed == units_to_settle(0.05, 8, 0.08, 0.10)
        assert graded.units_needed == pytest.approx(8 * (1.959964 * 0.05 / (0.10 - 0.08)) ** 2, rel=0.02)
        assert "would settle it" in graded.row()["settle"]
    else:
        assert graded.mde is None


def test_a_decrease_claim_mirrors_the_rule():
    spec = ClaimSpec(**{**SPEC.__dict__, "direction": "decrease", "null": 0.5})
    assert grade(spec, interval(0.2, 0.1, 0.3), "x", precondition_met=True).verdict is Verdict.REPRODUCED
    assert grade(spec, interval(0.55, 0.45, 0.65), "x", precondition_met=True).verdict is Verdict.CONTRADICTED


@pytest.mark.parametrize("est, low, high, expected", [
    (0.01, -0.03, 0.04, Verdict.REPRODUCED),  # the whole interval inside the +-0.05 margin
    (-0.12, -0.20, -0.06, Verdict.CONTRADICTED),  # the whole interval below -0.05
    (0.09, 0.06, 0.12, Verdict.CONTRADICTED),  # the whole interval above +0.05
    (0.02, -0.04, 0.08, Verdict.INCONCLUSIVE),  # straddles the margin
])
def test_an_equivalence_claim_needs_its_interval_inside_the_margin(est, low, high, expected):
    spec = ClaimSpec(**{**SPEC.__dict__, "direction": "equivalent", "smallest_effect": 0.05})
    graded = grade(spec, interval(est, low, high), "x", precondition_met=True)
    assert graded.verdict is expected
    assert "within ±0.05" in spec.declaration()["paper's direction"]
    if expected is Verdict.INCONCLUSIVE:
        # the half-width must shrink below the distance from 0.02 to the margin, 0.03
        assert graded.units_needed == units_to_settle(0.05, 8, 0.02, 0.05)
        assert graded.units_needed == pytest.approx(8 * (1.959964 * 0.05 / 0.03) ** 2, rel=0.05)


def test_failed_precondition_is_not_testable_even_for_a_large_effect():
    graded = grade(SPEC, interval(0.3, 0.2, 0.4), "x", precondition_met=False)
    assert graded.verdict is Verdict.NOT_TESTABLE and "precondition" in graded.reason
    assert graded.estimate == 0.3  # the numbers are kept
    assert grade(SPEC, None, "x", precondition_met=True).verdict is Verdict.NOT_TESTABLE


def test_differs_needs_a_reason_and_overrides():
    graded = grade(SPEC, interval(0.3, 0.2, 0.4), "x", precondition_met=True, differs="the model has no rotary positions")
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
    claims = [grade(SPEC, interval(0.3, 0.2, 0.4), "1 of 72 heads", precondition_met=True),
              grade(SPEC, interval(0.01, -0.05, 0.07), "AUC 0.53", precondition_met=True)]
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
    graded = [grade(SPEC, interval(0.30, 0.20, 0.40), "a", task="words", precondition_met=True),
              grade(SPEC, interval(0.02, -0.03, 0.07), "b", task="sentences", precondition_met=True)]
    table = reporting.per_task_table(graded)
    assert list(table.index) == [SPEC.claim]
    assert table.loc[SPEC.claim, ("words", "verdict")] == "reproduced"
    assert table.loc[SPEC.claim, ("sentences", "verdict")] == "contradicted"
    assert graded[1].row()["task"] == "sentences"


def test_an_estimate_at_the_threshold_says_no_affordable_sample_settles_it():
    graded = grade(SPEC, interval(0.099, -0.04, 0.24, se=0.07, n=20), "at the threshold", precondition_met=True)
    assert graded.verdict is Verdict.INCONCLUSIVE
    assert "no affordable sample" in graded.row()["settle"]
    assert "would settle it" in grade(SPEC, interval(0.3, -0.01, 0.61, se=0.15, n=8), "far",
                                      precondition_met=True).row()["settle"]


def t_interval(estimate, se, n):
    """An interval as icl_utils.stats builds it: estimate +- t(0.975, n - 1) se."""
    from scipy import stats as st

    half = st.t.ppf(0.975, n - 1) * se
    return Interval(estimate, estimate - half, estimate + half, se, n, "demonstration set")


def test_a_declared_precondition_must_be_reported():
    with pytest.raises(ValueError, match="precondition_met"):
        grade(SPEC, interval(0.3, 0.2, 0.4), "x")
    no_precondition = ClaimSpec(**{**SPEC.__dict__, "precondition": ""})
    assert grade(no_precondition, interval(0.3, 0.2, 0.4), "x").verdict is Verdict.REPRODUCED


def test_fewer_than_eight_units_are_inconclusive_whatever_the_interval():
    graded = grade(SPEC, interval(0.6, 0.5, 0.7, n=7), "x", precondition_met=True)
    assert graded.verdict is Verdict.INCONCLUSIVE and "n units < 8" in graded.row()["settle"]
    assert grade(SPEC, interval(0.02, -0.03, 0.07, n=5), "x", precondition_met=True).verdict is Verdict.INCONCLUSIVE


def test_a_zero_width_interval_is_refused_unless_the_statistic_is_exact():
    refused = grade(SPEC, interval(0.3, 0.3, 0.3, se=0.0), "x", precondition_met=True)
    assert refused.verdict is Verdict.NOT_TESTABLE and "zero-width interval" in refused.reason
    exact = ClaimSpec(**{**SPEC.__dict__, "exact": True})
    assert grade(exact, interval(0.3, 0.3, 0.3, se=0.0), "x", precondition_met=True).verdict is Verdict.REPRODUCED


def test_a_failed_check_makes_the_claim_not_testable_and_says_which():
    clean = t_interval(0.58, 0.01, 10)  # clean accuracy 0.58: at most 0.08 above chance
    checks = reporting.design_checks(clean, bound=0.5, smallest_effect=0.10, measure="calibrated accuracy")
    assert [c.name for c in checks] == ["room to move", "able to detect"]
    assert not checks[0].met and checks[1].met
    graded = grade(SPEC, interval(0.3, 0.2, 0.4), "x", precondition_met=True, checks=checks)
    assert graded.verdict is Verdict.NOT_TESTABLE and "room to move" in graded.reason
    noisy = reporting.able_to_detect(se=0.05, n_units=8, smallest_effect=0.10, measure="accuracy")
    assert not noisy.met  # (2.36 + 0.90) x 0.05 = 0.16 > 0.10
    flat = reporting.moves_at_all({"clean": [1.0, 1.0], "top": [1.0, 1.0], "random": [1.0, 1.0]}, "MRR")
    assert not flat.met and "single value 1.000" in flat.detail
    assert reporting.moves_at_all({"clean": [1.0, 1.0], "top": [1.0, 0.5]}, "MRR").met


def test_primary_rows_are_holm_corrected_and_exploratory_rows_are_not():
    primary = ClaimSpec(**{**SPEC.__dict__, "precondition": "", "primary": True})
    # two rows at two-sided p = 0.03 each: each reproduced alone, but Holm multiplies the smaller by 2
    from scipy import stats as st

    se = 0.3 / st.t.isf(0.015, 9)  # estimate 0.3 with two-sided p = 0.03 on 10 units
    borderline = grade(primary, t_interval(0.3, se, 10), "borderline")
    second = grade(ClaimSpec(**{**primary.__dict__, "claim": "a second claim"}), t_interval(0.3, se, 10), "second")
    assert borderline.verdict is Verdict.REPRODUCED and borderline.p_value == pytest.approx(0.03)
    table = reporting.claims_table([borderline, second], columns=None)
    assert list(table.verdict) == ["inconclusive", "inconclusive"]
    assert borderline.p_holm == pytest.approx(0.06) and "alone: reproduced" in table.settle[0]
    strong = grade(ClaimSpec(**{**primary.__dict__, "claim": "a strong claim"}), t_interval(0.5, 0.05, 10), "strong")  # p ~ 1e-6: with it, the last row keeps p = 0.03
    assert list(reporting.claims_table([borderline, strong], columns=None).verdict) == ["reproduced", "reproduced"]
    assert list(table.role) == ["primary", "primary"]
    alone = grade(ClaimSpec(**{**primary.__dict__, "primary": False}), t_interval(0.3, se, 10), "exploratory")
    assert reporting.claims_table([alone, strong], columns=None).verdict[0] == "reproduced"
    assert grade(primary, t_interval(0.3, se, 10), "other task", exploratory=True).primary is False


def test_clears_tells_a_strong_result_from_a_borderline_one():
    assert grade(SPEC, interval(0.30, 0.20, 0.40), "x", precondition_met=True).row()["clears"] == "yes"
    assert grade(SPEC, interval(0.15, 0.05, 0.25), "x", precondition_met=True).row()["clears"] == "no"
    post = ClaimSpec(**{**SPEC.__dict__, "post_hoc": True})
    assert grade(post, interval(0.3, 0.2, 0.4), "x", precondition_met=True).row()["post hoc"] is True
    assert "post hoc" in post.declaration()["role"]


def test_a_failed_check_comes_before_the_zero_width_refusal():
    flat = reporting.moves_at_all({"clean": [1.0, 1.0], "ablated": [1.0, 1.0]}, "MRR")
    graded = grade(SPEC, interval(0.0, 0.0, 0.0, se=0.0), "x", precondition_met=True, checks=[flat])
    assert graded.verdict is Verdict.NOT_TESTABLE and "room to move" in graded.reason


def test_a_pinned_statistic_is_described_beside_the_table_not_graded():
    described = []
    assert reporting.grade_or_describe(SPEC, interval(0.78, 0.78, 0.78, se=0.0, n=10), "depth 0.78", described,
                                       precondition_met=True) is None
    assert described[0]["value"] == 0.78 and "no interval" in described[0]["why not graded"]
    graded = reporting.grade_or_describe(SPEC, interval(0.3, 0.2, 0.4), "x", described, precondition_met=True)
    assert graded.verdict is Verdict.REPRODUCED and len(described) == 1
    blocked = reporting.grade_or_describe(SPEC, interval(0.78, 0.78, 0.78, se=0.0, n=10), "x", described, precondition_met=False)
    assert blocked.verdict is Verdict.NOT_TESTABLE and len(described) == 1


def test_a_table_of_part_of_the_rows_cannot_show_another_verdict_than_is_saved(results_dir):
    from scipy import stats as st

    primary = ClaimSpec(**{**SPEC.__dict__, "precondition": "", "primary": True})
    other = ClaimSpec(**{**primary.__dict__, "claim": "another claim"})
    se = 0.3 / st.t.isf(0.015, 9)  # p = 0.03 each: reproduced alone, inconclusive as a family of two
    a, b = grade(primary, t_interval(0.3, se, 10), "a"), grade(other, t_interval(0.3, se, 10), "b")
    reporting.claims_table([a, b])
    assert reporting.per_task_table([a]).iloc[0][("(main)", "verdict")] == "inconclusive"  # the family's verdict, kept
    save_results("03_demo", {}, [a, b])
    # a part shown first decides its own family; saving the whole then changes a shown verdict: refused
    c, d = grade(primary, t_interval(0.3, se, 10), "c"), grade(other, t_interval(0.3, se, 10), "d")
    reporting.per_task_table([c])
    with pytest.raises(ValueError, match="claims_table of every graded row"):
        save_results("03_demo", {}, [c, d])


def test_a_claim_has_one_primary_row_per_task():
    primary = ClaimSpec(**{**SPEC.__dict__, "precondition": "", "primary": True})
    rows = [grade(primary, t_interval(0.3, 0.05, 10), "a"), grade(primary, t_interval(0.3, 0.05, 10), "b")]
    with pytest.raises(ValueError, match="exploratory=True"):
        reporting.family_verdicts(rows)
