"""Layer wiring found from data flow, and the log-probability-increase attribution, on tiny models."""
import pytest
import torch

from icl_utils import attribution as A
from icl_utils.tracing import run_with_trace

ALL = ("resid", "head_out", "attn_out", "attn", "qkv", "logits", "mlp_in", "mlp_act", "mlp_out")
EXPECTED_WIRING = {  # attribute names on each family's decoder layer
    "gpt2": {"mlp_in_norm": "ln_2", "attn_out_norm": None, "mlp_out_norm": None},
    "llama": {"mlp_in_norm": "post_attention_layernorm", "attn_out_norm": None, "mlp_out_norm": None},
    "gemma3": {"mlp_in_norm": "pre_feedforward_layernorm", "attn_out_norm": "post_attention_layernorm",
               "mlp_out_norm": "post_feedforward_layernorm"},
}


def _name(layer, module):
    return next((n for n, m in layer.named_children() if m is module), None) if module is not None else None


def test_wiring_probe_finds_each_familys_norms(bundle):
    info = bundle.info
    for role, expected in EXPECTED_WIRING[bundle.arch].items():
        found = [_name(layer, getattr(info, role + "s")[i]) for i, layer in enumerate(info.layers)]
        assert found == [expected] * info.n_layers, role


@pytest.fixture
def trace(info, batch):
    return run_with_trace(info, batch, record=ALL)


def test_components_add_up_to_the_residual_stream(info, trace):
    for layer in range(info.n_layers):
        attn = A.attention_block_output(info, trace, layer)
        bias = info.out_projs[layer].bias
        heads = A.head_contributions(info, trace, layer).sum(2)
        if bias is not None:
            norm = info.attn_out_norms[layer]
            bias = bias.detach() if norm is None else A.frozen_norm(norm, trace.attn_out[layer])(bias.detach().expand_as(attn))
            heads = heads + bias
        torch.testing.assert_close(heads, attn, atol=1e-4, rtol=1e-4)
        mlp = A.mlp_block_output(info, trace, layer)
        proj_bias = info.mlp_out_projs[layer].bias
        neurons = A.neuron_contributions(info, trace, layer).sum(2)
        if proj_bias is None:
            torch.testing.assert_close(neurons, mlp, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(trace.resid[layer] + attn + mlp, trace.resid[layer + 1], atol=1e-4, rtol=1e-4)


def test_frozen_norm_is_exact_at_its_point_and_additive(info, trace):
    norm, at = info.final_norm, trace.resid[info.n_layers]
    frozen = A.frozen_norm(norm, at)
    torch.testing.assert_close(frozen(at) + A.norm_bias(norm), norm(at).float(), atol=1e-5, rtol=1e-5)
    a, b = torch.randn_like(at), torch.randn_like(at)
    torch.testing.assert_close(frozen(a) + frozen(b), frozen(a + b), atol=1e-5, rtol=1e-5)


def test_log_prob_increase_matches_a_hand_computation(info, trace):
    final = trace.resid[info.n_layers][:, 0]
    base = trace.resid[1][:, 0]
    vectors = torch.randn(final.shape[0], 3, info.d_model)
    targets = torch.tensor([1] * final.shape[0])
    got = A.log_prob_increase(info, base, vectors, final, targets)

    def logp(x):  # ln_f with its scale frozen at `final`, written out
        frozen = A.frozen_norm(info.final_norm, final[:, None])
        logits = info.logits_from_final_hidden(frozen(x) + A.norm_bias(info.final_norm))  # applies any softcap
        return torch.log_softmax(logits, -1)[..., 1]

    expected = logp(base[:, None] + vectors) - logp(base[:, None])
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_several_targets_at_once_equal_one_at_a_time(info, trace):
    final, base = trace.resid[info.n_layers][:, 0], trace.resid[2][:, 0]
    vectors = torch.randn(final.shape[0], 5, info.d_model)
    targets = torch.tensor([[3, 7, 1]] * final.shape[0])
    together = A.log_prob_increase(info, base, vectors, final, targets)
    assert together.shape == (final.shape[0], 5, 3)
    for i in range(3):
        alone = A.log_prob_increase(info, base, vectors, final, targets[:, i])
        torch.testing.assert_close(together[..., i], alone, atol=1e-5, rtol=1e-5)


def test_head_and_layer_importance_equal_one_layer_at_a_time(info, trace):
    targets = trace.logits[:, 0].argmax(-1)
    final = trace.resid[info.n_layers][:, 0]
    heads, layers = A.head_importance(info, trace, targets), A.layer_importance(info, trace, targets)
    for layer in range(info.n_layers):
        base = trace.resid[layer][:, 0]
        alone = A.log_prob_increase(info, base, A.head_contributions(info, trace, layer)[:, 0], final, targets)
        torch.testing.assert_close(heads[:, layer], alone, atol=1e-5, rtol=1e-5)
        attn = A.attention_block_output(info, trace, layer)[:, 0]
        expected = A.log_prob_increase(info, base, attn[:, None], final, targets)[:, 0]
        torch.testing.assert_close(layers["attention"][:, layer], expected, atol=1e-5, rtol=1e-5)
        mlp = A.mlp_block_output(info, trace, layer)[:, 0]
        expected = A.log_prob_increase(info, base + attn, mlp[:, None], final, targets)[:, 0]
        torch.testing.assert_close(layers["mlp"][:, layer], expected, atol=1e-5, rtol=1e-5)


def test_vocabulary_chunks_do_not_change_the_log_probs(info, trace):
    final = trace.resid[info.n_layers][:, 0]
    resid = torch.randn(final.shape[0], 4, info.d_model)
    targets = torch.tensor([[2, 5]] * final.shape[0])
    whole = A.target_log_probs(info, resid, final, targets, vocab_chunk=10**9)
    torch.testing.assert_close(A.target_log_probs(info, resid, final, targets, vocab_chunk=7), whole, atol=1e-5, rtol=1e-5)
    assert (whole <= 0).all()  # log-probabilities


def test_whole_residual_from_zero_gives_the_models_own_log_prob(info, trace):
    final = trace.resid[info.n_layers][:, 0]
    targets = trace.logits[:, 0].argmax(-1)
    got = A.log_prob_increase(info, torch.zeros_like(final), final[:, None], final, targets)[:, 0]
    true = torch.log_softmax(trace.logits[:, 0], -1)[torch.arange(len(targets)), targets]
    # p(. | 0) = softmax(E_u bias): uniform for RMS norms (no bias), not for GPT-2's LayerNorm
    zero = info.logits_from_final_hidden(torch.zeros(info.d_model) + A.norm_bias(info.final_norm))
    uniform = torch.log_softmax(zero.float(), -1)[targets]
    torch.testing.assert_close(got, true - uniform, atol=1e-4, rtol=1e-4)


def test_head_importance_ranks_a_head_that_writes_the_target(info, trace, batch):
    imp = A.head_importance(info, trace, trace.logits[:, 0].argmax(-1))
    assert imp.shape == (batch.input_ids.shape[0], info.n_layers, info.n_heads)
    assert torch.isfinite(imp).all() and imp.abs().sum() > 0
    layers = A.layer_importance(info, trace, trace.logits[:, 0].argmax(-1))
    assert layers["attention"].shape == layers["mlp"].shape == (batch.input_ids.shape[0], info.n_layers)


def test_head_scores_over_prompts_match_head_importance_for_the_gold_word(info, prompts):
    from icl_utils import encode_prompts, label_token_ids
    from icl_utils.heads import head_scores_over_prompts

    scores = head_scores_over_prompts(info, prompts, batch_size=3, progress=False)
    n = len(prompts)
    assert scores["importance"].shape == scores["label_attention"].shape == (n, info.n_layers, info.n_heads)
    batch = encode_prompts(info, prompts)
    trace = run_with_trace(info, batch, record=ALL)
    classes = list(prompts[0].label_words)
    ids = torch.tensor(label_token_ids(info.tokenizer, [prompts[0].label_words[c] for c in classes]))
    gold = torch.tensor([classes.index(g) for g in batch.gold])
    torch.testing.assert_close(scores["importance"], A.head_importance(info, trace, ids[gold]), atol=1e-4, rtol=1e-4)
    assert ((scores["label_attention"] >= 0) & (scores["label_attention"] <= 1 + 1e-5)).all()


# Chapter 2: other scores, the first-order screen, per-position head terms ----------------------


def test_per_position_head_terms_sum_to_the_head_output(info, trace):
    for layer in range(info.n_layers):
        terms = A.head_position_contributions(info, trace, layer)  # (batch, heads, seq, d)
        assert terms.shape == (*trace.attn[layer][:, :, 0].shape, info.d_model)
        heads = A.head_contributions(info, trace, layer)[:, 0]  # (batch, heads, d)
        torch.testing.assert_close(terms.sum(2), heads.float(), atol=1e-4, rtol=1e-4)


def test_per_position_terms_are_zero_where_the_head_does_not_attend(info, trace, batch):
    terms = A.head_position_contributions(info, trace, 0)
    after = torch.arange(terms.shape[2])[None, :] > batch.last_positions[:, None]  # later tokens and padding
    assert terms.norm(dim=-1)[after[:, None].expand(-1, info.n_heads, -1)].max() == 0


def test_attribution_scores_by_hand(info, trace):
    final, base = trace.resid[info.n_layers][:, 0], trace.resid[1][:, 0]
    vectors = torch.randn(final.shape[0], 3, info.d_model)
    targets = trace.logits[:, 0].argmin(-1)
    scores = A.attribution_scores(info, base, vectors, final, targets)
    ln_f = A.frozen_norm(info.final_norm, final[:, None])
    rows = torch.arange(len(targets))

    def raw_logits(x):  # before the softcap
        return info.unembed(ln_f(x) + A.norm_bias(info.final_norm))

    def prob(x):
        return torch.softmax(info.logits_from_final_hidden(ln_f(x) + A.norm_bias(info.final_norm)), -1)[rows, ..., targets]

    with torch.no_grad():
        expected_prob = prob(base[:, None] + vectors) - prob(base[:, None])
        expected_logit = raw_logits(base[:, None] + vectors)[rows, ..., targets] - raw_logits(base[:, None])[rows, ..., targets]
    torch.testing.assert_close(scores["prob"], expected_prob, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(scores["logit"], expected_logit, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(scores["log_prob"], A.log_prob_increase(info, base, vectors, final, targets))


def test_direct_logit_attribution_adds_up_over_heads(info, trace):
    final, targets = trace.resid[info.n_layers][:, 0], trace.logits[:, 0].argmax(-1)
    layer = info.n_layers - 1
    heads = A.head_contributions(info, trace, layer)[:, 0]
    per_head = A.direct_logit_attribution(info, heads, final, targets).sum(1)
    together = A.direct_logit_attribution(info, heads.sum(1, keepdim=True), final, targets)[:, 0]
    torch.testing.assert_close(per_head, together, atol=1e-4, rtol=1e-4)
    several = A.direct_logit_attribution(info, heads, final, torch.stack([targets, targets], 1))
    torch.testing.assert_close(several[..., 1], A.direct_logit_attribution(info, heads, final, targets))


def test_gradient_screen_is_the_first_order_log_prob_increase(info, trace):
    final, targets = trace.resid[info.n_layers][:, 0], trace.logits[:, 0].argmax(-1)
    bases = A.mlp_bases(info, trace)  # (batch, L, d)
    torch.testing.assert_close(bases[:, 1], trace.resid[1][:, 0] + A.attention_block_output(info, trace, 1)[:, 0])
    screen = A.neuron_screen(info, trace, targets)
    assert screen.shape == (final.shape[0], info.n_layers, info.d_ff) and screen.abs().sum() > 0
    eps = 1e-3
    for layer in range(info.n_layers):
        sub = A.neuron_contributions(info, trace, layer)[:, 0, :5]  # (batch, 5, d)
        small = A.log_prob_increase(info, bases[:, layer], eps * sub, final, targets) / eps
        torch.testing.assert_close(screen[:, layer, :5], small, atol=2e-2, rtol=2e-2)


def test_renormalised_increase_uses_the_real_final_norm(info, trace):
    final, targets = trace.resid[info.n_layers][:, 0], trace.logits[:, 0].argmax(-1)
    base = trace.resid[1][:, 0]
    got = A.renormalised_log_prob_increase(info, base, (final - base)[:, None], targets, chunk=1)[:, 0]
    rows = torch.arange(len(targets))
    with torch.no_grad():
        at_base = torch.log_softmax(info.logits_from_residual(base).float(), -1)[rows, targets]
    own = torch.log_softmax(trace.logits[:, 0], -1)[rows, targets]
    torch.testing.assert_close(got, own - at_base, atol=1e-4, rtol=1e-4)


def test_scores_with_one_base_per_vector_equal_one_call_per_base(info, trace):
    final, targets = trace.resid[info.n_layers][:, 0], trace.logits[:, 0].argmax(-1)
    bases = torch.stack([trace.resid[l][:, 0] for l in range(info.n_layers)], 1)  # (batch, L, d)
    heads = torch.cat([A.head_contributions(info, trace, l)[:, 0] for l in range(info.n_layers)], 1)  # (batch, L*H, d)
    index = torch.arange(info.n_layers).repeat_interleave(info.n_heads)
    together = A.attribution_scores(info, bases, heads, final, targets, base_index=index)
    real = A.renormalised_log_prob_increase(info, bases, heads, targets, base_index=index, chunk=5)
    torch.testing.assert_close(together["log_prob"].view(-1, info.n_layers, info.n_heads),
                               A.head_importance(info, trace, targets), atol=1e-4, rtol=1e-4)
    for l in range(info.n_layers):
        one = A.attribution_scores(info, bases[:, l], heads[:, index == l], final, targets)
        for key in one:
            torch.testing.assert_close(together[key][:, index == l], one[key], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(real[:, index == l], A.renormalised_log_prob_increase(
            info, bases[:, l], heads[:, index == l], targets), atol=1e-4, rtol=1e-4)


def test_gradient_screen_leaves_no_gradients_on_the_model(info, trace):
    final, targets = trace.resid[info.n_layers][:, 0], trace.logits[:, 0].argmax(-1)
    A.log_prob_gradient(info, A.mlp_bases(info, trace), final, targets)
    assert all(p.grad is None for p in info.model.parameters())


def test_head_direct_effects_remove_one_write_from_the_final_residual(info, batch):
    from icl_utils.attribution import head_contributions, head_direct_effects, target_log_probs

    trace = run_with_trace(info, batch)
    targets = batch.input_ids[torch.arange(len(batch.last_positions)), batch.last_positions]
    effects = head_direct_effects(info, trace, targets)
    assert effects.shape == (len(targets), info.n_layers, info.n_heads)
    final = trace.final_resid[:, 0]
    l, h = info.n_layers - 1, 1
    without = final - head_contributions(info, trace, l)[:, 0, h]
    logp = target_log_probs(info, torch.stack([final, without], 1), final, targets[:, None])[..., 0]
    torch.testing.assert_close(effects[:, l, h], logp[:, 0] - logp[:, 1], atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# Many prompts: neuron rankings, query neurons, zeroing sweeps


def test_score_neurons_exact_scores_match_one_at_a_time_and_orders_start_with_them(info, trace):
    final, targets = trace.final_resid[:, 0], trace.logits[:, 0].argmax(-1)
    scores = A.score_neurons(info, trace, targets, n_exact=4)
    n_total = info.n_layers * info.d_ff
    assert scores.screen.shape == scores.dla.shape == scores.norm.shape == (len(targets), n_total)
    bases = A.mlp_bases(info, trace)
    for row in range(len(targets)):
        scored = (~scores.log_prob[row].isnan()).nonzero()[:, 0]
        assert 4 <= len(scored) <= 8  # the union of both screens' top 4
        f = int(scored[0])
        layer, k = divmod(f, info.d_ff)
        sub = A.neuron_contributions(info, trace, layer, torch.tensor([k]))[row : row + 1, 0]
        one = A.attribution_scores(info, bases[row : row + 1, layer], sub, final[row : row + 1], targets[row : row + 1])
        torch.testing.assert_close(scores.log_prob[row, f], one["log_prob"][0, 0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(scores.prob[row, f], one["prob"][0, 0], atol=1e-5, rtol=1e-3)
        order = scores.order("log-prob increase", row)
        assert sorted(order.tolist()) == list(range(n_total))  # a permutation of every neuron
        assert set(order[: len(scored)].tolist()) == set(scored.tolist())  # exactly scored neurons first
        assert scores.log_prob[row, order[0]] == scores.log_prob[row, scored].max()
        assert scores.order("activation", row)[0] == trace.stack("mlp_act", 0)[row].abs().flatten().argmax()
    with pytest.raises(ValueError, match="unknown ranking"):
        scores.order("logit", 0)


def test_neuron_key_is_the_gradient_of_the_activation(info, trace):
    layers = torch.tensor([info.n_layers - 1] * trace.positions.shape[0])
    neurons = torch.arange(len(layers)) % info.d_ff
    keys, values = A.neuron_keys(info, trace, layers, neurons)
    assert keys.shape == (len(layers), info.d_model)
    torch.testing.assert_close(values, trace.mlp_act[info.n_layers - 1][torch.arange(len(layers)), 0, neurons],
                               atol=1e-4, rtol=1e-4)
    # a small vector added to the MLP's input stream moves the activation by key . vector (norm frozen)
    layer, row, k = info.n_layers - 1, 0, int(neurons[0])
    at = trace.mlp_in[layer][row : row + 1, 0]
    u = 1e-3 * torch.randn_like(at)
    norm = info.mlp_in_norms[layer]
    seen = {}
    hook = info.mlp_out_projs[layer].register_forward_pre_hook(lambda m, a: seen.__setitem__("act", a[0]))
    try:
        with torch.no_grad():
            info.mlps[layer]((A.frozen_norm(norm, at)(at + u) + A.norm_bias(norm))[:, None])
    finally:
        hook.remove()
    torch.testing.assert_close(seen["act"][0, -1, k] - values[row], keys[row] @ u[0], atol=1e-6, rtol=2e-2)


def test_query_scores_are_key_dot_subvalue_below_the_value_layer(info, trace):
    batch = trace.positions.shape[0]
    layers = torch.tensor([1] * batch)
    keys = torch.randn(batch, info.d_model)
    scores = A.query_scores(info, trace, keys, layers)
    assert scores[:, info.d_ff :].isnan().all() and not scores[:, : info.d_ff].isnan().any()
    sub = A.neuron_contributions(info, trace, 0, torch.tensor([3]))[:, 0, 0]
    torch.testing.assert_close(scores[:, 3], (sub * keys).sum(-1), atol=1e-5, rtol=1e-4)


def test_zeroing_sweep_rows_equal_separate_ablations(info, batch):
    from icl_utils.tracing import ablate_heads, ablate_neurons

    ids = batch.input_ids[0, : int(batch.last_positions[0]) + 1].tolist()
    target = 5
    row_heads = [[], [(0, 1)], [], [(1, 0), (0, 0)]]
    row_neurons = [{}, {}, {0: [1, 2], 1: [3]}, {1: [0]}]
    out = A.zeroing_sweep(info, ids, target, row_heads, row_neurons, watch=(1, 3))
    assert out["rank"].shape == (4,) and out["watched"].shape == (4,)
    assert out["watched"][2] == 0  # the watched neuron itself was zeroed in row 2

    def one_pass(heads, neurons):
        with torch.no_grad(), ablate_heads(info, heads), ablate_neurons(info, neurons):
            hidden = info.decoder(input_ids=torch.tensor([ids])).last_hidden_state[:, -1]
            return torch.log_softmax(info.logits_from_final_hidden(hidden).float(), -1)[0, target]

    for row in range(4):  # a whole-prompt ablation differs: the sweep acts at the last position only
        positions = torch.tensor([[len(ids) - 1]])
        with torch.no_grad(), ablate_heads(info, row_heads[row], positions=positions), \
                ablate_neurons(info, row_neurons[row], positions=positions):
            hidden = info.decoder(input_ids=torch.tensor([ids])).last_hidden_state[:, -1]
            expected = torch.log_softmax(info.logits_from_final_hidden(hidden).float(), -1)[0, target]
        torch.testing.assert_close(out["log_p"][row], expected, atol=1e-4, rtol=1e-4)
    assert one_pass([], {}) == pytest.approx(float(out["log_p"][0]), abs=1e-4)
    with pytest.raises(ValueError, match="one of each per row"):
        A.zeroing_sweep(info, ids, target, row_heads, row_neurons[:2])


def test_neuron_readouts_equal_the_subvalues_read_directly(info, trace):
    final, targets = trace.final_resid[:, 0], trace.logits[:, 0].argmax(-1)
    scores = A.score_neurons(info, trace, targets, n_exact=2)
    subs = torch.cat([A.neuron_contributions(info, trace, l)[:, 0] for l in range(info.n_layers)], 1)  # (batch, L*d_ff, d)
    torch.testing.assert_close(scores.dla, A.direct_logit_attribution(info, subs, final, targets), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(scores.norm, subs.norm(dim=-1), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(scores.screen, A.neuron_screen(info, trace, targets).flatten(1), atol=1e-5, rtol=1e-4)
    direction = torch.randn(final.shape[0], info.d_model)
    expected = torch.einsum("bkd,bd->bk", A.neuron_contributions(info, trace, 1)[:, 0], direction)
    torch.testing.assert_close(A.neuron_readout(info, trace, 1, direction), expected, atol=1e-4, rtol=1e-4)


def test_log_prob_and_gradient_match_autograd(info, trace):
    final, targets = trace.final_resid[:, 0], trace.logits[:, 0].argmax(-1)
    bases = A.mlp_bases(info, trace)
    log_p, grad = A.log_prob_and_gradient(info, bases, final, targets, vocab_chunk=7)
    torch.testing.assert_close(log_p, A.target_log_probs(info, bases, final, targets[:, None])[..., 0], atol=1e-5, rtol=1e-5)
    ln_f = A.frozen_norm(info.final_norm, final[:, None].float())
    with torch.enable_grad():
        x = bases.float().clone().requires_grad_(True)
        z = info.softcap((ln_f(x) + A.norm_bias(info.final_norm)) @ info.unembed.weight.detach().float().T
                         + (0 if info.unembed.bias is None else info.unembed.bias.detach()))
        lp = (z.gather(-1, targets[:, None, None].expand(-1, z.shape[1], 1))[..., 0] - torch.logsumexp(z, -1)).sum()
        expected = torch.autograd.grad(lp, x)[0]
    torch.testing.assert_close(grad, expected, atol=1e-5, rtol=1e-4)


def test_score_heads_exact_for_all_or_for_the_screened(info, trace):
    targets = trace.logits[:, 0].argmax(-1)
    every = A.score_heads(info, trace, targets)
    expected = A.head_importance(info, trace, targets).flatten(1)
    torch.testing.assert_close(every.log_prob, expected, atol=1e-4, rtol=1e-4)
    some = A.score_heads(info, trace, targets, n_exact=1)
    scored = ~some.log_prob.isnan()
    assert (scored.sum(1) >= 1).all() and (scored.sum(1) <= 2).all()
    torch.testing.assert_close(some.log_prob[scored], expected[scored], atol=1e-4, rtol=1e-4)
    best = expected[0].masked_fill(~scored[0], float("-inf")).argmax()
    assert some.order("log-prob increase", 0)[0] == best  # the exactly scored head with the best score comes first
    with pytest.raises(ValueError, match="unknown ranking"):
        some.order("activation", 0)


def _one_sweep_by_replay(info, ids, row_heads, row_neurons, watch):
    """The reference: one prompt's prefix cached, its last token replayed once per row in a batch,
    each row's heads and neurons zeroed by the per-row interventions of tracing."""
    from contextlib import ExitStack

    from icl_utils.evaluation import cached_prefix, replay
    from icl_utils.tracing import set_heads, watch_neurons, zero_neurons_per_row

    prefix = cached_prefix(info, torch.tensor([ids[:-1]]))
    with torch.no_grad(), ExitStack() as stack:
        stack.enter_context(set_heads(info, row_heads))
        stack.enter_context(zero_neurons_per_row(info, row_neurons))
        seen = stack.enter_context(watch_neurons(info, watch[0], [watch[1]]))
        hidden = replay(info, prefix, torch.tensor([[ids[-1]]] * len(row_heads)), repeat=len(row_heads), reuse=False)[:, -1]
    return hidden, seen["activations"][:, 0]


def test_sweeps_of_several_prompts_in_one_pass_equal_one_sweep_each(info, batch):
    """Prompts of different lengths (padding, and Gemma's sliding window) packed in one pass give each
    prompt's own sweep: the same hidden states, the watched neuron read in each prompt's layer."""
    id_lists = [batch.input_ids[i, : int(batch.last_positions[i]) + 1].tolist() for i in range(3)]
    assert len({len(ids) for ids in id_lists}) > 1
    row_heads = [[[], [(0, 1)]], [[(1, 0), (0, 0)], [], []], [[]]]
    row_neurons = [[{1: [2]}, {}], [{}, {0: [1, 2], 1: [3]}, {1: [0]}], [{0: [4]}]]
    watches = [(1, 2), (0, 1), (1, 3)]
    hidden, watched = A.zeroing_sweeps_hidden(info, id_lists, row_heads, row_neurons, watches)
    assert hidden.shape == (6, info.d_model) and watched.shape == (6,)
    assert watched[0] == 0 and watched[3] == 0  # zeroed in that very row
    at = 0
    for ids, heads, neurons, watch in zip(id_lists, row_heads, row_neurons, watches):
        expected, expected_watch = _one_sweep_by_replay(info, ids, heads, neurons, watch)
        torch.testing.assert_close(hidden[at : at + len(heads)], expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(watched[at : at + len(heads)], expected_watch, atol=1e-4, rtol=1e-4)
        at += len(heads)
    with pytest.raises(ValueError, match="one of each per prompt"):
        A.zeroing_sweeps_hidden(info, id_lists, row_heads[:2], row_neurons)


@pytest.mark.parametrize("vocab_chunk,row_block", [(7, 3), (1000, 1000)])
def test_unembedded_log_probs_and_ranks_equal_the_full_softmax(info, vocab_chunk, row_block):
    torch.manual_seed(0)
    y = torch.randn(5, info.d_model) * 3
    targets = torch.randint(0, info.vocab_size, (5,))
    logits = info.logits_from_final_hidden(y).float()
    expected = torch.log_softmax(logits, -1).gather(1, targets[:, None])[:, 0]
    log_p, rank = A.unembedded_log_probs(info, y, targets, rank=True, vocab_chunk=vocab_chunk, row_block=row_block)
    torch.testing.assert_close(log_p, expected, atol=1e-5, rtol=1e-5)
    assert rank.tolist() == (1 + (logits > logits.gather(1, targets[:, None])).sum(-1)).tolist()
    several, _ = A.unembedded_log_probs(info, y, torch.stack([targets, targets.flip(0)], 1), vocab_chunk=vocab_chunk)
    torch.testing.assert_close(several[:, 0], expected, atol=1e-5, rtol=1e-5)
