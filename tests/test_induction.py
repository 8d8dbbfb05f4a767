"""Induction scores and token losses against hand computations on the tiny models."""
from __future__ import annotations

import pytest
import torch

from icl_utils import induction
from icl_utils.tracing import ablate_heads, edit_attention, run_with_trace

HALF = 6


def _seqs(tokenizer, n=3):
    return induction.repeated_random_tokens(tokenizer, n, half_len=HALF, seed=0)


def test_repeated_random_tokens(tokenizer):
    seqs = _seqs(tokenizer)
    offset = 1 if tokenizer.bos_token_id is not None else 0
    assert seqs.shape == (3, offset + 2 * HALF)
    first, second = seqs[:, offset : offset + HALF], seqs[:, offset + HALF :]
    assert torch.equal(first, second)
    assert all(len(set(row.tolist())) == HALF for row in first)  # no repeat within a half
    specials = set(tokenizer.all_special_ids)
    assert not specials & set(first.flatten().tolist())
    assert torch.equal(seqs, _seqs(tokenizer))  # seeded
    with pytest.raises(ValueError, match="shorter half_len"):
        induction.repeated_random_tokens(tokenizer, 1, half_len=10_000)


def test_induction_scores_by_hand(info, tokenizer):
    seqs = _seqs(tokenizer)
    scores = induction.induction_scores(info, seqs, batch_size=2)
    length = seqs.shape[1]
    trace = run_with_trace(info, seqs, torch.ones_like(seqs), torch.arange(length).expand(len(seqs), -1), record=("attn",))
    for layer, head in [(0, 1), (1, 3)]:
        attn = trace.attn[layer][:, head]  # (batch, query, key)
        by_hand = torch.stack([attn[:, t, t - HALF + 1] for t in range(length - HALF, length)], 1).mean()
        assert abs(scores[layer, head].item() - by_hand.item()) < 1e-5


def test_a_head_forced_to_induct_scores_one(info, tokenizer):
    seqs = _seqs(tokenizer)
    length = seqs.shape[1]

    def induct(layer, weights, query, key):
        target = torch.zeros_like(weights)
        for t in range(weights.shape[-2]):
            target[..., t, t - HALF + 1 if t >= length - HALF else t] = 1.0
        return target

    with edit_attention(info, induct, heads=[(1, 2)]):
        scores = induction.induction_scores(info, seqs)
    assert abs(scores[1, 2].item() - 1.0) < 1e-6
    assert scores[1, 1] < 0.9  # the others keep their own pattern


def test_token_losses_by_hand(info):
    gen = torch.Generator().manual_seed(0)
    seqs = torch.randint(3, info.vocab_size, (3, 20), generator=gen)
    positions = [2, 5, 18]
    losses = induction.token_losses(info, seqs, positions, batch_size=2)
    with torch.no_grad():
        logits = info.model(input_ids=seqs, attention_mask=torch.ones_like(seqs)).logits.float()
    for j, p in enumerate(positions):
        expected = torch.nn.functional.cross_entropy(logits[:, p], seqs[:, p + 1], reduction="none")
        torch.testing.assert_close(losses[:, j], expected, atol=1e-4, rtol=1e-4)
    diff = induction.token_loss_difference(info, seqs, early=[2, 5], late=[18])
    assert abs(diff - (losses[:, :2].mean() - losses[:, 2:].mean()).item()) < 1e-5
    ablated = induction.token_losses(info, seqs, positions, intervention=lambda: ablate_heads(info, [(0, 0), (1, 1)]))
    assert (ablated - losses).abs().max() > 1e-4
    with pytest.raises(ValueError, match="no next token"):
        induction.token_losses(info, seqs, [19])


def test_text_sequences(tokenizer, tmp_path):
    path = tmp_path / "t.txt"
    path.write_text(" ".join(["dog cat cow"] * 20))
    seqs = induction.text_sequences(tokenizer, 10, path)
    step = 10 - (tokenizer.bos_token_id is not None)
    assert seqs.shape == (60 // step, 10)
    with pytest.raises(ValueError, match="smaller n_tokens"):
        induction.text_sequences(tokenizer, 1000, path)
