"""Score prompts in batches and report raw and calibrated accuracy.

Calibration. Small models put a prior on one label word whatever the input ("foo" more often than
"bar"), which hides how well they separate the classes. We report, beside raw accuracy:
* batch-calibrated accuracy (Zhou et al., ICLR 2024, "Batch calibration"): divide each prompt's
  label probabilities by their mean over the evaluated prompts, then take the argmax. It assumes the
  evaluated prompts are balanced across classes, which `build_prompts` guarantees;
* AUC of the two-label logit difference: how well the scores rank the classes, threshold-free.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .prompts import encode_prompts, label_token_ids


@dataclass
class ICLScores:
    label_logits: torch.Tensor  # (n_prompts, n_classes): logits of each class's label token
    gold: torch.Tensor  # (n_prompts,) index of the gold class
    classes: list
    label_words: dict
    log_normaliser: torch.Tensor | None = None  # (n_prompts,) logsumexp of the full next-token logits

    def label_prior(self) -> torch.Tensor:
        """Log of the mean label probabilities over these prompts: what batch calibration removes."""
        logp = torch.log_softmax(self.label_logits.float(), dim=-1)
        return torch.logsumexp(logp, dim=0) - np.log(len(logp))

    def log_probs(self, calibration: str | None = None, reference: "ICLScores | None" = None) -> torch.Tensor:
        """Log-probabilities over the label words only; calibration None or "batch".

        reference: estimate the prior on other scores (e.g. the unablated model on the same
        prompts), so an intervention's shift towards one label is not calibrated away.
        """
        logp = torch.log_softmax(self.label_logits.float(), dim=-1)
        if calibration == "batch":
            logp = logp - (reference or self).label_prior()
        elif calibration is not None:
            raise ValueError(f"calibration must be None or 'batch', not {calibration!r}")
        return logp

    def predictions(self, calibration: str | None = None, reference=None) -> torch.Tensor:
        return self.log_probs(calibration, reference).argmax(dim=-1)

    def accuracy(self, calibration: str | None = None, reference=None) -> float:
        return (self.predictions(calibration, reference) == self.gold).float().mean().item()

    def per_class_accuracy(self, calibration: str | None = None, reference=None) -> dict:
        pred = self.predictions(calibration, reference)
        return {c: (pred[self.gold == i] == i).float().mean().item() for i, c in enumerate(self.classes)}

    def gold_logit_margin(self) -> float:
        """Mean over prompts of logit(gold label) - logit(other label) (two classes)."""
        rows = torch.arange(len(self.gold))
        return (self.label_logits[rows, self.gold] - self.label_logits[rows, 1 - self.gold]).mean().item()

    def gold_log_prob(self) -> float:
        """Mean over prompts of log p(gold label word), the softmax taken over the whole vocabulary."""
        if self.log_normaliser is None:
            raise ValueError("these scores were built without the full-vocabulary normaliser (see score_prompts)")
        rows = torch.arange(len(self.gold))
        return (self.label_logits[rows, self.gold] - self.log_normaliser).mean().item()

    def auc(self) -> float:
        """Two classes: probability that a random class-1 prompt has a larger logit(class 1) -
        logit(class 0) than a random class-0 prompt (ties count half)."""
        if len(self.classes) != 2:
            raise ValueError("AUC is defined here for two classes")
        diff = (self.label_logits[:, 1] - self.label_logits[:, 0]).float()
        pos, neg = diff[self.gold == 1], diff[self.gold == 0]
        if len(pos) == 0 or len(neg) == 0:
            return float("nan")
        greater = (pos[:, None] > neg[None, :]).float().mean()
        ties = (pos[:, None] == neg[None, :]).float().mean()
        return (greater + 0.5 * ties).item()

    def summary(self) -> dict:
        out = {
            "n": len(self.gold),
            "accuracy": self.accuracy(),
            "calibrated_accuracy": self.accuracy("batch"),
            "prior_first_label": self.predictions().eq(0).float().mean().item(),
        }
        if len(self.classes) == 2:
            out["auc"] = self.auc()
        return out


def batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


@torch.no_grad()
def last_position_hidden(info, batch) -> torch.Tensor:
    """Final-normed hidden state at each prompt's last position: (batch, d_model)."""
    out = info.decoder(
        input_ids=batch.input_ids.to(info.device),
        attention_mask=batch.attention_mask.to(info.device),
        use_cache=False,
    )
    rows = torch.arange(len(batch.last_positions))
    return out.last_hidden_state[rows, batch.last_positions.to(info.device)]


@torch.no_grad()
def last_position_hidden_shared_prefix(info, batch) -> torch.Tensor:
    """As last_position_hidden, for prompts whose token ids share a prefix (the same demonstrations):
    the prefix is run once and its keys and values are reused by every prompt's remaining tokens.

    Exact: the remaining tokens attend to the same keys and values at the same positions as in a
    full pass. Refused while a position-specific intervention is active (positions would shift).
    """
    from .tracing import positional_interventions_active

    if positional_interventions_active():
        raise RuntimeError(
            "share_prefix=True cannot be combined with an intervention at chosen positions "
            "(edit_attention, or ablate_heads/ablate_neurons with positions=...): score with share_prefix=False."
        )
    lengths = batch.attention_mask.sum(1)
    ids = batch.input_ids
    same = (ids == ids[:1]).long().cumprod(1).sum(1)  # common prefix with the first row, per row
    shared = int(torch.minimum(same, lengths - 1).min())  # leave every row at least one token of its own
    if shared == 0:
        return last_position_hidden(info, batch)
    device = info.device
    prefix = info.decoder(input_ids=ids[:1, :shared].to(device), use_cache=True)
    cache = prefix.past_key_values
    cache.batch_repeat_interleave(len(ids))
    rest = info.decoder(
        input_ids=ids[:, shared:].to(device), attention_mask=batch.attention_mask.to(device),
        past_key_values=cache, use_cache=True,
    )
    rows = torch.arange(len(ids))
    return rest.last_hidden_state[rows, (batch.last_positions - shared).to(device)]


def _prefix_groups(prompts: list, batch_size: int) -> list:
    """Batches of at most batch_size prompts that share their demonstrations (same text before the query)."""
    groups: dict = {}
    for i, p in enumerate(prompts):
        groups.setdefault(tuple(p.demos), []).append(i)
    return [idx[s : s + batch_size] for idx in groups.values() for s in range(0, len(idx), batch_size)]


@torch.no_grad()
def score_prompts(info, prompts: list, batch_size: int = 16, progress: bool = True, desc: str = "scoring",
                  share_prefix: bool = False) -> ICLScores:
    """Label-word logits at the last position of every prompt, in batches (one forward each).

    share_prefix: batch prompts that share their demonstrations (e.g. from build_prompt_groups)
    and run the shared demonstrations once per batch: the same numbers, several times faster.
    """
    classes = list(prompts[0].label_words)
    words = prompts[0].label_words
    ids = torch.tensor(label_token_ids(info.tokenizer, [words[c] for c in classes]))
    order = _prefix_groups(prompts, batch_size) if share_prefix else [
        list(range(s, min(s + batch_size, len(prompts)))) for s in range(0, len(prompts), batch_size)]
    rows = torch.zeros(len(prompts), len(classes))
    normalisers = torch.zeros(len(prompts))
    for idx in tqdm(order, desc=desc, disable=not progress, leave=False):
        batch = encode_prompts(info, [prompts[i] for i in idx])
        hidden = (last_position_hidden_shared_prefix if share_prefix else last_position_hidden)(info, batch)
        logits = info.logits_from_final_hidden(hidden).float()
        rows[idx] = logits[:, ids.to(hidden.device)].cpu()
        normalisers[idx] = torch.logsumexp(logits, dim=-1).cpu()
    gold = torch.tensor([classes.index(p.gold) for p in prompts])
    return ICLScores(rows, gold, classes, dict(words), normalisers)


def spearman(a, b) -> float:
    """Spearman rank correlation of two equally long sequences or equally shaped tensors (flattened);
    tied values share their mean rank."""
    import pandas as pd

    flat = [np.asarray(x.detach().cpu() if torch.is_tensor(x) else x, dtype=float).ravel() for x in (a, b)]
    ranks = [pd.Series(x).rank() for x in flat]
    return float(np.corrcoef(ranks[0], ranks[1])[0, 1])
