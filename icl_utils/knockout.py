"""Attention knock-out: in chosen layers, chosen positions may not attend to chosen other positions.

The blocked attention weights are set to zero and each edited row is renormalised to sum to one,
which is exactly what a logit of -inf before the softmax would give (Wang et al. 2023, "Label words
are anchors"). Every head of a chosen layer takes the edit. What is blocked is a boolean mask
`blocked` (batch, seq, seq): blocked[b, q, k] = True forbids position q of prompt b to read
position k. `blocking_mask` builds it from (query position, key positions) pairs, and
`label_demo_pairs`, `last_query_pairs` and `random_pairs` write the pairs of the two standard
conditions and their control.

The edit goes through icl_utils.tracing.edit_attention, so it is removed on exit, also after an
exception.

Two exact shortcuts make many knock-outs cheap (causal attention: no position reads a later one):

* `last_position_runs`: a knock-out that edits only the last position's attention leaves every
  earlier position as in the clean run, so the prompts' shared demonstrations run once, each
  prompt's own tokens once, and only the last token is replayed under each knock-out.
* `shared_prefix_runs`: a knock-out inside the demonstrations that a group of prompts shares
  (label_demo_pairs) changes those positions identically for every query of the group, so the
  demonstrations run once per knock-out (keys and values cached) and every query is replayed on
  that cache with nothing to edit. The layers below a knock-out's lowest layer are the clean run's:
  they are taken from one recorded clean pass, not computed again.

Both replay their tokens packed side by side after the cached keys and values (`packed_step`:
several continuations in one sequence, each at its own positions and seeing only its own prompt),
so the cache is read once per pass instead of copied once per setting or query.
"""
from __future__ import annotations

import copy
import random
from contextlib import contextmanager, nullcontext

import torch

from .evaluation import _shared_prefix_length, cached_prefix
from .tracing import edit_attention, record_layers, reuse_layers_below
from .models import ModelInfo


def blocking_mask(batch, pairs: list) -> torch.Tensor:
    """bool (batch, seq, seq) from `pairs`: per prompt, a list of (query position, key positions)."""
    n, seq = batch.input_ids.shape
    if len(pairs) != n:
        raise ValueError(f"pairs has {len(pairs)} rows but the batch has {n} prompts.")
    blocked = torch.zeros(n, seq, seq, dtype=torch.bool)
    for row, row_pairs in enumerate(pairs):
        length = int(batch.attention_mask[row].sum())
        for query, keys in row_pairs:
            keys = list(keys)
            if not 0 <= query < length or any(not 0 <= k < length for k in keys):
                raise ValueError(f"Prompt {row} has {length} tokens; cannot block {query} -> {keys}.")
            if query in keys:
                raise ValueError(f"Position {query} of prompt {row} cannot be blocked from itself.")
            blocked[row, query, keys] = True
    return blocked


def label_demo_pairs(batch, inputs, whole: bool = False) -> list:
    """Each demonstration's label position, with the tokens it must not see.

    inputs: icl_utils.prompts.input_positions(info, batch). whole=False: the demonstration's input
    tokens. whole=True: all of the demonstration's text before its label ("Input: dog\nLabel:" and the
    separator before it), i.e. every position after the previous label position (after the first
    token, for the first demonstration).
    """
    if not whole:
        return [list(zip(labels, demos)) for labels, demos in zip(batch.label_positions, inputs.demos)]
    return [[(p, list(range(start + 1, p))) for start, p in zip([0] + labels[:-1], labels)]
            for labels in batch.label_positions]


def last_query_pairs(batch, inputs, whole: bool = False) -> list:
    """The last position of each prompt, with the query's input tokens (whole=False) or all the
    query's text before the last position (whole=True: every position after the last label)."""
    lasts = [int(t) for t in batch.last_positions]
    if not whole:
        return [[(last, query)] for last, query in zip(lasts, inputs.query)]
    return [[(last, list(range((labels[-1] if labels else 0) + 1, last)))]
            for last, labels in zip(lasts, batch.label_positions)]


def random_pairs(pairs: list, seed: int = 0) -> list:
    """The control: the same query positions, blocked from as many keys in all as `pairs` blocks in
    each prompt, drawn at random among each query position's other earlier positions (never the
    first token, which many heads use as an attention sink, never the query position itself, never
    the keys `pairs` blocks).

    Each query position gets as many random keys as it has blocked ones where it can. A position
    with too few other earlier positions (the first label after a long first demonstration, whose
    text is nearly all that precedes it) passes its shortfall on to the later query positions of
    the same prompt, then, if they are full, to the earlier ones, so the number of blocked
    (query, key) pairs per prompt always matches. Only a prompt that cannot match as a whole is
    refused.
    """
    rng = random.Random(seed)
    out = []
    for row, row_pairs in enumerate(pairs):
        candidates = [sorted(set(range(1, query)) - set(keys)) for query, keys in row_pairs]
        wanted = [len(set(keys)) for _, keys in row_pairs]
        if sum(len(c) for c in candidates) < sum(wanted):
            raise ValueError(f"Prompt {row}: its query positions have {sum(len(c) for c in candidates)} other earlier "
                             f"positions in all; {sum(wanted)} random keys are needed to match the knock-out.")
        counts, carry = [], 0
        for want, free in zip(wanted, candidates):  # forward: a shortfall moves on to later positions
            take = min(want + carry, len(free))
            carry += want - take
            counts.append(take)
        for i in reversed(range(len(counts))):  # what the later positions could not take goes back
            extra = min(carry, len(candidates[i]) - counts[i])
            counts[i] += extra
            carry -= extra
        out.append([(query, sorted(rng.sample(free, count)))
                    for (query, _), free, count in zip(row_pairs, candidates, counts)])
    return out


def _check_layers(info: ModelInfo, layers) -> set:
    chosen = set()
    for layer in layers:
        if not 0 <= int(layer) < info.n_layers:
            raise ValueError(f"Layer {layer} out of range: the model has {info.n_layers} layers (0 to {info.n_layers - 1}).")
        chosen.add(int(layer))
    return chosen


@contextmanager
def knock_out(info: ModelInfo, layers, blocked: torch.Tensor):
    """During the context, in `layers` (all heads), position q of prompt b cannot attend to key k
    where blocked[b, q, k]; each edited row is renormalised. Rows with nothing blocked are untouched.

    blocked: bool (batch, seq, seq), e.g. from blocking_mask; the batch you run must match it.
    """
    blocked = torch.as_tensor(blocked, dtype=torch.bool)
    if blocked.ndim != 3 or blocked.shape[1] != blocked.shape[2]:
        raise ValueError(f"blocked must be a (batch, seq, seq) mask, not shape {tuple(blocked.shape)}.")
    with _knock_out_rows(info, {layer: blocked for layer in _check_layers(info, layers)}):
        yield


@contextmanager
def _knock_out_rows(info: ModelInfo, masks: dict):
    """knock_out with one mask per layer, {layer: bool (batch, m, seq)}: its m rows are the last m
    query positions of a sequence of seq tokens (m = seq for a whole forward pass, m = 1 for a
    last-token step on cached keys and values)."""

    def edit(layer, weights, query, key):
        if layer not in masks:
            return None
        mask = masks[layer]
        batch, _, q_len, k_len = weights.shape
        if batch != mask.shape[0] or k_len != mask.shape[2] or q_len > mask.shape[1]:
            raise ValueError(
                f"The knock-out mask was built for {mask.shape[0]} prompts of {mask.shape[2]} tokens; "
                f"the model ran {batch} prompts of {k_len} tokens."
            )
        block = mask[:, mask.shape[1] - q_len :].to(weights.device)[:, None]  # (batch, 1, q, k)
        kept = weights.masked_fill(block, 0.0)
        total = kept.sum(-1, keepdim=True)
        touched = block.any(-1, keepdim=True)
        if bool((touched & (total <= 0)).any()):
            raise ValueError(f"Layer {layer}: a knock-out blocks every position some query can attend to.")
        return torch.where(touched, kept / total.clamp_min(torch.finfo(total.dtype).tiny), weights)

    with edit_attention(info, edit):
        yield


def _sliding_windows(info: ModelInfo) -> dict:
    """{layer: window} for the layers that attend only to the last `window` positions (from the config)."""
    config = info.model.config
    window = getattr(config, "sliding_window", None)
    if not window:
        return {}
    types = getattr(config, "layer_types", None)
    if types is not None:
        return {layer: window for layer, kind in enumerate(types) if "sliding" in str(kind)}
    return {layer: window for layer in range(info.n_layers)} if getattr(config, "use_sliding_window", True) else {}


@torch.no_grad()
def packed_step(info: ModelInfo, cache, ids: torch.Tensor, positions: torch.Tensor, visible: torch.Tensor,
                 blocks: dict | None = None) -> torch.Tensor:
    """Several independent continuations of a cached prefix, packed into one sequence per row.

    cache: keys and values of p prefix tokens (rows of them); ids, positions: (rows, q) the new
    tokens and the positions they stand at (several may share one); visible: bool (q, q), which new
    tokens each new one reads besides the whole prefix (itself included). blocks: {layer: bool
    (rows, q, p + q)} keys each new token may not read in that layer (a knock-out). A layer with a
    sliding window gets it as a block too (zero-and-renormalise is exactly the window's mask).
    Keys and values are read once per row, however many continuations share them: that is what
    makes many knock-outs of one last token cheap. Returns final-normed states (rows, q, d_model);
    the cache is extended.
    """
    rows, q = ids.shape
    p = cache.get_seq_length()
    sees = torch.ones(rows, q, p + q, dtype=torch.bool)
    sees[:, :, p:] = visible
    key_positions = torch.cat([torch.arange(p).expand(rows, p), positions], 1)
    blocks = dict(blocks or {})
    for layer, window in _sliding_windows(info).items():
        outside = sees & (key_positions[:, None, :] <= positions[:, :, None] - window)
        if bool(outside.any()):
            blocks[layer] = outside | blocks[layer] if layer in blocks else outside
    device = info.device
    with _knock_out_rows(info, blocks) if blocks else nullcontext():
        out = info.decoder(input_ids=ids.to(device), position_ids=positions.to(device),
                           attention_mask=sees[:, None].to(device), past_key_values=cache, use_cache=True)
    return out.last_hidden_state


@torch.no_grad()
def last_position_runs(info: ModelInfo, batch, settings: list, pack_tokens: int = 1024) -> torch.Tensor:
    """Final-normed hidden state at each prompt's last position, once per setting: (n_settings, batch, d_model).

    settings: a list of (layers, blocked), blocked a (batch, seq, seq) mask as for knock_out that
    blocks only rows at each prompt's last position (or None for the clean run). Exact and cheap:
    the tokens all prompts share (e.g. the demonstrations of one build_prompt_groups group) run
    once; then, packed side by side after them (packed_step, about pack_tokens new tokens per
    pass), each prompt's own tokens but the last, and its last token once per setting, each copy
    seeing its own prompt and itself. Unembed with info.logits_from_final_hidden.
    """
    lengths = batch.attention_mask.sum(1).tolist()
    is_last = torch.zeros(batch.input_ids.shape, dtype=torch.bool)
    is_last[torch.arange(len(lengths)), batch.last_positions] = True
    for layers, blocked in settings:
        _check_layers(info, layers)
        if blocked is not None and bool((blocked.any(-1) & ~is_last).any()):
            raise ValueError("last_position_runs replays only the last token: block rows at the last position "
                             "only, or run the whole batch under knock_out.")
    n_settings = len(settings)
    out = torch.empty(n_settings, len(lengths), info.d_model)
    shared = _shared_prefix_length(batch)  # every prompt keeps at least its last token
    prefix = cached_prefix(info, batch.input_ids[:1, :shared]) if shared else None
    packs, size = [[]], 0  # prompts whose own tokens and last-token copies fit one pass
    for row, length in enumerate(lengths):
        need = length - 1 - shared + n_settings
        if packs[-1] and size + need > pack_tokens:
            packs.append([])
            size = 0
        packs[-1].append(row)
        size += need
    for pack in packs:
        ids, positions, segment, copy_of, slots = [], [], [], [], {}
        for row in pack:
            own = list(range(shared, lengths[row] - 1))
            start = len(ids)
            ids += batch.input_ids[row, own].tolist() + [int(batch.input_ids[row, lengths[row] - 1])] * n_settings
            positions += own + [lengths[row] - 1] * n_settings
            segment += [row] * (len(own) + n_settings)
            copy_of += [False] * len(own) + [True] * n_settings
            slots[row] = (start, start + len(own))  # where its own tokens sit; its copies follow
        ids, positions, segment, copy_of = (torch.tensor(x) for x in (ids, positions, segment, copy_of))
        q = len(ids)
        visible = (segment[:, None] == segment[None, :]) & ~copy_of[None, :] & (positions[None, :] <= positions[:, None])
        visible |= torch.eye(q, dtype=torch.bool)
        blocks: dict = {}
        for i, (layers, blocked) in enumerate(settings):
            if blocked is None:
                continue
            for row in pack:
                start, stop = slots[row]
                keys = blocked[row, lengths[row] - 1, : lengths[row] - 1]
                for layer in _check_layers(info, layers):
                    if layer not in blocks:
                        blocks[layer] = torch.zeros(1, q, shared + q, dtype=torch.bool)
                    # a blocked key k sits at k in the shared tokens, else among this prompt's own tokens
                    blocks[layer][0, stop + i, :shared] = keys[:shared]
                    blocks[layer][0, stop + i, shared + start : shared + stop] = keys[shared:]
        cache = _empty_cache() if prefix is None else copy.deepcopy(prefix) if len(packs) > 1 else prefix
        hidden = packed_step(info, cache, ids[None], positions[None], visible, blocks)[0]
        for row in pack:
            stop = slots[row][1]
            out[:, row] = hidden[stop : stop + n_settings].float().cpu()
    return out


def _empty_cache():
    from transformers import DynamicCache

    return DynamicCache()


@torch.no_grad()
def shared_prefix_runs(info: ModelInfo, batch, settings: list, settings_per_pass: int = 16) -> torch.Tensor:
    """Final-normed hidden state at each prompt's last position, once per setting: (n_settings, batch, d_model),
    for prompts that share their demonstrations (one group of build_prompt_groups) and knock-outs
    inside those shared demonstrations (label_demo_pairs of one prompt, repeated for every prompt).

    settings: a list of (layers, blocked), blocked a (batch, seq, seq) mask as for knock_out, the same
    for every prompt, with every blocked row and key among the tokens all prompts share (or None:
    the clean run). Exact and cheap: the shared tokens run once per setting under its knock-out (one
    row each, settings_per_pass rows per pass, keys and values cached), then every prompt's own
    tokens, packed side by side after each setting's cache (packed_step), with nothing left to edit.
    Below a knock-out's lowest layer nothing differs from the clean run, so the clean run goes once
    with every layer recorded (tracing.record_layers) and the settings run in passes by their lowest
    layer, taking the layers below it from that record (tracing.reuse_layers_below).
    """
    n, seq = batch.input_ids.shape
    shared = _shared_prefix_length(batch)
    if shared == 0:
        raise ValueError("shared_prefix_runs needs prompts that share their demonstrations (build_prompt_groups); "
                         "these share no token.")
    prefix_masks = []
    for layers, blocked in settings:
        _check_layers(info, layers)
        if blocked is None:
            prefix_masks.append(None)
            continue
        blocked = torch.as_tensor(blocked, dtype=torch.bool)
        if blocked.shape != (n, seq, seq):
            raise ValueError(f"blocked must have shape {(n, seq, seq)} (the batch's prompts and tokens), "
                             f"not {tuple(blocked.shape)}.")
        inside = blocked[:, :shared, :shared]
        if int(inside.sum()) != int(blocked.sum()):
            raise ValueError(f"shared_prefix_runs replays the prompts' own tokens unedited: block rows and keys among "
                             f"the first {shared} tokens (the shared demonstrations) only, or run the whole batch "
                             f"under knock_out.")
        if not bool((inside == inside[:1]).all()):
            raise ValueError("The knock-out differs between prompts inside their shared demonstrations: build it "
                             "from one prompt and repeat it (the demonstrations run once for all prompts).")
        prefix_masks.append(inside[0])
    # every prompt's own tokens side by side, each at its own positions, seeing only itself
    lengths = batch.attention_mask.sum(1).tolist()
    own = [torch.arange(shared, length) for length in lengths]
    segment = torch.cat([torch.full((len(o),), r) for r, o in enumerate(own)])
    positions = torch.cat(own)
    visible = (segment[:, None] == segment[None, :]) & (positions[:, None] >= positions[None, :])
    ids = torch.cat([batch.input_ids[r, o] for r, o in enumerate(own)])
    last = torch.cumsum(torch.tensor([len(o) for o in own]), 0) - 1  # each prompt's last token in the packing
    out = torch.empty(len(settings), n, info.d_model)
    lowest = [min(_check_layers(info, layers)) if mask is not None and bool(mask.any()) and len(layers) else info.n_layers
              for (layers, _), mask in zip(settings, prefix_masks)]
    by_depth: dict = {}  # lowest knocked-out layer -> settings; one pass each (settings_per_pass rows at most)
    for s, below in enumerate(lowest):
        by_depth.setdefault(below, []).append(s)
    clean_prefix = clean_queries = None
    if max(lowest) > 0:
        # the clean run once, every layer's output and cache writes recorded: a setting whose knock-out
        # starts at layer b takes layers 0..b-1 from it (nothing below b differs from the clean run)
        clean_cache = _empty_cache()
        with record_layers(info, clean_cache) as clean_prefix:
            info.decoder(input_ids=batch.input_ids[:1, :shared].to(info.device), past_key_values=clean_cache, use_cache=True)
        with record_layers(info, clean_cache) as clean_queries:
            clean = packed_step(info, clean_cache, ids[None], positions[None], visible)[0, last.to(info.device)]
        out[by_depth.pop(info.n_layers, [])] = clean.float().cpu()  # nothing knocked out: the clean run
    for below, group in sorted(by_depth.items()):
        for start in range(0, len(group), settings_per_pass):
            chunk = group[start : start + settings_per_pass]
            masks: dict = {}  # layer -> (rows, shared, shared): row i is setting chunk[i]'s mask, False where it leaves the layer
            for i, s in enumerate(chunk):
                for layer in _check_layers(info, settings[s][0]):
                    if layer not in masks:
                        masks[layer] = torch.zeros(len(chunk), shared, shared, dtype=torch.bool)
                    masks[layer][i] = prefix_masks[s]
            cache = _empty_cache()
            with _knock_out_rows(info, masks), reuse_layers_below(info, clean_prefix, below, cache) if below else nullcontext():
                info.decoder(input_ids=batch.input_ids[:1, :shared].expand(len(chunk), -1).to(info.device),
                             past_key_values=cache, use_cache=True)
            with reuse_layers_below(info, clean_queries, below, cache) if below else nullcontext():
                hidden = packed_step(info, cache, ids.expand(len(chunk), -1), positions.expand(len(chunk), -1), visible)
            out[chunk] = hidden[:, last.to(hidden.device)].float().cpu()
    return out
