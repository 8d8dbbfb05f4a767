"""The bias fixes of chapter 7 (icl_utils.debias) against hand computations on tiny random models."""
from contextlib import ExitStack

import pytest
import torch

import icl_utils as iu
from icl_utils import debias, qk
from icl_utils.prompts import render_prompt

LAYER, HEAD = 1, 2  # the edited head (last layer of the tiny models; full attention in the tiny Gemma)


@pytest.fixture
def imbalanced(info, task):
    """Prompts with 3 'animal' and 1 'vehicle' demonstrations (vehicle is the minority, a_v = 3)."""
    prompts = iu.build_prompts(task, 6, demos_per_class={"animal": 3, "vehicle": 1}, seed=1)
    return iu.encode_prompts(info, prompts)


def _trace(info, batch):
    return iu.run_with_trace(info, batch,
                             record=("attn", "head_out", "qkv", "logits"))


def test_minority_scale_by_hand(info, task):
    words = {"animal": "foo", "vehicle": "bar"}
    prompts = [render_prompt([("dog", "animal"), ("car", "vehicle"), ("cat", "animal"), ("cow", "animal")], "bus", "vehicle", words),
               render_prompt([("dog", "animal"), ("car", "vehicle")], "cat", "animal", words)]
    batch = iu.encode_prompts(info, prompts)
    scale = debias.minority_scale(batch, a_c=0.5)
    expected = torch.ones(batch.input_ids.shape)
    expected[0, batch.label_positions[0][1]] = 0.5 * 3 / 1  # the one vehicle label, majority 3
    torch.testing.assert_close(scale, expected)  # the balanced prompt keeps 1 everywhere


def test_scale_attention_equals_hand_computation_and_touches_only_the_chosen_head(info, imbalanced):
    batch = imbalanced
    clean = _trace(info, batch)
    scale = debias.minority_scale(batch, a_c=2.0)
    assert (scale > 1).sum() == len(batch.prompts)  # one minority label per prompt, scaled by 6
    with debias.scale_attention(info, [(LAYER, HEAD)], batch.last_positions, scale):
        fixed = _trace(info, batch)
    # the edited row: alpha' = a * alpha, not renormalised
    torch.testing.assert_close(fixed.attn[LAYER][:, HEAD, 0], clean.attn[LAYER][:, HEAD, 0] * scale, atol=1e-6, rtol=1e-5)
    # head output at T = sum_p alpha'_p v_p (by hand)
    by_hand = torch.einsum("bs,bsd->bd", clean.attn[LAYER][:, HEAD, 0] * scale, clean.v[LAYER][:, HEAD])
    torch.testing.assert_close(fixed.head_out[LAYER][:, 0, HEAD], by_hand, atol=1e-5, rtol=1e-4)
    assert (fixed.logits - clean.logits).abs().max() > 1e-4  # it did something
    # nothing else changed: the other heads of that layer, and every head of the layer before
    others = [h for h in range(info.n_heads) if h != HEAD]
    torch.testing.assert_close(fixed.head_out[LAYER][:, :, others], clean.head_out[LAYER][:, :, others], atol=0, rtol=0)
    torch.testing.assert_close(fixed.head_out[0], clean.head_out[0], atol=0, rtol=0)
    torch.testing.assert_close(_trace(info, batch).logits, clean.logits, atol=0, rtol=0)  # undone on exit


def test_scale_attention_refuses_a_scale_of_another_batch(info, imbalanced):
    with pytest.raises(ValueError, match="scale must be"):
        with debias.scale_attention(info, [(LAYER, HEAD)], imbalanced.last_positions, torch.ones(2, 3)):
            _trace(info, imbalanced)


def _visible(info, layer, batch):
    """Keys the last position may see, by hand: causal, before the padding, inside a sliding window."""
    seq = batch.input_ids.shape[1]
    last = batch.last_positions[:, None]
    keys = torch.arange(seq)[None]
    mask = keys <= last
    types = getattr(info.model.config, "layer_types", None)
    if types and types[layer] == "sliding_attention":
        mask &= keys > last - info.model.config.sliding_window
    return mask


@pytest.mark.parametrize("layer", [0, 1])
def test_positionless_attention_equals_softmax_of_unrotated_scores(info, batch, layer):
    if info.positions != "rotary":
        with pytest.raises(ValueError, match="rotary"):
            with debias.positionless_attention(info, [(layer, HEAD)], batch.last_positions):
                _trace(info, batch)
        return
    with qk.capture_rotary(info) as rotary:
        clean = _trace(info, batch)
    with debias.positionless_attention(info, [(layer, HEAD)], batch.last_positions):
        fixed = _trace(info, batch)
    cos, sin = (x.expand(len(batch.prompts), -1, -1) for x in rotary[layer])
    rows = torch.arange(len(batch.prompts))
    q0 = qk.unrotate(clean.q[layer][:, HEAD, 0], cos[rows, batch.last_positions], sin[rows, batch.last_positions])
    k0 = qk.unrotate(clean.k[layer][:, HEAD], cos, sin)
    scaling = info.attentions[layer].scaling
    scores = torch.einsum("bd,bsd->bs", q0, k0) * scaling
    expected = torch.softmax(scores.masked_fill(~_visible(info, layer, batch), float("-inf")), -1)
    torch.testing.assert_close(fixed.attn[layer][:, HEAD, 0], expected, atol=1e-5, rtol=1e-4)
    assert (expected - clean.attn[layer][:, HEAD, 0]).abs().max() > 1e-3  # the rotation mattered
    others = [h for h in range(info.n_heads) if h != HEAD]
    torch.testing.assert_close(fixed.attn[layer][:, others], clean.attn[layer][:, others], atol=0, rtol=0)
    if layer == 1:
        torch.testing.assert_close(fixed.head_out[0], clean.head_out[0], atol=0, rtol=0)


def test_positionless_scores_do_not_depend_on_position(bundles, task):
    """The same demonstrations in another order: the position-free score of each label token changes
    only through what the residual stream carries, so with one layer of context it is identical."""
    info = bundles["llama"].info
    words = {"animal": "foo", "vehicle": "bar"}
    demos = [("big dog", "animal"), ("car", "vehicle"), ("cat", "animal"), ("bus", "vehicle")]  # two-token input: the slots move
    a = iu.encode_prompts(info, [render_prompt(demos, "cow", "animal", words)])
    b = iu.encode_prompts(info, [render_prompt(demos[2:] + demos[:2], "cow", "animal", words)])
    with qk.capture_rotary(info) as rot_a:
        ta = _trace(info, a)
    with qk.capture_rotary(info) as rot_b:
        tb = _trace(info, b)
    # layer 0 sees only token embeddings: its unrotated keys at the label tokens are order-free
    ka = qk.unrotate(ta.k[0][0, HEAD], *(x[0] for x in rot_a[0]))[a.label_positions[0]]
    kb = qk.unrotate(tb.k[0][0, HEAD], *(x[0] for x in rot_b[0]))[b.label_positions[0]]
    torch.testing.assert_close(ka, kb[[2, 3, 0, 1]], atol=1e-5, rtol=1e-5)
    raw_a, raw_b = ta.k[0][0, HEAD, a.label_positions[0]], tb.k[0][0, HEAD, b.label_positions[0]]
    assert not torch.allclose(raw_a, raw_b[[2, 3, 0, 1]], atol=1e-3)  # the rotated ones are not


# ----------------------------------------------------------------------------------------------
# The two readings of the majority fix, anchor re-weighting, cached replays and many fixes at once


def _one_minority_batch(info):
    words = {"animal": "foo", "vehicle": "bar"}
    demos = [("dog", "animal"), ("car", "vehicle"), ("cat", "animal"), ("cow", "animal")]
    return iu.encode_prompts(info, [render_prompt(demos, "bus", "vehicle", words),
                                    render_prompt(demos[:2], "cat", "animal", words)])


def test_minority_scale_readings_and_anchor_scales_by_hand(info):
    batch = _one_minority_batch(info)
    car = batch.label_positions[0][1]
    one_plus = debias.minority_scale(batch, a_c=0.03, reading="one_plus")
    expected = torch.ones(batch.input_ids.shape)
    expected[0, car] = 1 + 0.03 * 3
    torch.testing.assert_close(one_plus, expected)
    # a_c = 1 / a_v (multiply) and a_c = 0 (one_plus) leave every prompt unchanged
    assert (debias.minority_scale(batch, a_c=1 / 3) == 1).all()
    assert (debias.minority_scale(batch, a_c=0.0, reading="one_plus") == 1).all()
    with pytest.raises(ValueError, match="reading"):
        debias.minority_scale(batch, 0.5, reading="add")
    roles = debias.role_scale(batch, minority=2.0, majority=0.5)
    expected = torch.ones(batch.input_ids.shape)
    expected[0, batch.label_positions[0]] = torch.tensor([0.5, 2.0, 0.5, 0.5])
    torch.testing.assert_close(roles, expected)  # the balanced prompt is left alone
    by_class = debias.class_scale(batch, {"vehicle": 3.0})
    assert by_class[0, car] == 3.0 and by_class[1, batch.label_positions[1][1]] == 3.0
    assert (by_class == 1).sum() == by_class.numel() - 2


def _prefix_and_suffix(info, prompt):
    ids = iu.encode_prompts(info, [prompt]).input_ids
    return ids, ids.shape[1] - 3  # replay the last three tokens over the cached rest


def _logits_of(info, hidden):
    return info.logits_from_final_hidden(hidden[:, -1]).float()


def test_scale_and_positionless_over_a_cached_prefix_equal_full_passes(info, imbalanced):
    prompt = imbalanced.prompts[0]
    ids, cut = _prefix_and_suffix(info, prompt)
    batch = iu.encode_prompts(info, [prompt])
    scale = debias.minority_scale(batch, a_c=2.0)
    heads = [(LAYER, HEAD), (0, 1)]
    with debias.scale_attention(info, heads, batch.last_positions, scale):
        full = _trace(info, batch).logits[:, 0]
    cache = iu.evaluation.cached_prefix(info, ids[:, :cut])
    with debias.scale_attention(info, heads, batch.last_positions, scale):
        replayed = _logits_of(info, iu.evaluation.replay(info, cache, ids[:, cut:], positional_ok=True))
    torch.testing.assert_close(replayed, full, atol=2e-4, rtol=1e-4)
    if info.positions != "rotary":
        return
    with debias.positionless_attention(info, heads, batch.last_positions):
        full = _trace(info, batch).logits[:, 0]
    with qk.capture_rotary(info) as prefix_rotary:
        cache = iu.evaluation.cached_prefix(info, ids[:, :cut])
    with debias.positionless_attention(info, heads, batch.last_positions, prefix_rotary=prefix_rotary):
        replayed = _logits_of(info, iu.evaluation.replay(info, cache, ids[:, cut:], positional_ok=True))
    torch.testing.assert_close(replayed, full, atol=2e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="prefix_rotary"):  # without the prefix's positions it cannot unrotate
        with debias.positionless_attention(info, heads, batch.last_positions):
            iu.evaluation.replay(info, cache, ids[:, cut:], positional_ok=True)


def _fixes(info):
    fixes = [debias.Fix("no fix"),
             debias.Fix("minority x a", ((LAYER, HEAD),), lambda b: debias.minority_scale(b, 2.0)),
             debias.Fix("anchor, two layers", ((0, 0), (0, 3), (LAYER, 0), (LAYER, HEAD)),
                        lambda b: debias.role_scale(b, 1.7, 0.6)),
             debias.Fix("other head", ((0, 1),), lambda b: debias.minority_scale(b, 0.5, "one_plus"))]
    if info.positions == "rotary":
        fixes += [debias.Fix("positionless", ((LAYER, HEAD), (0, 2)), positionless=True)]
    return fixes


def _full_pass(info, prompts, fix):
    """The reference: a whole traced pass of every prompt under the fix's context managers."""
    batch = iu.encode_prompts(info, prompts)
    with ExitStack() as stack:
        if fix.positionless:
            stack.enter_context(debias.positionless_attention(info, list(fix.heads), batch.last_positions))
        if fix.scale is not None:
            stack.enter_context(debias.scale_attention(info, list(fix.heads), batch.last_positions, fix.scale(batch)))
        trace = iu.run_with_trace(info, batch, record=("attn", "logits"))
    ids = iu.label_token_ids(info.tokenizer, [prompts[0].label_words[c] for c in prompts[0].label_words])
    return trace.logits[:, 0, ids], trace.attn, batch


def test_last_token_runs_equal_full_passes_under_every_fix(info, task):
    # three demonstration sets (prefixes of two lengths), queries of different token lengths
    groups = iu.build_prompt_groups(task, 2, 6, demos_per_class={"animal": 3, "vehicle": 2}, seed=3)
    groups += iu.build_prompt_groups(task, 1, 4, demos_per_class=2, seed=4)
    prompts = [p for g in groups for p in g]
    assert len({len(info.tokenizer(p.text)["input_ids"]) for p in prompts}) > 1
    fixes = _fixes(info)
    runs = debias.last_token_runs(info, prompts, fixes, record_layers=[LAYER], max_rows=7)  # several chunks
    assert runs.label_logits.shape == (len(fixes), len(prompts), 2)
    for i, fix in enumerate(fixes):
        logits, attn, batch = _full_pass(info, prompts, fix)
        torch.testing.assert_close(runs.label_logits[i], logits, atol=2e-4, rtol=1e-4, msg=fix.name)
        full = attn[LAYER][:, :, 0]  # (prompts, heads, seq), zeros past each prompt's end
        torch.testing.assert_close(runs.attention[LAYER][i], full[..., : runs.attention[LAYER].shape[-1]],
                                   atol=1e-5, rtol=1e-4, msg=fix.name)
    # the fixes did different things (rows were not mixed up)
    assert (runs.label_logits[1] - runs.label_logits[0]).abs().max() > 1e-4
    assert (runs.label_logits[3] - runs.label_logits[1]).abs().max() > 1e-4


def test_last_token_runs_refuse_bad_input(info, task):
    prompts = iu.build_prompts(task, 2, demos_per_class=1, seed=0)
    with pytest.raises(ValueError, match="at least one"):
        debias.last_token_runs(info, prompts, [])
    if info.positions != "rotary":
        with pytest.raises(ValueError, match="rotary"):
            debias.last_token_runs(info, prompts, [debias.Fix("p", ((0, 0),), positionless=True)])


def test_a_fix_whose_heads_depend_on_the_prompt_equals_separate_runs(info, task):
    groups = iu.build_prompt_groups(task, 2, 4, demos_per_class=2, seed=5)
    prompts = [p for g in groups for p in g]
    heads_of = {tuple(groups[0][0].demos): ((LAYER, HEAD),), tuple(groups[1][0].demos): ((0, 1), (LAYER, 0))}
    scale = lambda b: debias.class_scale(b, {"vehicle": 2.5})  # noqa: E731
    together = debias.last_token_runs(info, prompts, [debias.Fix("per set", lambda p: heads_of[tuple(p.demos)], scale)])
    for g in groups:
        alone = debias.last_token_runs(info, g, [debias.Fix("fixed", heads_of[tuple(g[0].demos)], scale)])
        rows = [prompts.index(p) for p in g]
        torch.testing.assert_close(together.label_logits[0, rows], alone.label_logits[0], atol=2e-5, rtol=1e-5)
    assert (together.label_logits[0, :4] - debias.last_token_runs(info, groups[0], [debias.Fix("none")]).label_logits[0]).abs().max() > 1e-4
