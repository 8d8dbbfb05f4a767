"""Record and intervene on a forward pass: residual stream, per-head outputs, attention, q/k/v.

Two mechanisms, both standard extension points of PyTorch/transformers (no library source edits):

* Forward (pre-)hooks on the decoder layers and on each attention output projection. The input of
  the output projection is the concatenation of the heads' outputs, so head h is the slice
  `[h * d_head, (h + 1) * d_head)`: reading or zeroing that slice reads or removes one head.
* An attention function registered with transformers' `AttentionInterface` ("icl_utils_eager"):
  plain eager attention that shows the queries and keys the model really uses (after rotary
  embedding and q/k norms, with grouped-query key/value heads repeated to one per query head) and
  the attention pattern to observers, which may also edit the pattern.

Every context manager removes its hooks and observers on exit, also when an exception is raised.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import torch

ATTENTION_NAME = "icl_utils_eager"
_EDITORS: list = []  # callables (layer, weights, query, key) -> weights or None
_RECORDERS: list = []  # callables (layer, query, key, value, weights) -> None
_POSITIONAL: list = []  # one entry per active intervention at chosen positions (see positional_interventions_active)


def recording_attention(
    module, query, key, value, attention_mask, scaling=None, dropout=0.0, softcap=None,
    sliding_window=None, **kwargs,
):
    """Eager attention. query: (batch, heads, q_len, d_head); key/value: (batch, kv_heads, k_len, d_head).

    Grouped-query attention (query head h reads key/value head h // n_rep) is computed without
    copying keys and values per query head; observers (editors, recorders) still see one key and
    value per query head.
    """
    batch, n_heads, q_len, d_head = query.shape
    n_kv, k_len = key.shape[1], key.shape[2]
    n_rep = n_heads // n_kv
    if scaling is None:
        scaling = d_head ** -0.5
    grouped = query.reshape(batch, n_kv, n_rep * q_len, d_head)  # heads of one kv group, stacked
    scores = ((grouped @ key.transpose(-1, -2)) * scaling).view(batch, n_heads, q_len, k_len)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    lowest = torch.finfo(scores.dtype).min
    causal = torch.ones(q_len, k_len, dtype=torch.bool, device=scores.device).tril(k_len - q_len)
    scores = scores.masked_fill(~causal, lowest)
    if attention_mask is not None:  # padding and sliding windows, as the model built them
        mask = attention_mask[..., :k_len]
        scores = scores.masked_fill(~mask, lowest) if mask.dtype == torch.bool else scores + mask
    weights = torch.softmax(scores.float(), dim=-1).to(value.dtype)
    if _EDITORS or _RECORDERS:
        layer = module.layer_idx
        key_per_head = key.repeat_interleave(n_rep, dim=1)
        for edit in _EDITORS:
            edited = edit(layer, weights, query, key_per_head)
            if edited is not None:
                weights = edited
        value_per_head = value.repeat_interleave(n_rep, dim=1) if _RECORDERS else None
        for record in _RECORDERS:
            record(layer, query, key_per_head, value_per_head, weights)
    output = (weights.reshape(batch, n_kv, n_rep * q_len, k_len) @ value).view(batch, n_heads, q_len, d_head)
    return output.transpose(1, 2).contiguous(), weights


def use_recording_attention(model) -> None:
    """Make `model` compute attention with `recording_attention` (numerically the eager path)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register(ATTENTION_NAME, recording_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, eager_mask)  # additive float masks
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            config._attn_implementation = ATTENTION_NAME
    model.config._attn_implementation = ATTENTION_NAME


def _check_recording(info) -> None:
    if info.model.config._attn_implementation != ATTENTION_NAME:
        raise RuntimeError(
            "This model does not use icl_utils' attention function; load it with "
            "icl_utils.load_model(...) or call icl_utils.tracing.use_recording_attention(model)."
        )


def positional_interventions_active() -> bool:
    """True inside edit_attention, or ablate_heads/ablate_neurons at chosen positions: interventions
    that index absolute positions, which a pass over part of a sequence would misplace."""
    return bool(_EDITORS or _POSITIONAL)


@contextmanager
def _registered(registry: list, fn):
    registry.append(fn)
    try:
        yield
    finally:
        registry.remove(fn)


# ----------------------------------------------------------------------------------------------
# Tracing


@dataclass
class Trace:
    """What one batched forward pass recorded, at `positions` (batch, n_pos) of each prompt.

    resid[l]      (batch, n_pos, d_model)  residual stream entering layer l; resid[n_layers] leaves the last layer
    head_out[l]   (batch, n_pos, n_heads, d_head)  each head's output, before the output projection
    attn_out[l]   (batch, n_pos, d_model)  the attention output projection's output (bias included)
    attn[l]       (batch, n_heads, n_pos, seq)  attention from the recorded positions to every position
    q[l]          (batch, n_heads, n_pos, d_head)  queries at the recorded positions, as used (rotary applied)
    k[l], v[l]    (batch, n_heads, seq, d_head)  keys and values at every position, one per query head
    mlp_in[l]     (batch, n_pos, d_model)  the residual stream the MLP of layer l reads (before its norm)
    mlp_act[l]    (batch, n_pos, d_ff)  neuron activations: the input of the MLP's output projection
    mlp_out[l]    (batch, n_pos, d_model)  the MLP's output (before a post-MLP norm, if the model has one)
    logits        (batch, n_pos, vocab)  next-token logits at the recorded positions
    """

    positions: torch.Tensor
    resid: dict = field(default_factory=dict)
    head_out: dict = field(default_factory=dict)
    attn_out: dict = field(default_factory=dict)
    attn: dict = field(default_factory=dict)
    q: dict = field(default_factory=dict)
    k: dict = field(default_factory=dict)
    v: dict = field(default_factory=dict)
    mlp_in: dict = field(default_factory=dict)
    mlp_act: dict = field(default_factory=dict)
    mlp_out: dict = field(default_factory=dict)
    logits: torch.Tensor | None = None


def _gather_positions(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x: (batch, seq, ...) -> (batch, n_pos, ...) at each row's own positions."""
    rows = torch.arange(x.shape[0], device=x.device)[:, None]
    return x[rows, positions.to(x.device)]


def head_writes(info, trace: Trace, layer: int) -> torch.Tensor:
    """Each head's output after its slice of the output projection: (batch, n_pos, n_heads, d_model).

    Summed over heads (plus the projection's bias, if any) this is `trace.attn_out[layer]`.
    """
    w_o = info.out_proj_weight(layer).detach().to(trace.head_out[layer].device).view(info.d_model, info.n_heads, info.d_head)
    return torch.einsum("bphd,mhd->bphm", trace.head_out[layer], w_o)


@torch.no_grad()
def run_with_trace(
    info,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    positions: torch.Tensor,
    layers=None,
    record=("resid", "head_out", "attn_out", "attn", "qkv", "logits"),
) -> Trace:
    """One forward pass of a right-padded batch, recording `record` at `positions` (batch, n_pos).

    layers: which layers to record (default all). Queries/attention are kept only at `positions`;
    keys and values at every position, since a score needs the query and all keys.
    """
    _check_recording(info)
    device = info.device
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    positions = torch.as_tensor(positions, device=device)
    if positions.ndim == 1:
        positions = positions[:, None]
    layers = range(info.n_layers) if layers is None else list(layers)
    trace = Trace(positions=positions.cpu())
    rows = torch.arange(input_ids.shape[0], device=device)[:, None]

    def record_resid(layer):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            trace.resid[layer] = _gather_positions(hidden, positions).cpu()
        return hook

    def record_last_resid(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        trace.resid[info.n_layers] = _gather_positions(hidden, positions).cpu()

    def record_head_out(layer):
        def hook(module, args):
            x = _gather_positions(args[0], positions)
            trace.head_out[layer] = x.view(*x.shape[:2], info.n_heads, info.d_head).cpu()
        return hook

    def record_input(store, layer):
        def hook(module, args):
            store[layer] = _gather_positions(args[0], positions).cpu()
        return hook

    def record_output(store, layer):
        def hook(module, args, output):
            output = output[0] if isinstance(output, tuple) else output
            store[layer] = _gather_positions(output, positions).cpu()
        return hook

    wanted = set(layers)

    def record_attention(layer, query, key, value, weights):
        if layer not in wanted:
            return
        if "attn" in record:
            trace.attn[layer] = weights[rows, :, positions].permute(0, 2, 1, 3).cpu()
        if "qkv" in record:
            trace.q[layer] = query[rows, :, positions].permute(0, 2, 1, 3).cpu()
            trace.k[layer], trace.v[layer] = key.cpu(), value.cpu()

    with ExitStack() as stack:
        for layer in layers:
            if "resid" in record:
                h = info.layers[layer].register_forward_pre_hook(record_resid(layer), with_kwargs=True)
                stack.callback(h.remove)
            if "head_out" in record:
                h = info.out_projs[layer].register_forward_pre_hook(record_head_out(layer))
                stack.callback(h.remove)
            hooks = [
                ("attn_out", info.out_projs[layer], "output", trace.attn_out),
                ("mlp_in", info.mlp_in_norms[layer], "input", trace.mlp_in),
                ("mlp_act", info.mlp_out_projs[layer], "input", trace.mlp_act),
                ("mlp_out", info.mlps[layer], "output", trace.mlp_out),
            ]
            for name, module, side, store in hooks:
                if name in record:
                    h = (module.register_forward_pre_hook(record_input(store, layer)) if side == "input"
                         else module.register_forward_hook(record_output(store, layer)))
                    stack.callback(h.remove)
        if "resid" in record:
            h = info.layers[info.n_layers - 1].register_forward_hook(record_last_resid)
            stack.callback(h.remove)
        if "attn" in record or "qkv" in record:
            stack.enter_context(_registered(_RECORDERS, record_attention))
        out = info.decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    if "logits" in record:
        final = _gather_positions(out.last_hidden_state, positions)
        trace.logits = info.logits_from_final_hidden(final).float().cpu()
    return trace


# ----------------------------------------------------------------------------------------------
# Interventions


def _per_layer(info, heads) -> dict:
    """{layer: [head, ...]} from (layer, head) pairs, refusing heads the model does not have."""
    by_layer: dict = {}
    for layer, head in heads:
        if not (0 <= layer < info.n_layers and 0 <= head < info.n_heads):
            raise ValueError(
                f"Head ({layer}, {head}) out of range: the model has {info.n_layers} layers "
                f"x {info.n_heads} heads."
            )
        by_layer.setdefault(int(layer), []).append(int(head))
    return by_layer


@contextmanager
def ablate_heads(info, heads, positions=None, mode: str = "zero", means: dict | None = None):
    """Replace chosen heads' outputs (before the output projection) with zeros or their means.

    heads: iterable of (layer, head). positions: None for every position, or a LongTensor
    (batch, n_pos) of per-prompt positions (it must match the batch you then run).
    mode "mean" needs means[(layer, head)] = a (d_head,) tensor, e.g. the mean of trace.head_out.
    """
    if mode not in ("zero", "mean"):
        raise ValueError(f"mode must be 'zero' or 'mean', not {mode!r}")
    if mode == "mean" and means is None:
        raise ValueError("mode='mean' needs means={(layer, head): tensor of shape (d_head,)}")
    by_layer = _per_layer(info, heads)

    def make_hook(layer, head_list):
        def hook(module, args):
            x = args[0]
            x = x.view(*x.shape[:-1], info.n_heads, info.d_head).clone()
            for head in head_list:
                value = 0.0 if mode == "zero" else means[(layer, head)].to(x.device, x.dtype)
                if positions is None:
                    x[:, :, head] = value
                else:
                    pos = torch.as_tensor(positions, device=x.device)
                    pos = pos[:, None] if pos.ndim == 1 else pos
                    rows = torch.arange(x.shape[0], device=x.device)[:, None]
                    x[rows, pos, head] = value
            return (x.flatten(-2),) + tuple(args[1:])
        return hook

    with ExitStack() as stack:
        for layer, head_list in by_layer.items():
            handle = info.out_projs[layer].register_forward_pre_hook(make_hook(layer, head_list))
            stack.callback(handle.remove)
        if positions is not None:
            stack.enter_context(_registered(_POSITIONAL, object()))
        yield


@contextmanager
def scale_heads(info, factors: torch.Tensor):
    """Multiply each head's output (before the output projection) by a per-row factor, at every
    position: factors (batch, n_layers, n_heads), 0 to zero a head, 1 to keep it.

    One batch can then hold many different head ablations (row i zeroes the heads where
    factors[i] == 0), e.g. a whole one-head-at-a-time sweep in one forward pass. The batch you run
    inside the context must have exactly `batch` rows.
    """
    factors = torch.as_tensor(factors, dtype=torch.float)
    if factors.ndim != 3 or tuple(factors.shape[1:]) != (info.n_layers, info.n_heads):
        raise ValueError(f"factors must have shape (batch, {info.n_layers}, {info.n_heads}), got {tuple(factors.shape)}")
    layers = [l for l in range(info.n_layers) if not bool((factors[:, l] == 1).all())]

    def make_hook(layer):
        def hook(module, args):
            x = args[0]
            if x.shape[0] != factors.shape[0]:
                raise ValueError(f"scale_heads was given {factors.shape[0]} rows of factors but the batch has {x.shape[0]}")
            f = factors[:, layer].to(x.device, x.dtype)[:, None, :, None]
            x = (x.view(*x.shape[:-1], info.n_heads, info.d_head) * f).flatten(-2)
            return (x,) + tuple(args[1:])
        return hook

    with ExitStack() as stack:
        for layer in layers:
            handle = info.out_projs[layer].register_forward_pre_hook(make_hook(layer))
            stack.callback(handle.remove)
        yield


def _neurons_per_layer(info, neurons_by_layer: dict) -> dict:
    """{layer: LongTensor of neuron indices}, refusing layers and neurons the model does not have."""
    chosen = {}
    for layer, neurons in neurons_by_layer.items():
        idx = torch.as_tensor(neurons, dtype=torch.long).flatten()
        if not 0 <= int(layer) < info.n_layers:
            raise ValueError(f"Layer {layer} out of range: the model has {info.n_layers} layers.")
        if idx.numel() and (idx.min() < 0 or idx.max() >= info.d_ff):
            bad = idx[(idx < 0) | (idx >= info.d_ff)].tolist()
            raise ValueError(f"Neurons {bad[:5]} of layer {layer} out of range: each MLP has {info.d_ff} neurons.")
        chosen[int(layer)] = idx
    return chosen


@contextmanager
def ablate_neurons(info, neurons_by_layer: dict, positions=None, rows=None):
    """Zero chosen FFN neurons: their activations m_k, i.e. the inputs of the MLP's output projection.

    neurons_by_layer: {layer: neuron indices}. positions: None for every position, or a LongTensor
    (batch, n_pos) of per-prompt positions, as in ablate_heads. rows: None for every row of the
    batch, or the row indices to ablate (so that one batch can hold several different ablations).
    Zeroing m_k removes neuron k's subvalue m_k * fc2_k and nothing else (the bias stays).
    """
    chosen = _neurons_per_layer(info, neurons_by_layer)

    def make_hook(idx):
        def hook(module, args):
            x = args[0]  # (batch, seq, d_ff)
            where = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
            if positions is not None:
                pos = torch.as_tensor(positions, device=x.device)
                pos = pos[:, None] if pos.ndim == 1 else pos
                where = torch.zeros_like(where)
                where[torch.arange(x.shape[0], device=x.device)[:, None], pos] = True
            if rows is not None:
                keep = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
                keep[torch.as_tensor(rows, dtype=torch.long, device=x.device)] = True
                where &= keep[:, None]
            x = x.clone()
            cols = idx.to(x.device)
            x[..., cols] = x[..., cols].masked_fill(where[..., None], 0.0)
            return (x,) + tuple(args[1:])
        return hook

    with ExitStack() as stack:
        for layer, idx in chosen.items():
            handle = info.mlp_out_projs[layer].register_forward_pre_hook(make_hook(idx))
            stack.callback(handle.remove)
        if positions is not None:
            stack.enter_context(_registered(_POSITIONAL, object()))
        yield


@contextmanager
def edit_attention(info, edit_fn, heads=None):
    """Let `edit_fn(layer, weights, query, key)` replace attention patterns during the context.

    weights: (batch, heads, q_len, k_len) after softmax; return new weights or None to keep them.
    heads: optional iterable of (layer, head); then only those heads take the edit (the others keep
    the model's own pattern) and edit_fn is called only for their layers.
    """
    _check_recording(info)
    chosen = None if heads is None else _per_layer(info, heads)

    def edit(layer, weights, query, key):
        if chosen is not None and layer not in chosen:
            return None
        edited = edit_fn(layer, weights, query, key)
        if edited is None or chosen is None:
            return edited
        keep = torch.ones(weights.shape[1], dtype=torch.bool, device=weights.device)
        keep[chosen[layer]] = False
        return torch.where(keep[None, :, None, None], weights, edited)

    with _registered(_EDITORS, edit):
        yield
