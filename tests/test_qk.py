"""Query-key scores, rotary undoing and query replacement (icl_utils.qk) on tiny models."""
import pytest
import torch

import icl_utils as iu
from icl_utils import qk


@pytest.fixture
def trace(info, batch):
    return iu.run_with_trace(info, batch, record=("attn", "qkv"))


def test_scores_reproduce_the_recorded_attention(info, batch, trace):
    last = batch.last_positions
    for layer in range(info.n_layers):
        scores = qk.qk_scores(info, trace, layer)  # (batch, heads, seq)
        seq = scores.shape[-1]
        causal = torch.arange(seq)[None, :] <= last[:, None]  # right padding: keys after the last token are padding
        weights = torch.softmax(scores.masked_fill(~causal[:, None], float("-inf")), -1)
        if layer == 0 and bundle_has_window(info):
            continue  # the sliding window of the tiny Gemma hides early keys in its first layer
        torch.testing.assert_close(weights, trace.attn[layer][:, :, 0].float(), atol=1e-5, rtol=1e-4)


def bundle_has_window(info):
    return getattr(info.model.config, "sliding_window", None) is not None and "sliding_attention" in (
        getattr(info.model.config, "layer_types", None) or [])


def test_unrotate_inverts_the_models_rotation_and_leaves_scores_position_free(info, batch):
    with qk.capture_rotary(info) as rotary:
        trace = iu.run_with_trace(info, batch, record=("qkv",))
    if not rotary:
        assert info.positions != "rotary"
        return
    layer = info.n_layers - 1
    cos, sin = rotary[layer]
    k = trace.k[layer]  # (batch, heads, seq, d)
    k_plain = qk.unrotate(k, cos[:, None], sin[:, None])
    assert torch.allclose(k_plain.norm(dim=-1), k.float().norm(dim=-1), atol=1e-4)  # a rotation keeps norms
    # rotating back with the same cos/sin gives the recorded keys
    rotated = k_plain * cos[:, None] + qk._rotate_half(k_plain) * sin[:, None]
    torch.testing.assert_close(rotated, k.float(), atol=1e-5, rtol=1e-5)
    # the same key vector at two positions has different rotated, equal unrotated forms
    assert not torch.allclose(cos[0, 1], cos[0, 5])


def test_rotary_is_captured_for_rotary_models_only(info, batch):
    with qk.capture_rotary(info) as rotary:
        iu.run_with_trace(info, batch, record=("attn",))
    assert bool(rotary) == (info.positions == "rotary")
    assert all(len(h._forward_pre_hooks) == 0 for h in info.attentions)


def test_replacing_a_query_with_its_own_changes_nothing_and_another_changes_that_head(info, batch, trace):
    layer, head = info.n_layers - 1, 1
    last = batch.last_positions
    own = {(layer, head): trace.q[layer][:, head, 0]}
    with qk.replace_query(info, own, last):
        same = iu.run_with_trace(info, batch.input_ids, batch.attention_mask, last, record=("attn",))
    torch.testing.assert_close(same.attn[layer], trace.attn[layer], atol=1e-5, rtol=1e-4)
    other = {(layer, head): trace.q[layer][:, head, 0].roll(1, dims=0) * 3}
    with qk.replace_query(info, other, last):
        swapped = iu.run_with_trace(info, batch.input_ids, batch.attention_mask, last, record=("attn",))
    changed = (swapped.attn[layer] - trace.attn[layer]).abs().amax(dim=(0, 2, 3))
    assert changed[head] > 1e-3
    assert torch.all(changed[torch.arange(info.n_heads) != head] < 1e-6)
    rows = swapped.attn[layer][:, head, 0].sum(-1)
    torch.testing.assert_close(rows, torch.ones_like(rows), atol=1e-5, rtol=1e-5)


def test_rotary_captured_over_a_shared_prefix_covers_the_whole_sequence(info, task):
    group = iu.build_prompt_groups(task, 1, 4, demos_per_class=2, seed=0)[0]
    batch = iu.encode_prompts(info, group)
    with qk.capture_rotary(info) as full:
        iu.run_with_trace(info, batch, record=("qkv",))
    with qk.capture_rotary(info) as shared:
        iu.run_with_trace(info, batch, record=("qkv",), share_prefix=True)
    assert set(full) == set(shared)
    for layer, (cos, sin) in full.items():
        got_cos, got_sin = shared[layer]
        assert got_cos.shape[-2] == cos.shape[-2]
        torch.testing.assert_close(got_cos.expand_as(cos.expand(got_cos.shape[0], -1, -1)), cos.expand(got_cos.shape[0], -1, -1))
        torch.testing.assert_close(got_sin[0], sin[0])


def test_replaced_queries_over_shared_demonstrations_equal_whole_passes(info, task):
    """last_hidden_with_queries runs each set's demonstrations once and replays only the queries with
    the edit on: the same final states as whole prompts under replace_query; prompts of two sets in
    mixed order, and a lone prompt (nothing shared with another) among them."""
    from icl_utils.evaluation import last_position_hidden

    groups = iu.build_prompt_groups(task, 2, 3, demos_per_class=2, seed=1, distinct_queries=True)
    prompts = [groups[0][0], groups[1][0], groups[0][1], groups[1][1], groups[0][2], groups[1][2]]
    prompts.append(iu.build_prompts(task, 1, demos_per_class=1, seed=5)[0])
    batch = iu.encode_prompts(info, prompts)
    trace = iu.run_with_trace(info, batch, record=("qkv",))
    layer = info.n_layers - 1
    queries = {(layer, 1): trace.q[layer][:, 1, 0].roll(1, dims=0) * 3, (0, 2): trace.q[0][:, 2, 0].flip(0)}
    with qk.replace_query(info, queries, batch.last_positions):
        expected = last_position_hidden(info, batch).float()
    got = qk.last_hidden_with_queries(info, prompts, queries, batch_size=2)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(got, last_position_hidden(info, batch).float(), atol=1e-3)  # the edit did act
