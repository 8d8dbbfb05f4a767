"""Two attention edits that reduce label biases of in-context learning (Yu & Ananiadou 2024), chapter 7.

Majority-label bias. Head h's output at the last position T is a sum over positions,
`o_T = sum_p alpha_{T,p} W_O v_p`. Softmax weights sum to one, so a label with more demonstrations
collects more attention in total. The fix scales the attention-weighted value-output vectors at the
label positions of the minority label(s) by `a = a_c * a_v` (a_v = majority count / minority count):
that is `alpha'_{T,p} = a * alpha_{T,p}`, *without* renormalising (`scale_attention`,
`minority_scale`).

Recency bias. With rotary positions the score `q_T . k_p` depends on where p sits. The fix scores
the chosen heads' attention from T with the rotation undone (`positionless_attention`):
`alpha'_{T,p} = softmax_p(scaling * unrot(q_T) . unrot(k_p))` over the keys the model lets T see.

Both are context managers on `tracing.edit_attention` (only the chosen heads change, only in the
rows of the query positions given) and undo themselves on exit.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from .qk import attention_logits, capture_rotary, unrotate
from .tracing import edit_attention
from .models import ModelInfo


def minority_scale(batch, a_c: float) -> torch.Tensor:
    """(batch, seq) multipliers for `scale_attention`: a = a_c * a_v at the label positions of each
    prompt's minority classes, 1 elsewhere (and everywhere in a balanced prompt).

    a_v = (count of the most frequent class) / (count of this class), per prompt.
    """
    scale = torch.ones(batch.input_ids.shape, dtype=torch.float)
    for row, (positions, classes) in enumerate(zip(batch.label_positions, batch.label_classes)):
        counts = {c: classes.count(c) for c in set(classes)}
        majority = max(counts.values())
        for p, c in zip(positions, classes):
            if counts[c] < majority:
                scale[row, p] = a_c * majority / counts[c]
    return scale


def _rows(query_positions, weights) -> tuple:
    positions = torch.as_tensor(query_positions, device=weights.device).long()
    if positions.shape != (weights.shape[0],):
        raise ValueError(
            f"query_positions must hold one position per prompt of the batch ({weights.shape[0]}), "
            f"got shape {tuple(positions.shape)}; pass batch.last_positions of the batch you run."
        )
    return torch.arange(weights.shape[0], device=weights.device), positions


@contextmanager
def scale_attention(info: ModelInfo, heads, query_positions, scale: torch.Tensor):
    """alpha'_{T,p} = scale[b, p] * alpha_{T,p} in `heads`, at each prompt's query position T, no renormalising.

    heads: (layer, head) pairs. query_positions: (batch,), e.g. batch.last_positions. scale:
    (batch, seq), e.g. minority_scale(batch, a_c). Because the head's output at T is
    sum_p alpha_{T,p} v_p, this multiplies the attention-weighted value (and value-output) vector of
    position p by scale[b, p] and changes nothing else.
    """
    def edit(layer, weights, query, key):
        rows, positions = _rows(query_positions, weights)
        if scale.shape != (weights.shape[0], weights.shape[-1]):
            raise ValueError(f"scale must be (batch, seq) = {(weights.shape[0], weights.shape[-1])}, "
                             f"got {tuple(scale.shape)}; build it from the batch you run.")
        new = weights.clone()
        new[rows, :, positions] = weights[rows, :, positions] * scale.to(weights)[:, None, :]
        return new

    with edit_attention(info, edit, heads=heads):
        yield


@contextmanager
def positionless_attention(info: ModelInfo, heads, query_positions):
    """Attention of `heads` from each prompt's query position T recomputed without rotary positions:
    alpha'_{T,p} = softmax_p(scaling * unrot(q_T) . unrot(k_p)), over the keys the model's own pattern
    lets T see (so causal, padding and sliding-window masks carry over; softcap as the model).

    Rotary models only: with learned absolute positions (GPT-2) the position is added to the
    residual stream before the first layer and cannot be taken out of one head's q and k, so this
    raises ValueError (the book does not apply the recency fix to such models).
    """
    if info.positions != "rotary":
        raise ValueError(
            f"{info.name} uses {info.positions} positions, not rotary: there is no rotation to remove from "
            "q and k. The positional part of the score is not separable here; the recency fix applies "
            "to rotary models only."
        )

    def edit(layer, weights, query, key):
        rows, positions = _rows(query_positions, weights)
        cos, sin = (x.to(query.device).expand(weights.shape[0], -1, -1) for x in rotary[layer])  # (batch, seq, d_rot)
        q_len = query.shape[2]  # queries are the last q_len positions (q_len = seq without a cache)
        offset = key.shape[2] - q_len
        q = unrotate(query[rows, :, positions - offset], cos[rows, positions][:, None], sin[rows, positions][:, None])
        k = unrotate(key, cos[:, None], sin[:, None])  # (batch, heads, seq, d_head)
        scores = attention_logits(info, layer, q, k)  # (batch, heads, seq)
        visible = weights[rows, :, positions - offset] > 0
        new = weights.clone()
        new[rows, :, positions - offset] = torch.softmax(scores.masked_fill(~visible, float("-inf")), -1).to(weights.dtype)
        return new

    with capture_rotary(info) as rotary, edit_attention(info, edit, heads=heads):
        yield
