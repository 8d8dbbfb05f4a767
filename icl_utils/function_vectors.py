"""Function-vector (FV) heads (Todd et al. 2024; Yin & Steinhardt 2025) on word tasks x -> y.

A prompt holds demonstrations `Q: x\\nA: y` and a query `Q: x\\nA:`; the answer is scored by the
first token of " y". A head's FV score: take the mean of its output at the last token (the input of
the output projection, before W_O) over *clean* prompts; patch that mean into prompts whose
demonstration labels are shuffled, at the last token; the score is the rise in the probability of
the correct answer's first token, averaged over prompts and tasks.

Everything here intervenes at the last token only, so the rest of a prompt runs once: its keys and
values are cached and the last token is run for many rows at once, each row with its own
intervention (`last_token_logits` inside `tracing.set_heads` or `tracing.add_to_residual`).
"""
from __future__ import annotations

import copy
import random
from contextlib import ExitStack
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .attribution import frozen_norm, unembedded_log_probs
from .evaluation import cached_prefix, replay
from .knockout import packed_step
from .prompts import PromptFormat, _stable_rank, pad_right
from .tracing import _per_layer, add_to_residual, run_with_trace, set_heads
from .models import ModelInfo

# ----------------------------------------------------------------------------------------------
# Tasks and prompts


QA = PromptFormat("Q: ", "\nA:", "\n\n")  # Todd et al.'s format: "Q: x\nA: y"
ARROW = PromptFormat("", " ->", "\n")  # "x -> y", one demonstration per line


POOLS = ("scoring", "evaluation")


def pair_pools(pairs: list, evaluation_share: float = 0.4) -> dict:
    """{"scoring": [...], "evaluation": [...]}: a task's pairs split once, by a hash of each input's
    text (not by any seed), so whatever scores heads (mean outputs, patched prompts, choices of
    format and layer) never sees an evaluation query or demonstration. evaluation_share of the
    pairs (rounded) go to evaluation."""
    if not 0 < evaluation_share < 1:
        raise ValueError(f"evaluation_share must be between 0 and 1, not {evaluation_share}")
    ordered = sorted(pairs, key=lambda pair: _stable_rank(pair[0]))
    n_eval = round(len(ordered) * evaluation_share)
    if n_eval < 2 or len(ordered) - n_eval < 2:
        raise ValueError(f"{len(pairs)} pairs are too few to split into scoring and evaluation pools")
    return {"scoring": ordered[n_eval:], "evaluation": ordered[:n_eval]}


@dataclass
class FVPrompt:
    text: str
    query: str
    answer: str  # the correct output; scored by the first token of " " + answer
    task: str = ""


def build_fv_prompts(pairs: list, n_prompts: int, n_demos: int = 10, seed: int = 0, fmt: PromptFormat = QA,
                     shuffle_labels: bool = False, task: str = "") -> list:
    """`n_prompts` prompts, each a different query with `n_demos` other pairs as demonstrations.

    shuffle_labels: the same prompts (same seed, same queries and demonstration inputs) with the
    demonstrations' outputs permuted so that no demonstration keeps its own output.
    """
    if n_prompts > len(pairs) or n_demos + 1 > len(pairs):
        raise ValueError(f"{len(pairs)} pairs cannot give {n_prompts} distinct queries with {n_demos} demonstrations each")
    rng, shuffler = random.Random(seed), random.Random(seed + 1)
    queries = rng.sample(range(len(pairs)), n_prompts)
    prompts = []
    for q in queries:
        demos = [pairs[i] for i in rng.sample([i for i in range(len(pairs)) if i != q], n_demos)]
        outputs = [y for _, y in demos]
        if shuffle_labels and n_demos > 1:
            order = list(range(n_demos))
            while any(i == j for i, j in enumerate(order)):
                shuffler.shuffle(order)
            outputs = [outputs[j] for j in order]
        text = "".join(fmt.demo(x, y) + fmt.separator for (x, _), y in zip(demos, outputs))
        prompts.append(FVPrompt(text + fmt.query(pairs[q][0]), pairs[q][0], pairs[q][1], task))
    return prompts


def zero_shot_prompts(prompts: list, fmt: PromptFormat = QA) -> list:
    """The same queries with no demonstrations."""
    return [FVPrompt(fmt.query(p.query), p.query, p.answer, p.task) for p in prompts]


def answer_ids(tokenizer, prompts: list) -> torch.Tensor:
    """First token of " " + answer for each prompt: what the model must predict next."""
    return torch.tensor([tokenizer(" " + p.answer, add_special_tokens=False)["input_ids"][0] for p in prompts])


def encode_texts(info: ModelInfo, texts: list) -> tuple:
    """Right-padded (input_ids, attention_mask, last_positions) for plain texts."""
    return pad_right(info.tokenizer, [info.tokenizer(t)["input_ids"] for t in texts])


# ----------------------------------------------------------------------------------------------
# Clean runs: accuracy and mean head outputs


@dataclass
class FVRun:
    head_out: torch.Tensor  # (n_prompts, n_layers, n_heads, d_head) each head's last-token output
    answer_prob: torch.Tensor  # (n_prompts,) probability of the answer's first token
    correct: torch.Tensor  # (n_prompts,) bool: that token is the model's top prediction


def run_fv_prompts(info: ModelInfo, prompts: list, batch_size: int = 8, progress: bool = False) -> FVRun:
    """One traced pass per batch: last-token head outputs and the answer's probability."""
    answers = answer_ids(info.tokenizer, prompts)
    heads, probs, correct = [], [], []
    for start in tqdm(range(0, len(prompts), batch_size), desc="clean prompts", disable=not progress, leave=False):
        chunk = prompts[start : start + batch_size]
        ids, mask, last = encode_texts(info, [p.text for p in chunk])
        trace = run_with_trace(info, ids, mask, last, record=("head_out", "logits"))
        heads.append(trace.stack("head_out", 0))
        logits = trace.logits[:, 0]
        gold = answers[start : start + batch_size]
        probs.append(torch.softmax(logits, -1).gather(1, gold[:, None])[:, 0])
        correct.append(logits.argmax(-1) == gold)
    return FVRun(torch.cat(heads).float(), torch.cat(probs), torch.cat(correct))


# ----------------------------------------------------------------------------------------------
# Many rows at the last token of one prompt


def prefix_cache(info: ModelInfo, ids: torch.Tensor):
    """Run every token of one prompt but the last (ids: (seq,)) and keep their keys and values."""
    return cached_prefix(info, ids[None, :-1])


@torch.no_grad()
def last_token_logits(info: ModelInfo, ids: torch.Tensor, n_rows: int, cache) -> torch.Tensor:
    """Next-token logits at the last token of one prompt, for `n_rows` copies of it in one batch:
    (n_rows, vocab). The other tokens come from `cache` = prefix_cache(info, ids), computed *outside*
    any intervention; interventions active during this call (hooks at "every position") then act on
    the last token only: exactly what patching or ablating at the last position does, since earlier
    positions cannot see the last one. The cache is copied, so it can be reused."""
    hidden = replay(info, cache, ids[-1:].expand(n_rows, 1), repeat=n_rows)
    return info.logits_from_final_hidden(hidden[:, 0]).float()


@torch.no_grad()
def patched_answers(info: ModelInfo, prompts: list, row_heads: list, values, max_rows: int = 128,
                    progress: bool = False, desc: str = "patched runs") -> tuple:
    """For every prompt and every row of heads (see tracing.set_heads; [] = no intervention),
    the answer's probability and whether it is the top token, with the heads set to `values` at the
    last position. values: (n_layers, n_heads, d_head), or a function prompt -> such a tensor (e.g.
    the means of the prompt's own task). Returns (prob, correct), each (n_prompts, n_rows).

    Per prompt, the tokens before the last run once; the rows' copies of the last token are then
    packed side by side in one sequence after them (knockout.packed_step), each reading the prompt
    and itself, so the cached keys and values are read once rather than copied per row."""
    answers = answer_ids(info.tokenizer, prompts)
    distinct = list(dict.fromkeys(frozenset(heads) for heads in row_heads))  # a set listed twice runs once
    row_of = torch.tensor([distinct.index(frozenset(heads)) for heads in row_heads])
    hidden = []
    for i, p in enumerate(tqdm(prompts, desc=desc, disable=not progress, leave=False)):
        ids = torch.tensor(info.tokenizer(p.text)["input_ids"])
        cache = prefix_cache(info, ids)
        v = values(p) if callable(values) else values
        for start in range(0, len(distinct), max_rows):
            rows = [sorted(heads) for heads in distinct[start : start + max_rows]]
            n = len(rows)
            with set_heads(info, rows, values=v, per_position=True):
                hidden.append(packed_step(info, copy.deepcopy(cache), ids[-1:].expand(1, n), torch.full((1, n), len(ids) - 1),
                                          torch.eye(n, dtype=torch.bool))[0])
    # every prompt's rows unembedded together: many rows per product use the CPU better
    probs, correct = _answer_readout(info, torch.cat(hidden), answers.repeat_interleave(len(distinct)), len(prompts))
    return probs[:, row_of], correct[:, row_of]


def fv_scores_exact(info: ModelInfo, corrupted: list, values, max_rows: int = 128, progress: bool = False) -> torch.Tensor:
    """Each head's indirect effect per prompt: p(answer) with the head's mean patched in at the last
    token of a shuffled-label prompt, minus p(answer) unpatched. (n_prompts, n_layers, n_heads)."""
    heads = info.all_heads
    probs, _ = patched_answers(info, corrupted, [[]] + [[h] for h in heads], values, max_rows, progress, "exact patching")
    return (probs[:, 1:] - probs[:, :1]).view(len(corrupted), info.n_layers, info.n_heads)


def fv_scores_attribution(info: ModelInfo, corrupted: list, values, batch_size: int = 8, progress: bool = False) -> torch.Tensor:
    """Attribution patching: the first-order estimate of fv_scores_exact, grad of p(answer) w.r.t.
    each head's last-token output times (mean - corrupted output). (n_prompts, n_layers, n_heads).

    Each prompt's other tokens run once without autograd (their keys and values cached, as in
    patched_answers); only the last token runs with gradients, so a prompt costs about one forward
    pass. batch_size is kept for callers of the batched version and no longer used."""
    del batch_size
    answers = answer_ids(info.tokenizer, corrupted)
    out = []
    for i, p in enumerate(tqdm(corrupted, desc="attribution patching", disable=not progress, leave=False)):
        ids = torch.tensor(info.tokenizer(p.text)["input_ids"])
        cache = prefix_cache(info, ids)
        deltas, seen = {}, {}

        def make_hook(layer):
            def hook(module, args):
                seen[layer] = args[0][0, -1].detach()
                deltas[layer] = torch.zeros_like(seen[layer], requires_grad=True)
                return (args[0] + deltas[layer],) + tuple(args[1:])
            return hook

        with ExitStack() as stack, torch.enable_grad():
            for layer in range(info.n_layers):
                stack.callback(info.out_projs[layer].register_forward_pre_hook(make_hook(layer)).remove)
            hidden = info.decoder(input_ids=ids[None, -1:].to(info.device), past_key_values=cache, use_cache=True).last_hidden_state
            logits = info.logits_from_final_hidden(hidden[:, -1]).float()
            prob = torch.softmax(logits, -1)[0, answers[i]]
            grads = torch.autograd.grad(prob, [deltas[l] for l in range(info.n_layers)])
        v = values(p) if callable(values) else values
        out.append(torch.stack([
            ((v[l].to(grads[l].device).float() - seen[l].view(info.n_heads, info.d_head).float())
             * grads[l].view(info.n_heads, info.d_head).float()).sum(-1)
            for l in range(info.n_layers)]).cpu())
    return torch.stack(out)


# ----------------------------------------------------------------------------------------------
# The function vector


def function_vector(info: ModelInfo, values: torch.Tensor, heads: list) -> torch.Tensor:
    """sum over heads of W_O^h values[l, h]: what those heads write into the residual stream when
    they output `values` (their means). (d_model,)

    Where a norm sits between the attention output and the residual stream (Gemma's post-attention
    norm), each layer's part goes through that norm linearised at the layer's whole output for
    these values (attribution.frozen_norm), so a layer's heads add up to what the layer writes.
    """
    total = torch.zeros(info.d_model)
    for layer, layer_heads in _per_layer(info, heads).items():
        w_o = info.out_proj_weight(layer).detach().float().cpu()
        v = values[layer].float().cpu()  # (n_heads, d_head)
        part = sum(info.head_out_weight(layer, h).detach().float().cpu() @ v[h] for h in layer_heads)
        norm = info.attn_out_norms[layer]
        if norm is not None:
            whole = w_o @ v.flatten()
            bias = getattr(info.out_projs[layer], "bias", None)
            if bias is not None:
                whole = whole + bias.detach().float().cpu()
            part = frozen_norm(norm, whole)(part).float().cpu()
        total += part
    return total


@torch.no_grad()
def answers_with_additions(info: ModelInfo, prompts: list, row_additions: list, progress: bool = False) -> tuple:
    """Like patched_answers, with tracing.add_to_residual: each row adds its (layer, vector) at the last token."""
    answers = answer_ids(info.tokenizer, prompts)
    hidden = []
    for p in tqdm(prompts, desc="adding vectors", disable=not progress, leave=False):
        ids = torch.tensor(info.tokenizer(p.text)["input_ids"])
        cache = prefix_cache(info, ids)  # outside the hooks: the additions act on the last token only
        with add_to_residual(info, row_additions):
            hidden.append(replay(info, cache, ids[-1:].expand(len(row_additions), 1), repeat=len(row_additions))[:, 0])
    return _answer_readout(info, torch.cat(hidden), answers.repeat_interleave(len(row_additions)), len(prompts))


def _answer_readout(info: ModelInfo, hidden: torch.Tensor, answers: torch.Tensor, n_prompts: int) -> tuple:
    """(prob, correct) of each row's answer token from final-normed hidden rows, shaped (n_prompts, rows per prompt):
    correct means no token scores higher than the answer."""
    log_prob, rank = unembedded_log_probs(info, hidden, answers, rank=True)
    return log_prob.exp().view(n_prompts, -1), (rank == 1).view(n_prompts, -1)
