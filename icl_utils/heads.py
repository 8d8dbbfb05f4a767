"""The in-context heads (chapter 3), found the same way in every chapter that studies them.

Heads are ranked by the log-probability increase S(l, h) of the label words at the last position,
averaged over ICL prompts (`attribution.head_scores_over_prompts`). "Foo heads" are the top heads
by S(foo) on gold-foo prompts and "bar heads" the top by S(bar) on gold-bar prompts, as in Yu &
Ananiadou (2024); a head that copies whichever label matches the input tops both lists, so for
per-label experiments each head is put on the side where it scores higher (disjoint sets).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .attribution import head_scores_over_prompts


def top_heads(values: torch.Tensor, n: int, among: list | None = None) -> list:
    """The n (layer, head) pairs with the largest values (n_layers, n_heads), best first."""
    n_layers, n_heads = values.shape
    candidates = among if among is not None else [(l, h) for l in range(n_layers) for h in range(n_heads)]
    return sorted(candidates, key=lambda lh: -values[lh].item())[:n]


@dataclass
class HeadRanking:
    """Head scores averaged over prompts, each (n_layers, n_heads)."""

    importance: torch.Tensor  # S for the gold label word, over all prompts
    per_label: dict  # label word -> S(word) on prompts whose gold label is that word
    label_attention: torch.Tensor  # attention mass from the last position to the label positions
    words: list  # label words, in class order

    def top(self, n: int) -> list:
        """The n in-context heads: largest S for the gold label."""
        return top_heads(self.importance, n)

    def label_heads(self, word: str, n: int, disjoint: bool = True) -> list:
        """Top n heads by S(word) on gold-`word` prompts; with `disjoint`, only heads that score
        higher for this word than for every other label word (so foo and bar heads never share)."""
        mine = self.per_label[word]
        among = None
        if disjoint:
            others = torch.stack([s for w, s in self.per_label.items() if w != word]).amax(0)
            among = [(l, h) for l in range(mine.shape[0]) for h in range(mine.shape[1]) if mine[l, h] > others[l, h]]
        return top_heads(mine, n, among)


def rank_heads(info, prompts: list, batch_size: int = 8, progress: bool = True) -> HeadRanking:
    """Score every head on `prompts` (one traced pass per batch) and average into a HeadRanking."""
    scores = head_scores_over_prompts(info, prompts, batch_size=batch_size, progress=progress)
    classes = list(prompts[0].label_words)
    words = [prompts[0].label_words[c] for c in classes]
    per_label = {}
    for i, word in enumerate(words):
        mask = scores["gold"] == i
        if not mask.any():
            raise ValueError(f"no prompt has gold label {word!r}: rank heads on prompts balanced over the classes")
        per_label[word] = scores[f"importance_{word}"][mask].mean(0)
    return HeadRanking(scores["importance"].mean(0), per_label, scores["label_attention"].mean(0), words)


def find_in_context_heads(info, task, n_prompts: int = 16, demos_per_class: int = 8, seed: int = 0,
                          batch_size: int = 8, progress: bool = True) -> HeadRanking:
    """Chapter 3's ranking, for chapters that start from the in-context heads: foo/bar prompts
    built from `task` (a Task) with `seed`, scored and averaged."""
    from .prompts import build_prompts

    prompts = build_prompts(task, n_prompts, demos_per_class=demos_per_class, seed=seed)
    return rank_heads(info, prompts, batch_size=batch_size, progress=progress)
