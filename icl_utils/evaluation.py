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
def score_prompts(info, prompts: list, batch_size: int = 16, progress: bool = True, desc: str = "scoring") -> ICLScores:
    """Label-word logits at the last position of every prompt, in batches (one forward each)."""
    classes = list(prompts[0].label_words)
    words = prompts[0].label_words
    ids = torch.tensor(label_token_ids(info.tokenizer, [words[c] for c in classes]))
    rows, normalisers = [], []
    for chunk in tqdm(list(batches(prompts, batch_size)), desc=desc, disable=not progress, leave=False):
        hidden = last_position_hidden(info, encode_prompts(info, chunk))
        logits = info.logits_from_final_hidden(hidden).float()
        rows.append(logits[:, ids.to(hidden.device)].cpu())
        normalisers.append(torch.logsumexp(logits, dim=-1).cpu())
    gold = torch.tensor([classes.index(p.gold) for p in prompts])
    return ICLScores(torch.cat(rows), gold, classes, dict(words), torch.cat(normalisers))


def spearman(a, b) -> float:
    """Spearman rank correlation of two equally long sequences or equally shaped tensors (flattened);
    tied values share their mean rank."""
    import pandas as pd

    flat = [np.asarray(x.detach().cpu() if torch.is_tensor(x) else x, dtype=float).ravel() for x in (a, b)]
    ranks = [pd.Series(x).rank() for x in flat]
    return float(np.corrcoef(ranks[0], ranks[1])[0, 1])
