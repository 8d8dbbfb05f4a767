"""Ranking and selecting heads (icl_utils.heads) on tiny models."""
import numpy as np
import pytest
import torch

from icl_utils import build_prompts
from icl_utils import heads as H
from icl_utils.heads import head_scores_over_prompts


def test_top_heads_orders_by_value_and_respects_among():
    values = torch.tensor([[0.1, 0.9], [0.5, -1.0], [0.7, 0.2]])
    assert H.top_heads(values, 3) == [(0, 1), (2, 0), (1, 0)]
    assert H.top_heads(values, 2, among=[(1, 1), (2, 1), (1, 0)]) == [(1, 0), (2, 1)]


def test_rank_heads_averages_the_per_prompt_scores(info, prompts):
    ranking = H.rank_heads(info, prompts, batch_size=3, progress=False)
    scores = head_scores_over_prompts(info, prompts, batch_size=8, progress=False)
    torch.testing.assert_close(ranking.importance, scores["importance"].mean(0), atol=1e-5, rtol=1e-5)
    foo, bar = ranking.words
    on_foo = scores["gold"] == 0
    torch.testing.assert_close(ranking.per_label[foo], scores[f"importance_{foo}"][on_foo].mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ranking.per_label[bar], scores[f"importance_{bar}"][~on_foo].mean(0), atol=1e-5, rtol=1e-5)
    assert ranking.top(3) == H.top_heads(ranking.importance, 3)


def test_head_scores_with_shared_demonstrations_equal_whole_prompts(info, task):
    from icl_utils import build_prompt_groups

    groups = build_prompt_groups(task, 2, 4, demos_per_class=2, seed=3)
    prompts = [groups[1][0], groups[0][0], groups[0][1], groups[1][1], groups[0][2], groups[0][3], groups[1][2], groups[1][3]]
    shared = head_scores_over_prompts(info, prompts, batch_size=3, progress=False)  # auto: demonstration sets found
    whole = head_scores_over_prompts(info, prompts, batch_size=3, progress=False, share_prefix=False)
    for key in whole:  # the same numbers, in the order the prompts were given
        torch.testing.assert_close(shared[key], whole[key], atol=1e-4, rtol=1e-4)


def test_label_heads_are_disjoint_and_follow_the_paper_rule_otherwise():
    foo = torch.tensor([[3.0, 1.0], [2.0, 0.0]])
    bar = torch.tensor([[4.0, 0.5], [1.0, 2.5]])  # head (0, 0) tops both lists
    ranking = H.HeadRanking(foo, {"foo": foo, "bar": bar}, torch.zeros(2, 2), ["foo", "bar"])
    assert ranking.label_heads("foo", 1, disjoint=False) == [(0, 0)]
    assert ranking.label_heads("bar", 1, disjoint=False) == [(0, 0)]
    assert ranking.label_heads("foo", 2) == [(1, 0), (0, 1)]  # (0, 0) scores higher for bar
    assert ranking.label_heads("bar", 2) == [(0, 0), (1, 1)]


def test_rank_heads_refuses_prompts_without_one_of_the_labels(info, prompts):
    one_label = [p for p in prompts if p.gold == prompts[0].gold]
    with pytest.raises(ValueError, match="balanced"):
        H.rank_heads(info, one_label, progress=False)


def test_rankings_without_some_sets_drop_whole_demonstration_sets(info, task):
    from icl_utils import build_prompt_groups

    groups = build_prompt_groups(task, 3, 2, demos_per_class=1, seed=0, distinct_queries=True, pool="selection")
    ranking = H.rank_heads(info, [p for g in groups for p in g], progress=False)
    assert ranking.n_sets == 3
    without = ranking.importance_without([np.array([0]), np.array([1, 2])])
    assert without.shape == (2, info.n_layers, info.n_heads)
    sets = sorted(set(ranking.demo_set))
    for i, out in enumerate([[0], [1, 2]]):
        kept = torch.as_tensor(~np.isin(ranking.demo_set, [sets[j] for j in out]))
        torch.testing.assert_close(without[i], ranking.per_prompt[kept].mean(0))


def test_find_in_context_heads_ranks_on_the_selection_pool_and_refuses_leaks(info, task, tmp_path, monkeypatch):
    import icl_utils.reporting as reporting
    from icl_utils import build_prompts, task_pools

    monkeypatch.setattr(reporting, "RESULTS_DIR", tmp_path)
    ranking = H.find_in_context_heads(info, task, n_prompts=4, demos_per_class=1, progress=False)
    selection = {x for xs in task_pools(task)["selection"].values() for x in xs}
    assert set(ranking.queries) <= selection
    again = H.find_in_context_heads(info, task, n_prompts=4, demos_per_class=1, progress=False)  # loaded, not re-ranked
    torch.testing.assert_close(again.importance, ranking.importance)
    assert again.queries == ranking.queries
    ranking.check_held_out(build_prompts(task, 8, demos_per_class=1))  # evaluation pool: fine
    with pytest.raises(ValueError, match="used to rank"):
        ranking.check_held_out(build_prompts(task, 4, demos_per_class=1, pool="selection"))


def test_saved_rankings_of_two_tasks_do_not_overwrite_each_other(info, task, tmp_path, monkeypatch):
    import dataclasses

    import icl_utils.reporting as reporting

    monkeypatch.setattr(reporting, "RESULTS_DIR", tmp_path)
    first = H.find_in_context_heads(info, task, n_prompts=4, demos_per_class=1, progress=False)
    other_task = dataclasses.replace(task, name=task.name + "_other")
    second = H.find_in_context_heads(info, other_task, n_prompts=4, demos_per_class=1, seed=1, progress=False)
    assert second.queries != first.queries
    again = H.find_in_context_heads(info, task, n_prompts=4, demos_per_class=1, progress=False)
    assert again.queries == first.queries  # the first task's ranking survived the second's save


def test_rank_heads_on_no_prompts_says_what_to_do(info):
    with pytest.raises(ValueError, match="selection"):
        H.rank_heads(info, [], progress=False)


# bad inputs -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,match", [(-1, "whole number >= 0"), (2.5, "whole number"), (9, "at most 8")])
def test_top_heads_refuses_bad_counts(n, match):
    with pytest.raises(ValueError, match=match):
        H.top_heads(torch.zeros(2, 4), n)
    assert H.top_heads(torch.zeros(2, 4), 0) == []


def test_top_heads_of_per_prompt_scores_says_average_first():
    with pytest.raises(ValueError, match=r"values.mean\(0\)"):
        H.top_heads(torch.zeros(5, 2, 4), 3)


def test_rank_heads_refuses_one_prompt_not_in_a_list_and_mixed_label_words(model_infos, task):
    info = model_infos["gpt2"]
    prompts = build_prompts(task, 2, demos_per_class=1)
    with pytest.raises(TypeError, match=r"\[prompt\]"):
        H.rank_heads(info, prompts[0], progress=False)
    swapped = build_prompts(task, 2, demos_per_class=1, label_words=("bar", "foo"))
    with pytest.raises(ValueError, match="one label_words= at a time"):
        H.rank_heads(info, prompts + swapped, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        H.rank_heads(info, prompts, batch_size=0, progress=False)


def test_find_in_context_heads_wants_a_task_not_its_name(model_infos):
    with pytest.raises(TypeError, match=r"iu.load_task\('animal_vehicle'\)"):
        H.find_in_context_heads(model_infos["gpt2"], "animal_vehicle", progress=False)
