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

from dataclasses import dataclass

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


def final_norm_inputs(info: ModelInfo, resid: torch.Tensor, final: torch.Tensor) -> torch.Tensor:
    """What the unembedding reads for residual vectors resid (batch, n, d): ln_f(x) with ln_f's scale
    frozen at `final` (batch, d), plus the norm's bias: (batch, n, d), float, on the model's device."""
    device = info.unembed.weight.device
    return frozen_norm(info.final_norm, final[:, None].float())(resid.float()).to(device) + norm_bias(info.final_norm)


@torch.no_grad()
def unembedded_log_probs(info: ModelInfo, y: torch.Tensor, targets: torch.Tensor, rank: bool = False,
                         vocab_chunk: int = 2048, row_block: int = 1024) -> tuple:
    """log softmax(softcap(E_u y))[targets] for rows y (rows, d) that the unembedding reads directly
    (final-normed hidden states, or final_norm_inputs), targets (rows,) or (rows, t) token ids:
    (log_p, rank) shaped like targets, on the CPU; rank (1 = no other token scores higher) only when
    rank=True, else None.

    The vocabulary-sized logits are never materialised: each (row block, vocabulary chunk) product
    is reduced at once (a running sum of exponentials, and a count of tokens above the target), so
    it stays in cache. With Gemma's softcap every logit lies in [-cap, cap], so exp(z - cap) can
    neither overflow nor underflow and needs no running maximum; other models keep one. Pass many
    rows at once: few-row products waste a CPU, and the unembedding (Gemma: 262k x 640) is read
    once per row block.
    """
    w_u = info.unembed.weight.detach()
    device = w_u.device
    bias_u = getattr(info.unembed, "bias", None)
    bias_u = None if bias_u is None else bias_u.detach().float()
    cap = getattr(info.model.config, "final_logit_softcapping", None)
    one_target = targets.dim() == 1
    targets = (targets[:, None] if one_target else targets).to(device)
    y = y.to(device).float()
    if len(targets) != len(y):
        raise ValueError(f"unembedded_log_probs needs one row of targets per row: {len(y)} rows, {len(targets)} targets")
    z_t = torch.einsum("rd,rtd->rt", y, w_u[targets].float())  # the targets' logits, (rows, t)
    if bias_u is not None:
        z_t = z_t + bias_u[targets]
    if cap:
        z_t = torch.tanh(z_t / cap) * cap
    lse = torch.empty(len(y), device=device)
    higher = torch.zeros(targets.shape, dtype=torch.long, device=device) if rank else None
    for r0 in range(0, len(y), row_block):
        rows = slice(r0, r0 + row_block)
        block, t_block = y[rows], targets[rows]
        total = torch.zeros(len(block), device=device)
        shift = torch.full((len(block),), float(cap) if cap else float("-inf"), device=device)
        for v0 in range(0, w_u.shape[0], vocab_chunk):
            z = block @ w_u[v0 : v0 + vocab_chunk].float().T
            if bias_u is not None:
                z += bias_u[v0 : v0 + vocab_chunk]
            if cap:
                z.div_(cap).tanh_().mul_(cap)
            if rank:
                for j in range(t_block.shape[1]):
                    above = z > z_t[rows, j, None]
                    inside = ((t_block[:, j] >= v0) & (t_block[:, j] < v0 + z.shape[1])).nonzero()[:, 0]
                    above[inside, t_block[inside, j] - v0] = False  # the target never counts against itself
                    higher[rows, j] += above.sum(-1)
            if not cap:  # a running maximum keeps the exponentials finite
                new_shift = torch.maximum(shift, z.amax(-1))
                total *= torch.exp(shift - new_shift)
                shift = new_shift
            total += z.sub_(shift[:, None]).exp_().sum(-1)
        lse[rows] = total.log() + shift
    log_p = (z_t - lse[:, None]).cpu()
    rank_ = None if higher is None else (higher + 1).cpu()
    if one_target:
        return log_p[:, 0], None if rank_ is None else rank_[:, 0]
    return log_p, rank_


def target_log_probs(info: ModelInfo, resid: torch.Tensor, final: torch.Tensor, targets: torch.Tensor,
                     vocab_chunk: int = 2048) -> torch.Tensor:
    """log p(target | x) = log softmax(E_u ln_f(x))[target], ln_f's scale frozen at `final`.

    resid: (batch, n, d) residual vectors x; final: (batch, d) the real final residual;
    targets: (batch, t) token ids. Returns (batch, n, t).
    All n vectors of every prompt are unembedded together, in vocabulary chunks
    (unembedded_log_probs): with a large vocabulary (Gemma: 262k x 640 floats = 670 MB) reading it,
    not the arithmetic, is the cost of few rows.
    """
    batch, n, _ = resid.shape
    y = final_norm_inputs(info, resid, final).flatten(0, 1)  # (batch * n, d)
    rows_targets = targets.repeat_interleave(n, dim=0)  # (batch * n, t)
    return unembedded_log_probs(info, y, rows_targets, vocab_chunk=vocab_chunk)[0].view(batch, n, -1)


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
                       targets: torch.Tensor, base_index=None, base_log_probs: torch.Tensor | None = None) -> dict:
    """Three scores of each vector v added to its base h, for one target word each: (batch, n) tensors.

    "log_prob": log p(w | h + v) - log p(w | h)   (Yu & Ananiadou's importance, = log_prob_increase)
    "prob":     p(w | h + v) - p(w | h)           (the same softmax, read as probabilities)
    "logit":    direct logit attribution of v     (no softmax at all)
    bases: (batch, d), one base for every vector, or (batch, n_bases, d) with base_index (n,) giving
    each vector's base, so that components of every layer share one pass over the unembedding
    (target_log_probs). vectors: (batch, n, d); final: (batch, d); targets: (batch,).
    base_log_probs: log p(w | h) of each base, (batch, n_bases), when already known (e.g. from
    log_prob_and_gradient): the bases are then not unembedded again.
    """
    bases, base_index, points = _with_bases(bases, vectors, base_index)
    n = points.shape[1]
    if base_log_probs is None:
        log_p = target_log_probs(info, torch.cat([points, bases.float()], 1), final, targets[:, None])[..., 0]
        log_p, log_p_h = log_p[:, :n], log_p[:, n:][:, base_index]
    else:
        log_p = target_log_probs(info, points, final, targets[:, None])[..., 0]
        log_p_h = base_log_probs.reshape(len(targets), -1)[:, base_index]
    return {"log_prob": log_p - log_p_h, "prob": log_p.exp() - log_p_h.exp(),
            "logit": direct_logit_attribution(info, vectors, final, targets)}


def linear_adjoint(linear_map, at: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The transpose of a linear map (a frozen norm) applied to u: the vector g with
    g . x = u . linear_map(x) for every x. at: any input of the map's shape (it is linear, so the
    point does not matter); u: the map's output shape."""
    with torch.enable_grad():
        x = at.detach().float().expand_as(u).clone().requires_grad_(True)
        return torch.autograd.grad((linear_map(x) * u.float()).sum(), x)[0]


@torch.no_grad()
def log_prob_and_gradient(info: ModelInfo, bases: torch.Tensor, final: torch.Tensor, targets: torch.Tensor,
                          vocab_chunk: int = 2048, row_block: int = 1024) -> tuple:
    """log p(target | x) and its gradient at x = each base, ln_f frozen at `final`: ((batch, n), (batch, n, d)).

    grad . v is the first-order estimate of Imp(v) at that base: one softmax per base instead of one
    per vector, which is what makes screening 10^4-10^5 neurons affordable. Computed by hand (the
    logits' gradient is onehot(target) - softmax, through the softcap): two products with the
    unembedding per base, in one pass over vocabulary chunks, the softmax-weighted sum of
    unembedding rows accumulated on the fly (rescaled by a running maximum when the model has no
    softcap), without autograd's or the softmax's vocabulary-sized intermediates.
    bases: (batch, n, d); targets: (batch,).
    """
    w_u = info.unembed.weight.detach()
    device = w_u.device
    batch, n, d = bases.shape
    y = final_norm_inputs(info, bases, final).flatten(0, 1)  # (batch * n, d)
    rows_targets = targets.to(device).repeat_interleave(n)  # (batch * n,)
    bias_u = getattr(info.unembed, "bias", None)
    bias_u = None if bias_u is None else bias_u.detach().float()
    cap = getattr(info.model.config, "final_logit_softcapping", None)
    grad_y, lse = torch.empty_like(y), torch.empty(len(y), device=device)
    for r0 in range(0, len(y), row_block):
        block = y[r0 : r0 + row_block]
        total = torch.zeros(len(block), device=device)  # sum of exp(capped logit - shift)
        weighted = torch.zeros_like(block)  # sum of exp(capped logit - shift) * cap slope * unembedding row
        shift = torch.full((len(block),), float(cap) if cap else float("-inf"), device=device)
        for v0 in range(0, w_u.shape[0], vocab_chunk):
            rows_u = w_u[v0 : v0 + vocab_chunk].float()
            z = block @ rows_u.T
            if bias_u is not None:
                z += bias_u[v0 : v0 + vocab_chunk]
            if cap:
                z.div_(cap).tanh_()  # tanh(z / cap): the capped logit over cap
                slope = 1 - z * z  # d capped / d z
                z.mul_(cap)
            else:
                new_shift = torch.maximum(shift, z.amax(-1))
                rescale = torch.exp(shift - new_shift)
                total *= rescale
                weighted *= rescale[:, None]
                shift = new_shift
            e = z.sub_(shift[:, None]).exp_()
            total += e.sum(-1)
            weighted += (e * slope if cap else e) @ rows_u
        lse[r0 : r0 + row_block] = total.log() + shift
        grad_y[r0 : r0 + row_block] = -weighted / total[:, None]
    rows = w_u[rows_targets].float()  # (batch * n, d)
    z_target = (y * rows).sum(-1)
    if bias_u is not None:
        z_target = z_target + bias_u[rows_targets]
    if cap:
        capped_t = torch.tanh(z_target / cap)
        grad_y += (1 - capped_t**2)[:, None] * rows
        z_target = capped_t * cap
    else:
        grad_y += rows
    log_p = (z_target - lse).view(batch, n).cpu()
    ln_f = frozen_norm(info.final_norm, final[:, None].float())
    return log_p, linear_adjoint(ln_f, final[:, None].float(), grad_y.view(batch, n, d).cpu())


def log_prob_gradient(info: ModelInfo, bases: torch.Tensor, final: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Gradient of log p(target | x) at x = each base, ln_f frozen at `final`: (batch, n, d) (see log_prob_and_gradient)."""
    return log_prob_and_gradient(info, bases, final, targets)[1]


def neuron_readout(info: ModelInfo, trace: Trace, layer: int, directions: torch.Tensor, position: int = 0) -> torch.Tensor:
    """direction . (m_k fc2_k) for every FFN neuron k of `layer`, one direction per prompt: (batch, d_ff).

    The same numbers as neuron_contributions(...) @ direction, without building the (batch, d_ff,
    d_model) subvalues: the direction is carried back through the frozen post-MLP norm (if any)
    and read against the output projection once. directions: (batch, d_model).
    """
    act = trace.mlp_act[layer][:, position].float()
    w_out = info.mlp_out_weight(layer).detach().float().cpu()  # (d_model, d_ff)
    norm = info.mlp_out_norms[layer]
    u = directions.float()
    if norm is not None:
        at = trace.mlp_out[layer][:, position][:, None].float()
        u = linear_adjoint(frozen_norm(norm, at), at, u[:, None])[:, 0]
    return act * (u @ w_out)


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
    return torch.stack([neuron_readout(info, trace, l, grads[:, l], position) for l in range(info.n_layers)], dim=1)


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


# ----------------------------------------------------------------------------------------------
# Many prompts: every neuron ranked several ways, query neurons, and zeroing sweeps

NEURON_RANKINGS = ("log-prob increase", "prob increase", "DLA", "norm", "activation")
HEAD_RANKINGS = ("log-prob increase", "prob increase", "DLA", "norm")


@dataclass
class ComponentScores:
    """Every component (FFN neuron, or head) of each prompt, scored at one recorded position:
    (batch, n_components) tensors; neurons are indexed layer * d_ff + k, heads layer * n_heads + h."""

    screen: torch.Tensor  # first-order log-probability increase (gradient at the component's base . its vector)
    screen_prob: torch.Tensor  # first-order probability increase: p(w | h) (e^screen - 1)
    log_prob: torch.Tensor  # exact log-probability increase; NaN outside the screened candidates
    prob: torch.Tensor  # exact probability increase; NaN outside the screened candidates
    dla: torch.Tensor  # direct logit attribution (exact for every component)
    norm: torch.Tensor  # norm of the vector the component writes
    activation: torch.Tensor | None = None  # neurons: |m_k|

    def order(self, ranking: str, row: int) -> torch.Tensor:
        """Prompt `row`'s components, most important first, by one of NEURON_RANKINGS. The log-probability
        and probability rankings put their exactly scored candidates first (in exact order), then
        every other component in the order of the first-order screen."""
        plain = {"DLA": self.dla, "norm": self.norm, "activation": self.activation}
        if ranking in plain and plain[ranking] is not None:
            return plain[ranking][row].argsort(descending=True)
        if ranking not in ("log-prob increase", "prob increase"):
            raise ValueError(f"unknown ranking {ranking!r} for these components; choose from "
                             f"{NEURON_RANKINGS if self.activation is not None else HEAD_RANKINGS}")
        exact, screen = (self.log_prob, self.screen) if ranking == "log-prob increase" else (self.prob, self.screen_prob)
        scored = ~exact[row].isnan()
        first = scored.nonzero()[:, 0]
        rest = (~scored).nonzero()[:, 0]
        return torch.cat([first[exact[row, first].argsort(descending=True)], rest[screen[row, rest].argsort(descending=True)]])


def _exact_candidates(info: ModelInfo, screen, screen_prob, n_exact: int, vectors_of, bases, base_of, final, targets,
                      base_log_probs) -> tuple:
    """Exact log-probability and probability increases of each row's n_exact best components by each
    screen (NaN elsewhere). vectors_of(row, chosen) -> (1, n, d); base_of(chosen) -> base index of each;
    base_log_probs (batch, n_bases): log p(w | h) at each base. Every row's candidates are
    unembedded together (padded to the longest row's count with copies of its first candidate)."""
    log_prob = torch.full_like(screen, float("nan"))
    prob = torch.full_like(screen, float("nan"))
    n_exact = min(n_exact, screen.shape[1])
    chosen = [torch.cat([screen[row].topk(n_exact).indices, screen_prob[row].topk(n_exact).indices]).unique()
              for row in range(len(targets))]
    width = max(len(c) for c in chosen)
    points = []
    for row, c in enumerate(chosen):
        p = bases[row : row + 1, base_of(c)].float() + vectors_of(row, c).float()  # (1, len(c), d)
        points.append(torch.cat([p, p[:, :1].expand(-1, width - len(c), -1)], 1))
    log_p = target_log_probs(info, torch.cat(points), final, targets[:, None])[..., 0]  # (batch, width)
    for row, c in enumerate(chosen):
        log_p_h = base_log_probs[row, base_of(c)]
        log_prob[row, c] = log_p[row, : len(c)] - log_p_h
        prob[row, c] = log_p[row, : len(c)].exp() - log_p_h.exp()
    return log_prob, prob


@torch.no_grad()
def score_neurons(info: ModelInfo, trace: Trace, targets: torch.Tensor, n_exact: int = 32, position: int = 0) -> ComponentScores:
    """Score every FFN neuron of each prompt five ways (NEURON_RANKINGS) for its target (batch,).

    Exact log-probability and probability increases cost a vocabulary-sized product per neuron, so
    they are computed for the n_exact best neurons of each first-order screen (the union of both);
    DLA, norm and activation are exact for every neuron. The trace needs resid, attn_out, mlp_in,
    mlp_act and mlp_out.
    """
    L, d_ff = info.n_layers, info.d_ff
    final = trace.final_resid[:, position]
    bases = mlp_bases(info, trace, position)  # (batch, L, d)
    base_logp, grads = log_prob_and_gradient(info, bases, final, targets)  # (batch, L), (batch, L, d)
    target_rows = info.unembed.weight.detach()[targets.to(info.device)].float().cpu()[:, None]  # (batch, 1, d)
    ln_f = frozen_norm(info.final_norm, final[:, None].float())
    logit_direction = linear_adjoint(ln_f, final[:, None].float(), target_rows)[:, 0]  # DLA = this . subvalue
    screen, dla, norm, activation = [], [], [], []
    for layer in range(L):
        act = trace.mlp_act[layer][:, position].float().abs()
        screen.append(neuron_readout(info, trace, layer, grads[:, layer], position))
        dla.append(neuron_readout(info, trace, layer, logit_direction, position))
        norm.append(act * _output_row_norms(info, trace, layer, position))
        activation.append(act)
    screen = torch.cat(screen, 1)
    screen_prob = base_logp.exp().repeat_interleave(d_ff, 1) * torch.expm1(screen)

    def vectors_of(row, chosen):  # chosen is sorted, so grouped by layer
        layers = chosen // d_ff
        return torch.cat([neuron_contributions(info, trace, int(l), chosen[layers == l] % d_ff)[row : row + 1, position]
                          for l in layers.unique()], 1)

    log_prob, prob = _exact_candidates(info, screen, screen_prob, n_exact, vectors_of, bases, lambda c: c // d_ff, final, targets,
                                       base_logp)
    return ComponentScores(screen=screen, screen_prob=screen_prob, log_prob=log_prob, prob=prob,
                           dla=torch.cat(dla, 1), norm=torch.cat(norm, 1), activation=torch.cat(activation, 1))


@torch.no_grad()
def score_heads(info: ModelInfo, trace: Trace, targets: torch.Tensor, n_exact: int | None = None, position: int = 0) -> ComponentScores:
    """Score every head of each prompt four ways (HEAD_RANKINGS) for its target (batch,): index layer * n_heads + h.

    Each head's base is the residual stream entering its layer. n_exact None: exact log-probability
    and probability increases for every head (one vocabulary-sized product per head); else for the
    n_exact best heads of each first-order screen. The trace needs resid and head_out (and attn_out
    for models with a post-attention norm).
    """
    L, H = info.n_layers, info.n_heads
    final = trace.final_resid[:, position]
    bases = trace.stack("resid", position)[:, :L]
    vectors = torch.cat([head_contributions(info, trace, l)[:, position] for l in range(L)], 1).float()  # (batch, L*H, d)
    base_logp, grads = log_prob_and_gradient(info, bases, final, targets)
    index = torch.arange(L).repeat_interleave(H)
    screen = torch.einsum("bnd,bnd->bn", vectors, grads[:, index])
    screen_prob = base_logp[:, index].exp() * torch.expm1(screen)
    log_prob, prob = _exact_candidates(info, screen, screen_prob, L * H if n_exact is None else n_exact,
                                       lambda row, chosen: vectors[row : row + 1, chosen], bases, lambda c: index[c], final, targets,
                                       base_logp)
    return ComponentScores(screen=screen, screen_prob=screen_prob, log_prob=log_prob, prob=prob,
                           dla=direct_logit_attribution(info, vectors, final, targets), norm=vectors.norm(dim=-1))


def _output_row_norms(info: ModelInfo, trace: Trace, layer: int, position: int) -> torch.Tensor:
    """|fc2_k| as it reaches the residual stream (through the frozen post-MLP norm, if any): (batch, d_ff)."""
    rows = info.mlp_out_weight(layer).detach().float().cpu().T  # (d_ff, d_model)
    norm = info.mlp_out_norms[layer]
    if norm is None:
        return rows.norm(dim=-1)[None].expand(trace.mlp_act[layer].shape[0], -1)
    at = trace.mlp_out[layer][:, position].float()
    # a frozen norm is one fixed linear map times a per-prompt scalar (1 / the rms or std at its input):
    # map the rows once, then rescale by each prompt's scalar, read off a common probe vector
    first = frozen_norm(norm, at[:1])
    probe = at[:1]
    scale = torch.stack([frozen_norm(norm, at[b : b + 1])(probe).norm() for b in range(len(at))]) / first(probe).norm()
    return scale[:, None] * first(rows).norm(dim=-1)[None]


def neuron_keys(info: ModelInfo, trace: Trace, layers: torch.Tensor, neurons: torch.Tensor, position: int = 0) -> tuple:
    """Each prompt's "value" neuron's key in the residual stream, and its activation: ((batch, d), (batch,)).

    The key is the gradient of the neuron's activation m_k with respect to the residual stream its
    MLP reads, with the MLP's input norm frozen at the real input (Yu & Ananiadou freeze norms the
    same way). For an MLP act(W_in x) that is act'(.) times the W_in row times the norm's gain: the
    paper's key up to a positive factor; for a gated MLP (Llama, Gemma) it is the same first-order
    rule applied to act(gate . x) * (up . x). layers, neurons: (batch,) one value neuron per prompt.
    A component u written below that layer raises m_k by about key . u (query_scores).
    """
    keys, values = [], []
    for row, (layer, neuron) in enumerate(zip(layers.tolist(), neurons.tolist())):
        at = trace.mlp_in[layer][row : row + 1, position].float()  # (1, d)
        norm, mlp = info.mlp_in_norms[layer], info.mlps[layer]
        seen = {}
        handle = info.mlp_out_projs[layer].register_forward_pre_hook(lambda m, args: seen.__setitem__("act", args[0]))
        try:
            with torch.enable_grad():
                x = at.clone().requires_grad_(True)
                normed = x if norm is None else frozen_norm(norm, at)(x) + norm_bias(norm)
                weight = next(mlp.parameters())
                mlp(normed[:, None].to(weight.device, weight.dtype))
                if "act" not in seen:
                    raise ValueError(f"{type(mlp).__name__} does not call the MLP's output projection itself: "
                                     "query neurons need an MLP module that holds its whole block")
                m = seen["act"][0, -1, neuron].float()
                keys.append(torch.autograd.grad(m, x)[0][0])
                values.append(m.detach().cpu())
        finally:
            handle.remove()
    return torch.stack(keys), torch.stack(values)


@torch.no_grad()
def query_scores(info: ModelInfo, trace: Trace, keys: torch.Tensor, layers: torch.Tensor, position: int = 0) -> torch.Tensor:
    """key . u for every FFN neuron's subvalue u below each prompt's value-neuron layer: (batch, n_layers * d_ff),
    NaN at and above that layer. keys: (batch, d) from neuron_keys; layers: (batch,) the value neurons' layers."""
    out = [neuron_readout(info, trace, layer, keys, position).masked_fill((layers <= layer)[:, None], float("nan"))
           for layer in range(info.n_layers)]
    return torch.cat(out, 1)


@torch.no_grad()
def zeroing_sweeps_hidden(info: ModelInfo, id_lists: list, row_heads: list, row_neurons: list, watches: list | None = None) -> tuple:
    """Several prompts' zeroing sweeps in one pass, before the readout: prompt i's rows zero
    row_heads[i][j] ([(layer, head)]) and row_neurons[i][j] ({layer: [neurons]}) at its last
    position, watching watches[i] = (layer, neuron).

    The prompts' prefixes (all tokens but the last) run once, right-padded in one batch (a real token
    never attends to the padding after it). Then each prompt's last token is replayed once per row
    of its sweep, the copies packed side by side after its own prefix (knockout.packed_step), each
    copy at the last token's position, reading the prefix (not the padding) and itself: the keys and
    values are stored once per prompt, not once per row. Returns (hidden (total rows, d_model) on
    the model's device, prompt 0's rows first; the watched activation per row (total rows,) or None).
    """
    from .evaluation import cached_prefix
    from .knockout import packed_step
    from .tracing import _per_layer, _neurons_per_layer, record_neuron_activations, zero_at_cells

    if not len(id_lists) == len(row_heads) == len(row_neurons):
        raise ValueError(f"{len(id_lists)} prompts, {len(row_heads)} lists of head rows and {len(row_neurons)} of neuron rows: "
                         "give one of each per prompt")
    for ids, heads, neurons in zip(id_lists, row_heads, row_neurons):
        if len(ids) < 2:
            raise ValueError("zeroing_sweep needs a prompt of at least two tokens (a prefix and the last token)")
        if len(heads) != len(neurons):
            raise ValueError(f"row_heads has {len(heads)} rows and row_neurons {len(neurons)}: give one of each per row")
    n = len(id_lists)
    lengths = torch.tensor([len(ids) - 1 for ids in id_lists])  # prefix lengths = the last token's position
    width, q = int(lengths.max()), max(len(h) for h in row_heads)
    prefix = torch.zeros(n, width, dtype=torch.long)
    for i, ids in enumerate(id_lists):
        prefix[i, : lengths[i]] = torch.tensor(ids[:-1])
    head_masks, neuron_masks = {}, {}
    for i in range(n):
        for j, (heads, neurons) in enumerate(zip(row_heads[i], row_neurons[i])):
            for layer, hs in _per_layer(info, heads).items():
                head_masks.setdefault(layer, torch.zeros(n, q, info.n_heads, dtype=torch.bool))[i, j, hs] = True
            for layer, idx in _neurons_per_layer(info, neurons).items():
                neuron_masks.setdefault(layer, torch.zeros(n, q, info.d_ff, dtype=torch.bool))[i, j, idx] = True
    padding = torch.zeros(n, q, width + q, dtype=torch.bool)
    padding[:, :, :width] = torch.arange(width)[None, None] >= lengths[:, None, None]
    blocks = {layer: padding for layer in range(info.n_layers)} if bool(padding.any()) else None
    watch_layers = [] if watches is None else [layer for layer, _ in watches]
    cache = cached_prefix(info, prefix)
    with zero_at_cells(info, head_masks, neuron_masks), record_neuron_activations(info, watch_layers) as seen:
        hidden = packed_step(info, cache, torch.tensor([ids[-1] for ids in id_lists])[:, None].expand(n, q),
                             lengths[:, None].expand(n, q), torch.eye(q, dtype=torch.bool), blocks)
    keep = torch.arange(q)[None] < torch.tensor([len(h) for h in row_heads])[:, None]  # (n, q): real rows
    watched = None
    if watches is not None:
        watched = torch.stack([seen[int(layer)][i, :, int(neuron)].float().cpu() for i, (layer, neuron) in enumerate(watches)])
        watched = watched[keep]
    return hidden[keep.to(hidden.device)], watched


@torch.no_grad()
def zeroing_sweep(info: ModelInfo, ids: list, target: int, row_heads: list, row_neurons: list, watch=None) -> dict:
    """Zero a different set of heads (row_heads[i]: [(layer, head)]) and FFN neurons (row_neurons[i]:
    {layer: [neurons]}) in each row, at the prompt's last position only, and read the target there.

    The prompt's earlier keys and values are computed once and the last token is replayed once per
    row, all rows in one batch. watch: (layer, neuron) whose activation to read in each row.
    Returns {"p", "log_p", "rank" (1 = top), "watched" (or None)}: (rows,) tensors.
    """
    hidden, watched = zeroing_sweeps_hidden(info, [ids], [row_heads], [row_neurons], None if watch is None else [watch])
    log_p, rank = unembedded_log_probs(info, hidden, torch.full((len(hidden),), int(target)), rank=True)
    return {"p": log_p.exp(), "log_p": log_p, "rank": rank, "watched": watched}
