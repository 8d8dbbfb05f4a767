"""The head explorer (icl_utils.explorer) on the tiny models: numbers checked by hand, HTML and widgets."""
import html

import matplotlib
import pytest
import torch

import icl_utils
from icl_utils import explorer
from icl_utils.attribution import head_contributions, log_prob_increase
from icl_utils.vocab import label_log_odds

matplotlib.use("Agg")


@pytest.fixture
def views(info, prompts):
    heads = [(info.n_layers - 1, 0), (0, 2), (info.n_layers - 1, 3)]
    return explorer.head_views(info, prompts[:3], heads, top_k=3), heads


def test_views_cover_every_prompt_and_head_in_order(info, prompts, views):
    views, heads = views
    assert [(v.prompt_index, (v.layer, v.head)) for v in views] == [(i, lh) for i in range(3) for lh in heads]
    batch = icl_utils.encode_prompts(info, prompts[:3])
    for v in views:
        length = int(batch.attention_mask[v.prompt_index].sum())
        assert len(v.tokens) == len(v.attention) == len(v.m_weighted) == length  # no padding
        assert sorted(v.label_positions) == sorted(batch.label_positions[v.prompt_index])
        assert v.words == ("foo", "bar")
        assert set(v.promoted) == {"foo", "bar"} and all(len(t) == 3 for t in v.promoted.values())
        assert sum(v.attention) == pytest.approx(1.0, abs=1e-4)  # a full attention row over the prompt


def test_view_numbers_match_a_hand_computation(info, prompts, views):
    """Attention and importance against a separate traced pass; M_p summed over positions is the
    whole head's effect on the label log-odds (the frozen norm is linear), computed independently."""
    views, _ = views
    batch = icl_utils.encode_prompts(info, prompts[:3])
    trace = icl_utils.run_with_trace(info, batch,
                                     record=("resid", "head_out", "attn_out", "attn"))
    ids = icl_utils.label_token_ids(info.tokenizer, ["foo", "bar"])
    final = trace.resid[info.n_layers][:, 0]
    for v in views:
        i, l, h = v.prompt_index, v.layer, v.head
        torch.testing.assert_close(torch.tensor(v.attention), trace.attn[l][i, h, 0, : len(v.tokens)].float(),
                                   atol=1e-6, rtol=1e-5)
        write = head_contributions(info, trace, l)[i : i + 1, 0, h]  # (1, d): the head's write at the last position
        gold_id = torch.tensor([ids[v.gold]])
        expected = log_prob_increase(info, trace.resid[l][i : i + 1, 0], write[:, None], final[i : i + 1], gold_id)
        assert v.importance == pytest.approx(expected.item(), abs=1e-4)
        whole = label_log_odds(info, write[0], ids, frozen_at=final[i])
        if getattr(info.model.config, "final_logit_softcapping", None) is None and getattr(info.final_norm, "bias", None) is None:
            assert sum(v.m_weighted) == pytest.approx(whole.item(), abs=1e-3)  # additive only without softcap and norm bias


def test_html_shows_every_token_and_the_label_table(views):
    views, _ = views
    v = views[0]
    page = explorer.view_html(v)
    for token in v.tokens:
        assert html.escape(token.replace("\n", "\u23ce")) in page
    assert page.count("border-bottom:3px") == len(v.label_positions)
    assert page.count("<tr>") == 1 + len(v.label_positions)
    assert f"{v.importance:+.3f}" in page and "<script" not in page


def test_explorer_is_nested_tabs_with_one_view_each(views):
    views, heads = views
    widget = explorer.explorer(views, head_names={heads[0]: "top"})
    assert len(widget.children) == 3
    assert all(len(tab.children) == len(heads) for tab in widget.children)
    assert widget.get_title(1).startswith("prompt 2 (gold ")
    assert widget.children[0].get_title(0) == f"{heads[0][0]}.{heads[0][1]} top"
    assert widget.children[2].children[1].value == explorer.view_html(views[2 * len(heads) + 1])


def test_static_figure_and_bad_input(views, info):
    views, heads = views
    fig = explorer.plot_views(views, prompt_index=1)
    assert len(fig.axes) >= 2
    with pytest.raises(ValueError, match="no views for prompt_index=7"):
        explorer.plot_views(views, prompt_index=7)
    with pytest.raises(ValueError, match="at least one prompt"):
        explorer.head_views(info, [], heads)
