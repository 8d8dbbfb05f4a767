"""The in-context heads (chapter 3), found the same way in every chapter that studies them.

Heads are ranked by the log-probability increase S(l, h) of the label words at the last position,
averaged over ICL prompts (`head_scores_over_prompts`). "Foo heads" are the top heads
by S(foo) on gold-foo prompts and "bar heads" the top by S(bar) on gold-bar prompts, as in Yu &
Ananiadou (2024); a head that copies whichever label matches the input tops both lists, so for
per-label experiments each head is put on the side where it scores higher (disjoint sets).
"""
from __future__ import annotations

import json
import numbers
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tqdm.auto import tqdm

from .attribution import head_importance
from .evaluation import batches_by_demonstrations
from .models import Head, ModelInfo
from .prompts import build_prompts, check_prompt_list, check_task, demo_set_ids, encode_prompts, label_token_ids
from .reporting import ClaimSpec
from .tracing import run_with_trace

LEARNS = "the clean model learns the task: calibrated accuracy's interval (evaluation pool) lies above 0.5"


def headline_claim(n_random: int) -> ClaimSpec:
    """The in-context-heads paper's headline as the book declares it (chapter 3), shared with the
    placebo check that must not reproduce it for random heads (scripts/placebo_top_head.py)."""
    return ClaimSpec(
        claim="Zeroing ~1% of heads (the in-context heads) destroys ICL with foo/bar labels",
        paper="Llama-7B: 12 of 1,024 heads (1.2%), raw accuracy 87.6% -> 24.4%",
        metric="fall of calibrated accuracy when the top ~1% heads are zeroed, minus the mean fall for random head sets of that size",
        direction="increase", smallest_effect=0.10,
        smallest_effect_reason="ten points of accuracy beyond random heads (the paper's fall is 63 points)",
        control=f">= {n_random} random head sets of the same size outside the top set (at one head: every other head)",
        unit="demonstration set (evaluation pool; the ranking redone without half the selection sets)", precondition=LEARNS,
        primary=True)


def _is_count(n) -> bool:
    """A whole number (int, numpy or 0-d torch integer), not a bool or a float."""
    if torch.is_tensor(n):
        return n.ndim == 0 and not n.is_floating_point()
    return isinstance(n, numbers.Integral) and not isinstance(n, bool)


def top_heads(values: torch.Tensor, n: int, among: list[Head] | None = None) -> list[Head]:
    """The n (layer, head) pairs with the largest values (n_layers, n_heads), best first."""
    if len(values.shape) != 2:
        raise ValueError(f"top_heads needs one value per head, shape (n_layers, n_heads); got {tuple(values.shape)}"
                         + (": average over prompts first, e.g. values.mean(0)" if len(values.shape) == 3 else ""))
    n_layers, n_heads = values.shape
    if not _is_count(n) or n < 0:
        raise ValueError(f"n (how many heads) must be a whole number >= 0, got {n!r}")
    if among is None and n > n_layers * n_heads:
        raise ValueError(f"{n} top heads asked for, but the model has only {n_layers} x {n_heads} = "
                         f"{n_layers * n_heads} heads: ask for at most {n_layers * n_heads}.")
    candidates = among if among is not None else [(l, h) for l in range(n_layers) for h in range(n_heads)]
    return sorted(candidates, key=lambda lh: -values[lh].item())[:n]


@dataclass
class HeadRanking:
    """Head scores averaged over prompts, each (n_layers, n_heads), and the per-prompt scores
    behind them (for intervals over demonstration sets)."""

    importance: torch.Tensor  # S for the gold label word, over all prompts
    per_label: dict  # label word -> S(word) on prompts whose gold label is that word
    label_attention: torch.Tensor  # attention mass from the last position to the label positions
    words: list  # label words, in class order
    per_prompt: torch.Tensor | None = None  # (n_prompts, n_layers, n_heads) S for the gold word
    demo_set: np.ndarray | None = None  # (n_prompts,) demonstration set of each prompt
    queries: list | None = None  # the ranking prompts' queries, so later tests can prove they are held out

    def top(self, n: int) -> list:
        """The n in-context heads: largest S for the gold label."""
        return top_heads(self.importance, n)

    def label_heads(self, word: str, n: int, disjoint: bool = True) -> list:
        """Top n heads by S(word) on gold-`word` prompts; with `disjoint`, only heads that score
        higher for this word than for every other label word (so foo and bar heads never share)."""
        if word not in self.per_label:
            raise ValueError(f"{word!r} is not a label word of this ranking; its words are {self.words}")
        mine = self.per_label[word]
        among = None
        if disjoint:
            others = torch.stack([s for w, s in self.per_label.items() if w != word]).amax(0)
            among = [(l, h) for l in range(mine.shape[0]) for h in range(mine.shape[1]) if mine[l, h] > others[l, h]]
        return top_heads(mine, n, among)

    def importance_without(self, left_out: list) -> torch.Tensor:
        """(len(left_out), n_layers, n_heads): S averaged over the prompts of every demonstration set
        but those in each entry of `left_out` (indices into the sorted sets, e.g. from
        `stats.leave_out(n_sets, smooth=False)`): the rankings a jackknife interval redoes its
        selection on, and how stable the ranking is without those sets."""
        if self.per_prompt is None or self.demo_set is None:
            raise ValueError("this ranking has no per-prompt scores; build it with rank_heads")
        sets = np.unique(self.demo_set)
        if len(sets) < 2:
            raise ValueError("a ranking from one demonstration set has nothing to leave out: rank on several sets")
        return torch.stack([self.per_prompt[torch.as_tensor(~np.isin(self.demo_set, sets[out]))].mean(0) for out in left_out])

    @property
    def n_sets(self) -> int:
        """How many demonstration sets the ranking averages over (its units)."""
        return 0 if self.demo_set is None else len(np.unique(self.demo_set))

    def check_held_out(self, prompts: list) -> None:
        """Refuse prompts whose query was used to rank these heads (selection leaking into evaluation)."""
        if self.queries is None:
            raise ValueError("this ranking does not record its queries; rank again with rank_heads")
        leaked = sorted({p.query for p in prompts} & set(self.queries))
        if leaked:
            raise ValueError(f"{len(leaked)} evaluation queries were used to rank the heads (e.g. {leaked[:3]}): build "
                             f"evaluation prompts with pool='evaluation' and rank on pool='selection'")

    def to_json(self) -> dict:
        return {"importance": self.importance.tolist(), "label_attention": self.label_attention.tolist(),
                "per_label": {w: s.tolist() for w, s in self.per_label.items()}, "words": list(self.words),
                "queries": list(self.queries or [])}

    @classmethod
    def from_json(cls, data: dict) -> "HeadRanking":
        return cls(torch.tensor(data["importance"]), {w: torch.tensor(s) for w, s in data["per_label"].items()},
                   torch.tensor(data["label_attention"]), list(data["words"]), queries=data.get("queries"))


@torch.no_grad()
def head_scores_over_prompts(info: ModelInfo, prompts: list, batch_size: int = 8, progress: bool = True,
                             share_prefix: bool | None = None) -> dict:
    """Score every head on every prompt at its last position, in batches (one traced pass each).

    share_prefix: batch prompts that share their demonstrations and run the demonstrations once per
    batch (run_with_trace(..., share_prefix=True)): the same scores for a fraction of the tokens.
    None (default): do so when the prompts come in demonstration sets (build_prompt_groups,
    design_prompts), i.e. when grouping them leaves batches of two or more on average.

    Returns tensors of shape (n_prompts, n_layers, n_heads):
      "importance": log-probability increase of the gold label word (the paper's S(l, h));
      "importance_foo" / "importance_bar" style keys, one per label word: increase of that word;
      "label_attention": attention mass the head puts on the demonstrations' label positions;
    and "gold" (n_prompts,) the gold class index.
    """
    check_prompt_list(prompts, "head_scores_over_prompts")
    _check_batch_size(batch_size)
    if any(p.label_words != prompts[0].label_words for p in prompts):
        raise ValueError("the prompts use different label words; score heads on prompts built with one label_words= "
                         "at a time (e.g. the foo/bar prompts and the swapped ones in two calls)")
    classes = list(prompts[0].label_words)
    words = [prompts[0].label_words[c] for c in classes]
    word_ids = torch.tensor(label_token_ids(info.tokenizer, words))
    out = {f"importance_{w}": [] for w in words} | {"importance": [], "label_attention": [], "gold": []}
    groups = batches_by_demonstrations(prompts, batch_size)
    if share_prefix is None:
        share_prefix = len(groups) <= len(prompts) / 2
    if not share_prefix:
        groups = [list(range(s, min(s + batch_size, len(prompts)))) for s in range(0, len(prompts), batch_size)]
    order = [i for g in groups for i in g]  # the prompts as they run; results are put back in the given order
    for group in tqdm(groups, desc="scoring heads", disable=not progress, leave=False):
        chunk = [prompts[i] for i in group]
        batch = encode_prompts(info, chunk)
        trace = run_with_trace(info, batch, record=("resid", "head_out", "attn_out", "attn"), share_prefix=share_prefix)
        gold = torch.tensor([classes.index(g) for g in batch.gold])
        per_word = head_importance(info, trace, word_ids.expand(len(chunk), -1))  # (batch, L, H, words)
        for i, w in enumerate(words):
            out[f"importance_{w}"].append(per_word[..., i])
        out["importance"].append(per_word[torch.arange(len(chunk)), ..., gold])
        label_pos = torch.tensor(batch.label_positions)  # (batch, n_demos)
        mass = [trace.attn[l][:, :, 0].gather(-1, label_pos[:, None].expand(-1, info.n_heads, -1)).sum(-1)
                for l in range(info.n_layers)]
        out["label_attention"].append(torch.stack(mass, 1))
        out["gold"].append(gold)
    back = torch.argsort(torch.tensor(order))
    return {k: torch.cat(v)[back] for k, v in out.items()}


def _check_batch_size(batch_size) -> None:
    if not _is_count(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")


def rank_heads(info: ModelInfo, prompts: list, batch_size: int = 8, progress: bool = True) -> HeadRanking:
    """Score every head on `prompts` (one traced pass per batch) and average into a HeadRanking."""
    if not prompts:
        raise ValueError("rank_heads needs at least one prompt: build some with build_prompts(task, n, pool='selection')")
    check_prompt_list(prompts, "rank_heads", "build them with build_prompts(task, n, pool='selection')")
    scores = head_scores_over_prompts(info, prompts, batch_size=batch_size, progress=progress)
    classes = list(prompts[0].label_words)
    words = [prompts[0].label_words[c] for c in classes]
    per_label = {}
    for i, word in enumerate(words):
        mask = scores["gold"] == i
        if not mask.any():
            raise ValueError(f"no prompt has gold label {word!r}: rank heads on prompts balanced over the classes")
        per_label[word] = scores[f"importance_{word}"][mask].mean(0)
    return HeadRanking(scores["importance"].mean(0), per_label, scores["label_attention"].mean(0), words,
                       scores["importance"], demo_set_ids(prompts), [p.query for p in prompts])


# ----------------------------------------------------------------------------------------------
# The book's in-context heads: ranked once, by chapter 3, on the selection pool


def _heads_file() -> Path:
    from . import reporting  # read at call time: tests and the negative-control run point it elsewhere

    return reporting.RESULTS_DIR / "in_context_heads.json"


def _saved_rankings(path: Path) -> dict:
    """{"model|task": entry} from the heads file (one entry per model and task)."""
    if not path.exists():
        return {}
    saved = json.loads(path.read_text())
    if "ranking" in saved:  # a file written before rankings were kept per model and task
        return {f"{saved['model']}|{saved['task']}": saved}
    return saved.get("rankings", {})


def save_in_context_heads(info: ModelInfo, task_name: str, ranking: HeadRanking, settings: dict) -> Path:
    """Save a ranking as the book's in-context heads for this model and task (chapter 3 saves the
    main task's; rankings of other models and tasks in the file are kept)."""
    path = _heads_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    rankings = _saved_rankings(path)
    rankings[f"{info.name}|{task_name}"] = {"model": info.name, "task": task_name, "settings": settings,
                                           "ranking": ranking.to_json()}
    path.write_text(json.dumps({"rankings": rankings}, indent=1))
    return path


def find_in_context_heads(info: ModelInfo, task, n_prompts: int = 32, demos_per_class: int = 8, seed: int = 0,
                          batch_size: int = 8, progress: bool = True) -> HeadRanking:
    """The book's in-context heads for `task` (a Task): the saved ranking for this model and task
    (results/in_context_heads.json; chapter 3 writes the main task's), else a ranking made here the same way,
    on foo/bar prompts from the task's *selection* pool (never the evaluation pool), which is
    then saved for later chapters. Which of the two happened is printed."""
    check_task(task, "find_in_context_heads")
    path = _heads_file()
    saved = _saved_rankings(path).get(f"{info.name}|{task.name}")
    if saved is not None:
        print(f"in-context heads for {task.name}: saved ranking ({path.name}: {saved['settings']})")
        return HeadRanking.from_json(saved["ranking"])
    print(f"in-context heads: no saved ranking for {info.name} on {task.name}; ranking {n_prompts} selection-pool "
          f"prompts now (chapter 3 saves the book's ranking)")
    prompts = build_prompts(task, n_prompts, demos_per_class=demos_per_class, seed=seed, pool="selection")
    ranking = rank_heads(info, prompts, batch_size=batch_size, progress=progress)
    save_in_context_heads(info, task.name, ranking, {"n_prompts": n_prompts, "demos_per_class": demos_per_class,
                                                     "seed": seed, "made_by": "find_in_context_heads"})
    return ranking
