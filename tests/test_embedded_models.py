"""The two embedded models, loaded for real (slow tier: `pytest -m embedded`).

The first load dequantises the GGUF file (1-2 minutes); later loads use the safetensors cache.
"""
import pytest
import torch

import icl_utils as iu
from icl_utils import induction

pytestmark = pytest.mark.embedded

EXPECTED = {  # from the model cards / GGUF metadata
    "gemma3-270m": dict(n_layers=18, n_heads=4, n_kv_heads=1, d_head=256, d_model=640, vocab_size=262144),
    "smollm2-135m": dict(n_layers=30, n_heads=9, n_kv_heads=3, d_head=64, d_model=576, vocab_size=49152),
}
TEXT = "The quick brown fox jumps over the lazy dog.\n\nInput: cat\nLabel: foo\tand  two spaces, café, 2026!"


@pytest.fixture(scope="module", params=sorted(EXPECTED))
def info(request):
    return iu.load_model(request.param)


def test_architecture_is_described_from_modules(info):
    for key, value in EXPECTED[info.name].items():
        assert getattr(info, key) == value, key
    assert info.positions == "rotary"


def test_tokenizer_keeps_common_words_whole_and_round_trips(info):
    tok = info.tokenizer
    for word in ["cat", "dog", "foo", "bar", "animal", "vehicle", "quick"]:
        ids = tok(" " + word, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, f"' {word}' -> {tok.convert_ids_to_tokens(ids)}"
    ids = tok(TEXT)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == TEXT
    assert len(iu.label_token_ids(tok, iu.FOO_BAR)) == 2


def test_bos_follows_the_gguf_file(info):
    first = info.tokenizer("hello")["input_ids"][0]
    if info.name == "gemma3-270m":  # add_bos_token = True in its GGUF
        assert first == info.tokenizer.bos_token_id
    else:  # SmolLM2's GGUF says add_bos_token = False
        assert first != info.tokenizer.bos_token_id


def test_recording_attention_matches_sdpa(info):
    batch = iu.encode_prompts(info, iu.build_prompts(iu.load_task("animal_vehicle"), 4, demos_per_class=2))
    rows = torch.arange(4)
    with torch.no_grad():
        ours = info.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[rows, batch.last_positions]
        info.model.config._attn_implementation = "sdpa"
        try:
            ref = info.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[rows, batch.last_positions]
        finally:
            iu.tracing.use_recording_attention(info.model)
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=0)


def test_shipped_text_gives_enough_sequences_for_chapter_8(info):
    seqs = induction.text_sequences(info.tokenizer, 512, n_seqs=45)
    assert seqs.shape == (45, 512)


def test_first_load_from_gguf_into_an_empty_cache_equals_the_cached_model(tmp_path, monkeypatch, capsys):
    """What a fresh machine (Colab included, on transformers 4 or 5) does first: dequantise the GGUF
    file into an empty cache (SmolLM2, about 40 s). Weights, tokenizer and logits equal those of the
    model loaded from the usual cache (cache_root()), whichever transformers version wrote it."""
    reference = iu.load_model("smollm2-135m")
    monkeypatch.setenv("ICL_UTILS_CACHE", str(tmp_path))
    fresh = iu.load_model("smollm2-135m")
    assert "Dequantising smollm2-135m" in capsys.readouterr().out
    written = {p.name for p in (tmp_path / "smollm2-135m").iterdir()}
    assert written >= {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}, written
    ours, theirs = fresh.model.state_dict(), reference.model.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], atol=0, rtol=0, msg=key)
    assert fresh.tokenizer(TEXT)["input_ids"] == reference.tokenizer(TEXT)["input_ids"]
    ids = torch.tensor([reference.tokenizer(TEXT)["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(fresh.model(ids).logits, reference.model(ids).logits, atol=0, rtol=0)
