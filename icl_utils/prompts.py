"""Seeded in-context prompts and their tokenisation, with the position of every label token.

A prompt with two demonstrations (default format):

    Input: dog
    Label: foo

    Input: car
    Label: bar

    Input: cat
    Label:

The model's next token is the prediction; " foo" and " bar" in the demonstrations sit at the
*label positions* that Yu & Ananiadou's in-context heads read.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from .errors import LabelWordError, PromptTooLongError
from .tasks import Task

FOO_BAR = ("foo", "bar")


@dataclass(frozen=True)
class PromptFormat:
    input_prefix: str = "Input: "
    label_prefix: str = "\nLabel:"
    separator: str = "\n\n"  # between demonstrations

    def demo(self, text: str, word: str) -> str:
        return f"{self.input_prefix}{text}{self.label_prefix} {word}"

    def query(self, text: str) -> str:
        return f"{self.input_prefix}{text}{self.label_prefix}"


@dataclass
class ICLPrompt:
    text: str
    query: str
    gold: str  # the query's class
    demos: list  # [(input, class)] in prompt order
    label_words: dict  # class -> label word
    label_spans: list = field(default_factory=list)  # character span of each demonstration's label word


def label_words_for(task: Task, label_words="foo/bar") -> dict:
    """class -> word. "foo/bar" (the paper's unrelated labels, assigned in task.classes order),
    "meaningful" (the class names themselves), a sequence of words, or a dict."""
    if isinstance(label_words, dict):
        return dict(label_words)
    if label_words == "foo/bar":
        label_words = FOO_BAR
    elif label_words == "meaningful":
        label_words = task.classes
    if len(label_words) != len(task.classes):
        raise ValueError(f"{len(task.classes)} classes {task.classes} but label words {list(label_words)}")
    return dict(zip(task.classes, label_words))


def split_task(task: Task, n_query_per_class: int, seed: int = 0) -> tuple:
    """Split each class's inputs into a query pool and a demonstration pool (disjoint)."""
    rng = random.Random(seed)
    queries, demos = {}, {}
    for cls in task.classes:
        items = list(dict.fromkeys(task.inputs_of(cls)))  # a repeated input must not land in both pools
        rng.shuffle(items)
        if len(items) <= n_query_per_class:
            raise ValueError(f"Class '{cls}' has {len(items)} inputs; cannot hold out {n_query_per_class}.")
        queries[cls], demos[cls] = items[:n_query_per_class], items[n_query_per_class:]
    return queries, demos


def build_prompts(
    task: Task,
    n_prompts: int,
    demos_per_class=8,
    label_words="foo/bar",
    order=None,
    seed: int = 0,
    fmt: PromptFormat = PromptFormat(),
    n_query_per_class: int | None = None,
) -> list:
    """Build `n_prompts` prompts whose queries alternate over the classes (balanced).

    demos_per_class: an int (balanced) or {class: count} (imbalanced, e.g. {"animal": 8, "vehicle": 7}).
    order: None shuffles the demonstrations; or a list of class names giving the class of each
    demonstration slot in prompt order (its counts override demos_per_class).
    Queries never appear among the demonstrations. Same arguments, same prompts.
    """
    rng = random.Random(seed)
    words = label_words_for(task, label_words)
    counts = demos_per_class if isinstance(demos_per_class, dict) else {c: demos_per_class for c in task.classes}
    if order is not None:
        counts = {c: list(order).count(c) for c in task.classes}
        unknown = set(order) - set(task.classes)
        if unknown:
            raise ValueError(f"order names unknown classes {sorted(unknown)}; classes: {task.classes}")
    per_class = n_query_per_class or -(-n_prompts // len(task.classes))
    query_pool, demo_pool = split_task(task, per_class, seed)
    for cls, n in counts.items():
        if n > len(demo_pool[cls]):
            raise ValueError(f"{n} demonstrations of '{cls}' requested, only {len(demo_pool[cls])} available.")

    prompts = []
    for i in range(n_prompts):
        gold = task.classes[i % len(task.classes)]
        query = query_pool[gold][(i // len(task.classes)) % len(query_pool[gold])]
        chosen = {c: rng.sample(demo_pool[c], counts[c]) for c in task.classes}
        if order is None:
            demos = [(x, c) for c in task.classes for x in chosen[c]]
            rng.shuffle(demos)
        else:
            demos = [(chosen[c].pop(), c) for c in order]
        prompts.append(render_prompt(demos, query, gold, words, fmt))
    return prompts


def build_prompt_groups(
    task: Task,
    n_groups: int,
    queries_per_group: int,
    demos_per_class=8,
    label_words="foo/bar",
    seed: int = 0,
    fmt: PromptFormat = PromptFormat(),
    distinct_queries: bool = False,
) -> list:
    """`n_groups` lists of prompts; the prompts of one group share their demonstrations (same
    inputs, same order) and differ only in the query, balanced over the classes.

    For comparisons across inputs with the context held fixed (e.g. what changes in a head
    when the prediction flips from foo to bar), and for cheap evaluation: score_prompts(...,
    share_prefix=True) runs each group's demonstrations once. distinct_queries: every group gets
    its own queries (for accuracy estimates); by default all groups ask the same queries.
    Queries never appear among the demonstrations.
    """
    rng = random.Random(seed)
    words = label_words_for(task, label_words)
    counts = demos_per_class if isinstance(demos_per_class, dict) else {c: demos_per_class for c in task.classes}
    per_class = -(-queries_per_group // len(task.classes))
    query_pool, demo_pool = split_task(task, per_class * (n_groups if distinct_queries else 1), seed)
    for cls, n in counts.items():
        if n > len(demo_pool[cls]):
            raise ValueError(f"{n} demonstrations of '{cls}' requested, only {len(demo_pool[cls])} left "
                             f"after setting aside the queries.")
    groups = []
    for g in range(n_groups):
        demos = [(x, c) for c in task.classes for x in rng.sample(demo_pool[c], counts[c])]
        rng.shuffle(demos)
        first = g * per_class if distinct_queries else 0
        queries = [(query_pool[task.classes[i % len(task.classes)]][first + i // len(task.classes)], task.classes[i % len(task.classes)])
                   for i in range(queries_per_group)]
        groups.append([render_prompt(demos, q, gold, words, fmt) for q, gold in queries])
    return groups


def render_prompt(demos: list, query: str, gold: str, words: dict, fmt: PromptFormat = PromptFormat()) -> ICLPrompt:
    """Write the prompt text and remember where each demonstration's label word is."""
    text, spans = "", []
    for x, cls in demos:
        part = fmt.demo(x, words[cls])
        end = len(text) + len(part)
        spans.append((end - len(words[cls]), end))
        text += part + fmt.separator
    text += fmt.query(query)
    return ICLPrompt(text, query, gold, list(demos), dict(words), spans)


# ----------------------------------------------------------------------------------------------
# Tokenisation


@dataclass
class PromptBatch:
    """Right-padded token ids. Padding sits after each prompt, so real tokens never attend to it
    and rotary positions of real tokens are the same as in an unpadded run."""

    input_ids: torch.Tensor  # (batch, seq)
    attention_mask: torch.Tensor  # (batch, seq)
    last_positions: torch.Tensor  # (batch,) the position that predicts the label
    label_positions: list  # per prompt: token index of each demonstration's label word
    label_classes: list  # per prompt: class of each demonstration, same order
    gold: list  # per prompt: the query's class
    prompts: list

    def label_position_tensor(self) -> torch.Tensor:
        """(batch, n_demos); needs the same number of demonstrations in every prompt."""
        return torch.tensor(self.label_positions)


def _label_token_index(offsets: list, span: tuple, word: str, prompt_text: str) -> int:
    start, end = span
    overlapping = [i for i, (s, e) in enumerate(offsets) if s < end and e > start]
    covers = len(overlapping) == 1 and offsets[overlapping[0]][0] <= start and offsets[overlapping[0]][1] >= end
    if not covers:
        raise LabelWordError(
            f"The label word {word!r} is split into {len(overlapping)} tokens in context "
            f"(...{prompt_text[max(0, start - 12):end]!r}); the analyses read one label token per "
            f"demonstration. Choose one-token label words for this tokenizer (check with "
            f"icl_utils.label_token_ids)."
        )
    return overlapping[0]


def label_token_ids(tokenizer, words, fmt: PromptFormat = PromptFormat()) -> list:
    """Token id of each label word as it appears after the label prefix; refuses multi-token words."""
    ids = []
    for word in words:
        text = fmt.query("x") + " " + word
        enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
        index = _label_token_index(enc["offset_mapping"], (len(text) - len(word), len(text)), word, text)
        ids.append(enc["input_ids"][index])
    if len(set(ids)) != len(ids):
        raise LabelWordError(f"Label words {list(words)} map to the same token ids {ids}.")
    return ids


def encode_prompts(info, prompts: list) -> PromptBatch:
    """Tokenise prompts (right padding) and locate label tokens and the last position."""
    tokenizer = info.tokenizer
    rows, label_positions = [], []
    for p in prompts:
        enc = tokenizer(p.text, return_offsets_mapping=True)
        ids = enc["input_ids"]
        if info.max_positions and len(ids) > info.max_positions:
            raise PromptTooLongError(
                f"A prompt has {len(ids)} tokens but {info.name} reads at most {info.max_positions}. "
                f"Use fewer demonstrations (demos_per_class) or shorter inputs."
            )
        positions = []
        for (x, cls), span in zip(p.demos, p.label_spans):
            word = p.label_words[cls]
            positions.append(_label_token_index(enc["offset_mapping"], span, word, p.text))
        rows.append(ids)
        label_positions.append(positions)
    length = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, : len(r)] = torch.tensor(r)
        attention_mask[i, : len(r)] = 1
    return PromptBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        last_positions=torch.tensor([len(r) - 1 for r in rows]),
        label_positions=label_positions,
        label_classes=[[cls for _, cls in p.demos] for p in prompts],
        gold=[p.gold for p in prompts],
        prompts=list(prompts),
    )


# ----------------------------------------------------------------------------------------------
# Where the input texts are


@dataclass
class InputPositions:
    """Token indices of every input text in a PromptBatch's prompts (same rows, same order).

    demos[i][j]: the tokens of demonstration j's input text in prompt i (demonstrations in prompt
    order, matching batch.label_positions[i][j]); query[i]: the tokens of prompt i's query input.
    A token counts when it overlaps the text, so a leading space merged into the first word
    (" agony") belongs to the input.
    """

    demos: list
    query: list


def input_spans(prompt: ICLPrompt, fmt: PromptFormat = PromptFormat()) -> tuple:
    """Character spans (start, end) of each demonstration's input text and of the query's, in prompt.text.

    Rebuilds the prompt with `fmt` (the format it was built with) and refuses a mismatch.
    """
    text, spans = "", []
    for x, cls in prompt.demos:
        start = len(text) + len(fmt.input_prefix)
        spans.append((start, start + len(x)))
        text += fmt.demo(x, prompt.label_words[cls]) + fmt.separator
    start = len(text) + len(fmt.input_prefix)
    text += fmt.query(prompt.query)
    if text != prompt.text:
        raise ValueError(
            "This prompt was not written with the given PromptFormat; pass the fmt= that build_prompts used."
        )
    return spans, (start, start + len(prompt.query))


def _span_tokens(offsets: list, span: tuple, prompt_text: str) -> list:
    start, end = span
    tokens = [i for i, (s, e) in enumerate(offsets) if s < end and e > start]
    if not tokens:
        raise ValueError(f"No token covers the input text {prompt_text[start:end]!r} (empty input?).")
    return tokens


def input_positions(info, batch: PromptBatch, fmt: PromptFormat = PromptFormat()) -> InputPositions:
    """Token positions of each demonstration's input text and of the query's input, per prompt.

    Tokenises each prompt again with offsets (as encode_prompts does) and checks that the tokens
    are the batch's, so the positions index batch.input_ids.
    """
    demos, query = [], []
    for row, p in enumerate(batch.prompts):
        enc = info.tokenizer(p.text, return_offsets_mapping=True)
        ids = enc["input_ids"]
        if batch.input_ids[row, : len(ids)].tolist() != ids or int(batch.attention_mask[row].sum()) != len(ids):
            raise ValueError(f"Row {row} of the batch is not prompt {row} tokenised by this model's tokenizer.")
        demo_spans, query_span = input_spans(p, fmt)
        demos.append([_span_tokens(enc["offset_mapping"], span, p.text) for span in demo_spans])
        query.append(_span_tokens(enc["offset_mapping"], query_span, p.text))
    return InputPositions(demos=demos, query=query)
