"""ICLScores on hand-made logits with known answers, and score_prompts against a plain forward."""
from __future__ import annotations

import math

import numpy as np

import pytest
import torch

from icl_utils import ICLScores, encode_prompts, label_token_ids, score_prompts

CLASSES = ["animal", "vehicle"]
WORDS = {"animal": "foo", "vehicle": "bar"}


def _scores(logits, gold, classes=CLASSES):
    return ICLScores(torch.tensor(logits, dtype=torch.float32), torch.tensor(gold), list(classes), dict(WORDS))


@pytest.fixture
def prior_offset():
    """Class-1 prompts have logit(1) - logit(0) = -1, class-0 prompts -3: a constant prior of the
    first label word hides perfectly separated classes."""
    gold = [0, 1, 0, 1, 0, 1]
    diffs = {0: -3.0, 1: -1.0}
    logits = [[2.0 + 0.5 * i, 2.0 + 0.5 * i + diffs[g]] for i, g in enumerate(gold)]
    return _scores(logits, gold)


def test_raw_accuracy_with_prior(prior_offset):
    assert prior_offset.predictions().tolist() == [0] * 6
    assert prior_offset.accuracy() == pytest.approx(0.5)
    assert prior_offset.per_class_accuracy() == {"animal": 1.0, "vehicle": 0.0}


def test_batch_calibration_removes_the_prior(prior_offset):
    assert prior_offset.accuracy("batch") == pytest.approx(1.0)
    assert prior_offset.predictions("batch").tolist() == [0, 1, 0, 1, 0, 1]
    assert prior_offset.per_class_accuracy("batch") == {"animal": 1.0, "vehicle": 1.0}


def test_batch_calibration_values(prior_offset):
    """log p_c(x) - log mean_x p_c(x), by hand."""
    p = torch.softmax(prior_offset.label_logits, dim=-1)
    expected = torch.log(p / p.mean(0, keepdim=True))
    torch.testing.assert_close(prior_offset.log_probs("batch"), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(prior_offset.log_probs(), torch.log(p), atol=1e-6, rtol=0)


def test_auc_perfect_ranking(prior_offset):
    assert prior_offset.auc() == pytest.approx(1.0)


def test_auc_with_ties_and_inversions():
    # differences logit1 - logit0: class 1 -> [1, 0], class 0 -> [0, -1]
    # pairs (pos, neg): (1,0) >, (1,-1) >, (0,0) tie, (0,-1) >  -> (3 + 0.5) / 4
    scores = _scores([[0, 1], [0, 0], [0, 0], [1, 0]], [1, 1, 0, 0])
    assert scores.auc() == pytest.approx(0.875)
    inverted = _scores([[1, 0], [0, 1]], [1, 0])
    assert inverted.auc() == pytest.approx(0.0)


def test_auc_undefined_cases():
    assert math.isnan(_scores([[0, 1], [1, 0]], [1, 1]).auc())
    three = ICLScores(torch.zeros(3, 3), torch.tensor([0, 1, 2]), ["a", "b", "c"], {})
    with pytest.raises(ValueError, match="two classes"):
        three.auc()


def test_summary(prior_offset):
    summary = prior_offset.summary()
    assert summary["n"] == 6
    assert summary["accuracy"] == pytest.approx(0.5)
    assert summary["calibrated_accuracy"] == pytest.approx(1.0)
    assert summary["prior_first_label"] == pytest.approx(1.0)
    assert summary["auc"] == pytest.approx(1.0)


def test_unknown_calibration_raises(prior_offset):
    with pytest.raises(ValueError, match="'batch'"):
        prior_offset.accuracy("contextual")


def test_score_prompts_matches_plain_forward(bundle, prompts):
    info = bundle.info
    scores = score_prompts(info, prompts, batch_size=3, progress=False)
    assert scores.label_logits.shape == (len(prompts), 2)
    assert scores.classes == CLASSES
    assert scores.label_words == WORDS
    assert scores.gold.tolist() == [CLASSES.index(p.gold) for p in prompts]
    ids = label_token_ids(info.tokenizer, ["foo", "bar"])
    batch = encode_prompts(info, prompts)
    with torch.no_grad():
        logits = bundle.ref(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    expected = logits[torch.arange(len(prompts)), batch.last_positions][:, ids]
    torch.testing.assert_close(scores.label_logits, expected, atol=1e-4, rtol=0)
    assert (expected[:, 0] - expected[:, 1]).abs().max() > 1e-3  # the two columns differ


def test_calibration_with_a_reference_keeps_an_interventions_shift():
    from icl_utils.evaluation import ICLScores

    gold = torch.tensor([0, 1, 0, 1])
    clean = ICLScores(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]), gold, ["a", "b"], {})
    shifted = ICLScores(clean.label_logits + torch.tensor([0.0, 3.0]), gold, ["a", "b"], {})
    assert shifted.accuracy("batch") == 1.0  # re-estimating the prior hides the shift
    assert shifted.accuracy("batch", reference=clean) == 0.5  # the clean prior keeps it
    assert shifted.per_class_accuracy("batch", reference=clean) == {"a": 0.0, "b": 1.0}
    assert clean.gold_logit_margin() == 1.0 and shifted.gold_logit_margin() == 1.0


def test_spearman_is_one_for_monotone_maps_and_minus_one_for_reversed():
    from icl_utils.stats import spearman

    a = torch.randn(3, 4)
    assert abs(spearman(a, a.exp()) - 1) < 1e-6
    assert abs(spearman(a, -a) + 1) < 1e-6
    assert abs(spearman(torch.tensor([1.0, 2, 3, 4]), torch.tensor([1.0, 3, 2, 4])) - 0.8) < 1e-6


def test_gold_log_prob_is_the_full_vocabulary_log_probability(info, prompts):
    scores = score_prompts(info, prompts, batch_size=3, progress=False)
    batch = encode_prompts(info, prompts)
    out = info.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    logp = torch.log_softmax(out.logits[torch.arange(len(prompts)), batch.last_positions].float(), -1)
    ids = torch.tensor(label_token_ids(info.tokenizer, [prompts[0].label_words[c] for c in scores.classes]))
    expected = logp[torch.arange(len(prompts)), ids[scores.gold]].mean().item()
    assert abs(scores.gold_log_prob() - expected) < 1e-4
    with pytest.raises(ValueError, match="normaliser"):
        ICLScores(scores.label_logits, scores.gold, scores.classes, scores.label_words).gold_log_prob()


# ----------------------------------------------------------------------------------------------
# Scoring prompts that share their demonstrations: the prefix is run once, the numbers must not move


def _grouped(task):
    from icl_utils.prompts import build_prompt_groups

    groups = build_prompt_groups(task, n_groups=2, queries_per_group=4, demos_per_class=2, seed=3)
    return [p for g in groups for p in g]


def test_shared_prefix_scores_equal_full_passes(info, task):
    prompts = _grouped(task)
    full = score_prompts(info, prompts, batch_size=3, progress=False)
    shared = score_prompts(info, prompts, batch_size=3, progress=False, share_prefix=True)
    torch.testing.assert_close(shared.label_logits, full.label_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(shared.log_normaliser, full.log_normaliser, atol=1e-4, rtol=1e-4)
    assert torch.equal(shared.gold, full.gold)  # results come back in the prompts' order


def test_shared_prefix_scores_equal_full_passes_under_head_ablation(info, task):
    from icl_utils import ablate_heads

    prompts = _grouped(task)
    heads = [(0, 1), (info.n_layers - 1, 0)]
    with ablate_heads(info, heads):
        full = score_prompts(info, prompts, batch_size=8, progress=False)
        shared = score_prompts(info, prompts, batch_size=8, progress=False, share_prefix=True)
    clean = score_prompts(info, prompts, batch_size=8, progress=False)
    torch.testing.assert_close(shared.label_logits, full.label_logits, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(clean.label_logits, full.label_logits, atol=1e-3)  # the ablation did act


def test_shared_prefix_refuses_position_specific_interventions(info, task):
    from icl_utils import ablate_heads, edit_attention

    prompts = _grouped(task)
    last = encode_prompts(info, prompts).last_positions
    with pytest.raises(RuntimeError, match="share_prefix"):
        with edit_attention(info, lambda layer, w, q, k: None):
            score_prompts(info, prompts, progress=False, share_prefix=True)
    with pytest.raises(RuntimeError, match="share_prefix"):
        with ablate_heads(info, [(0, 0)], positions=last[:, None]):
            score_prompts(info, prompts, batch_size=len(prompts), progress=False, share_prefix=True)
    score_prompts(info, prompts, progress=False, share_prefix=True)  # and works again afterwards


# ----------------------------------------------------------------------------------------------
# Many head ablations per pass; calibration on calibration prompts


def test_batched_head_ablations_equal_one_ablation_at_a_time(info, task):
    from icl_utils import ablate_heads, build_prompt_groups
    from icl_utils.evaluation import score_head_ablations

    groups = build_prompt_groups(task, 2, 4, demos_per_class=2, seed=3, distinct_queries=False)
    prompts = [p for g in groups for p in g]
    head_sets = [[], [(0, 0)], [(1, 1), (0, 1)], [(info.n_layers - 1, info.n_heads - 1)]]
    batched = score_head_ablations(info, prompts, head_sets, rows_per_pass=8, normaliser=True, progress=False)
    for heads, got in zip(head_sets, batched):
        with ablate_heads(info, heads):
            want = score_prompts(info, prompts, progress=False)
        torch.testing.assert_close(got.label_logits, want.label_logits, atol=2e-4, rtol=1e-4)
        torch.testing.assert_close(got.log_normaliser, want.log_normaliser, atol=2e-4, rtol=1e-4)
        assert (got.demo_set == want.demo_set).all()
    # the ablations really differ from each other
    assert not torch.allclose(batched[0].label_logits, batched[2].label_logits)


def test_calibration_prior_comes_from_the_calibration_prompts_of_the_same_demonstrations(info, task):
    from icl_utils import build_prompt_groups
    from icl_utils.evaluation import score_calibrated
    from icl_utils.prompts import calibration_prompts

    groups = build_prompt_groups(task, 2, 2, demos_per_class=1, seed=0, distinct_queries=True)
    prompts = [p for g in groups for p in g]
    calib = calibration_prompts(task, prompts, per_class=1, seed=0)
    assert len(calib) == 2 * 2  # two demonstration sets x one per class
    assert not {p.query for p in calib} & {p.query for p in prompts}
    for c in calib:
        assert c.query not in {x for x, _ in c.demos}
    scores = score_calibrated(info, prompts, calib, progress=False, share_prefix=True)
    alone = score_prompts(info, calib, progress=False)
    for set_id in np.unique(scores.demo_set):
        want = alone.take(np.flatnonzero(alone.demo_set == set_id)).label_prior()
        for row in np.flatnonzero(scores.demo_set == set_id):
            torch.testing.assert_close(scores.log_prior[row], want, atol=2e-4, rtol=1e-4)
    manual = (torch.log_softmax(scores.label_logits, -1) - scores.log_prior).argmax(-1)
    assert scores.predictions("prior").tolist() == manual.tolist()


def test_prior_calibration_without_a_prior_says_what_to_do():
    scores = _scores([[1.0, 0.0], [0.0, 1.0]], [0, 1])
    with pytest.raises(ValueError, match="calibrated_with"):
        scores.accuracy("prior")


def test_accuracy_interval_resamples_demonstration_sets(info, task):
    import icl_utils
    from icl_utils.stats import mean_interval

    prompts, calibration = icl_utils.design_prompts(task, 3, 2, demos_per_class=1, calibration_per_class=1)
    scores = icl_utils.score_calibrated(info, prompts, calibration, progress=False, share_prefix=True, normaliser=False)
    ci = scores.accuracy_interval("prior")
    expected = mean_interval(scores.correct("prior").numpy(), scores.demo_set)
    assert (ci.estimate, ci.low, ci.high, ci.n_units) == (expected.estimate, expected.low, expected.high, expected.n_units)
    assert ci.n_units == len(set(scores.demo_set)) > 1
    no_sets = ICLScores(scores.label_logits, scores.gold, scores.classes, scores.label_words)
    with pytest.raises(ValueError, match="demonstration sets"):
        no_sets.accuracy_interval()


# bad inputs -----------------------------------------------------------------------------------------


def test_gold_margins_and_auc_refuse_more_than_two_classes():
    three = ICLScores(torch.zeros(3, 3), torch.tensor([0, 1, 2]), ["a", "b", "c"], {"a": "x", "b": "y", "c": "z"})
    for measure in (three.gold_margins, three.gold_logit_margin, three.auc):
        with pytest.raises(ValueError, match=r"two classes.*classes=\[first, second\]"):
            measure()
    assert three.accuracy() == pytest.approx(1 / 3)  # accuracy takes any number of classes


def test_score_prompts_refuses_a_single_prompt_text_and_a_zero_batch(model_infos, task):
    from icl_utils import build_prompts

    info, prompts = model_infos["gpt2"], build_prompts(task, 2, demos_per_class=1)
    with pytest.raises(TypeError, match=r"\[prompt\]"):
        score_prompts(info, prompts[0], progress=False)
    with pytest.raises(TypeError, match="ICLPrompt"):
        score_prompts(info, [p.text for p in prompts], progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        score_prompts(info, prompts, batch_size=0, progress=False)


def test_score_calibrated_without_calibration_prompts_says_how_to_build_them(model_infos, task):
    from icl_utils import design_prompts, score_calibrated

    prompts, _ = design_prompts(task, 2, 2, demos_per_class=1, calibration_per_class=1)
    with pytest.raises(ValueError, match="calibration_prompts"):
        score_calibrated(model_infos["gpt2"], prompts, [], progress=False)


def test_head_ablations_want_a_list_of_head_sets(model_infos, task):
    from icl_utils import build_prompts, score_head_ablations

    info, prompts = model_infos["gpt2"], build_prompts(task, 2, demos_per_class=1)
    for flat in ([(0, 1)], [(0, 1), (1, 2)], [0, 1]):
        with pytest.raises(TypeError, match=r"wrap it: \[heads\]"):
            score_head_ablations(info, prompts, flat, progress=False)
    with pytest.raises(ValueError, match="out of range"):
        score_head_ablations(info, prompts, [[(0, 99)]], progress=False)
    assert len(score_head_ablations(info, prompts, [[], [(0, 1)]], progress=False)) == 2  # an empty set: no ablation


def test_head_ablations_take_the_layers_below_the_lowest_zeroed_head_from_one_clean_pass(info, task):
    """Sets whose heads all sit at layer >= 1 never run layer 0 again (only the clean pass of each group
    does, once for the demonstrations and once for the queries), and give the same numbers as
    zeroing each set in whole passes."""
    from icl_utils import ablate_heads, build_prompt_groups
    from icl_utils.evaluation import score_head_ablations

    groups = build_prompt_groups(task, 2, 3, demos_per_class=2, seed=5, distinct_queries=False)
    prompts = [p for g in groups for p in g]
    top = info.n_layers - 1
    head_sets = [[(top, 0)], [(1, 1)], [(top, 1), (1, 0)], [], [(top, info.n_heads - 1)]]
    calls = []
    handle = info.out_projs[0].register_forward_pre_hook(lambda module, args: calls.append(1))  # runs only if layer 0 does
    try:
        batched = score_head_ablations(info, prompts, head_sets, rows_per_pass=6, normaliser=True, progress=False)
    finally:
        handle.remove()
    assert len(calls) == 2 * len(groups)  # the clean pass of each group: demonstrations, then queries
    for heads, got in zip(head_sets, batched):
        with ablate_heads(info, heads):
            want = score_prompts(info, prompts, progress=False)
        torch.testing.assert_close(got.label_logits, want.label_logits, atol=2e-4, rtol=1e-4)
        torch.testing.assert_close(got.log_normaliser, want.log_normaliser, atol=2e-4, rtol=1e-4)
    assert not torch.allclose(batched[0].label_logits, batched[1].label_logits)  # the ablations did act


def test_head_ablations_inside_another_ablation_reuse_a_clean_pass_that_includes_it(info, task):
    """An intervention active around score_head_ablations (the same for every row) is part of its "clean"
    pass: the layers taken from that pass carry it, once."""
    from icl_utils import ablate_heads, build_prompt_groups
    from icl_utils.evaluation import score_head_ablations

    groups = build_prompt_groups(task, 1, 4, demos_per_class=2, seed=2, distinct_queries=False)
    prompts = groups[0]
    outer, inner = [(0, 1)], [(info.n_layers - 1, 0)]
    with ablate_heads(info, outer):
        got = score_head_ablations(info, prompts, [inner], progress=False)[0]
    with ablate_heads(info, outer + inner):
        want = score_prompts(info, prompts, progress=False, normaliser=False)
    torch.testing.assert_close(got.label_logits, want.label_logits, atol=2e-4, rtol=1e-4)


def test_log_normalisers_equal_a_full_logsumexp(info):
    from icl_utils.evaluation import _log_normalisers

    hidden = torch.randn(5, info.d_model, generator=torch.Generator().manual_seed(0))
    want = torch.logsumexp(info.logits_from_final_hidden(hidden).float(), -1)
    torch.testing.assert_close(_log_normalisers(info, hidden), want, atol=1e-5, rtol=1e-5)


def test_packed_hidden_states_equal_full_passes(info, task):
    """Sets of different lengths and label words (the same demonstrations with the words swapped are
    two sets), no demonstrations at all, in mixed order, one pass or several: the last hidden states
    of whole-prompt passes (tiny Gemma's sliding window is shorter than these prompts)."""
    from icl_utils.evaluation import last_position_hidden, last_position_hidden_packed
    from icl_utils.prompts import build_prompt_groups

    prompts = []
    for k, words in ((2, "foo/bar"), (2, ("bar", "foo")), (0, "foo/bar"), (1, "foo/bar")):
        groups = build_prompt_groups(task, n_groups=2, queries_per_group=3, demos_per_class=k, label_words=words, seed=3)
        prompts += [p for g in groups for p in g]
    prompts = [prompts[i] for i in np.random.default_rng(0).permutation(len(prompts))]
    expected = torch.cat([last_position_hidden(info, encode_prompts(info, prompts[s:s + 4])).float()
                          for s in range(0, len(prompts), 4)])
    for tokens_per_pass in (40, 10_000):
        got = last_position_hidden_packed(info, prompts, tokens_per_pass=tokens_per_pass)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_packed_calibrated_scores_equal_score_calibrated(info, task):
    from icl_utils.evaluation import score_calibrated, score_calibrated_packed
    from icl_utils.prompts import build_prompt_groups, calibration_prompts

    designs = []
    for words in ("foo/bar", ("bar", "foo")):
        groups = build_prompt_groups(task, n_groups=2, queries_per_group=4, demos_per_class=2, label_words=words, seed=3)
        prompts = [p for g in groups for p in g]
        designs.append((prompts, calibration_prompts(task, prompts, per_class=1, seed=3)))
    for (prompts, calibration), got in zip(designs, score_calibrated_packed(info, designs)):
        expected = score_calibrated(info, prompts, calibration, batch_size=8, progress=False, share_prefix=True,
                                    normaliser=False)
        torch.testing.assert_close(got.label_logits, expected.label_logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(got.log_prior, expected.log_prior, atol=1e-4, rtol=1e-4)
        assert list(got.demo_set) == list(expected.demo_set)
