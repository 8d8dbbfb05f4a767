"""Query-key scores of chosen heads: the "two towers" of Yu & Ananiadou (2024), chapter 5.

A head's attention logit from position T to position p is s = scaling * q_T . k_p (then any
softcap, then the mask and the softmax). For rotary models q and k are recorded *after* the
rotation, so s mixes what the vectors mean with where they sit; `unrotate` undoes the rotation
with the (cos, sin) the model passed to the attention module, giving the position-free score.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager

import torch

from .tracing import Trace, _per_layer, edit_attention
from .models import ModelInfo


def attention_logits(info: ModelInfo, layer: int, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Pre-softmax scores: query (..., d_head) against keys (..., seq, d_head) -> (..., seq).

    Uses the attention module's own scaling (Gemma: query_pre_attn_scalar ** -0.5, not d_head ** -0.5)
    and the config's attention-logit softcap, if any.
    """
    scaling = getattr(info.attentions[layer], "scaling", query.shape[-1] ** -0.5)
    scores = torch.einsum("...d,...sd->...s", query.float(), key.float()) * scaling
    softcap = getattr(info.model.config, "attn_logit_softcapping", None)
    return torch.tanh(scores / softcap) * softcap if softcap else scores


def qk_scores(info: ModelInfo, trace: Trace, layer: int, position: int = 0) -> torch.Tensor:
    """Scores from recorded position `position` to every position: (batch, n_heads, seq).

    Needs a trace with "qkv". Masked positions (after the prompt, padding) are not masked here.
    """
    return attention_logits(info, layer, trace.q[layer][:, :, position], trace.k[layer])


@contextmanager
def capture_rotary(info: ModelInfo):
    """Record the rotary (cos, sin) each attention module receives: yields {layer: (cos, sin)},
    each (batch, seq, d_rot). Empty for models without rotary embeddings passed to attention
    (e.g. GPT-2's learned positions). A pass that continues a cached prefix (its cache_position,
    or on transformers 5 its position_ids, does not start at 0, e.g. run_with_trace(share_prefix=True)) is appended to the prefix's, so
    positions index the whole sequence."""
    found: dict = {}

    def make_hook(layer):
        def hook(module, args, kwargs):
            pe = kwargs.get("position_embeddings")
            if pe is None:
                return
            cos, sin = pe[0].detach().float().cpu(), pe[1].detach().float().cpu()
            start = kwargs.get("cache_position")
            if start is None and kwargs.get("position_ids") is not None:  # transformers 5 passes no cache_position
                start = kwargs["position_ids"].reshape(-1)
            if start is not None and int(start[0]) > 0 and layer in found:
                old_cos, old_sin = found[layer]
                if old_cos.shape[-2] == int(start[0]):  # the continuation of the recorded prefix
                    batch = max(old_cos.shape[0], cos.shape[0])
                    cos = torch.cat([old_cos.expand(batch, -1, -1), cos.expand(batch, -1, -1)], dim=-2)
                    sin = torch.cat([old_sin.expand(batch, -1, -1), sin.expand(batch, -1, -1)], dim=-2)
            found[layer] = (cos, sin)
        return hook

    with ExitStack() as stack:
        for layer, attention in enumerate(info.attentions):
            stack.callback(attention.register_forward_pre_hook(make_hook(layer), with_kwargs=True).remove)
        yield found


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def unrotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Undo transformers' rotary embedding (x * cos + rotate_half(x) * sin) on x (..., seq, d_head).

    cos, sin: (..., seq, d_rot), broadcastable to x; with d_rot < d_head (partial rotary) only the
    first d_rot dimensions were rotated and only they are turned back.
    """
    d_rot = cos.shape[-1]
    rot, rest = x[..., :d_rot].float(), x[..., d_rot:].float()
    return torch.cat([rot * cos - _rotate_half(rot) * sin, rest], dim=-1)


@contextmanager
def replace_query(info: ModelInfo, queries: dict, positions: torch.Tensor):
    """Attend from `positions` (batch,) with other queries: for each (layer, head) in `queries`
    ((batch, d_head) query vectors, as recorded: after rotary and any q norm), that row of the
    head's pattern becomes softmax(scores of the new query against the run's own keys).

    The keys each row may see are the ones the model's own pattern gives non-zero weight (so
    causal, padding and sliding-window masks carry over).
    """
    by_layer = _per_layer(info, queries)
    positions = torch.as_tensor(positions).long()

    def edit(layer, weights, query, key):
        new = weights.clone()
        rows = torch.arange(weights.shape[0])
        for head in by_layer[layer]:
            q = queries[(layer, head)].to(key.device)
            scores = attention_logits(info, layer, q, key[:, head])  # (batch, seq)
            visible = weights[rows, head, positions] > 0
            scores = scores.masked_fill(~visible, float("-inf"))
            new[rows, head, positions] = torch.softmax(scores, dim=-1).to(weights.dtype)
        return new

    with edit_attention(info, edit, heads=list(queries)):
        yield


@torch.no_grad()
def last_hidden_with_queries(info: ModelInfo, prompts: list, queries: dict, batch_size: int = 16) -> torch.Tensor:
    """Final-normed hidden state at each prompt's last position when the chosen heads attend from
    there with other queries (replace_query; queries {(layer, head): (n_prompts, d_head)}):
    (n_prompts, d_model), in the order of `prompts`.

    The edit changes only the last position, which no earlier token reads, so prompts that share
    their demonstrations run them once, unedited, and only their own tokens are replayed over the
    cached keys and values with the edit on (at the last token's place in the replay): the same
    numbers as whole passes under replace_query, up to float rounding.
    """
    from .evaluation import _prefix_groups, _shared_prefix_length, cached_prefix, replay
    from .prompts import encode_prompts

    out = torch.empty(len(prompts), info.d_model)
    for idx in _prefix_groups(prompts, batch_size):
        batch = encode_prompts(info, [prompts[i] for i in idx])
        chosen = {lh: q[idx] for lh, q in queries.items()}
        shared = _shared_prefix_length(batch)
        rows = torch.arange(len(idx))
        if shared:
            cache = cached_prefix(info, batch.input_ids[:1, :shared])  # before the edit: it acts at the last position only
            with replace_query(info, chosen, batch.last_positions - shared):
                hidden = replay(info, cache, batch.input_ids[:, shared:], batch.attention_mask, repeat=len(idx),
                                reuse=False, positional_ok=True)
            hidden = hidden[rows.to(hidden.device), (batch.last_positions - shared).to(hidden.device)]
        else:
            with replace_query(info, chosen, batch.last_positions):
                hidden = info.decoder(input_ids=batch.input_ids.to(info.device),
                                      attention_mask=batch.attention_mask.to(info.device), use_cache=False).last_hidden_state
            hidden = hidden[rows.to(hidden.device), batch.last_positions.to(hidden.device)]
        out[torch.as_tensor(idx)] = hidden.float().cpu()
    return out
