"""The bias fixes of chapter 7 (icl_utils.debias) against hand computations on tiny random models."""
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
