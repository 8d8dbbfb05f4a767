"""Every model family the book names, as a tiny random-weight model built in-process: recorded
attention equals the model's own eager attention, per-head writes sum to the attention output, an
ablation equals a hand-zeroed output projection, an attention edit reaches the output, and neuron
ablation equals hand-zeroed MLP columns. Plus the families icl_utils must refuse, loudly.

GPT-J computes attention outside transformers' attention interface (icl_utils hooks it); OPT runs
its MLP on flattened tokens (icl_utils reshapes around it); GPT-Neo is a family it cannot observe.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import icl_utils
from icl_utils.tracing import ablate_heads, ablate_neurons, edit_attention, head_writes, run_with_trace, use_recording_attention

from conftest import MAX_POSITIONS, SLIDING_WINDOW, _config, all_positions, make_task, set_attention

TINY = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=MAX_POSITIONS, pad_token_id=0, bos_token_id=1, eos_token_id=1)


def _family_config(family: str, vocab_size: int):
    import transformers as tf

    if family in ("gpt2", "llama", "gemma3"):
        return _config(family, vocab_size)
    if family == "gpt_neox":  # Pythia: partial rotary, parallel attention and MLP
        return tf.GPTNeoXConfig(**TINY, vocab_size=vocab_size, rotary_pct=0.5, use_parallel_residual=True,
                                attention_dropout=0.0, hidden_dropout=0.0)
    if family == "gptj":  # the papers' model: partial "rotate every two" rotary, parallel attention and MLP
        return tf.GPTJConfig(n_layer=2, n_embd=32, n_head=4, n_inner=64, rotary_dim=4, n_positions=MAX_POSITIONS,
                             vocab_size=vocab_size, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                             pad_token_id=0, bos_token_id=1, eos_token_id=1)
    if family == "qwen2":  # biases on q, k, v
        return tf.Qwen2Config(**TINY, vocab_size=vocab_size, num_key_value_heads=2)
    if family == "mistral":  # grouped-query attention over a sliding window
        return tf.MistralConfig(**TINY, vocab_size=vocab_size, num_key_value_heads=2, sliding_window=SLIDING_WINDOW)
    if family == "phi3":  # fused qkv_proj and gate_up_proj
        return tf.Phi3Config(**TINY, vocab_size=vocab_size, num_key_value_heads=2,
                             original_max_position_embeddings=MAX_POSITIONS)
    if family == "opt":  # learned positions (offset 2), fc1/fc2 on the layer, MLP on flattened tokens
        return tf.OPTConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, ffn_dim=64,
                            word_embed_proj_dim=32, max_position_embeddings=MAX_POSITIONS, vocab_size=vocab_size,
                            dropout=0.0, attention_dropout=0.0, pad_token_id=0, bos_token_id=1, eos_token_id=1)
    if family == "gpt_neo":  # its attention bypasses the attention interface and is not GPT-J's
        return tf.GPTNeoConfig(num_layers=2, hidden_size=32, num_heads=4, intermediate_size=64,
                               attention_types=[[["global", "local"], 1]], window_size=SLIDING_WINDOW,
                               max_position_embeddings=MAX_POSITIONS, vocab_size=vocab_size, embed_dropout=0.0,
                               attention_dropout=0.0, resid_dropout=0.0, pad_token_id=0, bos_token_id=1, eos_token_id=1)
    raise ValueError(family)


FAMILIES = ["gpt2", "llama", "gemma3", "gpt_neox", "gptj", "qwen2", "mistral", "phi3", "opt"]


def build_family(family: str, vocab_size: int, seed: int = 0, **overrides):
    """A tiny eager model of `family`, every parameter perturbed with seeded noise (as in conftest)."""
    from transformers import AutoModelForCausalLM

    config = _family_config(family, vocab_size)
    for key, value in overrides.items():
        setattr(config, key, value)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return model.eval()


class Family:
    """`eager`: the model as transformers runs it; `info`: an identical copy recording through icl_utils."""

    def __init__(self, family, tokenizer, vocab_size):
        self.eager = build_family(family, vocab_size)
        model = copy.deepcopy(self.eager)
        use_recording_attention(model)
        self.info = icl_utils.describe_model(model, tokenizer, f"tiny-{family}")


@pytest.fixture(scope="module")
def families(tokenizer, vocab_size):
    return {}


@pytest.fixture(params=FAMILIES)
def family(request, families, tokenizer, vocab_size):
    if request.param not in families:
        families[request.param] = Family(request.param, tokenizer, vocab_size)
    return families[request.param]


@pytest.fixture(scope="module")
def prompts():
    return icl_utils.build_prompts(make_task(), 6, demos_per_class=2, seed=0)


@pytest.fixture
def batch(family, prompts):
    enc = icl_utils.encode_prompts(family.info, prompts)
    lengths = enc.attention_mask.sum(1)
    assert lengths.min() < lengths.max() and lengths.min() > SLIDING_WINDOW  # padded, longer than the window
    return enc


def _logits(model, batch, **kwargs):
    with torch.no_grad():
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False, **kwargs)


def _same_module(info, model, module):
    """The module of `model` (a copy of info.model) that sits where `module` sits in info.model."""
    names = {id(m): n for n, m in info.model.named_modules()}
    return model.get_submodule(names[id(module)])


def _zero_inputs_by_hand(proj, columns):
    with torch.no_grad():
        if isinstance(proj, nn.Linear):  # weight (out, in): columns read the inputs
            proj.weight[:, columns] = 0
        else:  # GPT-2 Conv1D: weight (in, out)
            proj.weight[columns, :] = 0


# ----------------------------------------------------------------------------------------------
# Parity with the model's own computation


def test_recorded_attention_equals_eager_attention(family, batch):
    info = family.info
    trace = run_with_trace(info, batch.input_ids, batch.attention_mask, all_positions(batch))
    out = _logits(family.eager, batch, output_attentions=True)
    assert len(out.attentions) == info.n_layers == len(trace.attn)
    for layer in range(info.n_layers):
        for row, length in enumerate(batch.attention_mask.sum(1).tolist()):  # real query positions
            torch.testing.assert_close(trace.attn[layer][row, :, :length, :length],
                                       out.attentions[layer][row, :, :length, :length], atol=1e-5, rtol=0)
            assert trace.attn[layer][row, :, :length, length:].abs().sum() == 0  # no weight on padding
    # recording changes nothing: the recorded logits are the eager model's
    mask = batch.attention_mask.bool()
    torch.testing.assert_close(trace.logits[mask], out.logits[mask], atol=1e-4, rtol=1e-4)


def test_head_outputs_are_attention_times_values_and_writes_sum_to_attention_output(family, batch):
    info = family.info
    trace = run_with_trace(info, batch.input_ids, batch.attention_mask, all_positions(batch))
    for layer in range(info.n_layers):
        torch.testing.assert_close(trace.head_out[layer], (trace.attn[layer] @ trace.v[layer]).permute(0, 2, 1, 3),
                                   atol=1e-5, rtol=0)
        writes = head_writes(info, trace, layer)
        bias = info.out_projs[layer].bias
        total = writes.sum(dim=2) + (0 if bias is None else bias.detach())
        torch.testing.assert_close(total, trace.attn_out[layer], atol=1e-5, rtol=0)
        assert not torch.allclose(writes[:, :, 0], writes[:, :, 1], atol=1e-3)  # heads differ


@pytest.mark.parametrize("layer,head", [(0, 2), (1, 1)])
def test_head_ablation_equals_a_hand_zeroed_output_projection(family, batch, layer, head):
    info = family.info
    with ablate_heads(info, [(layer, head)]):
        ablated = _logits(info.model, batch).logits
    by_hand = copy.deepcopy(family.eager)
    _zero_inputs_by_hand(_same_module(info, by_hand, info.out_projs[layer]),
                         slice(head * info.d_head, (head + 1) * info.d_head))
    expected = _logits(by_hand, batch).logits
    mask = batch.attention_mask.bool()
    torch.testing.assert_close(ablated[mask], expected[mask], atol=1e-4, rtol=1e-4)
    assert (ablated[mask] - _logits(family.eager, batch).logits[mask]).abs().max() > 1e-3  # the head mattered


def test_neuron_ablation_equals_hand_zeroed_mlp_columns_and_mlp_recordings_have_token_shape(family, batch):
    info = family.info
    n, seq = batch.input_ids.shape
    trace = run_with_trace(info, batch, record=("mlp_in", "mlp_act", "mlp_out", "resid"))
    assert trace.mlp_act[0].shape == (n, 1, info.d_ff) and trace.mlp_out[1].shape == (n, 1, info.d_model)
    neurons = [1, 5, info.d_ff - 1]
    with ablate_neurons(info, {1: neurons}):
        ablated = _logits(info.model, batch).logits
    by_hand = copy.deepcopy(family.eager)
    _zero_inputs_by_hand(_same_module(info, by_hand, info.mlp_out_projs[1]), neurons)
    mask = batch.attention_mask.bool()
    torch.testing.assert_close(ablated[mask], _logits(by_hand, batch).logits[mask], atol=1e-4, rtol=1e-4)


def test_an_attention_edit_reaches_the_heads_output(family, batch):
    """Every chosen head attends only to the first token: its output becomes that token's value."""
    info = family.info
    positions = all_positions(batch)

    def to_first_token(layer, weights, query, key):
        new = torch.zeros_like(weights)
        new[..., 0] = 1.0
        return new

    with edit_attention(info, to_first_token, heads=[(1, 2)]):
        trace = run_with_trace(info, batch.input_ids, batch.attention_mask, positions)
    clean = run_with_trace(info, batch.input_ids, batch.attention_mask, positions)
    first_value = trace.v[1][:, 2, 0]  # (batch, d_head)
    torch.testing.assert_close(trace.head_out[1][:, :, 2], first_value[:, None].expand(-1, positions.shape[1], -1),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(trace.head_out[1][:, :, 1], clean.head_out[1][:, :, 1])  # other heads keep theirs
    assert (trace.logits - clean.logits).abs().max() > 1e-3


def test_a_trace_over_a_shared_prefix_equals_the_full_trace(family):
    """The replay over cached keys and values (GPT-J: read back from the cache by the hooks)."""
    info = family.info
    group = icl_utils.build_prompt_groups(make_task(), 1, 3, demos_per_class=2, seed=0)[0]
    batch = icl_utils.encode_prompts(info, group)
    full = run_with_trace(info, batch)
    shared = run_with_trace(info, batch, share_prefix=True)
    for layer in range(info.n_layers):
        for row, length in enumerate(batch.attention_mask.sum(1).tolist()):
            torch.testing.assert_close(shared.attn[layer][row, ..., :length], full.attn[layer][row, ..., :length],
                                       atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(shared.head_out[layer], full.head_out[layer], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(shared.logits, full.logits, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# What each family is described as


def test_families_are_described_by_their_structure(family):
    info = family.info
    name = info.name.removeprefix("tiny-")
    expected = {"gptj": "rotary-interleaved", "gpt2": "learned", "opt": "learned"}
    assert info.positions == expected.get(name, "rotary")
    assert (info.n_layers, info.n_heads, info.d_model) == (2, 4, 32)
    assert info.d_ff == (128 if name == "gpt2" else 64)  # GPT-2's config: 4 * d_model
    assert len(info.mlp_in_norms) == 2 and all(n is not None for n in info.mlp_in_norms)


def test_a_gptj_copy_keeps_working_hooks(families, tokenizer, vocab_size, prompts):
    """The hooks find everything from their own module, so a deep copy records its own attention."""
    if "gptj" not in families:
        families["gptj"] = Family("gptj", tokenizer, vocab_size)
    info = families["gptj"].info
    twin = icl_utils.describe_model(copy.deepcopy(info.model), tokenizer, "twin")
    batch = icl_utils.encode_prompts(info, prompts[:2])
    with torch.no_grad():
        for p in twin.model.parameters():
            p.mul_(1.5)  # the twin now differs: its recording must be its own
    mine, theirs = run_with_trace(info, batch), run_with_trace(twin, batch)
    assert not torch.allclose(mine.attn[1], theirs.attn[1], atol=1e-3)
    eager_twin = copy.deepcopy(twin.model)
    set_attention(eager_twin, "eager")
    twin_eager = _logits(eager_twin, batch, output_attentions=True)
    rows = torch.arange(2)[:, None]
    ref = twin_eager.attentions[1].permute(0, 2, 1, 3)[rows, batch.last_positions[:, None]].permute(0, 2, 1, 3)
    torch.testing.assert_close(theirs.attn[1], ref, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------
# Families that cannot be observed are refused, loudly


def test_a_family_whose_attention_cannot_be_observed_is_refused_at_describe(tokenizer, vocab_size):
    model = build_family("gpt_neo", vocab_size)
    use_recording_attention(model)
    with pytest.raises(RuntimeError, match=r"GPTNeoForCausalLM \(model_type 'gpt_neo'\).*neither record nor edit"):
        icl_utils.describe_model(model, tokenizer, "tiny-gpt-neo")


def test_a_trace_refuses_when_a_layer_recorded_no_attention(tokenizer, vocab_size, prompts):
    """A layer whose attention stops going through icl_utils after describe_model (here: switched
    back to transformers' eager attention on its own) must not leave a silent hole in the trace."""
    model = build_family("llama", vocab_size)
    use_recording_attention(model)
    info = icl_utils.describe_model(model, tokenizer, "tiny-llama")
    attention = info.attentions[1]
    attention.config = copy.deepcopy(attention.config)
    attention.config._attn_implementation = "eager"
    batch = icl_utils.encode_prompts(info, prompts[:2])
    with pytest.raises(RuntimeError, match=r"No attention was recorded in layers \[1\] of LlamaForCausalLM"):
        run_with_trace(info, batch)
    run_with_trace(info, batch, record=("resid", "head_out"))  # what does not need attention still runs


def test_post_norm_opt_is_refused_at_load(tokenizer, vocab_size):
    model = build_family("opt", vocab_size, do_layer_norm_before=False)
    use_recording_attention(model)
    with pytest.raises(ValueError, match="post-norm.*facebook/opt-125m"):
        icl_utils.describe_model(model, tokenizer, "tiny-opt-350m-style")
