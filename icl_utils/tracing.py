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
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # models imports tracing
    from .models import Head, ModelInfo

ATTENTION_NAME = "icl_utils_eager"
_REGISTRY_ATTRIBUTE = "_icl_utils_interventions"


@dataclass
class Interventions:
    """What is active on one model now. Owned by the model (an attribute of it and of each of its
    modules), so an edit on one model never fires inside another one."""

    editors: list = field(default_factory=list)  # callables (layer, weights, query, key) -> weights or None
    recorders: list = field(default_factory=list)  # callables (layer, query, key, value, weights) -> None
    positional: list = field(default_factory=list)  # one entry per intervention at chosen positions


def interventions(info_or_model) -> Interventions:
    """The intervention registry of a model (a ModelInfo or the nn.Module), created on first use."""
    model = getattr(info_or_model, "model", info_or_model)
    registry = getattr(model, _REGISTRY_ATTRIBUTE, None)
    if registry is None:
        registry = Interventions()
        for module in model.modules():  # the attention function finds it from its own module
            setattr(module, _REGISTRY_ATTRIBUTE, registry)
    return registry


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
    registry = getattr(module, _REGISTRY_ATTRIBUTE, None)
    if softcap is None and not (registry is not None and (registry.editors or registry.recorders)):
        # Nothing observes or edits the pattern: PyTorch's fused kernel gives the same output (to float
        # rounding) 20-35% faster on long sequences. The weights are not returned (no caller reads them).
        return _fused_attention(query, key, value, attention_mask, scaling, n_rep), None
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
    if registry is not None and (registry.editors or registry.recorders):
        layer = module.layer_idx
        key_per_head = key.repeat_interleave(n_rep, dim=1)
        for edit in registry.editors:
            edited = edit(layer, weights, query, key_per_head)
            if edited is not None:
                weights = edited
        value_per_head = value.repeat_interleave(n_rep, dim=1) if registry.recorders else None
        for record in registry.recorders:
            record(layer, query, key_per_head, value_per_head, weights)
    output = (weights.reshape(batch, n_kv, n_rep * q_len, k_len) @ value).view(batch, n_heads, q_len, d_head)
    return output.transpose(1, 2).contiguous(), weights


def _fused_attention(query, key, value, attention_mask, scaling, n_rep):
    """torch's scaled_dot_product_attention with the model's mask (or plain causal masking)."""
    k_len = key.shape[2]
    if attention_mask is None:
        q_len = query.shape[2]
        mask = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).tril(k_len - q_len)
    else:  # padding, causality and sliding windows, as the model built them
        mask = attention_mask[..., :k_len]
    output = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling,
                                                              enable_gqa=n_rep > 1)
    return output.transpose(1, 2).contiguous()


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
    interventions(model)


def _check_recording(info: ModelInfo) -> None:
    if info.model.config._attn_implementation != ATTENTION_NAME:
        raise RuntimeError(
            "This model does not use icl_utils' attention function; load it with "
            "icl_utils.load_model(...) or call icl_utils.tracing.use_recording_attention(model)."
        )


def positional_interventions_active(info: ModelInfo) -> bool:
    """True inside edit_attention, or ablate_heads/ablate_neurons at chosen positions, on this
    model: interventions that index absolute positions, which a pass over part of a sequence would
    misplace."""
    registry = interventions(info)
    return bool(registry.editors or registry.positional)


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

    def stack(self, name: str, position: int | None = None) -> torch.Tensor:
        """One recorded quantity over the recorded layers in order: (batch, n_layers, ...), at one
        recorded position when given (0: the first, e.g. each prompt's last token). For "resid" the
        last entry is the residual stream leaving the last layer (L + 1 entries in all)."""
        store = getattr(self, name)
        if not store:
            raise ValueError(f"this trace recorded no {name!r}: pass it in run_with_trace(..., record=...)")
        return torch.stack([store[l] if position is None else store[l][:, position] for l in sorted(store)], 1)

    @property
    def final_resid(self) -> torch.Tensor:
        """The residual stream leaving the last layer, before the final norm: (batch, n_pos, d_model)."""
        if not self.resid:
            raise ValueError("this trace has no residual stream: record=('resid', ...)")
        return self.resid[max(self.resid)]


def _gather_positions(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x: (batch, seq, ...) -> (batch, n_pos, ...) at each row's own positions."""
    rows = torch.arange(x.shape[0], device=x.device)[:, None]
    return x[rows, positions.to(x.device)]


def head_writes(info: ModelInfo, trace: Trace, layer: int) -> torch.Tensor:
    """Each head's output after its slice of the output projection: (batch, n_pos, n_heads, d_model).

    Summed over heads (plus the projection's bias, if any) this is `trace.attn_out[layer]`.
    """
    w_o = info.out_proj_weight(layer).detach().to(trace.head_out[layer].device).view(info.d_model, info.n_heads, info.d_head)
    return torch.einsum("bphd,mhd->bphm", trace.head_out[layer], w_o)


# What run_with_trace can record: name -> (module of layer l, which side of it, how to read it).
# "pre" reads the module's input, "post" its output; kwargs: the input may come as hidden_states=.
_RECORDINGS = {
    "resid": (lambda info, l: info.layers[l], "pre", None),
    "head_out": (lambda info, l: info.out_projs[l], "pre", "heads"),
    "attn_out": (lambda info, l: info.out_projs[l], "post", None),
    "mlp_in": (lambda info, l: info.mlp_in_norms[l], "pre", None),
    "mlp_act": (lambda info, l: info.mlp_out_projs[l], "pre", None),
    "mlp_out": (lambda info, l: info.mlps[l], "post", None),
}


@torch.no_grad()
def run_with_trace(
    info: ModelInfo,
    batch,
    attention_mask: torch.Tensor | None = None,
    positions: torch.Tensor | None = None,
    layers=None,
    record=("resid", "head_out", "attn_out", "attn", "qkv", "logits"),
    share_prefix: bool = False,
) -> Trace:
    """One forward pass of a right-padded batch, recording `record` at `positions` (batch, n_pos).

    batch: a PromptBatch (its last positions are recorded unless `positions` is given), or the
    input ids (batch, seq), with `attention_mask` and `positions`. layers: which layers to record
    (default all). Queries/attention are kept only at `positions`; keys and values at every
    position, since a score needs the query and all keys. The hooks are a table (_RECORDINGS).
    share_prefix: the tokens all rows share (the same demonstrations) run once, unrecorded, and
    each row's own tokens are replayed over their cached keys and values with the hooks on: the
    same trace, several times cheaper for prompts that differ only in the query. Every recorded
    position must lie after the shared part.
    """
    _check_recording(info)
    if hasattr(batch, "input_ids"):
        input_ids, attention_mask = batch.input_ids, batch.attention_mask
        positions = batch.last_positions if positions is None else positions
    else:
        input_ids = batch
        if attention_mask is None or positions is None:
            raise ValueError("run_with_trace(info, input_ids, attention_mask, positions): pass all three, or a PromptBatch")
    unknown = set(record) - set(_RECORDINGS) - {"attn", "qkv", "logits"}
    if unknown:
        raise ValueError(f"run_with_trace cannot record {sorted(unknown)}; it records {sorted(_RECORDINGS)} + attn, qkv, logits")
    device = info.device
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    positions = torch.as_tensor(positions, device=device)
    if positions.ndim == 1:
        positions = positions[:, None]
    layers = range(info.n_layers) if layers is None else list(layers)
    trace = Trace(positions=positions.cpu())
    rows = torch.arange(input_ids.shape[0], device=device)[:, None]

    def keep(store, layer, reshape):
        def save(x):
            x = _gather_positions(x[0] if isinstance(x, tuple) else x, positions)
            store[layer] = (x.view(*x.shape[:2], info.n_heads, info.d_head) if reshape == "heads" else x).cpu()
        return save

    def record_attention(layer, query, key, value, weights):
        observed.add(layer)
        if layer not in wanted:
            return
        if "attn" in record:
            trace.attn[layer] = weights[rows, :, positions].permute(0, 2, 1, 3).cpu()
        if "qkv" in record:
            trace.q[layer] = query[rows, :, positions].permute(0, 2, 1, 3).cpu()
            trace.k[layer], trace.v[layer] = key.cpu(), value.cpu()

    wanted, observed = set(layers), set()
    shared, cache = 0, None
    if share_prefix and input_ids.shape[0] > 1:
        from types import SimpleNamespace

        from .evaluation import _refuse_positional, _shared_prefix_length, cached_prefix  # the one prefix rule

        rows_ = SimpleNamespace(input_ids=input_ids.cpu(), attention_mask=attention_mask.cpu())
        shared = min(_shared_prefix_length(rows_), int(positions.min()))  # recorded positions stay in the replay
        if shared:
            _refuse_positional(info)
            cache = cached_prefix(info, input_ids[:1, :shared])  # before any hook: the prefix is not recorded
            cache.batch_repeat_interleave(input_ids.shape[0])
            positions = positions - shared  # where the recorded positions sit in the replayed tokens
    with ExitStack() as stack:
        specs = [(name, layer) for name in _RECORDINGS if name in record for layer in layers]
        if "resid" in record:  # the residual stream leaving the last layer: that layer's output
            specs.append(("resid_out", info.n_layers - 1))
        for name, layer in specs:
            if name == "resid_out":
                module, side, save = info.layers[layer], "post", keep(trace.resid, info.n_layers, None)
            else:
                get, side, reshape = _RECORDINGS[name]
                module, save = get(info, layer), keep(getattr(trace, name), layer, reshape)
            if side == "pre":
                handle = module.register_forward_pre_hook(
                    lambda m, args, kwargs, save=save: save(args[0] if args else kwargs["hidden_states"]), with_kwargs=True)
            else:
                handle = module.register_forward_hook(lambda m, args, output, save=save: save(output))
            stack.callback(handle.remove)
        if "attn" in record or "qkv" in record:
            stack.enter_context(_registered(interventions(info).recorders, record_attention))
        if cache is None:
            out = info.decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        else:
            out = info.decoder(input_ids=input_ids[:, shared:], attention_mask=attention_mask, past_key_values=cache,
                               use_cache=True)
    if ("attn" in record or "qkv" in record) and wanted - observed:  # never a trace with attention silently missing
        raise RuntimeError(
            f"No attention was recorded in layers {sorted(wanted - observed)[:8]} of {type(info.model).__name__}: its "
            "attention bypasses icl_utils' attention function. Describe the model after use_recording_attention "
            "(icl_utils.load_model does both), which hooks GPT-J-style attention or says why it cannot."
        )
    if "logits" in record:
        final = _gather_positions(out.last_hidden_state, positions)
        trace.logits = info.logits_from_final_hidden(final).float().cpu()
    return trace


# ----------------------------------------------------------------------------------------------
# Interventions


def _per_layer(info: ModelInfo, heads) -> dict:
    """{layer: [head, ...]} from (layer, head) pairs, refusing heads the model does not have."""
    by_layer: dict = {}
    if not hasattr(heads, "__len__"):
        heads = list(heads)  # an iterator: read it once
    if isinstance(heads, (str, bytes)) or not all(hasattr(h, "__len__") and len(h) == 2 for h in heads):
        raise TypeError(f"Heads are a list of (layer, head) pairs, e.g. [(11, 2), (3, 0)]; got {heads!r:.80} "
                        f"(one head? wrap it in a list: [(layer, head)])")
    for layer, head in heads:
        if not (0 <= layer < info.n_layers and 0 <= head < info.n_heads):
            raise ValueError(
                f"Head ({layer}, {head}) out of range: the model has {info.n_layers} layers "
                f"x {info.n_heads} heads."
            )
        by_layer.setdefault(int(layer), []).append(int(head))
    return by_layer


def _layer_values(info: ModelInfo, values, layer: int, heads: list, like: torch.Tensor) -> torch.Tensor:
    """(n_heads, d_head) replacement outputs for one layer: zeros, or values[layer, head] for the
    chosen heads (values: a (n_layers, n_heads, d_head) tensor or a {(layer, head): (d_head,)} dict)."""
    out = torch.zeros(info.n_heads, info.d_head, device=like.device, dtype=like.dtype)
    if values is None:
        return out
    for h in heads:
        out[h] = (values[(layer, h)] if isinstance(values, dict) else values[layer, h]).to(like.device, like.dtype)
    return out


@contextmanager
def set_heads(info: ModelInfo, row_heads: list[list[Head]] | None = None, heads: list[Head] | None = None, values=None,
              positions=None, per_position: bool = False):
    """Replace heads' outputs (before the output projection) with zeros or given values: the one
    mechanism behind every head ablation and patch in the book.

    row_heads None: every row of the batch, on `heads` (iterable of (layer, head)). Or one list of
    (layer, head) per row of the next batch, so that one batch holds many different interventions
    (e.g. a whole one-head-at-a-time sweep in one pass; [] leaves a row untouched).
    values: None to zero the heads, or a (n_layers, n_heads, d_head) tensor or a
    {(layer, head): (d_head,)} dict (e.g. mean outputs) to write instead.
    positions: None for every position, or a LongTensor of per-row positions, (batch,) or (batch, n_pos).
    per_position: row_heads[i] applies to sequence position i of every batch row instead of to
    batch row i (for continuations packed side by side in one sequence, knockout.packed_step).
    """
    if per_position and (row_heads is None or positions is not None):
        raise ValueError("per_position=True needs row_heads (one list per position) and no positions")
    chosen: dict = {}  # layer -> [(row or None, head)]
    if row_heads is None:
        for layer, hs in _per_layer(info, heads if heads is not None else []).items():
            chosen[layer] = [(None, h) for h in hs]
    else:
        for row, row_set in enumerate(row_heads):
            for layer, hs in _per_layer(info, row_set).items():
                chosen.setdefault(layer, []).extend((row, h) for h in hs)

    def make_hook(layer, pairs):
        layer_heads = sorted({h for _, h in pairs})

        def hook(module, args):
            x = args[0]
            batch, seq = x.shape[:2]
            if row_heads is not None and (seq if per_position else batch) != len(row_heads):
                raise ValueError(f"{len(row_heads)} rows of heads were given but the batch has "
                                 f"{f'{seq} positions' if per_position else f'{batch} rows'}")
            x = x.view(batch, seq, info.n_heads, info.d_head)
            head_mask = torch.zeros(seq if per_position else batch, info.n_heads, dtype=torch.bool, device=x.device)
            for row, h in pairs:
                head_mask[slice(None) if row is None else row, h] = True
            if per_position:
                where = head_mask[None].expand(batch, seq, info.n_heads)
            elif positions is None:
                where = head_mask[:, None, :].expand(batch, seq, info.n_heads)
            else:
                pos = torch.as_tensor(positions, device=x.device)
                pos = pos[:, None] if pos.ndim == 1 else pos
                at = torch.zeros(batch, seq, dtype=torch.bool, device=x.device)
                at[torch.arange(batch, device=x.device)[:, None], pos] = True
                where = at[:, :, None] & head_mask[:, None, :]
            new = _layer_values(info, values, layer, layer_heads, x)
            x = torch.where(where[..., None], new[None, None], x)
            return (x.flatten(-2),) + tuple(args[1:])
        return hook

    with ExitStack() as stack:
        for layer, pairs in chosen.items():
            handle = info.out_projs[layer].register_forward_pre_hook(make_hook(layer, pairs))
            stack.callback(handle.remove)
        if positions is not None:
            stack.enter_context(_registered(interventions(info).positional, object()))
        yield


@contextmanager
def ablate_heads(info: ModelInfo, heads: list[Head], positions=None, mode: str = "zero", means: dict | None = None):
    """Replace chosen heads' outputs (before the output projection) with zeros or their means, in
    every row of the batch (set_heads does the work).

    heads: iterable of (layer, head). positions: None for every position, or a LongTensor
    (batch, n_pos) of per-prompt positions (it must match the batch you then run).
    mode "mean" needs means[(layer, head)] = a (d_head,) tensor, e.g. the mean of trace.head_out.
    """
    if mode not in ("zero", "mean"):
        raise ValueError(f"mode must be 'zero' or 'mean', not {mode!r}")
    if mode == "mean" and means is None:
        raise ValueError("mode='mean' needs means={(layer, head): tensor of shape (d_head,)}")
    with set_heads(info, heads=heads, values=means if mode == "mean" else None, positions=positions):
        yield


@contextmanager
def add_to_residual(info: ModelInfo, row_additions: list, positions=None):
    """Row r of the next batch gets vector v added to the residual stream entering layer l, where
    row_additions[r] = (l, v) (v: (d_model,)), or nothing where it is None. positions: None for every
    position, or a (batch,) LongTensor. Adding a function vector to a middle layer is this."""
    by_layer: dict = {}
    for row, addition in enumerate(row_additions):
        if addition is not None:
            layer, vector = addition
            if not 0 <= layer < info.n_layers:
                raise ValueError(f"Layer {layer} out of range: the model has {info.n_layers} layers.")
            by_layer.setdefault(int(layer), []).append((row, vector))

    def make_hook(rows_vectors):
        rows = torch.tensor([r for r, _ in rows_vectors])
        vectors = torch.stack([v for _, v in rows_vectors])

        def hook(module, args, kwargs):
            in_args = bool(args)
            hidden = (args[0] if in_args else kwargs["hidden_states"]).clone()
            r, v = rows.to(hidden.device), vectors.to(hidden.device, hidden.dtype)
            if positions is None:
                hidden[r] += v[:, None]
            else:
                hidden[r, torch.as_tensor(positions, device=hidden.device)[r]] += v
            if in_args:
                return (hidden,) + tuple(args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}
        return hook

    with ExitStack() as stack:
        for layer, rows_vectors in by_layer.items():
            handle = info.layers[layer].register_forward_pre_hook(make_hook(rows_vectors), with_kwargs=True)
            stack.callback(handle.remove)
        yield


def _neurons_per_layer(info: ModelInfo, neurons_by_layer: dict) -> dict:
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
def ablate_neurons(info: ModelInfo, neurons_by_layer: dict, positions=None, rows=None):
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
            stack.enter_context(_registered(interventions(info).positional, object()))
        yield


@contextmanager
def zero_neurons_per_row(info: ModelInfo, row_neurons: list):
    """Zero a different set of FFN neurons in each row of the next batch, at every position: one
    {layer: neuron indices} dict per row ({} leaves a row untouched). One hook per layer holds a
    (rows, d_ff) mask, so a whole sweep of neuron ablations runs as the rows of one batch (e.g. the
    rows of a one-token replay, evaluation.replay)."""
    per_row = [_neurons_per_layer(info, chosen) for chosen in row_neurons]
    masks: dict = {}  # layer -> (rows, d_ff) bool: True where the activation is zeroed
    for row, chosen in enumerate(per_row):
        for layer, idx in chosen.items():
            masks.setdefault(layer, torch.zeros(len(row_neurons), info.d_ff, dtype=torch.bool))[row, idx] = True

    def make_hook(mask):
        def hook(module, args):
            x = args[0]  # (rows, seq, d_ff)
            if x.shape[0] != mask.shape[0]:
                raise ValueError(f"{mask.shape[0]} rows of neurons were given but the batch has {x.shape[0]} rows")
            return (x.masked_fill(mask.to(x.device)[:, None, :], 0.0),) + tuple(args[1:])
        return hook

    with ExitStack() as stack:
        for layer, mask in masks.items():
            handle = info.mlp_out_projs[layer].register_forward_pre_hook(make_hook(mask))
            stack.callback(handle.remove)
        yield


@contextmanager
def watch_neurons(info: ModelInfo, layer: int, neurons):
    """Record chosen FFN neurons' activations at the last position of each forward pass: yields a
    dict whose "activations" entry becomes (rows, len(neurons)) (the last call's, on the CPU)."""
    idx = _neurons_per_layer(info, {layer: neurons})[int(layer)]
    seen: dict = {}

    def hook(module, args):
        seen["activations"] = args[0][:, -1, idx.to(args[0].device)].detach().float().cpu()

    handle = info.mlp_out_projs[int(layer)].register_forward_pre_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


@contextmanager
def zero_at_cells(info: ModelInfo, heads: dict | None = None, neurons: dict | None = None):
    """Zero heads' outputs (before the output projection) and FFN neurons' activations in chosen
    (row, position) cells of the next forward pass: heads {layer: bool (rows, seq, n_heads)},
    neurons {layer: bool (rows, seq, d_ff)}, True where zeroed; seq counts the tokens that pass
    runs (the new ones only, in a step over cached keys and values). For many different ablations
    packed side by side in one sequence per row (knockout.packed_step)."""
    def make_hook(mask, split_heads):
        def hook(module, args):
            x = args[0]
            if x.shape[:2] != mask.shape[:2]:
                raise ValueError(f"the zeroing mask covers {tuple(mask.shape[:2])} (rows, positions) but the pass ran "
                                 f"{tuple(x.shape[:2])}")
            if split_heads:
                x = x.view(*x.shape[:2], info.n_heads, info.d_head).masked_fill(mask.to(x.device)[..., None], 0.0).flatten(-2)
            else:
                x = x.masked_fill(mask.to(x.device), 0.0)
            return (x,) + tuple(args[1:])
        return hook

    with ExitStack() as stack:
        for layer, mask in (heads or {}).items():
            stack.callback(info.out_projs[layer].register_forward_pre_hook(make_hook(mask, True)).remove)
        for layer, mask in (neurons or {}).items():
            stack.callback(info.mlp_out_projs[layer].register_forward_pre_hook(make_hook(mask, False)).remove)
        yield


@contextmanager
def record_neuron_activations(info: ModelInfo, layers):
    """Keep every FFN activation of the chosen layers in the next forward pass: yields a dict that
    becomes {layer: (rows, seq, d_ff)} (on the model's device), seq the tokens that pass runs."""
    seen: dict = {}

    def make_hook(layer):
        def hook(module, args):
            seen[layer] = args[0].detach()
        return hook

    with ExitStack() as stack:
        for layer in sorted({int(l) for l in layers}):
            stack.callback(info.mlp_out_projs[layer].register_forward_pre_hook(make_hook(layer)).remove)
        yield seen


# Reusing the clean pass below the lowest ablated layer: zeroing heads of layer L cannot change
# layers 0..L-1, so rows whose heads all sit at layer >= L take those layers from one clean pass.


def _repeat_rows(value, rows: int):
    """`value` (a layer's output or keys/values: tensors whose first dimension is the clean batch b,
    possibly in tuples) for `rows` rows, row r taking clean row r % b."""
    if isinstance(value, torch.Tensor):
        if value.dim() == 0 or rows % value.shape[0]:
            raise ValueError(f"cannot spread a clean batch of {value.shape[0] if value.dim() else 0} rows over {rows} rows")
        return value.repeat(rows // value.shape[0], *[1] * (value.dim() - 1))
    if isinstance(value, (tuple, list)):
        return type(value)(_repeat_rows(v, rows) if isinstance(v, (torch.Tensor, tuple, list)) else v for v in value)
    return value


@contextmanager
def _patched_forwards(layers: dict):
    """Replace the forward of each module in {module: forward} for the duration (its hooks still run)."""
    saved = {}
    try:
        for module, forward in layers.items():
            saved[module] = module.__dict__.get("forward")  # an instance forward (e.g. accelerate's) is put back
            module.forward = forward
        yield
    finally:
        for module, old in saved.items():
            if old is None:
                del module.forward
            else:
                module.forward = old


@contextmanager
def record_layers(info: ModelInfo, cache=None):
    """Record, for the pass run inside, what each decoder layer's forward returns and the keys and values
    it writes to `cache`: {"out": {layer: output}, "kv": {layer: (args, kwargs) of cache.update}}."""
    record = {"out": {}, "kv": {}}

    def recorder(index, forward):
        def recording(*args, **kwargs):
            record["out"][index] = out = forward(*args, **kwargs)
            return out
        return recording

    with ExitStack() as stack:
        if cache is not None:
            update = cache.update

            def recording_update(key, value, layer_idx, *args, **kwargs):
                record["kv"][layer_idx] = ((key, value, layer_idx) + args, kwargs)
                return update(key, value, layer_idx, *args, **kwargs)
            cache.update = recording_update
            stack.callback(lambda: cache.__dict__.pop("update", None))
        stack.enter_context(_patched_forwards({layer: recorder(i, layer.forward) for i, layer in enumerate(info.layers)}))
        yield record


@contextmanager
def reuse_layers_below(info: ModelInfo, record: dict, below: int, cache=None):
    """Layers 0..below-1 return the recorded clean output (spread over the rows of the batch run
    inside) and write the recorded keys and values to `cache`, without computing anything: exact when
    nothing in those layers differs between the rows and the clean pass (e.g. heads zeroed only at
    layers >= below)."""
    def reuser(index):
        def reuse(*args, **kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            rows = hidden.shape[0]
            if cache is not None and index in record["kv"]:
                update_args, update_kwargs = record["kv"][index]
                key, value = (_repeat_rows(t, rows) for t in update_args[:2])
                cache.update(key, value, *update_args[2:], **update_kwargs)
            return _repeat_rows(record["out"][index], rows)
        return reuse

    with _patched_forwards({info.layers[i]: reuser(i) for i in range(below)}):
        yield


@contextmanager
def edit_attention(info: ModelInfo, edit_fn, heads=None):
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

    with _registered(interventions(info).editors, edit):
        yield


# ----------------------------------------------------------------------------------------------
# Attention that bypasses transformers' attention interface (GPT-J)
#
# GPT-J's attention module computes attention in its own method, never through the attention
# interface, so `recording_attention` is never called there. Hooks on standard modules make it
# observable instead: the projections' outputs are kept, and just before the output projection the
# attention is recomputed with `recording_attention` (rotary embedding, cached keys and the model's
# mask as the module used them), so editors and recorders act exactly as for the other families and
# the output projection reads the (possibly edited) result. Nothing is recomputed while no
# observer is active.

_CALL_ATTRIBUTE = "_icl_utils_attention_call"  # the current call's inputs, shared by the module's hooks
_HOOKED_ATTRIBUTE = "_icl_utils_hooked_attention"


def observed_attention_layers(model) -> set:
    """The layers whose attention reaches icl_utils' observers in a one-token forward pass."""
    seen: set = set()
    device = next(model.parameters()).device
    with _registered(interventions(model).recorders, lambda layer, *rest: seen.add(int(layer))), torch.no_grad():
        model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device), use_cache=False)
    return seen


def ensure_attention_observed(model, n_layers: int) -> None:
    """Check that every layer's attention reaches the observers (recording, edit_attention), hooking
    GPT-J-style attention modules that bypass the attention interface; raise if any layer stays unseen."""
    missing = set(range(n_layers)) - observed_attention_layers(model)
    if not missing:
        return
    hooked = [m for m in model.modules() if _is_gptj_attention(m) and getattr(m, "layer_idx", None) in missing]
    for module in hooked:
        hook_gptj_attention(module)
    if hooked:
        missing = set(range(n_layers)) - observed_attention_layers(model)
    if missing:
        family = getattr(model.config, "model_type", "?")
        raise RuntimeError(
            f"{type(model).__name__} (model_type {family!r}) computes the attention of layers {sorted(missing)[:8]} "
            f"without transformers' attention interface, so icl_utils can neither record nor edit it: "
            f"attention scores would be missing, silently. Families tested with icl_utils: GPT-2, Llama, "
            f"Gemma 3, GPT-NeoX, GPT-J, Qwen2, Mistral, Phi-3, OPT."
        )


def _is_gptj_attention(module) -> bool:
    """GPT-J's attention: separate q/k/v/out projections, GPT-J's rotary table, its own `_attn`."""
    needed = ("q_proj", "k_proj", "v_proj", "out_proj", "embed_positions", "rotary_dim", "num_attention_heads",
              "head_dim", "_attn")
    return all(hasattr(module, name) for name in needed)


def hook_gptj_attention(attention) -> None:
    """Make a GPT-J attention module observable (see the section comment). Once per module; every
    hook finds what it needs from its own module, so a deep copy of the model keeps working hooks."""
    if attention.__dict__.get(_HOOKED_ATTRIBUTE):
        return
    attention.__dict__[_HOOKED_ATTRIBUTE] = True
    parts = [attention.q_proj, attention.k_proj, attention.v_proj, attention.out_proj]
    attention.register_forward_pre_hook(_gptj_start_call, with_kwargs=True)
    attention.register_forward_hook(_gptj_end_call)
    for name, projection in zip("qkv", parts):
        projection.register_forward_hook(lambda module, args, output, name=name: _keep_projection(module, name, output))
    # prepend: the recomputed heads must be in place before set_heads' and run_with_trace's hooks read them
    attention.out_proj.register_forward_pre_hook(_gptj_recompute, prepend=True)


def _gptj_start_call(attention, args, kwargs):
    registry = getattr(attention, _REGISTRY_ATTRIBUTE, None)
    if registry is None or not (registry.editors or registry.recorders):
        return None  # nothing observes: the model's own attention stands
    call = {
        "attention": attention,
        "position_ids": kwargs.get("position_ids"),
        "attention_mask": kwargs.get("attention_mask", args[2] if len(args) > 2 else None),
        "cache": kwargs.get("layer_past", kwargs.get("past_key_values", args[1] if len(args) > 1 else None)),
    }
    for part in (attention.q_proj, attention.k_proj, attention.v_proj, attention.out_proj):
        part.__dict__[_CALL_ATTRIBUTE] = call
    return None


def _gptj_end_call(attention, args, output):
    for part in (attention.q_proj, attention.k_proj, attention.v_proj, attention.out_proj):
        part.__dict__.pop(_CALL_ATTRIBUTE, None)


def _keep_projection(module, name, output):
    call = module.__dict__.get(_CALL_ATTRIBUTE)
    if call is not None:
        call[name] = output


def _gptj_recompute(out_proj, args):
    call = out_proj.__dict__.get(_CALL_ATTRIBUTE)
    if call is None:
        return None
    attention = call["attention"]
    batch, seq = call["q"].shape[:2]
    n_heads, d_head = attention.num_attention_heads, attention.head_dim
    q, k, v = (call[name].view(batch, seq, n_heads, d_head) for name in "qkv")
    positions = call["position_ids"]
    if positions is None:
        positions = torch.arange(seq, device=q.device)[None].expand(batch, seq)
    sincos = attention.embed_positions.to(positions.device)[positions].to(k.dtype)  # (batch, seq, rotary_dim)
    sin, cos = sincos.chunk(2, dim=-1)
    q, k = (_gptj_rotary(x, sin, cos, attention.rotary_dim) for x in (q, k))
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # (batch, heads, seq, d_head)
    if call["cache"] is not None:  # the module has already appended this step's keys and values
        k, v = _cached_keys_values(call["cache"], attention.layer_idx)
    q, k = q.float(), k.float()  # GPT-J computes its scores in float32
    output, _ = recording_attention(attention, q, k, v, call["attention_mask"], scaling=d_head ** -0.5)
    return (output.flatten(-2).to(args[0].dtype),) + tuple(args[1:])


def _gptj_rotary(x, sin, cos, rotary_dim):
    """GPT-J's rotary embedding ("rotate every two") on the first rotary_dim features of x: (batch, seq, heads, d_head)."""
    rot = x.shape[-1] if rotary_dim is None else rotary_dim
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    sin, cos = (t[:, :, None].repeat_interleave(2, dim=-1) for t in (sin, cos))
    rotated = torch.stack((-x_rot[..., 1::2], x_rot[..., ::2]), dim=-1).flatten(-2)
    return torch.cat([x_rot * cos + rotated * sin, x_pass], dim=-1)


def _cached_keys_values(cache, layer: int):
    """One layer's keys and values from a transformers cache (layers[l].keys; key_cache[l] before 4.56)."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return layers[layer].keys, layers[layer].values
    return cache.key_cache[layer], cache.value_cache[layer]
