"""run_with_trace and head_writes against the models' own computations, on three architectures."""
from __future__ import annotations

import pytest
import torch

import icl_utils
from icl_utils.tracing import head_writes, run_with_trace

from conftest import SLIDING_WINDOW, all_positions, set_attention


def _rows(n):
    return torch.arange(n)[:, None]


# 1. per-head outputs --------------------------------------------------------------------------


def test_head_writes_sum_to_attention_output(info, batch):
    trace = run_with_trace(info, batch.input_ids, batch.attention_mask, all_positions(batch))
    assert sorted(trace.attn_out) == list(range(info.n_layers))
    for layer in range(info.n_layers):
        writes = head_writes(info, trace, layer)
        n, seq = batch.input_ids.shape
        assert writes.shape == (n, seq, info.n_heads, info.d_model)
        bias = info.out_projs[layer].bias
        total = writes.sum(dim=2) + (0 if bias is None else bias.detach())
        torch.testing.assert_close(total, trace.attn_out[layer], atol=1e-5, rtol=0)
        # heads really differ (the decomposition is not trivially one head's output)
        assert not torch.allclose(writes[:, :, 0], writes[:, :, 1], atol=1e-3)


def test_head_writes_use_each_heads_slice_of_w_o(info, batch):
    trace = run_with_trace(info, batch)
    layer, head = info.n_layers - 1, 1
    writes = head_writes(info, trace, layer)
    w_oh = info.head_out_weight(layer, head)
    assert w_oh.shape == (info.d_model, info.d_head)
    expected = trace.head_out[layer][:, :, head] @ w_oh.T.detach()
    torch.testing.assert_close(writes[:, :, head], expected, atol=1e-5, rtol=0)


def test_head_out_is_attention_times_values(info, batch):
    """head_out[l][b, p, h] = attn[l][b, h, p, :] @ v[l][b, h]: ties attn, v and head_out together."""
    trace = run_with_trace(info, batch.input_ids, batch.attention_mask, all_positions(batch))
    for layer in range(info.n_layers):
        attn, v = trace.attn[layer], trace.v[layer]
        n, seq = batch.input_ids.shape
        assert attn.shape == (n, info.n_heads, seq, seq)
        assert v.shape == (n, info.n_heads, seq, info.d_head)
        expected = (attn @ v).permute(0, 2, 1, 3)
        torch.testing.assert_close(trace.head_out[layer], expected, atol=1e-5, rtol=0)


def test_trace_records_only_requested_positions(info, batch):
    positions = torch.stack([batch.last_positions, batch.last_positions - 2], dim=1)
    full = run_with_trace(info, batch.input_ids, batch.attention_mask, all_positions(batch))
    part = run_with_trace(info, batch.input_ids, batch.attention_mask, positions, layers=[1])
    assert sorted(part.attn) == [1] and sorted(part.head_out) == [1]
    rows = _rows(len(positions))
    torch.testing.assert_close(part.attn[1], full.attn[1].permute(0, 2, 1, 3)[rows, positions].permute(0, 2, 1, 3))
    torch.testing.assert_close(part.q[1], full.q[1].permute(0, 2, 1, 3)[rows, positions].permute(0, 2, 1, 3))
    torch.testing.assert_close(part.k[1], full.k[1])
    torch.testing.assert_close(part.resid[1], full.resid[1][rows, positions])
    torch.testing.assert_close(part.logits, full.logits[rows, positions])


# 2. recorded attention == the model's own eager attention ---------------------------------------


def test_recorded_attention_matches_eager_output_attentions(bundle, batch):
    info = bundle.info
    positions = all_positions(batch)
    trace = run_with_trace(info, batch.input_ids, batch.attention_mask, positions)
    with torch.no_grad():
        out = bundle.eager()(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_attentions=True, use_cache=False
        )
    assert len(out.attentions) == info.n_layers
    lengths = batch.attention_mask.sum(1)
    for layer in range(info.n_layers):
        ref = out.attentions[layer]
        assert ref.shape == trace.attn[layer].shape
        # compare at the real positions (pad queries are never read)
        for b, length in enumerate(lengths.tolist()):
            torch.testing.assert_close(
                trace.attn[layer][b, :, :length, :length], ref[b, :, :length, :length], atol=1e-5, rtol=0
            )
            # padding keys get no attention from real queries
            assert trace.attn[layer][b, :, :length, length:].abs().sum() == 0
    # and at the last positions only (the way the chapters record)
    last = run_with_trace(info, batch)
    rows = _rows(len(batch.last_positions))
    for layer in range(info.n_layers):
        ref = out.attentions[layer].permute(0, 2, 1, 3)[rows, batch.last_positions[:, None]].permute(0, 2, 1, 3)
        torch.testing.assert_close(last.attn[layer], ref, atol=1e-5, rtol=0)


# 3. softmax(q k^T * scaling + masks) reproduces the recorded attention --------------------------


def _mask(batch, positions, sliding_window=None):
    """allowed[b, p, j]: key j visible from query position positions[b, p]."""
    seq = batch.input_ids.shape[1]
    j = torch.arange(seq)
    pos = positions[:, :, None]
    allowed = (j[None, None] <= pos) & batch.attention_mask.bool()[:, None, :]
    if sliding_window is not None:
        allowed &= j[None, None] > pos - sliding_window
    return allowed


def test_attention_from_recorded_q_k(info, batch):
    positions = all_positions(batch)
    trace = run_with_trace(info, batch.input_ids, batch.attention_mask, positions)
    lengths = batch.attention_mask.sum(1)
    n_rep = info.n_heads // info.n_kv_heads
    for layer in range(info.n_layers):
        module = info.attentions[layer]
        scaling = getattr(module, "scaling", info.d_head**-0.5)
        window = getattr(module, "sliding_window", None)
        q, k = trace.q[layer], trace.k[layer]
        scores = (q @ k.transpose(-1, -2)) * scaling
        allowed = _mask(batch, positions, window)[:, None]
        expected = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
        for b, length in enumerate(lengths.tolist()):
            torch.testing.assert_close(
                trace.attn[layer][b, :, :length], expected[b, :, :length], atol=1e-5, rtol=0
            )
        # grouped-query: query heads that share a key/value head see identical keys and values
        for h in range(info.n_heads):
            torch.testing.assert_close(k[:, h], k[:, (h // n_rep) * n_rep])
            torch.testing.assert_close(trace.v[layer][:, h], trace.v[layer][:, (h // n_rep) * n_rep])
        if info.n_kv_heads > 1:  # distinct key/value heads do differ
            assert not torch.allclose(k[:, 0], k[:, n_rep])


def test_gemma_sliding_layer_attends_within_window_only(bundles, prompts):
    info = bundles["gemma3"].info
    batch = icl_utils.encode_prompts(info, prompts)
    positions = all_positions(batch)
    trace = run_with_trace(info, batch.input_ids, batch.attention_mask, positions)
    sliding = [l for l in range(info.n_layers) if info.attentions[l].sliding_window is not None]
    full = [l for l in range(info.n_layers) if info.attentions[l].sliding_window is None]
    assert sliding and full
    outside = ~_mask(batch, positions, SLIDING_WINDOW)[:, None] & _mask(batch, positions)[:, None]
    assert outside.any()
    lengths = batch.attention_mask.sum(1)
    real = (torch.arange(positions.shape[1])[None] < lengths[:, None])[:, None, :, None]
    for layer in sliding:
        assert trace.attn[layer].masked_select(outside & real).abs().max() == 0
    for layer in full:  # a full layer does look further back
        assert trace.attn[layer].masked_select(outside & real).min() > 0


# 4. logits -------------------------------------------------------------------------------------


def test_trace_logits_match_plain_and_sdpa_models(bundle, batch):
    info = bundle.info
    positions = all_positions(batch)
    trace = run_with_trace(info, batch.input_ids, batch.attention_mask, positions)
    with torch.no_grad():
        plain = info.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        sdpa = bundle.ref(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert bundle.ref.config._attn_implementation == "sdpa"
    assert trace.logits.shape == plain.shape == (*batch.input_ids.shape, info.vocab_size)
    mask = batch.attention_mask.bool()
    torch.testing.assert_close(trace.logits[mask], plain[mask], atol=5e-5, rtol=0)
    torch.testing.assert_close(trace.logits[mask], sdpa[mask], atol=1e-4, rtol=0)
    assert trace.logits.std() > 0.1  # not a degenerate model


def test_recording_attention_equals_sdpa_after_switching_back(bundle, batch):
    """Same model object: switching its attention implementation back to sdpa changes nothing."""
    info = bundle.info
    with torch.no_grad():
        ours = info.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        try:
            set_attention(info.model, "sdpa")
            sdpa = info.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        finally:
            set_attention(info.model, icl_utils.tracing.ATTENTION_NAME)
    mask = batch.attention_mask.bool()
    torch.testing.assert_close(ours[mask], sdpa[mask], atol=1e-4, rtol=0)


def test_padded_batch_equals_each_prompt_alone(info, prompts, batch):
    batched = run_with_trace(info, batch, record=("logits",))
    assert batched.logits.shape == (len(prompts), 1, info.vocab_size)
    for i, prompt in enumerate(prompts):
        alone = icl_utils.encode_prompts(info, [prompt])
        assert alone.input_ids.shape[1] == batch.last_positions[i] + 1
        single = run_with_trace(info, alone, record=("logits",))
        torch.testing.assert_close(batched.logits[i], single.logits[0], atol=1e-4, rtol=0)


def test_final_residual_through_norm_and_unembedding_gives_logits(info, batch):
    trace = run_with_trace(info, batch)
    assert sorted(trace.resid) == list(range(info.n_layers + 1))
    logits = info.logits_from_residual(trace.resid[info.n_layers]).detach()
    torch.testing.assert_close(logits, trace.logits, atol=1e-4, rtol=0)
    # the residual entering layer 0 is the embedding, not the output
    assert not torch.allclose(info.logits_from_residual(trace.resid[0]).detach(), trace.logits, atol=1e-2)


def test_run_with_trace_refuses_model_without_recording_attention(bundles, tokenizer, prompts):
    info = icl_utils.describe_model(bundles["llama"].ref, tokenizer, "sdpa-llama")
    batch = icl_utils.encode_prompts(info, prompts[:2])
    with pytest.raises(RuntimeError, match="use_recording_attention"):
        run_with_trace(info, batch)


def test_a_trace_over_a_shared_prefix_equals_the_full_trace(info, task):
    """Prompts that share their demonstrations: the shared tokens run once, the queries are replayed
    with the hooks on, and every recording (attention rows, keys and values at every position,
    residual streams, attention outputs, logits) is the one of the full pass."""
    group = icl_utils.build_prompt_groups(task, 1, 4, demos_per_class=2, seed=0)[0]
    batch = icl_utils.encode_prompts(info, group)
    record = ("resid", "attn_out", "head_out", "attn", "qkv", "logits")
    full = icl_utils.run_with_trace(info, batch, record=record)
    shared = icl_utils.run_with_trace(info, batch, record=record, share_prefix=True)
    torch.testing.assert_close(shared.positions, full.positions)
    for name in ("resid", "attn_out", "head_out", "attn", "q", "k", "v"):
        for layer, value in getattr(full, name).items():
            got = getattr(shared, name)[layer]
            if name == "attn":  # a replay sees the same keys; compare the real (unpadded) part of each row
                for row, length in enumerate(batch.attention_mask.sum(1).tolist()):
                    torch.testing.assert_close(got[row, ..., :length], value[row, ..., :length], atol=1e-5, rtol=1e-4)
            elif name in ("k", "v"):
                for row, length in enumerate(batch.attention_mask.sum(1).tolist()):
                    torch.testing.assert_close(got[row, :, :length], value[row, :, :length], atol=1e-5, rtol=1e-4)
            else:
                torch.testing.assert_close(got, value, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(shared.logits, full.logits, atol=1e-4, rtol=1e-4)
