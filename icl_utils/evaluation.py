"""Score prompts in batches and report raw and calibrated accuracy.

Calibration. Small models put a prior on one label word whatever the input ("bar" more often than
"foo"), which hides how well they separate the classes. Beside raw accuracy we report:
* calibrated accuracy (batch calibration, Zhou et al., ICLR 2024): divide each prompt's label
  probabilities by their mean over *calibration prompts*, prompts with the same demonstrations
  whose queries come from the demonstration pool (prompts.calibration_prompts), never the scored
  prompts themselves; `ICLScores.calibrated_with` attaches that prior;
* AUC of the two-label logit difference: how well the scores rank the classes, threshold-free;
* the gold-label logit margin.
Every ICLScores knows each prompt's demonstration set (`demo_set`), the unit of its intervals.
"""
from __future__ import annotations

import numbers
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .prompts import (build_prompt_groups, calibration_prompts, check_prompt_list, demo_set_ids, encode_prompts,
                      label_token_ids, pad_right)
from .stats import Interval, auc, mean_interval
from .attribution import unembedded_log_probs
from .tracing import positional_interventions_active, record_layers, reuse_layers_below, set_heads
from .models import Head, ModelInfo


@dataclass
class ICLScores:
    label_logits: torch.Tensor  # (n_prompts, n_classes): logits of each class's label token
    gold: torch.Tensor  # (n_prompts,) index of the gold class
    classes: list
    label_words: dict
    log_normaliser: torch.Tensor | None = None  # (n_prompts,) logsumexp of the full next-token logits
    demo_set: np.ndarray | None = None  # (n_prompts,) id of each prompt's demonstration set (prompts.demo_set_ids)
    log_prior: torch.Tensor | None = None  # (n_prompts, n_classes) label prior from calibration prompts

    def take(self, rows) -> "ICLScores":
        """The scores of the given rows only (e.g. one class, or the scored prompts without their
        calibration prompts)."""
        rows = torch.as_tensor(np.asarray(rows), dtype=torch.long)
        pick = lambda x: None if x is None else x[rows]  # noqa: E731
        return ICLScores(self.label_logits[rows], self.gold[rows], self.classes, self.label_words,
                         pick(self.log_normaliser), None if self.demo_set is None else self.demo_set[rows.numpy()],
                         pick(self.log_prior))

    def calibrated_with(self, calibration: "ICLScores") -> "ICLScores":
        """These scores with the label prior of `calibration` attached, per demonstration set: each
        prompt gets the mean label probabilities of the calibration prompts that share its
        demonstrations (so neither the prompt itself nor any other scored prompt is used)."""
        if self.demo_set is None or calibration.demo_set is None:
            raise ValueError("calibrated_with needs scores from score_prompts (they know each prompt's demonstration set)")
        priors = {}
        for key in np.unique(calibration.demo_set):
            priors[key] = calibration.take(np.flatnonzero(calibration.demo_set == key)).label_prior()
        missing = sorted(set(np.unique(self.demo_set)) - set(priors))
        if missing:
            raise ValueError(f"{len(missing)} demonstration set(s) have no calibration prompts: build them with "
                             f"prompts.calibration_prompts from the same prompts")
        prior = torch.stack([priors[k] for k in self.demo_set])
        return ICLScores(self.label_logits, self.gold, self.classes, self.label_words, self.log_normaliser,
                         self.demo_set, prior)

    def label_prior(self) -> torch.Tensor:
        """Log of the mean label probabilities over these prompts: what batch calibration removes."""
        logp = torch.log_softmax(self.label_logits.float(), dim=-1)
        return torch.logsumexp(logp, dim=0) - np.log(len(logp))

    def log_probs(self, calibration: str | None = None, reference: "ICLScores | None" = None) -> torch.Tensor:
        """Log-probabilities over the label words only.

        calibration: None (raw); "prior": subtract the prior fitted on calibration prompts
        (calibrated_with), the book's default; "batch": subtract the mean over the scored prompts
        themselves (Zhou et al.'s original; it sees the prompts it scores, so verdicts do not use it).
        reference: take the prior from other scores of the same prompts (e.g. the unablated model),
        so an intervention's shift towards one label is not calibrated away.
        """
        logp = torch.log_softmax(self.label_logits.float(), dim=-1)
        source = reference or self
        if calibration == "batch":
            logp = logp - source.label_prior()
        elif calibration == "prior":
            if source.log_prior is None:
                raise ValueError("no calibration prior: call .calibrated_with(scores of prompts.calibration_prompts) first")
            logp = logp - source.log_prior
        elif calibration is not None:
            raise ValueError(f"calibration must be None, 'prior' or 'batch', not {calibration!r}")
        return logp

    def predictions(self, calibration: str | None = None, reference=None) -> torch.Tensor:
        return self.log_probs(calibration, reference).argmax(dim=-1)

    def accuracy(self, calibration: str | None = None, reference=None) -> float:
        return (self.predictions(calibration, reference) == self.gold).float().mean().item()

    def per_class_accuracy(self, calibration: str | None = None, reference=None) -> dict:
        pred = self.predictions(calibration, reference)
        return {c: (pred[self.gold == i] == i).float().mean().item() for i, c in enumerate(self.classes)}

    def gold_margins(self) -> torch.Tensor:
        """Per prompt: logit(gold label) - logit(other label) (two classes)."""
        if len(self.classes) != 2:
            raise ValueError(f"gold margins need exactly two classes; these scores have {len(self.classes)} "
                             f"{self.classes}: keep two with iu.load_task(name, classes=[first, second]), or use "
                             f"accuracy / gold_log_probs, which take any number of classes")
        rows = torch.arange(len(self.gold))
        return (self.label_logits[rows, self.gold] - self.label_logits[rows, 1 - self.gold]).float()

    def gold_logit_margin(self) -> float:
        """Mean over prompts of logit(gold label) - logit(other label) (two classes)."""
        return self.gold_margins().mean().item()

    def correct(self, calibration: str | None = None, reference=None) -> torch.Tensor:
        """Per prompt: 1.0 where the (calibrated) prediction is the gold class."""
        return (self.predictions(calibration, reference) == self.gold).float()

    def accuracy_interval(self, calibration: str | None = "prior", reference=None) -> Interval:
        """Accuracy with a 95% t interval over whole demonstration sets (the book's
        precondition "the clean model learns the task" is this interval's low end above chance)."""
        if self.demo_set is None:
            raise ValueError("these scores carry no demonstration sets to form an interval over (score prompts built by "
                             "build_prompt_groups or design_prompts)")
        return mean_interval(self.correct(calibration, reference).numpy(), self.demo_set)

    def gold_log_probs(self) -> torch.Tensor:
        """Per prompt: log p(gold label word), the softmax taken over the whole vocabulary."""
        if self.log_normaliser is None:
            raise ValueError("these scores were built without the full-vocabulary normaliser (see score_prompts)")
        rows = torch.arange(len(self.gold))
        return self.label_logits[rows, self.gold] - self.log_normaliser

    def gold_log_prob(self) -> float:
        """Mean over prompts of log p(gold label word), the softmax taken over the whole vocabulary."""
        return self.gold_log_probs().mean().item()

    def auc(self) -> float:
        """Two classes: probability that a random class-1 prompt has a larger logit(class 1) -
        logit(class 0) than a random class-0 prompt (ties count half)."""
        if len(self.classes) != 2:
            raise ValueError(f"AUC is defined here for two classes; these scores have {len(self.classes)} "
                             f"{self.classes}: keep two with iu.load_task(name, classes=[first, second])")
        diff = (self.label_logits[:, 1] - self.label_logits[:, 0]).float()
        return auc(diff[self.gold == 1], diff[self.gold == 0])

    def summary(self) -> dict:
        out = {
            "n": len(self.gold),
            "accuracy": self.accuracy(),
            "calibrated_accuracy": self.accuracy("prior" if self.log_prior is not None else "batch"),
            "prior_first_label": self.predictions().eq(0).float().mean().item(),
        }
        if len(self.classes) == 2:
            out["auc"] = self.auc()
        return out


@torch.no_grad()  # scores are read, never differentiated
def scores_from_hidden(info: ModelInfo, hidden: torch.Tensor, prompts: list, normaliser: bool = False) -> ICLScores:
    """ICLScores from final-normed hidden states at each prompt's last position (n_prompts, d_model):
    only the label words are unembedded, unless `normaliser` (log-sum-exp over the vocabulary)."""
    classes = list(prompts[0].label_words)
    ids = label_token_ids(info.tokenizer, [prompts[0].label_words[c] for c in classes])
    norms = None
    if normaliser:
        full = info.logits_from_final_hidden(hidden).float()
        logits, norms = full[:, torch.as_tensor(ids, device=full.device)].cpu(), torch.logsumexp(full, -1).cpu()
    else:
        logits = info.label_logits(hidden, ids).float().cpu()
    return _scores(logits, prompts, norms)


def scores_from_logits(tokenizer, logits: torch.Tensor, prompts: list) -> ICLScores:
    """ICLScores from next-token logits over the whole vocabulary (n_prompts, vocab), e.g. a trace's."""
    classes = list(prompts[0].label_words)
    ids = torch.tensor(label_token_ids(tokenizer, [prompts[0].label_words[c] for c in classes]))
    return _scores(logits[:, ids].float().cpu(), prompts, torch.logsumexp(logits.float(), -1).cpu())


def concat_scores(parts: list) -> ICLScores:
    """Several ICLScores of the same classes and label words as one."""
    if not parts:
        raise ValueError("concat_scores needs at least one ICLScores")
    first = parts[0]
    if any(p.classes != first.classes or p.label_words != first.label_words for p in parts):
        raise ValueError("concat_scores needs scores with the same classes and label words")
    cat = lambda name: None if any(getattr(p, name) is None for p in parts) else torch.cat([getattr(p, name) for p in parts])  # noqa: E731
    demo = None if any(p.demo_set is None for p in parts) else np.concatenate([p.demo_set for p in parts])
    return ICLScores(torch.cat([p.label_logits for p in parts]), torch.cat([p.gold for p in parts]), first.classes,
                     first.label_words, cat("log_normaliser"), demo, cat("log_prior"))


def _scores(label_logits: torch.Tensor, prompts: list, normalisers: torch.Tensor | None) -> ICLScores:
    classes = list(prompts[0].label_words)
    if any(list(p.label_words) != classes or p.label_words != prompts[0].label_words for p in prompts):
        raise ValueError("all prompts must share their classes and label words to be scored together")
    gold = torch.tensor([classes.index(p.gold) for p in prompts])
    return ICLScores(label_logits, gold, classes, dict(prompts[0].label_words), normalisers, demo_set_ids(prompts))


def batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


@torch.no_grad()
def last_position_hidden(info: ModelInfo, batch) -> torch.Tensor:
    """Final-normed hidden state at each prompt's last position: (batch, d_model)."""
    out = info.decoder(
        input_ids=batch.input_ids.to(info.device),
        attention_mask=batch.attention_mask.to(info.device),
        use_cache=False,
    )
    rows = torch.arange(len(batch.last_positions))
    return out.last_hidden_state[rows, batch.last_positions.to(info.device)]


@torch.no_grad()
def next_token_logits(info: ModelInfo, id_lists: list) -> torch.Tensor:
    """Next-token logits after each list of token ids (unpadded, of any lengths), in one right-padded
    batch: (n, vocab), on the CPU."""
    ids, mask, last = pad_right(info.tokenizer, id_lists)
    out = info.decoder(input_ids=ids.to(info.device), attention_mask=mask.to(info.device), use_cache=False)
    rows = torch.arange(len(last))
    return info.logits_from_final_hidden(out.last_hidden_state[rows.to(info.device), last.to(info.device)]).float().cpu()


# ----------------------------------------------------------------------------------------------
# Replaying the last tokens over a cached prefix: the one mechanism for "run the shared part once"


def _refuse_positional(info: ModelInfo) -> None:
    if positional_interventions_active(info):
        raise RuntimeError(
            "A replay over cached keys and values (share_prefix=True, score_head_ablations) cannot be combined with "
            "an intervention at chosen positions (edit_attention, or ablate_heads/ablate_neurons with positions=...): "
            "run whole prompts (score_prompts(..., share_prefix=False)).")


@torch.no_grad()
def cached_prefix(info: ModelInfo, input_ids: torch.Tensor):
    """Run `input_ids` (rows, n) and keep their keys and values (a transformers cache) for replay."""
    from transformers import DynamicCache  # one full-length cache per layer, sliding layers included

    cache = DynamicCache()
    info.decoder(input_ids=input_ids.to(info.device), past_key_values=cache, use_cache=True)
    return cache


@torch.no_grad()
def replay(info: ModelInfo, cache, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, repeat: int = 1,
           reuse: bool = True, positional_ok: bool = False) -> torch.Tensor:
    """Run `input_ids` (rows, s) after the cached prefix: final-normed hidden states (rows, s, d_model).

    Exact: the new tokens attend to the same keys and values at the same positions as in one full
    pass. repeat: each cached row serves `repeat` consecutive rows of input_ids (e.g. one shared
    set of demonstrations for a group of queries). reuse: copy the cache first, so it can serve
    again. attention_mask: (rows, prefix + s), for right-padded rows.
    An intervention active now acts on the new tokens only (and acted on the prefix only if it was
    active when the prefix ran). Interventions at chosen absolute positions would be misplaced,
    so they are refused, unless the caller built them for this geometry (positional_ok, e.g. a
    knock-out mask whose rows are the last positions).
    """
    import copy

    if not positional_ok:
        _refuse_positional(info)
    if reuse:
        cache = copy.deepcopy(cache)
    if repeat > 1:
        cache.batch_repeat_interleave(repeat)
    mask = None if attention_mask is None else attention_mask.to(info.device)
    out = info.decoder(input_ids=input_ids.to(info.device), attention_mask=mask, past_key_values=cache, use_cache=True)
    return out.last_hidden_state


def _shared_prefix_length(batch) -> int:
    """Tokens every row shares with the first, leaving each row at least one token of its own."""
    same = (batch.input_ids == batch.input_ids[:1]).long().cumprod(1).sum(1)
    return int(torch.minimum(same, batch.attention_mask.sum(1) - 1).min())


@torch.no_grad()
def last_position_hidden_shared_prefix(info: ModelInfo, batch) -> torch.Tensor:
    """As last_position_hidden, for prompts whose token ids share a prefix (the same demonstrations):
    the prefix runs once and every prompt's remaining tokens are replayed over it (replay)."""
    shared = _shared_prefix_length(batch)
    if shared == 0:
        return last_position_hidden(info, batch)
    _refuse_positional(info)  # before the prefix runs
    cache = cached_prefix(info, batch.input_ids[:1, :shared])
    hidden = replay(info, cache, batch.input_ids[:, shared:], batch.attention_mask, repeat=len(batch.input_ids),
                    reuse=False)
    rows = torch.arange(len(batch.input_ids))
    return hidden[rows.to(hidden.device), (batch.last_positions - shared).to(hidden.device)]


def batches_by_demonstrations(prompts: list, batch_size: int) -> list:
    """Lists of prompt indices, at most batch_size each, every list sharing its demonstrations (the
    batches run_with_trace(..., share_prefix=True) and score_prompts(..., share_prefix=True) want).
    Prompts built in demonstration sets (build_prompt_groups, design_prompts) keep their order."""
    return _prefix_groups(prompts, batch_size)


def _prefix_groups(prompts: list, batch_size: int) -> list:
    """Batches of at most batch_size prompts that share their demonstrations (same text before the query)."""
    groups: dict = {}
    for i, p in enumerate(prompts):
        groups.setdefault(tuple(p.demos), []).append(i)
    return [idx[s : s + batch_size] for idx in groups.values() for s in range(0, len(idx), batch_size)]


@torch.no_grad()
def score_prompts(info: ModelInfo, prompts: list, batch_size: int = 16, progress: bool = True, desc: str = "scoring",
                  share_prefix: bool = False, normaliser: bool = True) -> ICLScores:
    """Label-word logits at the last position of every prompt, in batches (one forward each).

    share_prefix: batch prompts that share their demonstrations (e.g. from build_prompt_groups)
    and run the shared demonstrations once per batch: the same numbers, several times faster.
    normaliser: also the log-sum-exp over the whole vocabulary (for gold_log_prob); False
    unembeds only the label words (Gemma's vocabulary has 262k tokens).
    """
    if not prompts:
        raise ValueError("score_prompts needs at least one prompt")
    check_prompt_list(prompts, "score_prompts")
    if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    order = _prefix_groups(prompts, batch_size) if share_prefix else [
        list(range(s, min(s + batch_size, len(prompts)))) for s in range(0, len(prompts), batch_size)]
    parts, rows = [], []
    for idx in tqdm(order, desc=desc, disable=not progress, leave=False):
        chunk = [prompts[i] for i in idx]
        batch = encode_prompts(info, chunk)
        hidden = (last_position_hidden_shared_prefix if share_prefix else last_position_hidden)(info, batch)
        parts.append(scores_from_hidden(info, hidden, chunk, normaliser=normaliser))
        rows += idx
    scores = concat_scores(parts)
    return scores.take(np.argsort(rows))  # back in the order of `prompts`


def score_calibrated(info: ModelInfo, prompts: list, calibration: list, **kwargs) -> ICLScores:
    """Score `prompts` and their calibration prompts in one run (they share demonstrations, so with
    share_prefix=True each set of demonstrations runs once) and return the prompts' scores with the
    calibration prior attached (ICLScores.calibrated_with)."""
    check_prompt_list(prompts, "score_calibrated")
    check_prompt_list(calibration, "score_calibrated (its calibration prompts)",
                      "build them with iu.calibration_prompts(task, prompts), or use iu.design_prompts, which returns both")
    both = score_prompts(info, list(prompts) + list(calibration), **kwargs)
    n = len(prompts)
    return both.take(range(n)).calibrated_with(both.take(range(n, n + len(calibration))))


def _log_normalisers(info: ModelInfo, hidden: torch.Tensor) -> torch.Tensor:
    """log-sum-exp of the full next-token logits of final-normed hidden states (rows, d) -> (rows,): a
    token's logit minus its log-probability, both from attribution.unembedded_log_probs (the
    vocabulary read in chunks, the (rows, vocab) logits never held at once)."""
    first = torch.zeros(len(hidden), dtype=torch.long)
    log_p, _ = unembedded_log_probs(info, hidden, first)
    return info.label_logits(hidden, [0])[:, 0].float().cpu() - log_p


def _lowest_layer(heads, n_layers: int) -> int:
    return min((layer for layer, _ in heads), default=n_layers)


@torch.no_grad()
def score_head_ablations(info: ModelInfo, prompts: list, head_sets: list[list[Head]], rows_per_pass: int = 64, normaliser: bool = False,
                         progress: bool = True, desc: str = "head ablations") -> list:
    """ICLScores of `prompts` under each head set of `head_sets` zeroed (at every position), many
    ablations per forward pass: [scores with head_sets[0] zeroed, ...].

    Prompts are grouped by demonstration set; for each group, a batch of ablations runs the shared
    demonstrations once per ablation (one row each, that row's heads zeroed via
    tracing.set_heads), then every query of the group under every ablation from the cached keys
    and values. Below the lowest layer with a zeroed head a batch computes nothing: those layers
    are taken from one clean pass of the group (head sets are batched by their lowest layer, so a
    sweep over single heads computes about half the layers). The same numbers, up to float
    rounding, as `with ablate_heads(info, heads): score_prompts(...)` for each set, for a fraction
    of the passes. normaliser: also compute log-sum-exp over the whole vocabulary (needed for
    gold_log_prob; costly on a 262k vocabulary, so it runs once per group on all its rows),
    else only the label logits.
    """
    _refuse_positional(info)
    if not head_sets:
        raise ValueError("head_sets is empty: pass a list of head lists, e.g. [[(11, 2)], [(3, 0), (5, 1)]]")
    for heads in head_sets:
        if not isinstance(heads, (list, tuple, set, frozenset)) or not all(hasattr(h, "__len__") and len(h) == 2 for h in heads):
            raise TypeError(f"head_sets is a list of head *sets*, each a list of (layer, head) pairs, e.g. "
                            f"[[(11, 2)], [(3, 0), (5, 1)]]; got {heads!r} as one set (one head set? wrap it: [heads])")
    if not prompts:
        raise ValueError("prompts is empty")
    check_prompt_list(prompts, "score_head_ablations")
    classes = list(prompts[0].label_words)
    ids = label_token_ids(info.tokenizer, [prompts[0].label_words[c] for c in classes])
    logits = torch.zeros(len(head_sets), len(prompts), len(classes))
    norms = torch.zeros(len(head_sets), len(prompts))
    # deepest sets first, so that a batch's lowest layer is close to each of its sets' own
    order = sorted(range(len(head_sets)), key=lambda i: -_lowest_layer(head_sets[i], info.n_layers))
    groups = _prefix_groups(prompts, len(prompts))
    with tqdm(total=len(groups) * len(head_sets), desc=desc, disable=not progress, leave=False) as bar:
        for idx in groups:
            batch = encode_prompts(info, [prompts[i] for i in idx])
            n_q, shared = len(idx), _shared_prefix_length(batch)
            per_pass = max(1, rows_per_pass // n_q)
            clean = _record_clean_pass(info, batch, shared)
            group_hidden = torch.zeros(len(head_sets), n_q, info.d_model)
            for start in range(0, len(head_sets), per_pass):
                chunk = order[start:start + per_pass]
                sets = [list(head_sets[i]) for i in chunk]
                below = min(_lowest_layer(s, info.n_layers) for s in sets)
                if shared > 0:
                    from transformers import DynamicCache

                    cache = DynamicCache()
                    with set_heads(info, sets), reuse_layers_below(info, clean["prefix"], below, cache):
                        # one row per ablation: its demonstrations under its heads zeroed
                        info.decoder(input_ids=batch.input_ids[:1, :shared].expand(len(sets), -1).to(info.device),
                                     past_key_values=cache, use_cache=True)
                    with set_heads(info, [s for s in sets for _ in range(n_q)]), \
                            reuse_layers_below(info, clean["queries"], below, cache):
                        hidden = replay(info, cache, batch.input_ids[:, shared:].repeat(len(sets), 1),
                                        batch.attention_mask.repeat(len(sets), 1), repeat=n_q, reuse=False)
                else:
                    with set_heads(info, [s for s in sets for _ in range(n_q)]), \
                            reuse_layers_below(info, clean["queries"], below):
                        hidden = info.decoder(input_ids=batch.input_ids.repeat(len(sets), 1).to(info.device),
                                              attention_mask=batch.attention_mask.repeat(len(sets), 1).to(info.device),
                                              use_cache=False).last_hidden_state
                last = (batch.last_positions - shared).repeat(len(sets)).to(hidden.device)
                hidden = hidden[torch.arange(len(last), device=hidden.device), last]
                rows = torch.as_tensor(chunk)
                logits[rows[:, None], torch.as_tensor(idx)] = info.label_logits(hidden, ids).float().cpu().view(len(sets), n_q, -1)
                group_hidden[rows] = hidden.float().cpu().view(len(sets), n_q, -1)
                bar.update(len(sets))
            if normaliser:  # all the group's rows at once: the 262k-token unembedding is cheaper per row in big batches
                norms[:, idx] = _log_normalisers(info, group_hidden.flatten(0, 1)).view(len(head_sets), n_q)
    return [_scores(logits[i], prompts, norms[i] if normaliser else None) for i in range(len(head_sets))]


@torch.no_grad()
def _record_clean_pass(info: ModelInfo, batch, shared: int) -> dict:
    """One unablated pass of a group of prompts, as score_head_ablations runs it (the shared prefix in
    one row, then the queries replayed over it; or the whole prompts), with every layer's output and
    cache writes recorded: {"prefix": record, "queries": record} (_recording_clean_layers)."""
    if shared == 0:
        with record_layers(info) as queries:
            info.decoder(input_ids=batch.input_ids.to(info.device), attention_mask=batch.attention_mask.to(info.device),
                         use_cache=False)
        return {"prefix": None, "queries": queries}
    from transformers import DynamicCache

    cache = DynamicCache()
    with record_layers(info, cache) as prefix:
        info.decoder(input_ids=batch.input_ids[:1, :shared].to(info.device), past_key_values=cache, use_cache=True)
    with record_layers(info, cache) as queries:
        replay(info, cache, batch.input_ids[:, shared:], batch.attention_mask, repeat=len(batch.input_ids), reuse=False)
    return {"prefix": prefix, "queries": queries}


# ----------------------------------------------------------------------------------------------
# Many demonstration sets per pass: their prefixes side by side, each set's queries packed in its row


@torch.no_grad()
def last_position_hidden_packed(info: ModelInfo, prompts: list, tokens_per_pass: int = 2048, row_tokens: int = 512,
                                progress: bool = False, desc: str = "scoring") -> torch.Tensor:
    """Final-normed hidden state at each prompt's last position, (n_prompts, d_model) in the order of
    `prompts`: the numbers of last_position_hidden (and of score_prompts(..., share_prefix=True)), up
    to float rounding, in far fewer and fuller passes.

    Prompts are grouped by demonstration set. Several sets run per pass: their shared tokens side by
    side, one right-padded row per set (a real token never reads the padding after it), then, in a
    second pass over those cached keys and values, every prompt's own tokens packed one after the
    other in its set's row, each at its real position and reading only its set's shared tokens and
    its own earlier tokens (a 4-D mask). No cache is copied per prompt and no query is padded to the
    longest; sets of similar length share a pass (about tokens_per_pass tokens in each), and a set
    with more than row_tokens tokens of its own (e.g. every prompt without demonstrations) takes
    several rows.
    """
    from .knockout import _empty_cache, _knock_out_rows, _sliding_windows

    check_prompt_list(prompts, "last_position_hidden_packed")
    _refuse_positional(info)
    by_text: dict = {}  # the demonstrations as written (label words included): what a set's prompts share
    for i, p in enumerate(prompts):
        by_text.setdefault(p.text[: p.label_spans[-1][1]] if p.label_spans else "", []).append(i)
    sets = []  # (prompt indices, shared length, each prompt's token ids), at most row_tokens own tokens each
    for idx in by_text.values():
        batch = encode_prompts(info, [prompts[i] for i in idx])
        lengths = batch.attention_mask.sum(1).tolist()
        shared = _shared_prefix_length(batch)
        part, size = [], 0
        for r, n in enumerate(lengths):
            if part and size + n - shared > row_tokens:  # a long row costs attention quadratic in its length
                sets.append(([idx[j] for j in part], shared, [batch.input_ids[j, :lengths[j]] for j in part]))
                part, size = [], 0
            part.append(r)
            size += n - shared
        sets.append(([idx[j] for j in part], shared, [batch.input_ids[j, :lengths[j]] for j in part]))
    sets.sort(key=lambda s: (s[1], sum(len(ids) for ids in s[2])))  # similar lengths pad little
    passes, size = [[]], 0
    for s in sets:
        cost = s[1] + sum(len(ids) - s[1] for ids in s[2])
        if passes[-1] and size + cost > tokens_per_pass:
            passes.append([])
            size = 0
        passes[-1].append(s)
        size += cost
    windows = _sliding_windows(info)
    out = torch.empty(len(prompts), info.d_model)
    for chunk in tqdm(passes, desc=desc, disable=not progress, leave=False):
        rows, width = len(chunk), max(s[1] for s in chunk)
        q = max(sum(len(ids) - shared for ids in own) for _, shared, own in chunk)
        prefix = torch.zeros(rows, width, dtype=torch.long)
        ids = torch.zeros(rows, q, dtype=torch.long)
        positions = torch.zeros(rows, q, dtype=torch.long)
        segment = torch.full((rows, q), -1)  # which prompt of the row each new token belongs to (-1: padding)
        sees = torch.zeros(rows, q, width + q, dtype=torch.bool)
        last = []  # (prompt index, row, slot of its last token)
        for r, (idx, shared, own) in enumerate(chunk):
            prefix[r, :shared] = own[0][:shared]
            start = 0
            for i, tokens in zip(idx, own):
                n = len(tokens) - shared
                ids[r, start:start + n] = tokens[shared:]
                positions[r, start:start + n] = torch.arange(shared, len(tokens))
                segment[r, start:start + n] = i
                sees[r, start:start + n, :shared] = True
                last.append((i, r, start + n - 1))
                start += n
        same = (segment[:, :, None] == segment[:, None, :]) & (positions[:, None, :] <= positions[:, :, None])
        sees[:, :, width:] = same & (segment[:, None, :] >= 0)
        sees[:, :, width:] |= torch.eye(q, dtype=torch.bool)  # padding reads itself only
        key_positions = torch.cat([torch.arange(width).expand(rows, width), positions], 1)
        blocks = {}
        for layer, window in windows.items():  # the 4-D mask replaces the model's own, window included
            outside = sees & (key_positions[:, None, :] <= positions[:, :, None] - window)
            if bool(outside.any()):
                blocks[layer] = outside
        cache = cached_prefix(info, prefix) if width else _empty_cache()
        device = info.device
        with _knock_out_rows(info, blocks) if blocks else nullcontext():
            hidden = info.decoder(input_ids=ids.to(device), position_ids=positions.to(device),
                                  attention_mask=sees[:, None].to(device), past_key_values=cache,
                                  use_cache=True).last_hidden_state
        i, r, slot = (torch.tensor(x) for x in zip(*last))
        out[i] = hidden[r.to(hidden.device), slot.to(hidden.device)].float().cpu()
    return out


@torch.no_grad()
def score_calibrated_packed(info: ModelInfo, designs: list, tokens_per_pass: int = 2048, normaliser: bool = False,
                            progress: bool = False, desc: str = "scoring") -> list:
    """score_calibrated for many designs at once: designs is a list of (prompts, calibration prompts)
    (e.g. from design_prompts, one per task and condition); returns their calibrated ICLScores in
    order. All prompts of all designs are read by last_position_hidden_packed, several demonstration
    sets per pass; the same numbers as score_calibrated(..., share_prefix=True) up to float rounding."""
    everything = []
    for prompts, calibration in designs:
        check_prompt_list(prompts, "score_calibrated_packed")
        check_prompt_list(calibration, "score_calibrated_packed (its calibration prompts)",
                          "build them with iu.calibration_prompts(task, prompts), or use iu.design_prompts, which returns both")
        everything += list(prompts) + list(calibration)
    hidden = last_position_hidden_packed(info, everything, tokens_per_pass, progress=progress, desc=desc)
    out, start = [], 0
    for prompts, calibration in designs:
        n, m = len(prompts), len(calibration)
        both = scores_from_hidden(info, hidden[start:start + n + m], list(prompts) + list(calibration), normaliser)
        out.append(both.take(range(n)).calibrated_with(both.take(range(n, n + m))))
        start += n + m
    return out



def design_prompts(task, n_groups: int, queries_per_group: int, demos_per_class=8, label_words="foo/bar",
                   pool: str = "evaluation", calibration_per_class: int = 4, seed: int = 0) -> tuple:
    """The book's standard design: `n_groups` demonstration sets, each with its own
    `queries_per_group` queries from `pool` (balanced over the classes), plus calibration
    prompts for each set. Returns (prompts, calibration prompts), ready for score_calibrated
    or score_head_ablations; the demonstration set is the unit of its intervals."""
    groups = build_prompt_groups(task, n_groups, queries_per_group, demos_per_class=demos_per_class,
                                 label_words=label_words, seed=seed, distinct_queries=True, pool=pool)
    prompts = [p for group in groups for p in group]
    return prompts, calibration_prompts(task, prompts, per_class=calibration_per_class, seed=seed)


def score_task(info: ModelInfo, task, n_groups: int, queries_per_group: int, demos_per_class=8, label_words="foo/bar",
               pool: str = "evaluation", calibration_per_class: int = 4, seed: int = 0, batch_size: int = 16,
               normaliser: bool = False) -> ICLScores:
    """Scores of design_prompts(...), calibrated on their calibration prompts, each set of
    demonstrations run once for all its queries."""
    prompts, calibration = design_prompts(task, n_groups, queries_per_group, demos_per_class, label_words, pool,
                                          calibration_per_class, seed)
    return score_calibrated(info, prompts, calibration, batch_size=batch_size, progress=False, share_prefix=True,
                            normaliser=normaliser)
