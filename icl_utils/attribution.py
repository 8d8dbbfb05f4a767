"""Log-probability increase (Yu & Ananiadou 2024): how much one vector added to the residual
stream raises the log-probability of a target token.

    Imp(v) = log p(w | v + h) - log p(w | h),   p(. | x) = softmax(E_u ln_f(x))

h is the residual stream just before the component (a layer, a head, a neuron) writes v. As in
the authors' code, ln_f is linearised by freezing its scale at the real final residual, so the
logits are linear in v and every component is scored from one forward pass. Norms that sit
between a component and the residual stream (Gemma's post-attention and post-MLP norms) are
linearised the same way, at their real input, so that a layer's parts add up to what it wrote.
"""
from __future__ import annotations

import torch
from torch import nn

from .tracing import Trace, head_writes, run_with_trace


def frozen_norm(norm: nn.Module, at: torch.Tensor):
    """The norm as a linear map x -> norm(x) - bias with its scale frozen at input `at` (..., d).

    Exact at `at` (frozen(at) + bias == norm(at)) and additive: frozen(a) + frozen(b) = frozen(a + b).
    RMS norms of any gain parametrisation (Llama's w, Gemma's 1 + w) are handled through the
    module itself: norm(x) * rms(x) is the gain times x, which we divide by rms(at).
    """
    if isinstance(norm, nn.LayerNorm):
        scale = norm.weight / torch.sqrt(at.var(-1, unbiased=False, keepdim=True) + norm.eps)
        return lambda x: (x - x.mean(-1, keepdim=True)) * scale
    eps = getattr(norm, "eps", None) or getattr(norm, "variance_epsilon")
    rms = lambda x: torch.sqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)  # noqa: E731
    rms_at = rms(at)
    return lambda x: norm(x).float() * rms(x) / rms_at


def norm_bias(norm: nn.Module) -> torch.Tensor | float:
    bias = getattr(norm, "bias", None)
    return 0.0 if bias is None else bias.detach()


def head_contributions(info, trace: Trace, layer: int) -> torch.Tensor:
    """What each head of `layer` adds to the residual stream: (batch, n_pos, n_heads, d_model).

    W_O^h o_h, passed through the layer's post-attention norm (frozen at the real attention output)
    where the model has one. With the output projection's bias (passed the same way) they sum to
    the attention block's real output.
    """
    writes = head_writes(info, trace, layer)
    norm = info.attn_out_norms[layer]
    if norm is None:
        return writes
    return frozen_norm(norm, trace.attn_out[layer][:, :, None])(writes)


def attention_block_output(info, trace: Trace, layer: int) -> torch.Tensor:
    """What the attention block of `layer` adds to the residual stream: (batch, n_pos, d_model)."""
    norm = info.attn_out_norms[layer]
    return trace.attn_out[layer] if norm is None else norm(trace.attn_out[layer])


def mlp_block_output(info, trace: Trace, layer: int) -> torch.Tensor:
    """What the MLP block of `layer` adds to the residual stream: (batch, n_pos, d_model)."""
    norm = info.mlp_out_norms[layer]
    return trace.mlp_out[layer] if norm is None else norm(trace.mlp_out[layer])


def neuron_contributions(info, trace: Trace, layer: int, neurons: torch.Tensor | None = None) -> torch.Tensor:
    """Each FFN neuron's "subvalue" m_k * fc2_k in the residual stream: (batch, n_pos, n_neurons, d_model).

    neurons: indices to compute (all d_ff by default; chunk them, the full tensor is large).
    """
    w_out = info.mlp_out_weight(layer)  # (d_model, d_ff)
    act = trace.mlp_act[layer]
    if neurons is not None:
        w_out, act = w_out[:, neurons], act[..., neurons]
    sub = act[..., :, None] * w_out.T.detach()
    norm = info.mlp_out_norms[layer]
    return sub if norm is None else frozen_norm(norm, trace.mlp_out[layer][:, :, None])(sub)


@torch.no_grad()
def log_prob_increase(info, base: torch.Tensor, vectors: torch.Tensor, final: torch.Tensor,
                      targets: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Imp(v) = log p(target | v + h) - log p(target | h) with ln_f frozen at `final`.

    base: (batch, d) residual h before the components; vectors: (batch, n, d) the components;
    final: (batch, d) the real residual at the end of the model (where ln_f's scale is frozen);
    targets: (batch,) token ids, or (batch, t) to score t words from the same softmax.
    Returns (batch, n), or (batch, n, t).
    """
    one_target = targets.dim() == 1
    targets = targets[:, None] if one_target else targets
    ln_f = frozen_norm(info.final_norm, final[:, None].float())
    w_u = info.unembed.weight.detach().float()  # (vocab, d)
    bias_u = getattr(info.unembed, "bias", None)
    z_h = (ln_f(base[:, None].float()) + norm_bias(info.final_norm)) @ w_u.T  # (batch, 1, vocab)
    if bias_u is not None:
        z_h = z_h + bias_u.detach()
    softcap = getattr(info.model.config, "final_logit_softcapping", None)
    cap = (lambda z: torch.tanh(z / softcap) * softcap) if softcap else (lambda z: z)  # noqa: E731
    logp_h = torch.log_softmax(cap(z_h), dim=-1).gather(-1, targets[:, None])  # (batch, 1, t)
    out = []
    for start in range(0, vectors.shape[1], chunk):
        z = cap(z_h + ln_f(vectors[:, start : start + chunk].float()) @ w_u.T)  # (batch, c, vocab)
        # log p(w) = z_w - logsumexp(z), without materialising a second vocab-sized tensor
        logp = z.gather(-1, targets[:, None].expand(-1, z.shape[1], -1)) - torch.logsumexp(z, -1, keepdim=True)
        out.append(logp - logp_h)
    out = torch.cat(out, dim=1)
    return out[..., 0] if one_target else out


def head_importance(info, trace: Trace, targets: torch.Tensor, position: int = 0) -> torch.Tensor:
    """S(l, h) = log p(y | o^{l,h} + x^{l-1}) - log p(y | x^{l-1}) for every head: (batch, n_layers, n_heads).

    Computed at recorded position `position` (index into trace.positions, default the first).
    targets: (batch,) token ids, or (batch, t) for several words at once -> (batch, n_layers, n_heads, t).
    """
    final = trace.resid[info.n_layers][:, position]
    scores = []
    for layer in range(info.n_layers):
        base = trace.resid[layer][:, position]
        heads = head_contributions(info, trace, layer)[:, position]
        scores.append(log_prob_increase(info, base, heads, final, targets))
    return torch.stack(scores, dim=1)


def layer_importance(info, trace: Trace, targets: torch.Tensor, position: int = 0) -> dict:
    """Log-probability increase of every attention block and every MLP block: {"attention", "mlp"}: (batch, n_layers).

    The attention block's base is the residual entering the layer; the MLP's base adds the
    attention block's output (exactly the MLP's input stream in sequential blocks).
    """
    final = trace.resid[info.n_layers][:, position]
    attn, mlp = [], []
    for layer in range(info.n_layers):
        base = trace.resid[layer][:, position]
        a = attention_block_output(info, trace, layer)[:, position]
        m = mlp_block_output(info, trace, layer)[:, position]
        attn.append(log_prob_increase(info, base, a[:, None], final, targets)[:, 0])
        mlp.append(log_prob_increase(info, base + a, m[:, None], final, targets)[:, 0])
    return {"attention": torch.stack(attn, 1), "mlp": torch.stack(mlp, 1)}


@torch.no_grad()
def head_scores_over_prompts(info, prompts: list, batch_size: int = 8, progress: bool = True) -> dict:
    """Score every head on every prompt at its last position, in batches (one traced pass each).

    Returns tensors of shape (n_prompts, n_layers, n_heads):
      "importance": log-probability increase of the gold label word (the paper's S(l, h));
      "importance_foo" / "importance_bar" style keys, one per label word: increase of that word;
      "label_attention": attention mass the head puts on the demonstrations' label positions;
    and "gold" (n_prompts,) the gold class index.
    """
    from tqdm.auto import tqdm

    from .evaluation import batches
    from .prompts import encode_prompts, label_token_ids

    classes = list(prompts[0].label_words)
    words = [prompts[0].label_words[c] for c in classes]
    word_ids = torch.tensor(label_token_ids(info.tokenizer, words))
    out = {f"importance_{w}": [] for w in words} | {"importance": [], "label_attention": [], "gold": []}
    for chunk in tqdm(list(batches(prompts, batch_size)), desc="scoring heads", disable=not progress, leave=False):
        batch = encode_prompts(info, chunk)
        trace = run_with_trace(info, batch.input_ids, batch.attention_mask, batch.last_positions,
                               record=("resid", "head_out", "attn_out", "attn"))
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
    return {k: torch.cat(v) for k, v in out.items()}
