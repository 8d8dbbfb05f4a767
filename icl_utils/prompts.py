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

import hashlib
import random
from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import LabelWordError, PromptTooLongError
from .tasks import Task
from .models import ModelInfo

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


def check_task(task, where: str = "this function") -> None:
    """Refuse anything but a Task (e.g. a task's name), saying how to get one."""
    if not (hasattr(task, "classes") and hasattr(task, "inputs_of")):
        how = f"iu.load_task({task!r})" if isinstance(task, str) else "iu.load_task(name or path)"
        raise TypeError(f"{where} takes a Task, not {type(task).__name__} {task!r:.60}: load it first with {how}.")


def check_prompt_list(prompts, where: str, hint: str = "build them with iu.build_prompts or iu.design_prompts") -> None:
    """Refuse a single prompt, text, or an empty list where a list of ICLPrompt is expected."""
    if isinstance(prompts, ICLPrompt):
        raise TypeError(f"{where} takes a list of prompts; wrap a single prompt in a list: [prompt].")
    if isinstance(prompts, (str, bytes)) or not hasattr(prompts, "__len__") or not hasattr(prompts, "__getitem__"):
        raise TypeError(f"{where} takes a list of prompts (ICLPrompt), not {type(prompts).__name__}: {hint}.")
    if len(prompts) == 0:
        raise ValueError(f"{where} needs at least one prompt: {hint}.")
    bad = next((p for p in prompts if not (hasattr(p, "text") and hasattr(p, "label_words"))), None)
    if bad is not None:
        raise TypeError(f"{where} takes ICLPrompt objects (from build_prompts, design_prompts or render_prompt), not "
                        f"{type(bad).__name__} {bad!r:.60}; to tokenise raw text use info.tokenizer.")


def label_words_for(task: Task, label_words="foo/bar") -> dict:
    """class -> word. "foo/bar" (the paper's unrelated labels, assigned in task.classes order),
    "meaningful" (the class names themselves), a sequence of words, or a dict."""
    if isinstance(label_words, dict):
        missing, extra = set(task.classes) - set(label_words), set(label_words) - set(task.classes)
        if missing or extra:
            raise ValueError(f"label_words must give one word per class of task '{task.name}' {task.classes}; "
                             f"missing {sorted(missing)}, unknown {sorted(extra)}.")
        words = dict(label_words)
        _check_words(list(words.values()))
        return words
    if label_words == "foo/bar":
        label_words = FOO_BAR
    elif label_words == "meaningful":
        label_words = task.classes
    elif isinstance(label_words, str):
        raise ValueError(f"label_words={label_words!r}: pass one word per class as a list, e.g. "
                         f"label_words=('foo', 'bar'), or one of the names 'foo/bar' and 'meaningful'.")
    if len(label_words) != len(task.classes):
        raise ValueError(
            f"{len(task.classes)} classes {task.classes} but label words {list(label_words)}: pass one label word per "
            f"class, or keep two classes with iu.load_task(name, classes=[first, second]).")
    _check_words(list(label_words))
    return dict(zip(task.classes, label_words))


def _check_words(words: list) -> None:
    for word in words:
        if not isinstance(word, str):
            raise TypeError(f"Label words are strings; got {type(word).__name__} {word!r} in {words}.")
        if not word.strip() or word != word.strip():
            raise LabelWordError(f"Label word {word!r} is empty or has spaces around it: write the bare word (the "
                                 f"prompt puts one space before it), e.g. 'foo'.")
    if len(set(words)) != len(words):
        raise LabelWordError(f"Label words {words} repeat a word: each class needs its own label word.")


# ----------------------------------------------------------------------------------------------
# Pools: which inputs may be queries for choosing, queries for evaluating, or demonstrations

POOL_NAMES = ("demonstrations", "selection", "evaluation")
POOL_SHARES = {"demonstrations": 0.25, "selection": 0.25}  # evaluation: the rest (half)


def _stable_rank(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def task_pools(task: Task) -> dict:
    """{"demonstrations" | "selection" | "evaluation": {class: [inputs]}}: three disjoint pools.

    Fixed by the data, not by any seed: each class's distinct inputs are ordered by a hash of
    their text and cut into a quarter for demonstrations, a quarter for selection (ranking heads,
    choosing hyperparameters, the model or the task) and the rest for evaluation (ablations and
    verdicts). Whatever chooses sees only the selection pool; whatever is graded only the
    evaluation pool; both read demonstrations from the third pool.
    """
    check_task(task, "task_pools")
    pools = {name: {} for name in POOL_NAMES}
    for cls in task.classes:
        items = sorted(dict.fromkeys(task.inputs_of(cls)), key=_stable_rank)
        n_demo = max(1, round(len(items) * POOL_SHARES["demonstrations"]))
        n_sel = max(1, round(len(items) * POOL_SHARES["selection"]))
        if len(items) - n_demo - n_sel < 1:
            raise ValueError(f"Class '{cls}' of task '{task.name}' has {len(items)} distinct inputs; at least 3 "
                             f"are needed to split it into demonstration, selection and evaluation pools.")
        pools["demonstrations"][cls] = items[:n_demo]
        pools["selection"][cls] = items[n_demo:n_demo + n_sel]
        pools["evaluation"][cls] = items[n_demo + n_sel:]
    return pools


def _query_pool(task: Task, pool: str) -> dict:
    if pool not in ("selection", "evaluation"):
        raise ValueError(f"pool must be 'selection' (for choosing) or 'evaluation' (for grading), not {pool!r}")
    return task_pools(task)[pool]


def _demo_counts(task: Task, demos_per_class) -> dict:
    counts = demos_per_class if isinstance(demos_per_class, dict) else {c: demos_per_class for c in task.classes}
    for cls, n in counts.items():
        if cls not in task.classes:
            raise ValueError(f"demos_per_class names unknown class {cls!r}; classes: {task.classes}")
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"demos_per_class must be a whole number >= 0 per class, got {n!r} for {cls!r}: "
                             f"e.g. demos_per_class=8, or a count per class such as {{{task.classes[0]!r}: 8, ...}}")
    missing = [c for c in task.classes if c not in counts]
    if missing:
        raise ValueError(f"demos_per_class gives no count for {missing}: give every class a count (0 for none).")
    return counts


def _check_demo_pool(task: Task, counts: dict, demo_pool: dict) -> None:
    for cls, n in counts.items():
        if n > len(demo_pool[cls]):
            raise ValueError(f"{n} demonstrations of '{cls}' requested, but task '{task.name}' has only "
                             f"{len(demo_pool[cls])} inputs of that class in its demonstration pool "
                             f"(a quarter of its inputs): use fewer demonstrations or a larger task.")


def build_prompts(
    task: Task,
    n_prompts: int,
    demos_per_class=8,
    label_words="foo/bar",
    order=None,
    seed: int = 0,
    fmt: PromptFormat = PromptFormat(),
    pool: str = "evaluation",
) -> list:
    """Build `n_prompts` prompts whose queries alternate over the classes (balanced).

    pool: where the queries come from: "evaluation" (the default: prompts that grade a claim) or
    "selection" (prompts that choose heads or hyperparameters); see task_pools. Demonstrations
    always come from the demonstration pool, so a query never appears among the demonstrations.
    Queries are taken in a seeded order and repeat once the pool is used up.
    demos_per_class: an int (balanced) or {class: count} (imbalanced, e.g. {"animal": 8, "vehicle": 7}).
    order: None shuffles the demonstrations; or a list of class names giving the class of each
    demonstration slot in prompt order (its counts override demos_per_class).
    Same arguments, same prompts.
    """
    check_task(task, "build_prompts")
    if not isinstance(n_prompts, int) or n_prompts < 1:
        raise ValueError(f"n_prompts must be a whole number >= 1, got {n_prompts!r}")
    rng = random.Random(seed)
    words = label_words_for(task, label_words)
    counts = _demo_counts(task, demos_per_class)
    if order is not None:
        unknown = set(order) - set(task.classes)
        if unknown:
            raise ValueError(f"order names unknown classes {sorted(unknown)}; classes: {task.classes}")
        counts = {c: list(order).count(c) for c in task.classes}
    queries = {c: rng.sample(v, len(v)) for c, v in _query_pool(task, pool).items()}
    demo_pool = task_pools(task)["demonstrations"]
    _check_demo_pool(task, counts, demo_pool)

    prompts = []
    for i in range(n_prompts):
        gold = task.classes[i % len(task.classes)]
        query = queries[gold][(i // len(task.classes)) % len(queries[gold])]
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
    pool: str = "evaluation",
) -> list:
    """`n_groups` lists of prompts; the prompts of one group share their demonstrations (same
    inputs, same order) and differ only in the query, balanced over the classes.

    For comparisons across inputs with the context held fixed (e.g. what changes in a head
    when the prediction flips from foo to bar), and for cheap evaluation: score_prompts(...,
    share_prefix=True) runs each group's demonstrations once. distinct_queries: every group gets
    its own queries (for accuracy estimates whose unit is the demonstration set); by default all
    groups ask the same queries. pool: "evaluation" or "selection", as in build_prompts.
    """
    check_task(task, "build_prompt_groups")
    for name, value in (("n_groups", n_groups), ("queries_per_group", queries_per_group)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    rng = random.Random(seed)
    words = label_words_for(task, label_words)
    counts = _demo_counts(task, demos_per_class)
    per_class = -(-queries_per_group // len(task.classes))
    needed = per_class * (n_groups if distinct_queries else 1)
    queries = {c: rng.sample(v, len(v)) for c, v in _query_pool(task, pool).items()}
    smallest = min(len(v) for v in queries.values())
    if needed > smallest:
        most = smallest // per_class
        raise ValueError(
            f"{n_groups if distinct_queries else 1} group(s) of {queries_per_group} distinct queries need {needed} "
            f"{pool} inputs per class; task '{task.name}' has {smallest}. Use at most {most} groups of this size, "
            f"fewer queries per group, or a larger task.")
    demo_pool = task_pools(task)["demonstrations"]
    _check_demo_pool(task, counts, demo_pool)
    groups = []
    for g in range(n_groups):
        demos = [(x, c) for c in task.classes for x in rng.sample(demo_pool[c], counts[c])]
        rng.shuffle(demos)
        first = g * per_class if distinct_queries else 0
        chosen = [(queries[task.classes[i % len(task.classes)]][first + i // len(task.classes)],
                   task.classes[i % len(task.classes)]) for i in range(queries_per_group)]
        groups.append([render_prompt(demos, q, gold, words, fmt) for q, gold in chosen])
    return groups


def calibration_prompts(task: Task, prompts: list, per_class: int = 4, seed: int = 0,
                        fmt: PromptFormat = PromptFormat()) -> list:
    """For each demonstration set among `prompts`: `per_class` prompts per class with the same
    demonstrations and queries from the demonstration pool that are not among them.

    Their mean label probabilities are the label prior that calibration removes
    (ICLScores.calibrated_with): fitted in the same context as the scored prompts but never on
    them, and never on a query that is a demonstration of the same prompt.
    """
    check_task(task, "calibration_prompts")
    check_prompt_list(prompts, "calibration_prompts", "pass the prompts to calibrate (e.g. from build_prompt_groups)")
    if not isinstance(per_class, int) or per_class < 1:
        raise ValueError(f"per_class must be a whole number >= 1, got {per_class!r}")
    rng = random.Random(seed)
    demo_pool = task_pools(task)["demonstrations"]
    out = []
    for demos, words in {tuple(p.demos): p.label_words for p in prompts}.items():
        used = {x for x, _ in demos}
        for cls in task.classes:
            free = [x for x in demo_pool[cls] if x not in used]
            if len(free) < per_class:
                raise ValueError(f"Class '{cls}' has {len(free)} demonstration-pool inputs left after this prompt's "
                                 f"demonstrations; {per_class} calibration queries were asked for: ask fewer.")
            out += [render_prompt(list(demos), x, cls, words, fmt) for x in rng.sample(free, per_class)]
    return out


def demo_set_ids(prompts: list) -> np.ndarray:
    """A short id per prompt naming its demonstration set (same inputs in the same order; a hash,
    so the same set gets the same id in any call): the unit of the intervals."""
    return np.array([hashlib.sha1(repr(list(p.demos)).encode("utf-8")).hexdigest()[:12] for p in prompts])


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
    if isinstance(words, str) or not words:
        raise (TypeError if isinstance(words, str) else ValueError)(
            f"label_token_ids takes a list of label words, e.g. ['foo', 'bar'], not {words!r}.")
    ids = []
    for word in words:
        text = fmt.query("x") + " " + word
        enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
        index = _label_token_index(enc["offset_mapping"], (len(text) - len(word), len(text)), word, text)
        ids.append(enc["input_ids"][index])
    if len(set(ids)) != len(ids):
        raise LabelWordError(f"Label words {list(words)} map to the same token ids {ids}.")
    return ids


def pad_right(tokenizer, rows: list) -> tuple:
    """Right-pad lists of token ids: (input_ids, attention_mask, last_positions). Padding after each
    row keeps its real tokens' positions as in an unpadded run; the one padder of the book."""
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("pad_right needs at least one row, and no empty rows")
    length = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, : len(r)] = torch.as_tensor(r)
        attention_mask[i, : len(r)] = 1
    return input_ids, attention_mask, torch.tensor([len(r) - 1 for r in rows])


def encode_prompts(info: ModelInfo, prompts: list) -> PromptBatch:
    """Tokenise prompts (right padding) and locate label tokens and the last position."""
    check_prompt_list(prompts, "encode_prompts")
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
    input_ids, attention_mask, last_positions = pad_right(tokenizer, rows)
    return PromptBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        last_positions=last_positions,
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


def input_positions(info: ModelInfo, batch: PromptBatch, fmt: PromptFormat = PromptFormat()) -> InputPositions:
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
