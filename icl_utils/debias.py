"""Attention edits that reduce label biases of in-context learning (Yu & Ananiadou 2024), chapter 7.

Majority-label bias. Head h's output at the last position T is a sum over positions,
`o_T = sum_p alpha_{T,p} W_O v_p`. Softmax weights sum to one, so a label with more demonstrations
collects more attention in total. The fix multiplies the attention-weighted value-output vectors at
the label positions of the minority label(s), *without* renormalising, by `a = a_c * a_v`
(a_v = majority count / minority count). The paper's text does not say unambiguously whether the
new weight is `a * alpha` or `(1 + a) * alpha`, so both readings are implemented
(`minority_scale(..., reading="multiply" | "one_plus")`) and `scale_attention` applies either.

Anchor re-weighting (Wang et al. 2023) has the same form with learned multipliers exp(beta) per
group of label positions: `group_scale` builds it for any grouping (by label class, or by the role
minority / majority).

Recency bias. With rotary positions the score `q_T . k_p` depends on where p sits. The fix scores
the chosen heads' attention from T with the rotation undone (`positionless_attention`):
`alpha'_{T,p} = softmax_p(scaling * unrot(q_T) . unrot(k_p))` over the keys the model lets T see.

Both edits touch only the last position's attention row, so every earlier position is as in the
clean run. `last_token_runs` uses that: it runs each set of demonstrations once, each query's
tokens before the last once, and then the last token under every fix in one step (one copy of the
last token per fix, each with its own heads and multipliers, none seeing another); the numbers
are those of full passes under `scale_attention` / `positionless_attention`.
"""
from __future__ import annotations

import copy
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from .evaluation import cached_prefix, replay
from .models import ModelInfo
from .prompts import encode_prompts, label_token_ids
from .qk import attention_logits, capture_rotary, unrotate
from .tracing import _per_layer, _registered, edit_attention, interventions

READINGS = ("multiply", "one_plus")


def group_scale(batch, multiplier: Callable) -> torch.Tensor:
    """(batch, seq) multipliers: `multiplier(classes, c)` at each label position of class c (classes:
    the prompt's demonstration classes), 1 elsewhere."""
    scale = torch.ones(batch.input_ids.shape, dtype=torch.float)
    for row, (positions, classes) in enumerate(zip(batch.label_positions, batch.label_classes)):
        for p, c in zip(positions, classes):
            scale[row, p] = float(multiplier(classes, c))
    return scale


def minority_scale(batch, a_c: float, reading: str = "multiply") -> torch.Tensor:
    """(batch, seq) multipliers for `scale_attention` at the label positions of each prompt's
    minority classes, 1 elsewhere (and everywhere in a balanced prompt). With a = a_c * a_v,
    a_v = (count of the most frequent class) / (count of this class) per prompt:

    reading "multiply": alpha' = a * alpha (a_c = 1 / a_v leaves the prompt unchanged);
    reading "one_plus": alpha' = (1 + a) * alpha (a_c = 0 leaves it unchanged).
    """
    if reading not in READINGS:
        raise ValueError(f"reading must be one of {READINGS}, not {reading!r}")

    def multiplier(classes, c):
        counts = {k: classes.count(k) for k in set(classes)}
        majority = max(counts.values())
        if counts[c] == majority:
            return 1.0
        a = a_c * majority / counts[c]
        return a if reading == "multiply" else 1.0 + a

    return group_scale(batch, multiplier)


def role_scale(batch, minority: float, majority: float) -> torch.Tensor:
    """Anchor re-weighting by role: `minority` at the label positions of the classes with fewer
    demonstrations, `majority` at those of the most frequent class; a balanced prompt is unchanged."""
    def multiplier(classes, c):
        counts = {k: classes.count(k) for k in set(classes)}
        if len(set(counts.values())) == 1:
            return 1.0
        return majority if counts[c] == max(counts.values()) else minority

    return group_scale(batch, multiplier)


def class_scale(batch, scales: dict) -> torch.Tensor:
    """Anchor re-weighting by label class: scales[c] at every label position of class c."""
    return group_scale(batch, lambda classes, c: scales.get(c, 1.0))


def _rows(query_positions, weights) -> tuple:
    """Batch rows and the query rows (indices into the weights' query axis) of each prompt's query
    position. In a pass over a cached prefix the weights hold only the new tokens' rows: the query
    axis starts at offset = key length - query length."""
    positions = torch.as_tensor(query_positions, device=weights.device).long()
    if positions.shape != (weights.shape[0],):
        raise ValueError(
            f"query_positions must hold one position per prompt of the batch ({weights.shape[0]}), "
            f"got shape {tuple(positions.shape)}; pass batch.last_positions of the batch you run."
        )
    offset = weights.shape[-1] - weights.shape[-2]
    if bool((positions < offset).any()) or bool((positions >= weights.shape[-1]).any()):
        raise ValueError(f"query positions {positions.tolist()} are not among the positions this pass computes "
                         f"({offset} to {weights.shape[-1] - 1}); replay at least the last token.")
    return torch.arange(weights.shape[0], device=weights.device), positions, positions - offset


@contextmanager
def scale_attention(info: ModelInfo, heads, query_positions, scale: torch.Tensor):
    """alpha'_{T,p} = scale[b, p] * alpha_{T,p} in `heads`, at each prompt's query position T, no renormalising.

    heads: (layer, head) pairs. query_positions: (batch,) positions in the whole sequence, e.g.
    batch.last_positions. scale: (batch, seq) over the whole sequence, e.g. minority_scale(batch, a_c);
    a pass over a cached prefix may hold fewer keys (the scale is cut to them). Because the head's
    output at T is sum_p alpha_{T,p} v_p, this multiplies the attention-weighted value (and
    value-output) vector of position p by scale[b, p] and changes nothing else.
    """
    def edit(layer, weights, query, key):
        rows, _, q_rows = _rows(query_positions, weights)
        if scale.shape[0] != weights.shape[0] or scale.shape[1] < weights.shape[-1]:
            raise ValueError(f"scale must be (batch, seq) = {(weights.shape[0], weights.shape[-1])}, "
                             f"got {tuple(scale.shape)}; build it from the batch you run.")
        new = weights.clone()
        new[rows, :, q_rows] = weights[rows, :, q_rows] * scale[:, : weights.shape[-1]].to(weights)[:, None, :]
        return new

    with edit_attention(info, edit, heads=heads):
        yield


def _require_rotary(info: ModelInfo) -> None:
    if info.positions != "rotary":
        raise ValueError(
            f"{info.name} uses {info.positions} positions, not rotary: there is no rotation to remove from "
            "q and k. The positional part of the score is not separable here; the recency fix applies "
            "to rotary models only."
        )


def _rotary_table(layer: int, captured: dict, earlier: dict | None, n_keys: int) -> tuple:
    """(cos, sin), each (n_keys, d_rot): the rotary tables of positions 0 .. n_keys - 1 for `layer`,
    from what this pass captured (its own positions, the last ones) and `earlier` (the positions of
    a cached prefix, captured when it ran)."""
    cos, sin = (x[0] for x in captured[layer])  # positions are the same in every row (right padding)
    if cos.shape[0] < n_keys:
        if earlier is None or layer not in earlier:
            raise ValueError(
                f"layer {layer} attends to {n_keys} keys but this pass computed rotary positions for only the last "
                f"{cos.shape[0]}: over a cached prefix, pass the prefix's rotary tables (prefix_rotary=, captured "
                "with qk.capture_rotary while the prefix ran).")
        cos = torch.cat([earlier[layer][0], cos])
        sin = torch.cat([earlier[layer][1], sin])
    if cos.shape[0] != n_keys:
        raise ValueError(f"rotary tables cover {cos.shape[0]} positions but layer {layer} has {n_keys} keys")
    return cos, sin


def _positionless_rows(info, layer, weights, query, key, rows, q_rows, positions, cos, sin) -> torch.Tensor:
    """softmax over visible keys of scaling * unrot(q_T) . unrot(k_p): (len(rows), heads, keys)."""
    dev = query.device
    c, s = cos.to(dev), sin.to(dev)
    q = unrotate(query[rows, :, q_rows], c[positions][:, None], s[positions][:, None])  # (rows, heads, d)
    k = unrotate(key[rows], c, s)  # (rows, heads, keys, d)
    scores = attention_logits(info, layer, q, k)
    visible = weights[rows, :, q_rows] > 0
    return torch.softmax(scores.masked_fill(~visible, float("-inf")), -1).to(weights.dtype)


@contextmanager
def positionless_attention(info: ModelInfo, heads, query_positions, prefix_rotary: dict | None = None):
    """Attention of `heads` from each prompt's query position T recomputed without rotary positions:
    alpha'_{T,p} = softmax_p(scaling * unrot(q_T) . unrot(k_p)), over the keys the model's own pattern
    lets T see (so causal, padding and sliding-window masks carry over; softcap as the model).

    In a pass over a cached prefix (evaluation.replay), the cached keys need the rotary tables of
    their positions: pass prefix_rotary, the {layer: (cos, sin)} that qk.capture_rotary recorded while
    the prefix ran (each (1, prefix length, d_rot)); query_positions stay positions in the whole sequence.

    Rotary models only: with learned absolute positions (GPT-2) the position is added to the
    residual stream before the first layer and cannot be taken out of one head's q and k, so this
    raises ValueError (the book does not apply the recency fix to such models).
    """
    _require_rotary(info)
    earlier = None if prefix_rotary is None else {l: (c[0], s[0]) for l, (c, s) in prefix_rotary.items()}

    def edit(layer, weights, query, key):
        rows, positions, q_rows = _rows(query_positions, weights)
        cos, sin = _rotary_table(layer, rotary, earlier, weights.shape[-1])
        new = weights.clone()
        new[rows, :, q_rows] = _positionless_rows(info, layer, weights, query, key, rows, q_rows, positions.cpu(), cos, sin)
        return new

    with capture_rotary(info) as rotary, edit_attention(info, edit, heads=heads):
        yield


# ----------------------------------------------------------------------------------------------
# Many fixes at once, replaying only the last token


@dataclass(frozen=True)
class Fix:
    """One condition of a last-token experiment: in `heads`, the last position's attention is
    recomputed without positions (`positionless`) and/or multiplied by `scale(batch)` ((batch, seq)
    multipliers, e.g. lambda b: minority_scale(b, 0.8)). Fix("no fix") changes nothing. heads may
    also be a function of the prompt (an ICLPrompt -> (layer, head) pairs), e.g. a different random
    head set for each demonstration set, so that many sets share one run."""

    name: str
    heads: tuple = ()
    scale: Callable | None = None
    positionless: bool = False


@dataclass
class LastTokenRuns:
    """label_logits: (n_fixes, n_prompts, n_classes), class order of the prompts' label words.
    attention: {layer: (n_fixes, n_prompts, n_heads, seq)} attention from the last position (after
    the fix) to every position of the prompt (zeros past its end), for the layers asked for."""

    fixes: list
    label_logits: torch.Tensor
    attention: dict


def _demo_groups(prompts: list) -> list:
    groups: dict = {}
    for i, p in enumerate(prompts):
        groups.setdefault((tuple(p.demos), tuple(p.label_words.items())), []).append(i)
    return list(groups.values())


def _prefix_lengths(batch, groups: list) -> list:
    """Per demonstration group: tokens all its prompts share, leaving each at least one of its own."""
    lengths = batch.attention_mask.sum(1)
    out = []
    for idx in groups:
        ids = batch.input_ids[idx]
        same = (ids == ids[:1]).long().cumprod(1).sum(1)
        out.append(int(torch.minimum(same, lengths[idx] - 1).min()))
    return out


@torch.no_grad()
def last_token_runs(info: ModelInfo, prompts: list, fixes: list, record_layers=(), max_rows: int = 1024,
                    progress: bool = False) -> LastTokenRuns:
    """Every prompt under every fix (a list of Fix), exactly as full passes under
    scale_attention / positionless_attention would give, for a fraction of the compute.

    The demonstrations of each group of prompts that share them run once (demonstration sets with
    prefixes of one length in one batch, keys and values cached); each query's tokens before the
    last run once; then the last token runs once per fix, all fixes in one step: copy i of a
    prompt's last token sits at the last position, sees the cached keys and itself only, and takes
    fix i (its own heads and multipliers). max_rows bounds the last-token rows (prompts x fixes) of
    one step. progress: a progress bar over the steps.
    """
    if not prompts or not fixes:
        raise ValueError("last_token_runs needs at least one prompt and one Fix (e.g. Fix('no fix'))")
    if any(f.positionless for f in fixes):
        _require_rotary(info)
    per_fix = [_heads_per_prompt(info, f.heads, prompts) for f in fixes]
    classes = list(prompts[0].label_words)
    if any(list(p.label_words) != classes or p.label_words != prompts[0].label_words for p in prompts):
        raise ValueError("all prompts must share their classes and label words")
    ids = label_token_ids(info.tokenizer, [prompts[0].label_words[c] for c in classes])
    n_fix = len(fixes)
    batch = encode_prompts(info, prompts)
    scales = [None if f.scale is None else f.scale(batch) for f in fixes]
    lengths = batch.attention_mask.sum(1)
    groups = _demo_groups(prompts)
    prefix = _prefix_lengths(batch, groups)
    logits = torch.zeros(n_fix, len(prompts), len(classes))
    attention = {layer: torch.zeros(n_fix, len(prompts), info.n_heads, batch.input_ids.shape[1]) for layer in record_layers}
    chunk = max(1, max_rows // n_fix)
    steps = []  # (prefix length, demonstration groups, prompt length, [(prompt, group slot)])
    for shared in sorted(set(prefix)):
        slots = [g for g, n in enumerate(prefix) if n == shared]
        members = [(i, slot) for slot, g in enumerate(slots) for i in groups[g]]
        for length in sorted({int(lengths[i]) for i, _ in members}):
            rows_all = [(i, slot) for i, slot in members if int(lengths[i]) == length]
            steps += [(shared, slots, length, rows_all[s : s + chunk]) for s in range(0, len(rows_all), chunk)]
    cache, cached_for = None, None
    for shared, slots, length, part in tqdm(steps, desc="last-token runs", disable=not progress, leave=False):
        if cached_for != (shared, tuple(slots)):  # the demonstrations of these sets, once
            with capture_rotary(info) as prefix_rot:
                cache = cached_prefix(info, batch.input_ids[[groups[g][0] for g in slots], :shared])
            cached_for = (shared, tuple(slots))
        rows = torch.tensor([i for i, _ in part])
        tokens = batch.input_ids[rows, :length]
        body = copy.deepcopy(cache)
        body.reorder_cache(torch.tensor([slot for _, slot in part], device=info.device))
        body_rot: dict = {}
        if length - 1 > shared:  # the query's tokens before the last, once
            with capture_rotary(info) as body_rot:
                replay(info, body, tokens[:, shared : length - 1], reuse=False)
        earlier = {l: tuple(torch.cat([prefix_rot[l][k][0]] + ([body_rot[l][k][0]] if l in body_rot else []))
                            for k in (0, 1)) for l in prefix_rot}
        plan = _row_plan(info, fixes, per_fix, scales, rows, length)
        seen: dict = {}
        with ExitStack() as stack:
            last_rot = stack.enter_context(capture_rotary(info))
            stack.enter_context(edit_attention(info, _last_row_editor(info, plan, last_rot, earlier)))
            if record_layers:
                def record(layer, query, key, value, weights, seen=seen):
                    if layer in attention:
                        seen[layer] = weights.float().cpu()
                stack.enter_context(_registered(interventions(info).recorders, record))
            hidden = _last_token_copies(info, body, tokens[:, length - 1], n_fix, length)
        out = info.label_logits(hidden.flatten(0, 1), ids).float().cpu().view(len(rows), n_fix, -1)
        logits[:, rows] = out.transpose(0, 1)
        for layer in attention:
            w = seen[layer]  # (prompts, heads, fixes, length - 1 + fixes): copy i sees the cache and itself
            own = w[:, :, torch.arange(n_fix), length - 1 + torch.arange(n_fix)]  # (prompts, heads, fixes)
            full = torch.cat([w[..., : length - 1], own[..., None]], -1)  # (prompts, heads, fixes, length)
            attention[layer][:, rows, :, :length] = full.permute(2, 0, 1, 3)
    return LastTokenRuns(list(fixes), logits, attention)


def _last_token_copies(info, cache, last_tokens, n_fix, length) -> torch.Tensor:
    """Final hidden states (prompts, n_fix, d_model) of n_fix copies of each prompt's last token, run as
    n_fix query positions that all sit at position length - 1 and see the cached keys and themselves
    only (not each other): n_fix fixes in one step without copying the cache per fix."""
    n, cached = len(last_tokens), length - 1
    keys = torch.arange(cached + n_fix)
    sees_self = keys[None, :] == cached + torch.arange(n_fix)[:, None]  # (copies, keys)
    masks = {}
    for kind in ("full_attention", "sliding_attention"):
        visible = keys[None, :] < cached
        window = getattr(info.model.config, "sliding_window", None)
        if kind == "sliding_attention" and window:
            visible = visible & (keys[None, :] > cached - window)
        masks[kind] = (visible | sees_self).expand(n, 1, n_fix, cached + n_fix).to(info.device)
    types = set(getattr(info.model.config, "layer_types", None) or [])
    mask = masks if "sliding_attention" in types else masks["full_attention"]
    ids = last_tokens[:, None].expand(n, n_fix).to(info.device)
    positions = torch.full((n, n_fix), cached, device=info.device)
    out = info.decoder(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True)
    return out.last_hidden_state


def _heads_per_prompt(info, heads, prompts) -> list:
    """[{layer: [head, ...]} for each prompt] from a Fix's heads (pairs, or a function of the prompt)."""
    if not callable(heads):
        return [_per_layer(info, heads)] * len(prompts)
    checked: dict = {}
    for p in prompts:
        key = tuple(heads(p))
        if key not in checked:
            checked[key] = _per_layer(info, key)
    return [checked[tuple(heads(p))] for p in prompts]


def _row_plan(info, fixes, per_fix, scales, rows, length) -> dict:
    """{layer: (scale (prompts, fixes, heads, length - 1 + fixes) or None, positionless (prompts, fixes, heads) or None)}:
    query copy i of each prompt takes fix i."""
    n, n_fix = len(rows), len(fixes)
    plan: dict = {}
    for i, (fix, per_prompt, scale) in enumerate(zip(fixes, per_fix, scales)):
        if scale is not None:
            s = scale[rows, :length]
            keys = torch.cat([s[:, :-1], s[:, -1:].expand(n, n_fix)], -1)  # every copy is the last position
        same: dict = {}  # prompts with the same heads, edited together
        for j, r in enumerate(rows.tolist()):
            same.setdefault(id(per_prompt[r]), (per_prompt[r], []))[1].append(j)
        for by_layer, js in same.values():
            js = torch.tensor(js)[:, None]
            for layer, heads in by_layer.items():
                mult, free = plan.get(layer, (None, None))
                hs = torch.tensor(heads)[None, :]
                if scale is not None:
                    if mult is None:
                        mult = torch.ones(n, n_fix, info.n_heads, length - 1 + n_fix)
                    mult[js, i, hs] = keys[js[:, 0]][:, None, :]
                if fix.positionless:
                    if free is None:
                        free = torch.zeros(n, n_fix, info.n_heads, dtype=torch.bool)
                    free[js, i, hs] = True
                plan[layer] = (mult, free)
    return plan


def _last_row_editor(info, plan, last_rot, earlier):
    """The edit of the last-token step: query copy i of each prompt takes fix i."""
    def edit(layer, weights, query, key):
        if layer not in plan:
            return None
        mult, free = plan[layer]  # weights: (prompts, heads, fixes, keys)
        new = weights
        if free is not None:
            cos, sin = (x.to(query.device) for x in _rotary_table(layer, last_rot, earlier, weights.shape[-1]))
            hs = free.any(0).any(0).nonzero().flatten().to(weights.device)  # only the heads some fix recomputes
            q = unrotate(query[:, hs], cos[-1], sin[-1])  # every copy sits at the last position
            keys = unrotate(key[:, hs], cos, sin)
            scores = attention_logits(info, layer, q, keys[:, :, None])  # (prompts, chosen heads, fixes, keys)
            unpositioned = torch.softmax(scores.masked_fill(~(weights[:, hs] > 0), float("-inf")), -1).to(weights.dtype)
            new = new.clone()
            new[:, hs] = torch.where(free[:, :, hs.cpu()].to(weights.device).permute(0, 2, 1)[..., None], unpositioned, new[:, hs])
        if mult is not None:
            new = new * mult.to(new).permute(0, 2, 1, 3)
        return new
    return edit
