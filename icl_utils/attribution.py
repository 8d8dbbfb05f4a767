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

from .tracing import Trace, head_writes
from .models import ModelInfo


def _on_cpu(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """module(x) for a trace tensor x (kept on the CPU) when the model may sit on a GPU."""
    device = next(module.parameters(), x).device
    return module(x.to(device)).to(x.device)


def frozen_norm(norm: nn.Module, at: torch.Tensor):
    """The norm as a linear map x -> norm(x) - bias with its scale frozen at input `at` (..., d).

    Exact at `at` (frozen(at) + bias == norm(at)) and additive: frozen(a) + frozen(b) = frozen(a + b).
    RMS norms of any gain parametrisation (Llama's w, Gemma's 1 + w) are handled through the
    module itself: norm(x) * rms(x) is the gain times x, which we divide by rms(at).
    """
    if isinstance(norm, nn.LayerNorm):
        scale = norm.weight.detach().to(at.device) / torch.sqrt(at.var(-1, unbiased=False, keepdim=True) + norm.eps)
        return lambda x: (x - x.mean(-1, keepdim=True)) * scale
    eps = getattr(norm, "eps", None) or getattr(norm, "variance_epsilon")
    rms = lambda x: torch.sqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)  # noqa: E731
    rms_at = rms(at)
    return lambda x: _on_cpu(norm, x).float() * rms(x) / rms_at


def norm_bias(norm: nn.Module) -> torch.Tensor | float:
    bias = getattr(norm, "bias", None)
    return 0.0 if bias is None else bias.detach()


def head_contributions(info: ModelInfo, trace: Trace, layer: int) -> torch.Tensor:
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


def attention_block_output(info: ModelInfo, trace: Trace, layer: int) -> torch.Tensor:
    """What the attention block of `layer` adds to the residual stream: (batch, n_pos, d_model)."""
    norm = info.attn_out_norms[layer]
    return trace.attn_out[layer] if norm is None else _on_cpu(norm, trace.attn_out[layer])


def mlp_block_output(info: ModelInfo, trace: Trace, layer: int) -> torch.Tensor:
    """What the MLP block of `layer` adds to the residual stream: (batch, n_pos, d_model)."""
    norm = info.mlp_out_norms[layer]
    return trace.mlp_out[layer] if norm is None else _on_cpu(norm, trace.mlp_out[layer])


def neuron_contributions(info: ModelInfo, trace: Trace, layer: int, neurons: torch.Tensor | None = None) -> torch.Tensor:
    """Each FFN neuron's "subvalue" m_k * fc2_k in the residual stream: (batch, n_pos, n_neurons, d_model).

    neurons: indices to compute (all d_ff by default; chunk them, the full tensor is large).
    """
    act = trace.mlp_act[layer]
    w_out = info.mlp_out_weight(layer).detach().to(act.device)  # (d_model, d_ff); traces live on the CPU
    if neurons is not None:
        w_out, act = w_out[:, neurons], act[..., neurons]
    sub = act[..., :, None] * w_out.T.detach()
    norm = info.mlp_out_norms[layer]
    return sub if norm is None else frozen_norm(norm, trace.mlp_out[layer][:, :, None])(sub)


@torch.no_grad()
def target_log_probs(info: ModelInfo, resid: torch.Tensor, final: torch.Tensor, targets: torch.Tensor,
                     vocab_chunk: int = 16384) -> torch.Tensor:
    """log p(target | x) = log softmax(E_u ln_f(x))[target], ln_f's scale frozen at `final`.

    resid: (batch, n, d) residual vectors x; final: (batch, d) the real final residual;
    targets: (batch, t) token ids. Returns (batch, n, t).
    The unembedding is read once, in vocabulary chunks, for all n vectors together: with a large
    vocabulary (Gemma: 262k x 640 floats = 670 MB) reading it, not the arithmetic, is the cost.
    """
    w_u = info.unembed.weight.detach()  # (vocab, d), on the model's device (a GPU when there is one)
    device = w_u.device
    x = frozen_norm(info.final_norm, final[:, None].float())(resid.float()).to(device) + norm_bias(info.final_norm)
    bias_u = getattr(info.unembed, "bias", None)
    bias_u = torch.zeros(w_u.shape[0], device=device) if bias_u is None else bias_u.detach().float()
    targets = targets.to(device)
    cap = info.softcap
    lse = torch.full(x.shape[:-1], -torch.inf, device=device)  # running logsumexp over the vocabulary
    for start in range(0, w_u.shape[0], vocab_chunk):
        z = cap(x @ w_u[start : start + vocab_chunk].float().T + bias_u[start : start + vocab_chunk])
        lse = torch.logaddexp(lse, torch.logsumexp(z, dim=-1))
    z_target = cap(torch.einsum("bnd,btd->bnt", x, w_u[targets].float()) + bias_u[targets][:, None])
    return (z_target - lse[..., None]).cpu()


def log_prob_increase(info: ModelInfo, base: torch.Tensor, vectors: torch.Tensor, final: torch.Tensor,
                      targets: torch.Tensor) -> torch.Tensor:
    """Imp(v) = log p(target | v + h) - log p(target | h) with ln_f frozen at `final`.

    base: (batch, d) residual h before the components, or (batch, n, d) one base per component;
    vectors: (batch, n, d) the components; final: (batch, d) the real residual at the end of the
    model (where ln_f's scale is frozen); targets: (batch,) token ids, or (batch, t) to score t
    words from the same softmax. Returns (batch, n), or (batch, n, t).
    """
    one_target = targets.dim() == 1
    targets = targets[:, None] if one_target else targets
    base = base[:, None] if base.dim() == 2 else base  # one shared base row is scored once
    n = vectors.shape[1]
    logp = target_log_probs(info, torch.cat([base + vectors, base], dim=1), final, targets)
    out = logp[:, :n] - logp[:, n:]
    return out[..., 0] if one_target else out


def head_importance(info: ModelInfo, trace: Trace, targets: torch.Tensor, position: int = 0) -> torch.Tensor:
    """S(l, h) = log p(y | o^{l,h} + x^{l-1}) - log p(y | x^{l-1}) for every head: (batch, n_layers, n_heads).

    Computed at recorded position `position` (index into trace.positions, default the first),
    all layers in one pass over the unembedding.
    targets: (batch,) token ids, or (batch, t) for several words at once -> (batch, n_layers, n_heads, t).
    """
    final = trace.final_resid[:, position]
    heads = torch.stack([head_contributions(info, trace, l)[:, position] for l in range(info.n_layers)], 1)
    bases = trace.stack("resid", position)[:, : info.n_layers]  # (batch, L, d)
    one_target = targets.dim() == 1
    targets = targets[:, None] if one_target else targets
    logp = target_log_probs(info, torch.cat([(bases[:, :, None] + heads).flatten(1, 2), bases], 1), final, targets)
    n = info.n_layers * info.n_heads
    scores = logp[:, :n].unflatten(1, (info.n_layers, info.n_heads)) - logp[:, n:, None]  # minus each layer's base
    return scores[..., 0] if one_target else scores


def head_direct_effects(info: ModelInfo, trace: Trace, targets: torch.Tensor, position: int = 0) -> torch.Tensor:
    """What removing only each head's direct write costs: log p(y | x_L) - log p(y | x_L - o^{l,h}), with
    x_L the real final residual and ln_f frozen there; nothing downstream is recomputed.
    (batch, n_layers, n_heads). The direct counterpart of zeroing a head (a total effect)."""
    final = trace.final_resid[:, position]
    heads = torch.stack([head_contributions(info, trace, l)[:, position] for l in range(info.n_layers)], 1).flatten(1, 2)
    logp = target_log_probs(info, torch.cat([final[:, None], final[:, None] - heads], 1), final, targets[:, None])[..., 0]
    return (logp[:, :1] - logp[:, 1:]).unflatten(1, (info.n_layers, info.n_heads))


def layer_importance(info: ModelInfo, trace: Trace, targets: torch.Tensor, position: int = 0) -> dict:
    """Log-probability increase of every attention block and every MLP block: {"attention", "mlp"}: (batch, n_layers).

    The attention block's base is the residual entering the layer; the MLP's base adds the
    attention block's output (exactly the MLP's input stream in sequential blocks).
    """
    final = trace.final_resid[:, position]
    attn = torch.stack([attention_block_output(info, trace, l)[:, position] for l in range(info.n_layers)], 1)
    mlp = torch.stack([mlp_block_output(info, trace, l)[:, position] for l in range(info.n_layers)], 1)
    base = trace.stack("resid", position)[:, : info.n_layers]
    scores = log_prob_increase(info, torch.cat([base, base + attn], 1), torch.cat([attn, mlp], 1), final, targets)
    return {"attention": scores[:, : info.n_layers], "mlp": scores[:, info.n_layers :]}


# ----------------------------------------------------------------------------------------------
# Other scores for the same vectors, a first-order screen, and a head's share per source position


def _vocab_logits(info: ModelInfo, x: torch.Tensor, ln_f) -> torch.Tensor:
    """Logits (before any softcap) of residual vectors x (..., d) through a frozen final norm: (..., vocab)."""
    w_u = info.unembed.weight.detach()
    z = (ln_f(x.float()).to(w_u.device) + norm_bias(info.final_norm)) @ w_u.float().T
    bias_u = getattr(info.unembed, "bias", None)
    return (z if bias_u is None else z + bias_u.detach()).cpu()


def vocab_logits(info: ModelInfo, vectors: torch.Tensor, final: torch.Tensor) -> torch.Tensor:
    """Logits of vectors (batch, n, d) read through the final norm frozen at `final` (batch, d), the
    model's softcap applied: (batch, n, vocab), on the CPU, from tensors on any device. What a
    component's write promotes in vocabulary space, on the scale the attribution uses."""
    return info.softcap(_vocab_logits(info, vectors, frozen_norm(info.final_norm, final[:, None].float())))


def _gather_targets(values: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """values (batch, n, vocab), targets (batch,) or (batch, t) -> (batch, n) or (batch, n, t)."""
    idx = targets[:, None, None] if targets.dim() == 1 else targets[:, None]
    out = values.gather(-1, idx.expand(-1, values.shape[1], -1))
    return out[..., 0] if targets.dim() == 1 else out


@torch.no_grad()
def direct_logit_attribution(info: ModelInfo, vectors: torch.Tensor, final: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """What each vector adds to the target's logit through the frozen final norm: (batch, n) or (batch, n, t).

    Linear in the vector, so it needs no base and no softmax (and costs one dot product per vector,
    not a vocabulary-sized product). It is the logit before any final softcap (Gemma has one),
    which is the quantity that is additive over components.
    """
    ln_f = frozen_norm(info.final_norm, final[:, None].float())
    rows = info.unembed.weight.detach()[targets.to(info.device)].float().cpu()  # (batch, d) or (batch, t, d)
    moved = ln_f(vectors.float())  # (batch, n, d)
    return (moved @ rows[:, :, None])[..., 0] if targets.dim() == 1 else moved @ rows.transpose(1, 2)


def _with_bases(bases: torch.Tensor, vectors: torch.Tensor, base_index) -> tuple:
    """One shared base per row, (batch, d), or several, (batch, n_bases, d) with base_index (n,) naming
    each vector's base -> (bases (batch, n_bases, d), base_index (n,), points h + v (batch, n, d))."""
    if bases.dim() == 2:
        bases, base_index = bases[:, None], torch.zeros(vectors.shape[1], dtype=torch.long)
    base_index = torch.as_tensor(base_index, dtype=torch.long)
    return bases, base_index, bases[:, base_index].float() + vectors.float()


@torch.no_grad()
def attribution_scores(info: ModelInfo, bases: torch.Tensor, vectors: torch.Tensor, final: torch.Tensor,
                       targets: torch.Tensor, base_index=None) -> dict:
    """Three scores of each vector v added to its base h, for one target word each: (batch, n) tensors.

    "log_prob": log p(w | h + v) - log p(w | h)   (Yu & Ananiadou's importance, = log_prob_increase)
    "prob":     p(w | h + v) - p(w | h)           (the same softmax, read as probabilities)
    "logit":    direct logit attribution of v     (no softmax at all)
    bases: (batch, d), one base for every vector, or (batch, n_bases, d) with base_index (n,) giving
    each vector's base, so that components of every layer share one pass over the unembedding
    (target_log_probs). vectors: (batch, n, d); final: (batch, d); targets: (batch,).
    """
    bases, base_index, points = _with_bases(bases, vectors, base_index)
    n = points.shape[1]
    log_p = target_log_probs(info, torch.cat([points, bases.float()], 1), final, targets[:, None])[..., 0]
    log_p, log_p_h = log_p[:, :n], log_p[:, n:][:, base_index]
    return {"log_prob": log_p - log_p_h, "prob": log_p.exp() - log_p_h.exp(),
            "logit": direct_logit_attribution(info, vectors, final, targets)}


def log_prob_gradient(info: ModelInfo, bases: torch.Tensor, final: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Gradient of log p(target | x) at x = each base, ln_f frozen at `final`: (batch, n, d).

    grad . v is the first-order estimate of Imp(v) at that base: one softmax per base instead of
    one per vector, which is what makes screening 10^4-10^5 neurons affordable.
    bases: (batch, n, d) (a few: one vocabulary-sized row of logits each); targets: (batch,).
    """
    ln_f = frozen_norm(info.final_norm, final[:, None].detach().float())
    with torch.enable_grad():  # a few bases: the (batch, n, vocab) logits fit in memory
        x = bases.detach().float().requires_grad_(True)
        z = info.softcap(_vocab_logits(info, x, ln_f))
        log_p = (_gather_targets(z, targets) - torch.logsumexp(z, -1)).sum()
        return torch.autograd.grad(log_p, x)[0]  # only w.r.t. x: no .grad left on the model's parameters


@torch.no_grad()
def mlp_bases(info: ModelInfo, trace: Trace, position: int = 0) -> torch.Tensor:
    """The residual stream each MLP block adds to (after its layer's attention): (batch, n_layers, d)."""
    return torch.stack([trace.resid[l][:, position] + attention_block_output(info, trace, l)[:, position]
                        for l in range(info.n_layers)], dim=1)


@torch.no_grad()
def neuron_screen(info: ModelInfo, trace: Trace, targets: torch.Tensor, position: int = 0) -> torch.Tensor:
    """First-order log-probability increase of every FFN neuron: (batch, n_layers, d_ff).

    grad_l . (m_k fc2_k), with grad_l = log_prob_gradient at the MLP base of layer l. A cheap screen
    (about as costly as scoring n_layers vectors exactly) to pick the neurons worth scoring exactly.
    The trace needs resid, attn_out, mlp_act and mlp_out.
    """
    final = trace.final_resid[:, position]
    grads = log_prob_gradient(info, mlp_bases(info, trace, position), final, targets)  # (batch, L, d)
    scores = [torch.einsum("bkd,bd->bk", neuron_contributions(info, trace, l)[:, position].float(), grads[:, l])
              for l in range(info.n_layers)]
    return torch.stack(scores, dim=1)


@torch.no_grad()
def head_position_contributions(info: ModelInfo, trace: Trace, layer: int, position: int = 0,
                                weighted: bool = True, attn_out_at: torch.Tensor | None = None) -> torch.Tensor:
    """Each head's write at recorded position `position`, split by source position p: (batch, n_heads, seq, d_model).

    alpha_{T,p} W_O^h v_p, through the layer's post-attention norm (frozen at the real attention
    output, as in head_contributions), so the sum over p is head_contributions(...)[:, position].
    weighted=False leaves out alpha: what the head would write from p if it attended only there.
    attn_out_at: one attention-output vector (d_model,) to freeze the post-attention norm at for
    every prompt, instead of each prompt's own (that scale depends on the query).
    Needs a trace with "attn" and "qkv" (values are recorded at every position, one per query head).
    """
    alpha = trace.attn[layer][:, :, position]  # (batch, heads, seq)
    alpha = alpha if weighted else torch.ones_like(alpha)
    w_o = info.out_proj_weight(layer).detach().cpu().view(info.d_model, info.n_heads, info.d_head)
    terms = torch.einsum("bhp,bhpd,mhd->bhpm", alpha.float(), trace.v[layer].float(), w_o.float())
    norm = info.attn_out_norms[layer]
    if norm is None:
        return terms
    at = trace.attn_out[layer][:, position][:, None, None] if attn_out_at is None else attn_out_at
    return frozen_norm(norm, at.float())(terms)


@torch.no_grad()
def renormalised_log_prob_increase(info: ModelInfo, bases: torch.Tensor, vectors: torch.Tensor, targets: torch.Tensor,
                                   base_index=None, chunk: int = 256) -> torch.Tensor:
    """log p(w | h + v) - log p(w | h) with the real (non-linear) final norm applied to h + v and to h: (batch, n).

    What the linearisation replaces; used to show how much freezing ln_f changes the scores.
    bases, vectors, base_index: as in attribution_scores; targets: (batch,).
    """
    def log_p(x):  # (batch, m, d) -> (batch, m), in chunks of the vocabulary-sized logits
        out = []
        for s in range(0, x.shape[1], chunk):
            z = info.logits_from_residual(x[:, s : s + chunk].to(info.device)).float().cpu()
            out.append(_gather_targets(z, targets) - torch.logsumexp(z, -1))
        return torch.cat(out, dim=1)

    bases, base_index, points = _with_bases(bases, vectors, base_index)
    return log_p(points) - log_p(bases.float())[:, base_index]
