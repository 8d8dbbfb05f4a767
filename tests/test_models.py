"""describe_model finds the parts of GPT-2, Llama-style and Gemma3-style models from their modules."""
from __future__ import annotations

import copy

import pytest
import torch

import icl_utils

from conftest import MAX_POSITIONS

EXPECTED = {
    #          n_heads, n_kv_heads, d_head, positions
    "gpt2": (4, 4, 8, "learned"),
    "llama": (4, 2, 8, "rotary"),
    "gemma3": (4, 1, 16, "rotary"),
}


def _parts(arch, model):
    """(decoder, layers, final norm, attention of layer l, out projection of layer l) by hand."""
    if arch == "gpt2":
        t = model.transformer
        return t, t.h, t.ln_f, [b.attn for b in t.h], [b.attn.c_proj for b in t.h]
    m = model.model
    return m, m.layers, m.norm, [l.self_attn for l in m.layers], [l.self_attn.o_proj for l in m.layers]


@pytest.mark.parametrize("arch", list(EXPECTED))
def test_describe_model(bundles, vocab_size, arch):
    info = bundles[arch].info
    n_heads, n_kv, d_head, positions = EXPECTED[arch]
    assert (info.n_layers, info.n_heads, info.n_kv_heads, info.d_head) == (2, n_heads, n_kv, d_head)
    assert info.d_model == 32
    assert info.positions == positions
    assert info.vocab_size == vocab_size
    assert info.max_positions == MAX_POSITIONS
    assert info.n_total_heads == 2 * n_heads
    assert info.name == f"tiny-{arch}"
    assert info.device == torch.device("cpu")
    decoder, layers, norm, attentions, out_projs = _parts(arch, info.model)
    assert info.decoder is decoder
    assert info.layers is layers
    assert info.final_norm is norm
    assert info.unembed is info.model.lm_head
    assert all(a is b for a, b in zip(info.attentions, attentions)) and len(info.attentions) == 2
    assert all(a is b for a, b in zip(info.out_projs, out_projs)) and len(info.out_projs) == 2
    for layer in range(info.n_layers):
        w_o = info.out_proj_weight(layer)
        assert w_o.shape == (info.d_model, n_heads * d_head)
        # W_O maps concatenated head outputs to d_model: same as calling the projection
        x = torch.randn(3, n_heads * d_head)
        bias = info.out_projs[layer].bias
        expected = x @ w_o.T + (0 if bias is None else bias)
        torch.testing.assert_close(info.out_projs[layer](x), expected, atol=1e-5, rtol=0)
        assert info.head_out_weight(layer, 1).shape == (info.d_model, d_head)
        torch.testing.assert_close(info.head_out_weight(layer, 1), w_o[:, d_head : 2 * d_head])


def test_gemma_logit_softcapping_is_applied(bundles):
    info = bundles["gemma3"].info
    assert info.model.config.final_logit_softcapping == 30.0
    hidden = 50 * torch.randn(2, info.d_model)
    with torch.no_grad():
        capped = info.logits_from_final_hidden(hidden)
        raw = info.unembed(hidden)
    assert raw.abs().max() > 30
    torch.testing.assert_close(capped, 30.0 * torch.tanh(raw / 30.0))


def test_describe_model_sets_a_missing_pad_token(bundles, tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.pad_token = None
    assert tok.pad_token is None
    info = icl_utils.describe_model(bundles["gpt2"].ref, tok, "no-pad")
    assert info.tokenizer.pad_token == tok.eos_token == "<eos>"
    assert info.tokenizer.pad_token_id == tok.eos_token_id
