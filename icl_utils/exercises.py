"""Exercises for courses: check a student's function against the library's reference.

Each `check_*` takes the student's function and real inputs from a chapter, computes the reference
with icl_utils, and prints one line:

    <name>: not attempted yet ...      the function still raises NotImplementedError
    <name>: PASS (max error ...)       within tolerance (torch.testing.assert_close)
    <name>: FAIL: <why>                wrong shape, too large an error, or the exception it raised

It returns True (pass), False (fail) or None (not attempted), and never raises for a student's
mistake, so an unfinished exercise does not stop the notebook. A solution cell can therefore
`assert check_x(solution, ...)`, which makes every executed chapter a test of the reference too.
"""
from __future__ import annotations

from typing import Callable

import torch

from .attribution import _vocab_logits, frozen_norm, head_position_contributions, log_prob_increase
from .qk import attention_logits
from .vocab import label_log_odds
from .models import ModelInfo


def check(name: str, student_call: Callable, expected: torch.Tensor, atol: float = 1e-4, rtol: float = 1e-3):
    """Run `student_call()` and compare its tensor with `expected`; print PASS / FAIL / not attempted."""
    try:
        got = student_call()
    except NotImplementedError:
        print(f"{name}: not attempted yet (replace `raise NotImplementedError` with your code, then run this cell again)")
        return None
    except Exception as err:  # a student's bug is reported, not raised
        print(f"{name}: FAIL: your function raised {type(err).__name__}: {err}")
        return False
    if not isinstance(got, torch.Tensor):
        print(f"{name}: FAIL: expected a torch.Tensor of shape {tuple(expected.shape)}, got {type(got).__name__}")
        return False
    got, expected = got.detach().float().cpu(), expected.detach().float().cpu()
    if got.shape != expected.shape:
        print(f"{name}: FAIL: shape {tuple(got.shape)}, expected {tuple(expected.shape)}")
        return False
    error = (got - expected).abs().max().item() if got.numel() else 0.0
    try:
        torch.testing.assert_close(got, expected, atol=atol, rtol=rtol)
    except AssertionError:
        worst = (got - expected).abs().flatten().nan_to_num(float("inf")).argmax().item()
        print(f"{name}: FAIL: max error {error:.3g} (tolerance atol={atol:g}, rtol={rtol:g}); e.g. at flat index "
              f"{worst} you gave {got.flatten()[worst].item():.6g}, expected {expected.flatten()[worst].item():.6g}")
        return False
    print(f"{name}: PASS (max error {error:.1e} over {got.numel()} values)")
    return True


# ----------------------------------------------------------------------------------------------
# Chapter 2: the log-probability increase


def frozen_logits(info: ModelInfo, final: torch.Tensor) -> Callable:
    """x (batch, ..., d_model) -> next-token logits (batch, ..., vocab), with the final norm's scale
    frozen at `final` (batch, d_model), its bias, the unembedding and any final softcap: the map
    behind p(. | x) = softmax(E_u ln_f(x)) of the attribution chapters. Pass few rows (large vocabularies)."""
    ln_f = frozen_norm(info.final_norm, final.float().cpu()[:, None])  # one frozen scale per prompt

    def to_logits(x: torch.Tensor) -> torch.Tensor:
        flat = x.float().cpu().reshape(x.shape[0], -1, x.shape[-1])  # (batch, m, d)
        z = info.softcap(_vocab_logits(info, flat, ln_f))
        return z.reshape(*x.shape[:-1], z.shape[-1])

    return to_logits


def check_log_prob_increase(student_fn: Callable, info, base: torch.Tensor, vectors: torch.Tensor,
                            final: torch.Tensor, targets: torch.Tensor):
    """student_fn(to_logits, base, vectors, targets) -> (batch, n): log p(w | h + v) - log p(w | h).

    base: (batch, d) the residual h; vectors: (batch, n, d) components v; targets: (batch,) word ids w;
    to_logits: see frozen_logits. Reference: icl_utils.attribution.log_prob_increase.
    """
    expected = log_prob_increase(info, base.float().cpu(), vectors.float().cpu(), final.float().cpu(), targets.cpu())
    to_logits = frozen_logits(info, final)
    return check("log-probability increase", lambda: student_fn(to_logits, base, vectors, targets), expected)


# ----------------------------------------------------------------------------------------------
# Chapter 4: the value-output vector of one head at every source position


def check_value_output(student_fn: Callable, info, trace, layer: int, head: int, row: int = 0, position: int = 0):
    """student_fn(alpha, values, w_o, post_norm) -> (seq, d_model): vo_p = post_norm(alpha_p W_O^h v_p).

    From a trace with "attn", "qkv" and "attn_out": alpha (seq,) the head's attention from recorded
    position `position` of prompt `row`; values (seq, d_head) its value vectors; w_o (d_model, d_head)
    its slice of the output projection; post_norm the layer's post-attention norm with its scale
    frozen at the real attention output (the identity for models without one).
    Reference: icl_utils.attribution.head_position_contributions.
    """
    alpha = trace.attn[layer][row, head, position].float()
    values = trace.v[layer][row, head].float()
    w_o = info.head_out_weight(layer, head).detach().float().cpu()
    norm = info.attn_out_norms[layer]
    post_norm = (lambda x: x) if norm is None else frozen_norm(norm, trace.attn_out[layer][row, position][None].float())
    expected = head_position_contributions(info, trace, layer, position)[row, head]
    return check("value-output vectors", lambda: student_fn(alpha, values, w_o, post_norm), expected)


def check_label_log_odds(student_fn: Callable, info, vectors: torch.Tensor, word_ids, final: torch.Tensor):
    """student_fn(to_logits, vectors, word_ids) -> (batch, n): M = log p(w0 | v) - log p(w1 | v) for each
    vector v of vectors (batch, n, d_model), through the final norm frozen at `final` (batch, d_model)
    (to_logits: see frozen_logits). Reference: icl_utils.vocab.label_log_odds with frozen_at=final.
    """
    expected = label_log_odds(info, vectors, word_ids, frozen_at=final[:, None])
    to_logits = frozen_logits(info, final)
    return check("label log-odds M_p", lambda: student_fn(to_logits, vectors, list(word_ids)), expected)


# ----------------------------------------------------------------------------------------------
# Chapter 5: the query-key score


def check_qk_score(student_fn: Callable, info, layer: int, query: torch.Tensor, keys: torch.Tensor):
    """student_fn(info, layer, query, keys) -> (..., seq): the attention logit of query (..., d_head)
    against each key (..., seq, d_head), with the attention module's own scaling and the config's
    attention softcap if any (before mask and softmax). Reference: icl_utils.qk.attention_logits.
    """
    expected = attention_logits(info, layer, query, keys)
    return check("q.k score", lambda: student_fn(info, layer, query, keys), expected)
