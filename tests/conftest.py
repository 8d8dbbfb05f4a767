"""Shared fixtures for the fast suite: a tiny in-process tokenizer, three tiny random-weight models
(GPT-2, Llama-style, Gemma3-style) wrapped as ModelInfo, and an in-process two-class task.

Nothing is downloaded. Every model is built from a config with a fixed seed, and all its parameters
(biases and norm weights included) are then perturbed with seeded noise, so that attention patterns
are far from uniform, biases are non-zero and q/k norms are not the identity: a wrong mask, scale or
bias then shows up in the numbers.
"""
from __future__ import annotations

import copy

import pytest
import torch

import icl_utils
from icl_utils.tasks import Task
from icl_utils.tracing import use_recording_attention

# Tiny matrices: one thread is fastest, and OpenMP barriers across busy cores cost ~15 ms per matmul.
torch.set_num_threads(1)

ANIMALS = ["dog", "cat", "cow", "horse", "sheep", "pig", "goat", "duck", "mouse", "lion", "tiger", "bear"]
VEHICLES = ["car", "bus", "truck", "train", "bike", "boat", "plane", "ship", "van", "taxi", "tram", "jeep"]
EXTRA_WORDS = ["foo", "bar", "baz", "Input", "Label", "x", "animal", "vehicle", "big", "red", "old", "the", "a"]
WORDS = ANIMALS + VEHICLES + EXTRA_WORDS
MULTI_TOKEN_WORD = "foobarbaz"  # never seen whole in training: BPE splits it into foo + bar + baz

ARCHS = ["gpt2", "llama", "gemma3"]
SLIDING_WINDOW = 4
MAX_POSITIONS = 64


# ----------------------------------------------------------------------------------------------
# Tokenizer


def _build_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [" ".join(WORDS) + " : ."] * 5
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "<eos>", "<unk>"], show_progress=False
    )
    tok.train_from_iterator(corpus, trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    # the fixtures' own assumptions, checked once
    for word in WORDS:
        assert len(hf(word, add_special_tokens=False)["input_ids"]) == 1, word
    assert len(hf(MULTI_TOKEN_WORD, add_special_tokens=False)["input_ids"]) > 1
    return hf


@pytest.fixture(scope="session")
def tokenizer():
    return _build_tokenizer()


@pytest.fixture(scope="session")
def vocab_size(tokenizer):
    return len(tokenizer)


# ----------------------------------------------------------------------------------------------
# Models


def _config(arch: str, vocab_size: int):
    from transformers import GPT2Config, Gemma3TextConfig, LlamaConfig

    if arch == "gpt2":
        return GPT2Config(
            n_layer=2, n_embd=32, n_head=4, vocab_size=vocab_size, n_positions=MAX_POSITIONS,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            bos_token_id=1, eos_token_id=1, pad_token_id=0,
        )
    if arch == "llama":
        return LlamaConfig(
            num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=64, vocab_size=vocab_size, max_position_embeddings=MAX_POSITIONS,
            attention_bias=True,  # o_proj gets a bias, so the "+ bias" of head_writes is exercised
            pad_token_id=0, bos_token_id=1, eos_token_id=1,
        )
    if arch == "gemma3":
        return Gemma3TextConfig(
            num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=1,
            head_dim=16, intermediate_size=64, vocab_size=vocab_size,
            max_position_embeddings=MAX_POSITIONS, sliding_window=SLIDING_WINDOW,
            layer_types=["sliding_attention", "full_attention"],
            # query_pre_attn_scalar != head_dim, so a scaling of head_dim ** -0.5 would be caught
            query_pre_attn_scalar=8,
            final_logit_softcapping=30.0,  # exercised by ModelInfo.logits_from_final_hidden
            rope_theta=10_000.0, rope_local_base_freq=10_000.0,
            pad_token_id=0, eos_token_id=1, bos_token_id=2,
        )
    raise ValueError(arch)


def build_model(arch: str, vocab_size: int, attn_implementation: str = "sdpa", seed: int = 0):
    """A tiny random-weight model; same arch + seed gives identical weights whatever the attention."""
    from transformers import Gemma3ForCausalLM, GPT2LMHeadModel, LlamaForCausalLM

    cls = {"gpt2": GPT2LMHeadModel, "llama": LlamaForCausalLM, "gemma3": Gemma3ForCausalLM}[arch]
    config = _config(arch, vocab_size)
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = cls(config)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    model.eval()
    assert model.config._attn_implementation == attn_implementation
    return model


def set_attention(model, name: str) -> None:
    """Switch every config in `model` to the attention implementation `name`."""
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            config._attn_implementation = name
    model.config._attn_implementation = name


class Bundle:
    """One architecture: `info` (recording attention), `ref` (identical weights, sdpa), `eager()`."""

    def __init__(self, arch, tokenizer, vocab_size):
        self.arch = arch
        self.vocab_size = vocab_size
        self.ref = build_model(arch, vocab_size, "sdpa")
        model = copy.deepcopy(self.ref)
        use_recording_attention(model)
        self.info = icl_utils.describe_model(model, tokenizer, f"tiny-{arch}")
        self._eager = None

    def eager(self):
        if self._eager is None:
            self._eager = copy.deepcopy(self.ref)
            set_attention(self._eager, "eager")
        return self._eager


@pytest.fixture(scope="session")
def bundles(tokenizer, vocab_size):
    return {arch: Bundle(arch, tokenizer, vocab_size) for arch in ARCHS}


@pytest.fixture(params=ARCHS)
def bundle(request, bundles):
    return bundles[request.param]


@pytest.fixture
def info(bundle):
    return bundle.info


@pytest.fixture
def model_infos(bundles):
    """ModelInfo objects (with the in-process tokenizer) for all three architectures."""
    return {arch: b.info for arch, b in bundles.items()}


# ----------------------------------------------------------------------------------------------
# Task and prompts


def make_task(name: str = "animal_vehicle") -> Task:
    # a few two-word inputs, so that prompts differ in length and the batch is really padded
    animals = ANIMALS[:9] + ["big dog", "old cat", "red cow"]
    vehicles = VEHICLES[:9] + ["big car", "old bus", "red van"]
    return Task(
        name,
        inputs=animals + vehicles,
        labels=["animal"] * len(animals) + ["vehicle"] * len(vehicles),
        classes=["animal", "vehicle"],
    )


@pytest.fixture
def task():
    return make_task()


@pytest.fixture
def prompts(task):
    """Eight prompts, 2 demonstrations per class, of varying lengths (all < 64 tokens)."""
    return icl_utils.build_prompts(task, 8, demos_per_class=2, seed=0)


@pytest.fixture
def batch(info, prompts):
    enc = icl_utils.encode_prompts(info, prompts)
    lengths = enc.attention_mask.sum(1)
    assert lengths.min() < lengths.max(), "fixture prompts should need padding"
    assert lengths.min() > SLIDING_WINDOW
    return enc


def all_positions(batch) -> torch.Tensor:
    """(batch, seq): every position of every row (pads included)."""
    n, seq = batch.input_ids.shape
    return torch.arange(seq).expand(n, seq).clone()


@pytest.fixture
def trace_final(info, batch):
    """The real final residual stream at each prompt's last position: (batch, d_model)."""
    trace = icl_utils.run_with_trace(info, batch, record=("resid",))
    return trace.resid[info.n_layers][:, 0]
