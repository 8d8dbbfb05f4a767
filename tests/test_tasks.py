"""Word-pair task files: Todd et al.'s JSON-array format, its errors, and the shipped tasks' sizes."""
from __future__ import annotations

import collections
import json
import re

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


# The papers' data files: SST-2's `label sentence` lines, AG News's headerless CSV, TREC's `COARSE:fine question`
# (a few invented lines of each, in the distributions' layout) -------------------------------------------------

SST2_LINES = "1 a warm , funny and finally moving film\n0 a dull , lifeless mess\n\n1 great fun from start to end\n" \
             "0 the plot never gets going\n"
AG_NEWS_LINES = ('"1","Talks resume in Geneva","Leaders meet again, hoping for a deal."\n'
                 '"2","City win the cup","A late goal settles it.\\\\ Fans cheer."\n'
                 '"3","Stocks rise","Markets gain on strong earnings."\n'
                 '"4","New chip unveiled","The processor doubles speed,\nsays the maker."\n'  # a quoted line break
                 '"2","Open final tonight","Two old rivals meet."\n')
TREC_LINES = b"LOC:city What is the largest city in Canada ?\nHUM:ind Who wrote Hamlet ?\nNUM:date When did the war end ?\n" \
             b"LOC:other Where is the sister\xf0city of Paris ?\nDESC:def What is a prime number ?\n"


def _write(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return str(path)


def test_sst2_lines_load_with_the_hub_class_names(tmp_path):
    task = load_task(_write(tmp_path / "stsa.binary.train", SST2_LINES))
    assert task.classes == ["negative", "positive"]  # as stanfordnlp/sst2 names 0 and 1
    assert task.inputs[:2] == ["a warm , funny and finally moving film", "a dull , lifeless mess"]  # text as written
    assert task.labels == ["positive", "negative", "positive", "negative"]
    assert load_task(str(tmp_path / "stsa.binary.train"), label_names={}).classes == ["0", "1"]
    renamed = load_task(str(tmp_path / "stsa.binary.train"), label_names={0: "bad", 1: "good"})
    assert renamed.classes == ["bad", "good"] and renamed.labels[0] == "good"
    tabbed = load_task(_write(tmp_path / "sst2_dev.txt", "1\tgood fun\n0\tno fun\n"))
    assert tabbed.inputs == ["good fun", "no fun"] and tabbed.labels == ["positive", "negative"]


def test_ag_news_csv_reads_title_description_or_both(tmp_path):
    path = _write(tmp_path / "ag_news_csv" / "train.csv", AG_NEWS_LINES)
    both = load_task(path)
    assert both.classes == ["Business", "Sci/Tech", "Sports", "World"]
    assert both.labels == ["World", "Sports", "Business", "Sci/Tech", "Sports"]
    assert both.inputs[0] == "Talks resume in Geneva Leaders meet again, hoping for a deal."  # the Hub copy's text
    assert both.inputs[3] == "New chip unveiled The processor doubles speed,\nsays the maker."
    assert load_task(path, text="title").inputs[:2] == ["Talks resume in Geneva", "City win the cup"]
    assert load_task(path, text="description").inputs[2] == "Markets gain on strong earnings."
    kaggle = _write(tmp_path / "ag_news_kaggle.csv", "Class Index,Title,Description\n" + AG_NEWS_LINES)
    assert load_task(kaggle).inputs == both.inputs  # its header row is skipped


def test_trec_lines_give_coarse_classes(tmp_path):
    task = load_task(_write(tmp_path / "train_5500.label", TREC_LINES))
    assert task.classes == ["DESC", "HUM", "LOC", "NUM"]
    assert task.labels == ["LOC", "HUM", "NUM", "LOC", "DESC"]
    assert task.inputs[0] == "What is the largest city in Canada ?"
    assert task.inputs[3] == "Where is the sister city of Paris ?"  # the stray non-UTF-8 byte reads as a space, as on the Hub


@pytest.mark.parametrize("name, content, classes", [
    ("stsa.binary.dev", SST2_LINES, ["positive", "negative"]),
    ("ag_news/test.csv", AG_NEWS_LINES, ["World", "Sports"]),
    ("TREC_10.label", TREC_LINES, ["LOC", "HUM"]),
])
def test_each_paper_format_restricted_to_two_classes(tmp_path, name, content, classes):
    from icl_utils import build_prompts

    path = _write(tmp_path / name, content)
    task = load_task(path, classes=classes)
    assert task.classes == classes and set(task.labels) == set(classes)
    assert all(label in classes for label in task.labels)
    # the same restriction written into the string a chapter's TASK parameter holds
    spec = f"{path}::classes={','.join(classes)}"
    from_string = load_task(spec)
    assert (from_string.inputs, from_string.labels, from_string.classes) == (task.inputs, task.labels, task.classes)
    assert from_string.name == spec and task.name == spec  # one task, one name: saved rankings never mix
    assert load_task(path).name == path
    many = tmp_path / "many" / name  # enough inputs per class for the three pools, then prompts as a chapter builds them
    lines = content.decode("utf-8", "replace") if isinstance(content, bytes) else content
    text = "".join(lines.replace('."', f' {i}."') if name.endswith(".csv") else re.sub(r"(\S)\n", rf"\1 {i}\n", lines)
                   for i in range(4))  # each example four times, numbered
    prompts = build_prompts(load_task(f"{_write(many, text)}::classes={','.join(classes)}"), 4, demos_per_class=1, seed=0)
    assert {p.gold for p in prompts} == set(classes)


@pytest.mark.parametrize("name, expected", [
    ("stsa.binary.train", "sst2"), ("stsa.binary.test", "sst2"), ("sst2_train.txt", "sst2"), ("SST-2/train.txt", "sst2"),
    ("ag_news_train.csv", "ag_news"), ("agnews/test.csv", "ag_news"), ("ag_news_csv/train.csv", "ag_news"),
    ("train_5500.label", "trec"), ("TREC_10.label", "trec"), ("trec_train.txt", "trec"), ("trec/test.txt", "trec"),
    ("zoo.jsonl", "jsonl"), ("zoo.csv", "csv"), ("news/train.csv", "csv"), ("zoo.tsv", "tsv"),
])
def test_format_recognised_from_the_file_name(tmp_path, name, expected):
    assert tasks._format_from_name(tmp_path / name) == expected


@pytest.mark.parametrize("name", ["train.txt", "data.json", "stsa.fine.train", "questions", "reviews.dat"])
def test_an_unrecognised_name_is_an_error_listing_the_formats(tmp_path, name):
    path = _write(tmp_path / "data" / name, SST2_LINES)
    with pytest.raises(TaskFormatError) as err:
        load_task(path)
    message = str(err.value)
    if "." in name:
        assert "format=" in message and "sst2, ag_news, trec" in message and "train_5500.label" in message
    else:  # no suffix: read as a shipped task's name, and the message says how to load a file instead
        assert "Unknown task" in message and "format=" in message
    assert load_task(path, format="sst2").classes == ["negative", "positive"]  # an explicit format reads it
    assert load_task(f"{path}::sst2").classes == ["negative", "positive"]


def test_an_explicit_format_wins_over_the_name(tmp_path):
    path = _write(tmp_path / "ag_news" / "train.csv", "input,label\ndog,animal\ncar,vehicle\n")
    with pytest.raises(TaskFormatError, match=r"train.csv:1: 2 field\(s\) instead of 3.*because of its name.*::csv"):
        load_task(path)  # the folder says AG News; the error says how to read it as a plain CSV
    assert load_task(path, format="csv").classes == load_task(f"{path}::csv").classes == ["animal", "vehicle"]
    questions = _write(tmp_path / "questions.txt", TREC_LINES)
    assert load_task(questions, format="trec").classes == ["DESC", "HUM", "LOC", "NUM"]
    glue = _write(tmp_path / "SST-2" / "train.tsv", "sentence\tlabel\ngood fun\t1\nno fun\t0\n")
    assert load_task(f"{glue}::input_key=sentence", label_names={"0": "negative", "1": "positive"}).classes \
        == ["negative", "positive"]


@pytest.mark.parametrize("name, content, message", [
    ("stsa.binary.train", "1 good\n2 very good\n", r"stsa.binary.train:2: the label must be 0 or 1, found '2 very good'"),
    ("stsa.binary.train", "1 good\n0\n", r":2: no sentence after the label.*e\.g\. '1 a gentle"),
    ("stsa.binary.train", "sentence\tlabel\ngood\t1\n", r":1: the label must be 0 or 1.*'<path>::tsv::input_key=sentence'"),
    ("ag_news.csv", '"1","a","b"\n"1","a"\n', r"ag_news.csv:2: 2 field\(s\) instead of 3.*class,title,description"),
    ("ag_news.csv", '"5","a","b"\n', r":1: the class must be 1, 2, 3 or 4.*e\.g\. '\"2\",\"Late goal"),
    ("ag_news.csv", '"1","a","b"\n"2","",""\n', r":2: empty title and description"),
    ("train_5500.label", "LOC:city Where ?\nWhere is Rome ?\n", r"train_5500.label:2: no COARSE:fine label.*e\.g\. 'LOC:city"),
    ("train_5500.label", "PLACE:city Where is Rome ?\n", r":1: unknown coarse class 'PLACE'.*ABBR, DESC, ENTY, HUM, LOC, NUM"),
    ("train_5500.label", "LOC:city\n", r":1: no question after the label"),
    ("train_5500.label", "\n\n", r"train_5500.label: no examples \(read as trec\)"),
])
def test_malformed_lines_name_the_file_line_what_was_expected_and_an_example(tmp_path, name, content, message):
    with pytest.raises(TaskFormatError, match=message):
        load_task(_write(tmp_path / name, content))


def test_a_headerless_ag_news_file_read_as_csv_is_told_its_format(tmp_path):
    path = _write(tmp_path / "news.csv", AG_NEWS_LINES)
    with pytest.raises(TaskFormatError, match=r"news.csv:2: expected fields.*looks like AG News.*format='ag_news'"):
        load_task(path)
    assert load_task(path, format="ag_news").labels[0] == "World"


@pytest.mark.parametrize("suffix, kwargs, message", [
    ("::foo", {}, r"'::foo' is neither a format \(jsonl, csv, tsv, sst2, ag_news, trec\) nor key=value"),
    ("::colour=red", {}, "key one of format, classes, text, input_key, label_key"),
    ("::classes=", {}, "empty value for classes"),
    ("::classes=World,", {}, "empty value for classes"),
    ("::trec::format=trec", {}, "sets format twice"),
    ("::classes=World,Sports", {"classes": ["Sports", "World"]}, r"sets classes=\['World', 'Sports'\] and the argument"),
    ("", {"format": "agnews"}, r"Unknown task format 'agnews'; formats: jsonl, csv, tsv, sst2, ag_news, trec"),
    ("", {"text": "headline"}, "text='headline': AG News's input is one of title, description, both"),
    ("::sst2", {"text": "title"}, "text='title' chooses AG News's input; .* is read as sst2"),
    ("::sst2", {"input_key": "sentence"}, r"input_key=/label_key= name the fields of jsonl/csv/tsv files.*'<label> <sentence>'"),
    ("", {"classes": "World"}, "classes must be a list of class names"),
    ("", {"classes": ["World", "World"]}, "names a class twice"),
    ("", {"classes": ["1", "2"]}, r"has no class \['1', '2'\]; its classes are \['Business', 'Sci/Tech', 'Sports', 'World'\]"),
    ("", {"label_names": {"5": "Other"}}, r"label_names names labels \['5'\].*labels as written are \['1', '2', '3', '4'\]"),
    ("", {"label_names": {"1": "news", "2": "news"}}, "each label its own non-empty class name"),
    ("", {"label_names": ["World", "Sports"]}, "label_names must be a dict"),
])
def test_options_a_reader_may_get_wrong_are_refused_clearly(tmp_path, suffix, kwargs, message):
    path = _write(tmp_path / "ag_news" / "train.csv", AG_NEWS_LINES)
    with pytest.raises(TaskFormatError, match=message):
        load_task(path + suffix, **kwargs)


def test_hub_datasets_take_no_file_options():
    with pytest.raises(TaskFormatError, match="Hugging Face dataset: format= and text= apply to files only"):
        load_task("ag_news::text=title")  # refused before any download is tried
    with pytest.raises(TaskFormatError, match="no task name or path before '::'"):
        load_task("::trec")
