"""Vocabulary projections of single vectors (icl_utils.vocab) on tiny models."""
import torch

import icl_utils
from icl_utils import vocab


def test_label_log_odds_equals_the_full_softmax_difference(info):
    vectors = 3 * torch.randn(5, 2, info.d_model)
    logp = torch.log_softmax(vocab.project(info, vectors), -1)
    expected = logp[..., 4] - logp[..., 9]
    torch.testing.assert_close(vocab.label_log_odds(info, vectors, [4, 9]), expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(vocab.label_log_odds(info, vectors, [9, 4]), -expected, atol=1e-4, rtol=1e-4)


def test_top_tokens_are_the_largest_logits(info):
    v = torch.randn(info.d_model)
    ids = vocab.project(info, v[None])[0].topk(3).indices.tolist()
    assert vocab.top_tokens(info, v, k=3) == [info.tokenizer.decode([i]) for i in ids]


def test_an_unembedding_row_promotes_its_own_token(info):
    word = 7
    row = info.unembed.weight.detach()[word]
    assert vocab.label_log_odds(info, 5 * row, [word, 8]) > 0


def test_frozen_log_odds_scale_with_the_vector_and_real_ones_do_not(info, trace_final):
    v = torch.randn(3, info.d_model)
    at = trace_final[:1]
    frozen = vocab.label_log_odds(info, v, [4, 9], frozen_at=at)
    halved = vocab.label_log_odds(info, 0.5 * v, [4, 9], frozen_at=at)
    if getattr(info.model.config, "final_logit_softcapping", None) is None and getattr(info.final_norm, "bias", None) is None:
        torch.testing.assert_close(halved, 0.5 * frozen, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(halved, frozen)
    real = vocab.label_log_odds(info, v, [4, 9])
    torch.testing.assert_close(vocab.label_log_odds(info, 0.5 * v, [4, 9]), real, atol=1e-3, rtol=1e-3)


def test_frozen_log_odds_at_the_final_residual_read_the_models_own_logits(info, trace_final):
    """At x = the real final residual, the frozen norm is the real one: the model's own log-odds."""
    logits = info.logits_from_residual(trace_final).float()
    expected = logits[:, 4] - logits[:, 9]
    got = vocab.label_log_odds(info, trace_final, [4, 9], frozen_at=trace_final)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_value_output_log_odds_sum_over_positions_to_each_heads_direct_log_odds(info, batch):
    """M_p is linear in vo_p, so summed over source positions it is the head's whole write at the last
    position read the same way; weighted=False drops alpha (padding positions have alpha = 0)."""
    from icl_utils.attribution import head_contributions

    trace = icl_utils.run_with_trace(info, batch, record=("resid", "attn", "qkv", "attn_out", "head_out"))
    m = vocab.value_output_log_odds(info, trace, [4, 9])
    assert m.shape == (len(batch.input_ids), info.n_layers, info.n_heads, batch.input_ids.shape[1])
    final = trace.final_resid[:, 0]
    for layer in (0, info.n_layers - 1):
        whole = head_contributions(info, trace, layer)[:, 0]  # (batch, heads, d_model) at the last position
        bias = vocab.label_log_odds(info, torch.zeros_like(whole), [4, 9], frozen_at=final[:, None])
        expected = vocab.label_log_odds(info, whole, [4, 9], frozen_at=final[:, None]) - bias
        got = m[:, layer].sum(-1) - bias * m.shape[-1]  # a final-norm bias is added once per term
        if getattr(info.model.config, "final_logit_softcapping", None) is None:
            torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-3)
    unweighted = vocab.value_output_log_odds(info, trace, [4, 9], layers=[0], weighted=False)
    assert not torch.allclose(unweighted[:, 0], m[:, 0])


def test_value_output_log_odds_at_fixed_scales_depend_on_the_vector_alone(info, batch):
    """With both norms frozen at one reference, a prompt's M_p no longer depends on its own final or
    attention-output scale: scaling those references by c scales M by 1/c (RMS norms)."""
    trace = icl_utils.run_with_trace(info, batch, record=("resid", "attn", "qkv", "attn_out"))
    ref = trace.final_resid[:, 0].mean(0)
    refs = {layer: x[:, 0].mean(0) for layer, x in trace.attn_out.items()}
    fixed = vocab.value_output_log_odds(info, trace, [4, 9], weighted=False, frozen_at=ref, attn_out_at=refs)
    own = vocab.value_output_log_odds(info, trace, [4, 9], weighted=False)
    assert not torch.allclose(fixed, own)
    if getattr(info.final_norm, "bias", None) is None and getattr(info.model.config, "final_logit_softcapping", None) is None:
        doubled = vocab.value_output_log_odds(info, trace, [4, 9], weighted=False, frozen_at=2 * ref, attn_out_at=refs)
        torch.testing.assert_close(doubled, fixed / 2, atol=1e-4, rtol=1e-3)


def test_value_output_log_odds_equal_reading_the_materialised_vectors(info, batch):
    """The read-out carried back to the value vectors gives what reading each vo_p through
    label_log_odds gives (its definition), weighted or not, at each prompt's own scales or fixed ones."""
    from icl_utils.attribution import head_position_contributions

    trace = icl_utils.run_with_trace(info, batch, record=("resid", "attn", "qkv", "attn_out"))
    final = trace.final_resid[:, 0]
    ref = final.mean(0)
    refs = {layer: x[:, 0].mean(0) for layer, x in trace.attn_out.items()}
    for weighted in (True, False):
        for frozen_at, attn_out_at in ((None, None), (ref, refs)):
            got = vocab.value_output_log_odds(info, trace, [4, 9], layers=[0, info.n_layers - 1], weighted=weighted,
                                              frozen_at=frozen_at, attn_out_at=attn_out_at)
            for j, layer in enumerate((0, info.n_layers - 1)):
                vo = head_position_contributions(info, trace, layer, weighted=weighted,
                                                 attn_out_at=None if attn_out_at is None else attn_out_at[layer])
                at = final[:, None, None] if frozen_at is None else frozen_at
                expected = vocab.label_log_odds(info, vo, [4, 9], frozen_at=at)
                torch.testing.assert_close(got[:, j], expected, atol=1e-4, rtol=1e-4)
