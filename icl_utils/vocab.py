"""Reading one residual-stream vector in vocabulary space ("logit lens"): the final norm applied to
the vector alone, then the unembedding. This is how Yu & Ananiadou project value-output vectors.
"""
from __future__ import annotations

import torch

from .attribution import frozen_norm, linear_adjoint, norm_bias
from .models import ModelInfo


@torch.no_grad()
def project(info: ModelInfo, vectors: torch.Tensor) -> torch.Tensor:
    """Logits of vectors (..., d_model) read alone: (..., vocab). Pass few rows (262k vocabulary)."""
    return info.logits_from_residual(vectors).float().cpu()


def top_tokens(info: ModelInfo, vector: torch.Tensor, k: int = 10) -> list:
    """The k tokens a single vector (d_model,) promotes most, as readable strings."""
    ids = project(info, vector[None])[0].topk(k).indices.tolist()
    return [info.tokenizer.decode([i]) for i in ids]


@torch.no_grad()
def label_log_odds(info: ModelInfo, vectors: torch.Tensor, word_ids, frozen_at: torch.Tensor | None = None) -> torch.Tensor:
    """log p(w0 | v) - log p(w1 | v) for vectors (..., d_model): (...).

    frozen_at=None: the real final norm on v alone (scale-free: 2v reads like v). frozen_at=x
    (broadcastable to vectors, e.g. the real final residual of each prompt): the final norm with
    its scale frozen at x, as in the attribution chapters, so the result is linear in v and a
    weighted vector (alpha * v) counts alpha times as much. The softmax normaliser cancels in the
    difference, so only the two words' unembedding rows are needed; a final-logit softcap is
    applied as the model does.
    """
    vectors = vectors.to(info.device)
    if frozen_at is None:
        hidden = info.final_norm(vectors).float()
    else:
        hidden = frozen_norm(info.final_norm, frozen_at.to(info.device).float())(vectors.float()) + norm_bias(info.final_norm)
    rows = info.unembed.weight.detach().float()[list(word_ids)]  # (2, d_model)
    z = hidden @ rows.T
    bias = getattr(info.unembed, "bias", None)
    if bias is not None:
        z = z + bias.detach().float()[list(word_ids)]
    z = info.softcap(z)
    return (z[..., 0] - z[..., 1]).cpu()


@torch.no_grad()
def value_output_log_odds(info: ModelInfo, trace, word_ids, layers=None, weighted: bool = True,
                          frozen_at: torch.Tensor | None = None, attn_out_at: dict | None = None) -> torch.Tensor:
    """M_p = log p(w0 | vo_p) - log p(w1 | vo_p) for every head's value-output vector at every source
    position, written to the last position: (batch, n_layers chosen, n_heads, seq).

    vo_p = alpha_{T,p} W_O W_V LN(x_p) (weighted=False leaves out alpha), as in
    attribution.head_position_contributions; read through the final norm frozen at each prompt's
    real final residual, so M_p is linear in vo_p and sums over p to the head's direct effect on
    the w0-w1 log-odds. The trace needs "resid", "attn", "qkv" and "attn_out" for `layers`.
    frozen_at: one residual vector (d_model,) to freeze the norm at instead, for every prompt: then
    M_p depends on vo_p alone, not on the prompt's final scale (to compare vectors across prompts).
    attn_out_at: {layer: vector} the same for the post-attention norm of models that have one (its
    scale at the last position also depends on the query).

    The same numbers as label_log_odds(head_position_contributions(...)), up to float rounding,
    without building the (batch, heads, seq, d_model) vectors: everything between a value vector
    and the two words' logits is linear (W_O, the frozen norms, the unembedding rows), so the two
    rows are carried back through it once per prompt and head, to (d_head,) read-outs, and each
    value vector is read with a dot product.
    """
    layers = range(info.n_layers) if layers is None else layers
    batch = trace.final_resid.shape[0]
    words = list(word_ids)
    rows = info.unembed.weight.detach().float()[words].cpu()  # (2, d_model)
    offset = rows @ torch.as_tensor(norm_bias(info.final_norm), dtype=torch.float).cpu().expand(rows.shape[1])  # (2,)
    bias = getattr(info.unembed, "bias", None)
    if bias is not None:
        offset = offset + bias.detach().float()[words].cpu()

    def at_rows(vector):  # one freezing point per prompt: (batch, 1, d_model)
        vector = vector.float().cpu()
        return (vector if vector.dim() == 2 else vector.expand(batch, -1))[:, None]

    final = at_rows(trace.final_resid[:, 0] if frozen_at is None else frozen_at)
    readout = linear_adjoint(frozen_norm(info.final_norm, final), final, rows.expand(batch, -1, -1))  # (batch, 2, d_model)
    attn_out_at = attn_out_at or {}
    out = []
    for layer in layers:
        through = readout
        norm = info.attn_out_norms[layer]
        if norm is not None:  # the post-attention norm, frozen as in head_position_contributions
            at = at_rows(trace.attn_out[layer][:, 0] if layer not in attn_out_at else attn_out_at[layer])
            through = linear_adjoint(frozen_norm(norm, at), at, readout)
        w_o = info.out_proj_weight(layer).detach().float().cpu().view(info.d_model, info.n_heads, info.d_head)
        per_head = torch.einsum("bwm,mhd->bhdw", through, w_o)  # (batch, heads, d_head, 2)
        z = trace.v[layer].float() @ per_head  # (batch, heads, seq, 2)
        if weighted:
            z = z * trace.attn[layer][:, :, 0].float()[..., None]
        z = info.softcap(z + offset)
        out.append(z[..., 0] - z[..., 1])
    return torch.stack(out, dim=1)
