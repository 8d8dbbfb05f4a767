"""Word-pair task files: Todd et al.'s JSON-array format, its errors, and the shipped tasks' sizes."""
from __future__ import annotations

import collections
import json

import pytest

from icl_utils import tasks
from icl_utils.errors import TaskFormatError
from icl_utils.tasks import available_pair_tasks, load_pair_task, load_task

# chapter 8's leak-free protocol: >= 25 evaluation + ~45 scoring queries + demonstrations from the rest
MIN_PAIRS = 84


def _write_json(tmp_path, data, name="task.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return str(path)


def test_json_array_format_loads(tmp_path):
    path = _write_json(tmp_path, [{"input": "hot", "output": "cold"}, {"input": " up ", "output": "down"},
                                  {"input": 3, "output": 4.5}])  # numbers occur in Todd et al.'s tasks
    assert load_pair_task(path) == [("hot", "cold"), ("up", "down"), ("3", "4.5")]
    path = _write_json(tmp_path, [{"x": "France", "y": "Paris", "extra": 1}], "keys.json")
    assert load_pair_task(path, input_key="x", output_key="y") == [("France", "Paris")]


def test_a_json_file_in_the_task_folder_is_listed_and_loads_by_name(tmp_path, monkeypatch):
    (tmp_path / "shipped.jsonl").write_text(json.dumps({"input": "a", "output": "b"}) + "\n")
    _write_json(tmp_path, [{"input": "c", "output": "d"}], "dropped.json")
    _write_json(tmp_path, [{"input": "e", "output": "f"}], "shipped.json")  # same name: the .jsonl wins
    monkeypatch.setattr(tasks, "PAIR_TASK_DIR", tmp_path)
    assert available_pair_tasks() == ["dropped", "shipped"]
    assert load_pair_task("dropped") == [("c", "d")]
    assert load_pair_task("shipped") == [("a", "b")]


@pytest.mark.parametrize("data, message", [
    ('[{"input": "hot", "output": "cold"},]', r"not valid JSON .*line 1"),
    ('{"input": "hot"}\n{"input": "up"}', "not valid JSON"),  # JSON Lines under a .json name
    ({"antonym": [{"input": "hot", "output": "cold"}]}, r"expected one JSON array.*object with keys \['antonym'\]"),
    ("42", "expected one JSON array.*found a value of type int"),
    ([], "array is empty"),
    ([{"input": "hot", "output": "cold"}, ["up", "down"]], r"element 1: .*found a list, not an object"),
    ([{"input": "hot", "output": "cold"}, {"word": "up", "output": "down"}],
     r"element 1: expected fields 'input' and 'output', found keys \['word', 'output'\].*input_key=/output_key="),
    ([{"input": "hot", "output": "cold"}, {"input": "  ", "output": "down"}], r"element 1: empty input"),
    ([{"input": "hot", "output": ""}], r"element 0: empty output"),
    ([{"input": "hot", "output": None}], r"element 0: empty output"),
    ([{"input": "hot", "output": ["cold", "chilly"]}], r"element 0: 'output' must be a string or a number"),
])
def test_json_array_errors_say_what_is_wrong(tmp_path, data, message):
    with pytest.raises(TaskFormatError, match=message):
        load_pair_task(_write_json(tmp_path, data))


def test_other_pair_files_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"input": "a", "label": "b"}) + "\n")
    with pytest.raises(TaskFormatError, match="output_key="):
        load_pair_task(str(bad))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(TaskFormatError, match="no rows"):
        load_pair_task(str(tmp_path / "empty.jsonl"))
    (tmp_path / "task.txt").write_text("hot cold\n")
    with pytest.raises(TaskFormatError, match=r"\.json \(one array"):
        load_pair_task(str(tmp_path / "task.txt"))
    with pytest.raises(TaskFormatError, match="does not exist"):
        load_pair_task(str(tmp_path / "missing.json"))
    csv_file = tmp_path / "pairs.csv"
    csv_file.write_text("input,output\nhot,cold\nup,\n")
    with pytest.raises(TaskFormatError, match=r"pairs.csv:3: empty output"):
        load_pair_task(str(csv_file))


def test_classification_loader_is_unchanged_by_the_json_format(tmp_path):
    path = _write_json(tmp_path, [{"input": "dog", "label": "animal"}, {"input": "car", "label": "vehicle"}])
    with pytest.raises(TaskFormatError, match="unsupported file type; use .jsonl, .csv or .tsv"):
        load_task(path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"input": "dog", "class": "animal"}) + "\n")
    with pytest.raises(TaskFormatError, match="input_key=/label_key="):
        load_task(str(bad))


def test_every_shipped_pair_task_is_large_enough_for_the_leak_free_protocol():
    names = available_pair_tasks()
    assert {"antonyms", "country_capital", "capitalise", "english_french", "categories", "past_tense"} <= set(names)
    for name in names:
        pairs = load_pair_task(name)
        inputs = [x.lower() for x, _ in pairs]
        assert len(set(inputs)) == len(inputs) >= MIN_PAIRS, name
        assert all(x and y for x, y in pairs), name
    per_category = collections.Counter(y for _, y in load_pair_task("categories"))
    assert len(per_category) == 6 and set(per_category.values()) == {MIN_PAIRS // 6}, per_category
