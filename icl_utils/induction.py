"""Induction heads (Olsson et al. 2022) and the token-loss view of in-context learning.

Induction score (the definition this book uses): on sequences [BOS, r_1..r_N, r_1..r_N] of random
tokens, the mean over the second half of the head's attention from each token r_i to r_{i+1} in the
first half (the token that followed its earlier copy): the mean of that offset diagonal, between 0
and 1. (Yin & Steinhardt's released code divides by all positions instead, so its maximum is ~0.5.)

Token-loss difference: the loss at token ~50 minus the loss at token ~500 of natural text; a model
that uses its context predicts later tokens better, so the difference is positive.
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch
from .attribution import unembedded_log_probs
from .tasks import DATA_DIR
from .tracing import ablate_heads, record_layers, reuse_layers_below, run_with_trace
from .models import ModelInfo

TEXT_DIR = DATA_DIR / "text"


def word_token_ids(tokenizer) -> torch.Tensor:
    """Ids of ordinary tokens: those that decode to letters only (an optional leading space
    allowed). Random sequences drawn from these avoid special, unused and byte tokens."""
    ids = [[i] for i in range(len(tokenizer))]
    backend = getattr(tokenizer, "backend_tokenizer", None)  # the Rust decoder directly: 262k decodes in ~1 s, not ~6
    strings = backend.decode_batch(ids, skip_special_tokens=False) if backend is not None else tokenizer.batch_decode(ids)
    special = set(tokenizer.all_special_ids)
    return torch.tensor([i for i, s in enumerate(strings) if i not in special and s.strip().isalpha()
                         and s.strip() == s.lstrip()])


def start_tokens(tokenizer) -> list:
    """The special tokens the tokenizer itself puts before any text (Gemma's <bos>; none for
    SmolLM2, whose bos_token is a chat marker it never adds): what every prompt of the book starts with."""
    with_special = tokenizer("x")["input_ids"]
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    return list(with_special[: len(with_special) - len(plain)]) if with_special[-len(plain):] == plain else []


def repeated_random_tokens(tokenizer, n_seqs: int, half_len: int = 50, seed: int = 0, pool=None) -> torch.Tensor:
    """(n_seqs, [1 +] 2 * half_len): [BOS,] r_1..r_N, r_1..r_N with r uniform over `pool`
    (default word_token_ids) and no token repeated within a half. BOS only where the tokenizer puts
    one before text (start_tokens)."""
    pool = word_token_ids(tokenizer) if pool is None else torch.as_tensor(pool)
    if len(pool) < half_len:
        raise ValueError(f"only {len(pool)} candidate tokens for halves of {half_len}: use a shorter half_len")
    gen = torch.Generator().manual_seed(seed)
    halves = torch.stack([pool[torch.randperm(len(pool), generator=gen)[:half_len]] for _ in range(n_seqs)])
    seqs = torch.cat([halves, halves], 1)
    start = start_tokens(tokenizer)
    if start:
        seqs = torch.cat([torch.tensor(start).expand(n_seqs, -1), seqs], 1)
    return seqs


def induction_scores(info: ModelInfo, seqs: torch.Tensor, batch_size: int = 8, measure: str = "diagonal") -> torch.Tensor:
    """(n_layers, n_heads) induction score of every head on `seqs` (repeated_random_tokens).

    measure="diagonal" (the book's): mean attention from each second-half token to the token after
    its first-half copy (positions t -> t - half_len + 1), over all second-half tokens and sequences.
    measure="share" (Yin & Steinhardt's released code): the share of all attention, from every
    position, that lands on induction targets (any earlier position j whose previous token equals
    the current token); at most about half_len / length, since first-half tokens have no target.
    See induction_measures for both from one pass."""
    if measure not in ("diagonal", "share"):
        raise ValueError(f"measure must be 'diagonal' or 'share', not {measure!r}")
    return induction_measures(info, seqs, batch_size)[measure]


def induction_targets(seqs: torch.Tensor) -> torch.Tensor:
    """(n_seqs, length, length) bool: key j is an induction target of query t when j <= t and the
    token before j equals the token at t (the detection pattern of the reference code)."""
    n, length = seqs.shape
    same = seqs[:, :, None] == seqs[:, None, :]  # [b, t, i]: token t equals token i
    targets = torch.zeros(n, length, length, dtype=torch.bool)
    targets[:, :, 1:] = same[:, :, :-1]  # key j = i + 1 follows an occurrence i of token t
    earlier = torch.ones(length, length, dtype=torch.bool).tril(-1)  # the occurrence i < t, so j <= t
    targets[:, :, 1:] &= earlier[:, :-1]
    return targets


def induction_measures(info: ModelInfo, seqs: torch.Tensor, batch_size: int = 8) -> dict:
    """Both induction scores from one traced pass per batch: {"diagonal": ..., "share": ...}, each
    (n_layers, n_heads) (see induction_scores)."""
    n, length = seqs.shape
    half = (length - (length % 2)) // 2  # a leading BOS makes the length odd
    offset = length - 2 * half  # 1 with BOS, 0 without
    queries = torch.arange(offset + half, length)
    diagonal_keys = queries - half + 1
    diagonal = torch.zeros(info.n_layers, info.n_heads)
    share = torch.zeros(info.n_layers, info.n_heads)
    for start in range(0, n, batch_size):
        chunk = seqs[start : start + batch_size]
        targets = induction_targets(chunk).float()
        every = torch.arange(length).expand(len(chunk), -1)
        trace = run_with_trace(info, chunk, torch.ones_like(chunk), every, record=("attn",))
        for layer in range(info.n_layers):
            attn = trace.attn[layer].float().cpu()  # (batch, heads, length, length)
            diagonal[layer] += attn[:, :, queries, diagonal_keys].mean(-1).sum(0)
            share[layer] += (attn * targets[:, None]).sum((-1, -2)).sum(0) / length  # rows sum to 1
    return {"diagonal": diagonal / n, "share": share / n}


# ----------------------------------------------------------------------------------------------
# Natural text and the token-loss difference


def text_sequences(tokenizer, n_tokens: int, path=None, n_seqs: int | None = None) -> torch.Tensor:
    """Cut natural text into consecutive sequences of n_tokens tokens ([BOS] + n_tokens - 1 text
    tokens where the tokenizer puts a BOS before text: start_tokens). The text is one file (`path`) or, by default, every .txt
    in data/text/ in name order, joined with blank lines (a sequence may run from one document into
    the next). Returns (n_seqs, n_tokens): the first `n_seqs` sequences, or all of them when n_seqs
    is None. Refuses a text too short for one sequence, or for n_seqs of them."""
    files = [Path(path)] if path is not None else sorted(TEXT_DIR.glob("*.txt"))
    if not files:
        raise ValueError(f"no .txt files in {TEXT_DIR}")
    text = "\n\n".join(f.read_text(encoding="utf-8").strip() for f in files)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = start_tokens(tokenizer)
    step = n_tokens - len(bos)
    if step < 1:
        raise ValueError(f"n_tokens={n_tokens} leaves no room for text after the BOS token")
    available = len(ids) // step
    if available == 0:
        raise ValueError(f"the text has {len(ids)} tokens; a sequence needs {step}: use a smaller n_tokens or more text")
    if n_seqs is not None and n_seqs < 1:
        raise ValueError(f"n_seqs must be at least 1, not {n_seqs}")
    if n_seqs is not None and n_seqs > available:
        raise ValueError(
            f"asked for {n_seqs} sequences of {n_tokens} tokens but the text ({len(ids)} tokens in "
            f"{', '.join(f.name for f in files)}) holds only {available}: ask for fewer or shorter sequences, or add text"
        )
    n = available if n_seqs is None else n_seqs
    return torch.tensor([bos + ids[i * step : (i + 1) * step] for i in range(n)])


@torch.no_grad()
def token_losses(info: ModelInfo, seqs: torch.Tensor, positions, batch_size: int = 4, intervention=None) -> torch.Tensor:
    """Cross-entropy of predicting token p + 1 from position p, for each p in `positions`:
    (n_seqs, n_positions). Only those positions are unembedded (Gemma's vocabulary is 262k).
    intervention: a function returning a context manager (e.g. lambda: ablate_heads(...)) entered
    around each forward pass."""
    positions = torch.as_tensor(positions)
    if positions.max() + 1 >= seqs.shape[1]:
        raise ValueError(f"position {int(positions.max())} has no next token in sequences of {seqs.shape[1]}")
    out = []
    for start in range(0, len(seqs), batch_size):
        chunk = seqs[start : start + batch_size].to(info.device)
        with (intervention() if intervention else nullcontext()):
            hidden = info.decoder(input_ids=chunk, attention_mask=torch.ones_like(chunk), use_cache=False).last_hidden_state
        logits = info.logits_from_final_hidden(hidden[:, positions.to(hidden.device)]).float()
        targets = chunk[:, positions.to(chunk.device) + 1]
        out.append(torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape).cpu())
    return torch.cat(out)


def token_loss_differences(info: ModelInfo, seqs: torch.Tensor, early=range(40, 60), late=range(490, 510),
                           intervention=None, batch_size: int = 4) -> torch.Tensor:
    """Per sequence: mean loss over the `early` window minus mean loss over the `late` window
    (default: tokens around 50 and around 500). (n_seqs,): sequences are the unit of an interval."""
    early, late = list(early), list(late)
    losses = token_losses(info, seqs, early + late, batch_size=batch_size, intervention=intervention)
    return losses[:, : len(early)].mean(1) - losses[:, len(early) :].mean(1)


@torch.no_grad()
def token_loss_differences_ablated(info: ModelInfo, seqs: torch.Tensor, head_sets: dict, means: dict, early=range(40, 60),
                                   late=range(490, 510), batch_size: int = 4) -> dict:
    """token_loss_differences with each head set of `head_sets` ({name: [(layer, head), ...]}; an
    empty set = no ablation) mean-ablated at every position (means: {(layer, head): (d_head,)}):
    {name: (n_seqs,)}. Per batch the unablated pass runs once; each ablated pass starts above the
    layers below its lowest ablated head, from the unablated residual stream there
    (tracing.reuse_layers_below): the same numbers, without recomputing layers that cannot differ."""
    early, late = list(early), list(late)
    positions = torch.tensor(early + late)
    if positions.max() + 1 >= seqs.shape[1]:
        raise ValueError(f"position {int(positions.max())} has no next token in sequences of {seqs.shape[1]}")
    start = {name: min(l for l, _ in heads) for name, heads in head_sets.items() if heads}
    losses = {name: [] for name in head_sets}

    def loss(chunk, hidden):  # -log p(next token), the vocabulary read in chunks (attribution.unembedded_log_probs)
        targets = chunk[:, positions.to(chunk.device) + 1]
        log_p, _ = unembedded_log_probs(info, hidden[:, positions.to(hidden.device)].flatten(0, 1), targets.flatten())
        return -log_p.view(targets.shape)

    for first in range(0, len(seqs), batch_size):
        chunk = seqs[first : first + batch_size].to(info.device)
        run = lambda: info.decoder(input_ids=chunk, attention_mask=torch.ones_like(chunk), use_cache=False).last_hidden_state  # noqa: E731
        with record_layers(info) as clean_layers:
            clean = run()
        for name, heads in head_sets.items():
            if not heads:
                losses[name].append(loss(chunk, clean))
                continue
            with reuse_layers_below(info, clean_layers, start[name]), ablate_heads(info, heads, mode="mean", means=means):
                losses[name].append(loss(chunk, run()))
    n_early = len(early)
    return {name: torch.cat(parts)[:, :n_early].mean(1) - torch.cat(parts)[:, n_early:].mean(1) for name, parts in losses.items()}


def token_loss_difference(info: ModelInfo, seqs: torch.Tensor, early=range(40, 60), late=range(490, 510), intervention=None) -> float:
    """token_loss_differences averaged over sequences."""
    return token_loss_differences(info, seqs, early, late, intervention).mean().item()
