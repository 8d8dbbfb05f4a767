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

A knock-out that edits only the last position's attention leaves every earlier position as in the
clean run (causal attention: no position reads a later one). `last_position_runs` uses this: it
computes the prefix's keys and values once and replays only the last token under each knock-out.
"""
from __future__ import annotations

import random
from contextlib import contextmanager

import torch

from .evaluation import cached_prefix, replay
from .tracing import edit_attention
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
    """The control: the same query positions, each blocked from as many keys as in `pairs`, drawn at
    random among its other earlier positions (never the first token, which many heads use as an
    attention sink, never the query position itself, never the keys `pairs` blocks)."""
    rng = random.Random(seed)
    out = []
    for row_pairs in pairs:
        row_out = []
        for query, keys in row_pairs:
            candidates = sorted(set(range(1, query)) - set(keys))
            if len(candidates) < len(keys):
                raise ValueError(f"Position {query} has {len(candidates)} other earlier positions; {len(keys)} needed.")
            row_out.append((query, sorted(rng.sample(candidates, len(keys)))))
        out.append(row_out)
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


@torch.no_grad()
def last_position_runs(info: ModelInfo, batch, settings: list) -> torch.Tensor:
    """Final-normed hidden state at each prompt's last position, once per setting: (n_settings, batch, d_model).

    settings: a list of (layers, blocked), blocked a (batch, seq, seq) mask as for knock_out that
    blocks only rows at each prompt's last position (or None for the clean run). Exact and cheap:
    prompts of equal length run their prefix once (keys and values cached), then the last token
    once for all settings (one row per prompt and setting). Unembed with info.logits_from_final_hidden.
    """
    lengths = batch.attention_mask.sum(1)
    is_last = torch.zeros(batch.input_ids.shape, dtype=torch.bool)
    is_last[torch.arange(len(lengths)), batch.last_positions] = True
    for layers, blocked in settings:
        _check_layers(info, layers)
        if blocked is not None and bool((blocked.any(-1) & ~is_last).any()):
            raise ValueError("last_position_runs replays only the last token: block rows at the last position "
                             "only, or run the whole batch under knock_out.")
    n_settings = len(settings)
    out = torch.empty(n_settings, len(lengths), info.d_model)
    for length in lengths.unique().tolist():
        rows = (lengths == length).nonzero().flatten()
        ids = batch.input_ids[rows, :length]
        cache = cached_prefix(info, ids[:, :-1])
        # every setting in one last-token step: row r * n_settings + i is prompt r under setting i,
        # with its own last-row mask in each layer (all False where setting i leaves the layer alone)
        masks: dict = {}
        for i, (layers, blocked) in enumerate(settings):
            if blocked is None:
                continue
            for layer in _check_layers(info, layers):
                if layer not in masks:
                    masks[layer] = torch.zeros(len(rows), n_settings, 1, length, dtype=torch.bool)
                masks[layer][:, i] = blocked[rows, length - 1 : length, :length]
        masks = {layer: m.flatten(0, 1) for layer, m in masks.items()}
        with _knock_out_rows(info, masks):
            hidden = replay(info, cache, ids[:, -1:].repeat_interleave(n_settings, 0), repeat=n_settings, reuse=False,
                            positional_ok=True)  # the masks' rows are the last positions
        out[:, rows] = hidden[:, -1].float().cpu().view(len(rows), n_settings, -1).transpose(0, 1)
    return out
