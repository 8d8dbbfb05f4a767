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


def test_the_share_measure_counts_every_induction_target_over_all_positions(info, tokenizer):
    seqs = _seqs(tokenizer)
    measures = induction.induction_measures(info, seqs, batch_size=2)
    length = seqs.shape[1]
    trace = run_with_trace(info, seqs, torch.ones_like(seqs), torch.arange(length).expand(len(seqs), -1), record=("attn",))
    for layer, head in [(0, 1), (1, 3)]:
        attn = trace.attn[layer][:, head]
        by_hand = 0.0
        for b in range(len(seqs)):
            for t in range(length):
                by_hand += sum(attn[b, t, j].item() for j in range(1, t + 1) if seqs[b, j - 1] == seqs[b, t] and j - 1 < t)
        assert abs(measures["share"][layer, head].item() - by_hand / (len(seqs) * length)) < 1e-5
    # no token repeats within a half, so the only targets are the diagonal's: the share is the
    # diagonal mean times the share of positions in the second half
    torch.testing.assert_close(measures["share"], measures["diagonal"] * HALF / length, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(induction.induction_scores(info, seqs, measure="share"), measures["share"])
    with pytest.raises(ValueError, match="diagonal"):
        induction.induction_scores(info, seqs, measure="offset")


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


def test_text_sequences_gives_exactly_n_seqs_or_refuses(tokenizer, tmp_path):
    path = tmp_path / "t.txt"
    path.write_text(" ".join(["dog cat cow"] * 20))
    everything = induction.text_sequences(tokenizer, 10, path)
    first = induction.text_sequences(tokenizer, 10, path, n_seqs=2)
    assert torch.equal(first, everything[:2])
    with pytest.raises(ValueError, match=f"asked for {len(everything) + 1} sequences .* holds only {len(everything)}"):
        induction.text_sequences(tokenizer, 10, path, n_seqs=len(everything) + 1)
    with pytest.raises(ValueError, match="at least 1"):
        induction.text_sequences(tokenizer, 10, path, n_seqs=0)


class _WordTokenizer:
    """One token per whitespace-separated word: a lower bound on what a subword tokenizer makes."""

    bos_token_id = None

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [hash(word) % 1000 for word in text.split()]}


def test_shipped_text_gives_forty_sequences_of_512_tokens():
    # Chapter 8 needs >= 40 sequences of 512 tokens; any subword tokenizer makes at least one token
    # per word, so 40 sequences of 512 words guarantee it (the real tokenizers: test_embedded_models).
    assert len(induction.text_sequences(_WordTokenizer(), 512)) >= 40
    readme = (induction.TEXT_DIR / "README.md").read_text(encoding="utf-8")
    for f in induction.TEXT_DIR.glob("*.txt"):
        assert f"`{f.name}`" in readme, f"{f.name} has no source and licence in data/text/README.md"


def test_ablated_token_losses_resume_above_the_clean_layers_with_the_same_numbers(info):
    """Each ablated pass starts at its lowest ablated layer from the clean residual stream: the
    numbers equal a full ablated pass, and the real layers are back afterwards."""
    torch.manual_seed(0)
    seqs = torch.randint(3, info.vocab_size, (5, 24))
    means = {(l, h): torch.randn(info.d_head) for l, h in info.all_heads}
    head_sets = {"none": [], "layer 1": [(1, 0), (1, 2)], "both layers": [(0, 1), (1, 3)]}
    layers_before = list(info.layers)
    calls = []
    handle = info.attentions[0].register_forward_hook(lambda *_: calls.append(1))  # runs only when layer 0 computes
    try:
        got = induction.token_loss_differences_ablated(info, seqs, head_sets, means, early=range(2, 6), late=range(15, 20),
                                                       batch_size=2)
    finally:
        handle.remove()
    assert list(info.layers) == layers_before
    assert len(calls) == 3 + 3  # 3 batches: the clean pass and "both layers"; "layer 1" skips layer 0
    for name, heads in head_sets.items():
        ablate = (lambda heads=heads: ablate_heads(info, heads, mode="mean", means=means)) if heads else None
        expected = induction.token_loss_differences(info, seqs, range(2, 6), range(15, 20), intervention=ablate, batch_size=2)
        torch.testing.assert_close(got[name], expected, atol=1e-5, rtol=0)
    assert not torch.allclose(got["none"], got["layer 1"])  # the ablation did something



def test_reused_layers_get_their_own_forward_back_also_after_an_error(info):
    from icl_utils.tracing import record_layers, reuse_layers_below

    ids = torch.randint(3, info.vocab_size, (2, 6))
    with record_layers(info) as clean:
        info.decoder(input_ids=ids, use_cache=False)
    with pytest.raises(RuntimeError, match="boom"):
        with reuse_layers_below(info, clean, 1):
            assert "forward" in info.layers[0].__dict__
            raise RuntimeError("boom")
    assert all("forward" not in layer.__dict__ for layer in info.layers)
