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
from .tasks import DATA_DIR
from .tracing import run_with_trace
from .models import ModelInfo

TEXT_DIR = DATA_DIR / "text"


def word_token_ids(tokenizer) -> torch.Tensor:
    """Ids of ordinary tokens: those that decode to letters only (an optional leading space
    allowed). Random sequences drawn from these avoid special, unused and byte tokens."""
    strings = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    special = set(tokenizer.all_special_ids)
    return torch.tensor([i for i, s in enumerate(strings) if i not in special and s.strip().isalpha()
                         and s.strip() == s.lstrip()])


def repeated_random_tokens(tokenizer, n_seqs: int, half_len: int = 50, seed: int = 0, pool=None) -> torch.Tensor:
    """(n_seqs, [1 +] 2 * half_len): [BOS,] r_1..r_N, r_1..r_N with r uniform over `pool`
    (default word_token_ids) and no token repeated within a half. BOS only if the tokenizer has one."""
    pool = word_token_ids(tokenizer) if pool is None else torch.as_tensor(pool)
    if len(pool) < half_len:
        raise ValueError(f"only {len(pool)} candidate tokens for halves of {half_len}: use a shorter half_len")
    gen = torch.Generator().manual_seed(seed)
    halves = torch.stack([pool[torch.randperm(len(pool), generator=gen)[:half_len]] for _ in range(n_seqs)])
    seqs = torch.cat([halves, halves], 1)
    if tokenizer.bos_token_id is not None:
        seqs = torch.cat([torch.full((n_seqs, 1), tokenizer.bos_token_id), seqs], 1)
    return seqs


def induction_scores(info: ModelInfo, seqs: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """(n_layers, n_heads): mean attention from each second-half token to the token after its
    first-half copy (positions t -> t - half_len + 1), over all second-half tokens and sequences."""
    n, length = seqs.shape
    half = (length - (length % 2)) // 2  # a leading BOS makes the length odd
    offset = length - 2 * half  # 1 with BOS, 0 without
    queries = torch.arange(offset + half, length)
    targets = queries - half + 1
    total = torch.zeros(info.n_layers, info.n_heads)
    for start in range(0, n, batch_size):
        chunk = seqs[start : start + batch_size]
        trace = run_with_trace(info, chunk, torch.ones_like(chunk), queries.expand(len(chunk), -1), record=("attn",))
        for layer in range(info.n_layers):
            attn = trace.attn[layer].float()  # (batch, heads, n_queries, seq)
            total[layer] += attn[:, :, torch.arange(len(queries)), targets].mean(-1).sum(0)
    return total / n


# ----------------------------------------------------------------------------------------------
# Natural text and the token-loss difference


def text_sequences(tokenizer, n_tokens: int, path=None) -> torch.Tensor:
    """Cut a text file (default: every .txt in data/text/, in name order) into consecutive
    sequences of n_tokens tokens ([BOS] + n_tokens - 1 text tokens where there is a BOS).
    Returns (n_seqs, n_tokens); refuses a text too short for one sequence."""
    files = [Path(path)] if path is not None else sorted(TEXT_DIR.glob("*.txt"))
    text = "\n\n".join(f.read_text(encoding="utf-8").strip() for f in files)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    step = n_tokens - len(bos)
    if len(ids) < step:
        raise ValueError(f"the text has {len(ids)} tokens; a sequence needs {step}: use a smaller n_tokens or more text")
    return torch.tensor([bos + ids[i : i + step] for i in range(0, len(ids) - step + 1, step)])


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


def token_loss_difference(info: ModelInfo, seqs: torch.Tensor, early=range(40, 60), late=range(490, 510), intervention=None) -> float:
    """Mean loss over the `early` window minus mean loss over the `late` window (default: tokens
    around 50 and around 500), averaged over sequences."""
    early, late = list(early), list(late)
    losses = token_losses(info, seqs, early + late, intervention=intervention)
    return (losses[:, : len(early)].mean() - losses[:, len(early) :].mean()).item()

