"""Ranking and selecting heads (icl_utils.heads) on tiny models."""
import pytest
import torch

from icl_utils import heads as H
from icl_utils.attribution import head_scores_over_prompts


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
