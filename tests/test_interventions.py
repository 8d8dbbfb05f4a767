"""ablate_heads and edit_attention against hand-made equivalents, and hook/observer clean-up."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import icl_utils
from icl_utils import tracing
from icl_utils.tracing import ablate_heads, edit_attention, run_with_trace

from conftest import all_positions


def _logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits


def _out_proj_of(info, model, layer):
    """The output projection of `layer` in `model`, a copy of info.model (found by module name)."""
    names = {id(m): n for n, m in info.model.named_modules()}
    return model.get_submodule(names[id(info.out_projs[layer])])


def _head_slice(info, head):
    return slice(head * info.d_head, (head + 1) * info.d_head)


def _zero_head_by_hand(info, model, layer, head):
    proj = _out_proj_of(info, model, layer)
    with torch.no_grad():
        if isinstance(proj, nn.Linear):  # weight (d_model, n_heads * d_head): columns read the heads
            proj.weight[:, _head_slice(info, head)] = 0
        else:  # GPT-2 Conv1D: weight (n_heads * d_head, d_model): rows read the heads
            proj.weight[_head_slice(info, head), :] = 0


# 5. ablation ------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer,head", [(0, 2), (1, 0)])
def test_zero_ablation_equals_zeroing_w_o_by_hand(info, batch, layer, head):
    clean = _logits(info.model, batch)
    with ablate_heads(info, [(layer, head)], mode="zero"):
        ablated = _logits(info.model, batch)
    by_hand = copy.deepcopy(info.model)
    _zero_head_by_hand(info, by_hand, layer, head)
    expected = _logits(by_hand, batch)
    mask = batch.attention_mask.bool()
    torch.testing.assert_close(ablated[mask], expected[mask], atol=1e-5, rtol=0)
    assert (ablated[mask] - clean[mask]).abs().max() > 1e-3  # the head mattered
    torch.testing.assert_close(_logits(info.model, batch), clean, atol=0, rtol=0)  # and is back


def test_zero_ablation_of_several_heads_in_several_layers(info, batch):
    heads = [(0, 1), (0, 3), (1, 2)]
    with ablate_heads(info, heads):
        ablated = _logits(info.model, batch)
    by_hand = copy.deepcopy(info.model)
    for layer, head in heads:
        _zero_head_by_hand(info, by_hand, layer, head)
    mask = batch.attention_mask.bool()
    torch.testing.assert_close(ablated[mask], _logits(by_hand, batch)[mask], atol=1e-5, rtol=0)


def test_ablation_at_positions_changes_only_later_positions(info, batch):
    clean = _logits(info.model, batch)
    positions = (batch.last_positions - 3)[:, None]  # one position per prompt, different per prompt
    with ablate_heads(info, [(0, 1)], positions=positions):
        ablated = _logits(info.model, batch)
    lengths = batch.attention_mask.sum(1)
    for b, p in enumerate(positions[:, 0].tolist()):
        assert torch.equal(ablated[b, :p], clean[b, :p]), "causal: earlier positions cannot change"
        assert (ablated[b, p] - clean[b, p]).abs().max() > 1e-4, "the ablated position changes"
        assert (ablated[b, lengths[b] - 1] - clean[b, lengths[b] - 1]).abs().max() > 1e-5


def test_ablation_at_every_position_equals_ablation_everywhere(info, batch):
    with ablate_heads(info, [(1, 3)], positions=all_positions(batch)):
        at_all = _logits(info.model, batch)
    with ablate_heads(info, [(1, 3)]):
        everywhere = _logits(info.model, batch)
    torch.testing.assert_close(at_all, everywhere, atol=0, rtol=0)


def test_ablation_at_positions_removes_exactly_that_heads_write(info, batch):
    """In the last layer (nothing downstream but the unembedding), ablating a head at the last
    positions removes exactly its write from the attention output there."""
    layer, head = info.n_layers - 1, 2
    positions = batch.last_positions[:, None]
    clean = run_with_trace(info, batch.input_ids, batch.attention_mask, positions)
    with ablate_heads(info, [(layer, head)], positions=positions):
        ablated = run_with_trace(info, batch.input_ids, batch.attention_mask, positions)
    # the ablation pre-hook is registered first, so the trace records the ablated head output
    assert ablated.head_out[layer][:, :, head].abs().sum() == 0
    others = [h for h in range(info.n_heads) if h != head]
    torch.testing.assert_close(ablated.head_out[layer][:, :, others], clean.head_out[layer][:, :, others])
    # the last layer's attention output at the ablated position loses exactly that head's write
    expected = clean.attn_out[layer] - tracing.head_writes(info, clean, layer)[:, :, head]
    torch.testing.assert_close(ablated.attn_out[layer], expected, atol=1e-5, rtol=0)


def test_mean_ablation_equals_setting_slice_to_mean_by_hand(info, batch):
    layer, head = 1, 1
    gen = torch.Generator().manual_seed(3)
    mean = torch.randn(info.d_head, generator=gen)
    with ablate_heads(info, [(layer, head)], mode="mean", means={(layer, head): mean}):
        ablated = _logits(info.model, batch)
    # by hand: out = W x + b with x[slice] = mean  ==  W' x + (b + W[:, slice] @ mean), W'[:, slice] = 0
    by_hand = copy.deepcopy(info.model)
    proj = _out_proj_of(info, by_hand, layer)
    w_oh = info.head_out_weight(layer, head).detach()  # (d_model, d_head)
    shift = w_oh @ mean
    _zero_head_by_hand(info, by_hand, layer, head)
    with torch.no_grad():
        if proj.bias is None:
            proj.bias = nn.Parameter(shift.clone())
        else:
            proj.bias += shift
    mask = batch.attention_mask.bool()
    torch.testing.assert_close(ablated[mask], _logits(by_hand, batch)[mask], atol=1e-5, rtol=0)
    with ablate_heads(info, [(layer, head)], mode="zero"):
        zeroed = _logits(info.model, batch)
    assert (ablated[mask] - zeroed[mask]).abs().max() > 1e-3  # mean != zero ablation


def test_mean_ablation_with_the_traced_mean_keeps_the_mean_head_output(info, batch):
    layer, head = 0, 2
    positions = all_positions(batch)
    trace = run_with_trace(info, batch.input_ids, batch.attention_mask, positions)
    mean = trace.head_out[layer][batch.attention_mask.bool()][:, head].mean(0)
    with ablate_heads(info, [(layer, head)], mode="mean", means={(layer, head): mean}):
        ablated = run_with_trace(info, batch.input_ids, batch.attention_mask, positions)
    # what the out-projection now reads for that head is the mean: its write is W_O^h @ mean everywhere
    write = info.head_out_weight(layer, head).detach() @ mean
    others = [h for h in range(info.n_heads) if h != head]
    expected = tracing.head_writes(info, trace, layer)[:, :, others].sum(2) + write
    bias = info.out_projs[layer].bias
    expected = expected + (0 if bias is None else bias.detach())
    torch.testing.assert_close(ablated.attn_out[layer], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("heads", [[(0, 4)], [(2, 0)], [(0, -1)], [(-1, 0)], [(1, 1), (0, 9)]])
def test_ablation_out_of_range_raises(info, heads):
    with pytest.raises(ValueError, match="out of range"):
        with ablate_heads(info, heads):
            pass
    _assert_clean(info)


def test_ablation_bad_mode_raises(info):
    with pytest.raises(ValueError, match="'zero' or 'mean'"):
        with ablate_heads(info, [(0, 0)], mode="random"):
            pass
    with pytest.raises(ValueError, match="means="):
        with ablate_heads(info, [(0, 0)], mode="mean"):
            pass


# 6. editing attention ---------------------------------------------------------------------------


def _uniform_edit(target_layer, target_head, calls):
    def edit(layer, weights, query, key):
        calls.append(layer)
        if layer != target_layer:
            return None
        allowed = (weights[:, target_head] > 0).to(weights.dtype)
        new = weights.clone()
        new[:, target_head] = allowed / allowed.sum(-1, keepdim=True)
        return new
    return edit


def test_edit_attention_uniform_over_allowed_keys(info, batch):
    layer, head = info.n_layers - 1, 1
    positions = all_positions(batch)
    clean = run_with_trace(info, batch.input_ids, batch.attention_mask, positions)
    calls = []
    with edit_attention(info, _uniform_edit(layer, head, calls)):
        edited = run_with_trace(info, batch.input_ids, batch.attention_mask, positions)
    assert sorted(set(calls)) == list(range(info.n_layers))
    mask = batch.attention_mask.bool()
    # the output changes
    assert (edited.logits[mask] - clean.logits[mask]).abs().max() > 1e-3
    # the edited head is uniform over its allowed keys (the recorders see the edited pattern)
    lengths = batch.attention_mask.sum(1)
    for b, length in enumerate(lengths.tolist()):
        pattern = edited.attn[layer][b, head, :length, :length]
        allowed = clean.attn[layer][b, head, :length, :length] > 0
        expected = allowed.float() / allowed.sum(-1, keepdim=True)
        torch.testing.assert_close(pattern, expected, atol=1e-6, rtol=0)
    # other heads of the layer, and every earlier layer, are untouched
    others = [h for h in range(info.n_heads) if h != head]
    torch.testing.assert_close(edited.attn[layer][:, others], clean.attn[layer][:, others], atol=0, rtol=0)
    for earlier in range(layer):
        torch.testing.assert_close(edited.attn[earlier], clean.attn[earlier], atol=0, rtol=0)
    assert not torch.allclose(edited.attn[layer][:, head], clean.attn[layer][:, head], atol=1e-3)
    # heads' outputs follow the edited pattern
    expected_out = (edited.attn[layer] @ edited.v[layer]).permute(0, 2, 1, 3)
    torch.testing.assert_close(edited.head_out[layer], expected_out, atol=1e-5, rtol=0)


def test_edit_attention_heads_argument_limits_the_edit(info, batch):
    """edit_attention(..., heads=[(l, h)]): an edit that rewrites every head reaches only (l, h)."""

    layer, head = info.n_layers - 1, 2
    positions = all_positions(batch)
    clean = run_with_trace(info, batch.input_ids, batch.attention_mask, positions)
    calls = []

    def uniform_everywhere(l, weights, query, key):
        calls.append(l)
        allowed = (weights > 0).to(weights.dtype)
        return allowed / allowed.sum(-1, keepdim=True)

    with edit_attention(info, uniform_everywhere, heads=[(layer, head)]):
        edited = run_with_trace(info, batch.input_ids, batch.attention_mask, positions)
    assert set(calls) == {layer}
    others = [h for h in range(info.n_heads) if h != head]
    torch.testing.assert_close(edited.attn[layer][:, others], clean.attn[layer][:, others], atol=0, rtol=0)
    allowed = clean.attn[layer][:, head] > 0
    expected = allowed.float() / allowed.sum(-1, keepdim=True)
    real = batch.attention_mask.bool()
    torch.testing.assert_close(edited.attn[layer][:, head][real], expected[real], atol=1e-6, rtol=0)
    mask = batch.attention_mask.bool()
    assert (edited.logits[mask] - clean.logits[mask]).abs().max() > 1e-3
    _assert_clean(info)


def test_edit_returning_none_changes_nothing(info, batch):
    clean = _logits(info.model, batch)
    with edit_attention(info, lambda layer, weights, query, key: None):
        same = _logits(info.model, batch)
    # the clean run takes the fused attention kernel, an active editor the eager path: equal to rounding
    torch.testing.assert_close(same, clean, atol=1e-5, rtol=1e-5)


def test_edit_attention_on_plain_sdpa_model_raises(bundles, tokenizer):
    import icl_utils

    plain = icl_utils.describe_model(bundles["gpt2"].ref, tokenizer, "sdpa-gpt2")
    with pytest.raises(RuntimeError, match="use_recording_attention"):
        with edit_attention(plain, lambda *a: None):
            pass
    _assert_clean(plain)


# 7. hooks and observers are removed ---------------------------------------------------------------


def _n_hooks(info) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in info.model.modules())


def _assert_clean(info):
    for name, module in info.model.named_modules():
        assert not module._forward_pre_hooks, f"forward pre-hook left on {name}"
        assert not module._forward_hooks, f"forward hook left on {name}"
    for module in list(info.out_projs) + list(info.layers):
        assert not module._forward_pre_hooks and not module._forward_hooks
    assert tracing.interventions(info).editors == []
    assert tracing.interventions(info).recorders == []


def test_hooks_removed_after_run_with_trace(info, batch):
    _assert_clean(info)
    seen = {}

    def spy(layer, weights, query, key):
        seen["hooks"] = _n_hooks(info)
        seen["recorders"] = len(tracing.interventions(info).recorders)

    with edit_attention(info, spy):
        run_with_trace(info, batch)
    assert seen["hooks"] > 0 and seen["recorders"] == 1  # they were there during the pass
    _assert_clean(info)


def test_hooks_removed_when_run_with_trace_fails(info, batch):
    seq = batch.input_ids.shape[1]
    bad = torch.full_like(batch.last_positions, seq + 5)
    with pytest.raises((IndexError, RuntimeError)):
        run_with_trace(info, batch.input_ids, batch.attention_mask, bad)
    _assert_clean(info)
    # and the model still works normally afterwards
    trace = run_with_trace(info, batch)
    assert trace.logits.shape[0] == len(batch.last_positions)
    _assert_clean(info)


def test_hooks_removed_after_ablate_heads(info, batch):
    with ablate_heads(info, [(0, 0), (1, 1)]):
        assert _n_hooks(info) == 2
        _logits(info.model, batch)
    _assert_clean(info)


def test_hooks_removed_when_body_of_ablate_heads_raises(info, batch):
    with pytest.raises(KeyError):
        with ablate_heads(info, [(0, 0)], mode="mean", means={(0, 1): torch.zeros(info.d_head)}):
            _logits(info.model, batch)  # the hook looks up means[(0, 0)]: KeyError inside forward
    _assert_clean(info)
    with pytest.raises(RuntimeError, match="boom"):
        with ablate_heads(info, [(1, 2)]):
            raise RuntimeError("boom")
    _assert_clean(info)


def test_observers_removed_when_body_of_edit_attention_raises(info, batch):
    with pytest.raises(RuntimeError, match="boom"):
        with edit_attention(info, lambda *a: None):
            assert len(tracing.interventions(info).editors) == 1
            raise RuntimeError("boom")
    _assert_clean(info)

    def failing_edit(layer, weights, query, key):
        raise ZeroDivisionError("edit failed")

    with pytest.raises(ZeroDivisionError):
        with edit_attention(info, failing_edit):
            run_with_trace(info, batch)
    _assert_clean(info)


def test_nested_contexts_unwind(info, batch):
    with pytest.raises(RuntimeError, match="inner"):
        with ablate_heads(info, [(0, 1)]):
            with edit_attention(info, lambda *a: None):
                run_with_trace(info, batch)
                raise RuntimeError("inner")
    _assert_clean(info)


def test_edit_attention_refuses_heads_the_model_does_not_have(info):
    with pytest.raises(ValueError, match="out of range"):
        with edit_attention(info, lambda *a: None, heads=[(0, info.n_heads)]):
            pass
    with pytest.raises(ValueError, match="out of range"):
        with edit_attention(info, lambda *a: None, heads=[(info.n_layers, 0)]):
            pass


# 8. ablating FFN neurons ------------------------------------------------------------------------

from icl_utils import ablate_neurons  # noqa: E402


def _zero_neurons_by_hand(info, model, layer, neurons):
    names = {id(m): n for n, m in info.model.named_modules()}
    proj = model.get_submodule(names[id(info.mlp_out_projs[layer])])
    with torch.no_grad():
        if isinstance(proj, nn.Linear):  # weight (d_model, d_ff): column k reads neuron k
            proj.weight[:, neurons] = 0
        else:  # GPT-2 Conv1D: weight (d_ff, d_model): row k reads neuron k
            proj.weight[neurons, :] = 0


def test_neuron_ablation_equals_zeroing_the_output_projection_by_hand(info, batch):
    chosen = {0: [1, 5, 17], 1: torch.tensor([0, 63])}
    clean = _logits(info.model, batch)
    with ablate_neurons(info, chosen):
        assert _n_hooks(info) == 2
        ablated = _logits(info.model, batch)
    by_hand = copy.deepcopy(info.model)
    for layer, neurons in chosen.items():
        _zero_neurons_by_hand(info, by_hand, layer, torch.as_tensor(neurons))
    mask = batch.attention_mask.bool()
    torch.testing.assert_close(ablated[mask], _logits(by_hand, batch)[mask], atol=1e-5, rtol=0)
    assert (ablated[mask] - clean[mask]).abs().max() > 1e-3  # the neurons mattered
    _assert_clean(info)
    torch.testing.assert_close(_logits(info.model, batch), clean, atol=0, rtol=0)  # and are back


def test_neuron_ablation_removes_exactly_the_traced_activations(info, batch):
    positions = all_positions(batch)
    with ablate_neurons(info, {1: [2, 3]}):
        trace = run_with_trace(info, batch.input_ids, batch.attention_mask, positions, record=("mlp_act",))
    clean = run_with_trace(info, batch.input_ids, batch.attention_mask, positions, record=("mlp_act",))
    assert trace.mlp_act[1][..., [2, 3]].abs().sum() == 0
    keep = [k for k in range(info.d_ff) if k not in (2, 3)]
    torch.testing.assert_close(trace.mlp_act[1][..., keep], clean.mlp_act[1][..., keep], atol=1e-5, rtol=0)


def test_neuron_ablation_at_positions_and_rows(info, batch):
    clean = _logits(info.model, batch)
    positions = (batch.last_positions - 2)[:, None]
    with ablate_neurons(info, {0: [4, 9]}, positions=positions):
        at_pos = _logits(info.model, batch)
    for b, p in enumerate(positions[:, 0].tolist()):
        assert torch.equal(at_pos[b, :p], clean[b, :p]), "causal: earlier positions cannot change"
        assert (at_pos[b, p] - clean[b, p]).abs().max() > 1e-5
    # rows: a batch holding a different ablation in each row equals each ablation run alone
    with ablate_neurons(info, {0: [4, 9]}, rows=[0, 2]), ablate_neurons(info, {1: [1]}, rows=[1]):
        mixed = _logits(info.model, batch)
    with ablate_neurons(info, {0: [4, 9]}):
        first = _logits(info.model, batch)
    with ablate_neurons(info, {1: [1]}):
        second = _logits(info.model, batch)
    mask = batch.attention_mask.bool()
    for b, expected in [(0, first), (2, first), (1, second), (3, clean)]:
        torch.testing.assert_close(mixed[b][mask[b]], expected[b][mask[b]], atol=1e-5, rtol=0)
    _assert_clean(info)


@pytest.mark.parametrize("chosen", [lambda ff: {0: [ff]}, lambda ff: {0: [-1]}, lambda ff: {2: [0]},
                                    lambda ff: {-1: [0]}, lambda ff: {0: [1], 1: [0, ff + 7]}])
def test_neuron_ablation_out_of_range_raises(info, chosen):
    with pytest.raises(ValueError, match="out of range"):
        with ablate_neurons(info, chosen(info.d_ff)):
            pass
    _assert_clean(info)


def test_hooks_removed_when_body_of_ablate_neurons_raises(info, batch):
    with pytest.raises(RuntimeError, match="boom"):
        with ablate_neurons(info, {0: [1], 1: [2]}):
            _logits(info.model, batch)
            raise RuntimeError("boom")
    _assert_clean(info)


def test_an_edit_on_one_model_never_fires_in_another(bundles, batch):
    """Registries belong to the model: chapter 1 holds two models at once."""
    source = bundles["llama"].info
    infos = [icl_utils.describe_model(copy.deepcopy(source.model), source.tokenizer, name) for name in ("first", "second")]
    assert tracing.interventions(infos[0]) is not tracing.interventions(infos[1])
    calls = []
    with edit_attention(infos[0], lambda layer, w, q, k: calls.append(layer)):
        assert tracing.positional_interventions_active(infos[0])
        assert not tracing.positional_interventions_active(infos[1])
        run_with_trace(infos[1], batch.input_ids, batch.attention_mask, batch.last_positions)
        assert calls == []  # the other model ran without the edit
        run_with_trace(infos[0], batch.input_ids, batch.attention_mask, batch.last_positions)
        assert calls  # the edited model ran with it
    assert not tracing.interventions(infos[0]).editors
