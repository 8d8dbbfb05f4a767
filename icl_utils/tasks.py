"""Two-or-more-class tasks as plain data: the project's JSONL files, local CSV/TSV/JSONL, the papers' own files
(SST-2, AG News, TREC as their reference code reads them), or HF datasets; and word-pair tasks."""
from __future__ import annotations

import codecs
import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelNotAvailableError, TaskFormatError

DATA_DIR = Path(os.environ.get("ICL_DATA_DIR", Path(__file__).resolve().parents[1] / "data"))
TASK_DIR = DATA_DIR / "tasks"
PAIR_TASK_DIR = DATA_DIR / "fv_tasks"  # word-pair tasks x -> y (chapter 8's function-vector tasks)

# Short names for Hugging Face datasets used by the paper (loadable where the network allows).
HF_ALIASES = {
    "sst2": {"path": "stanfordnlp/sst2", "input_key": "sentence", "label_key": "label"},
    "ag_news": {"path": "fancyzhx/ag_news", "input_key": "text", "label_key": "label"},
}


@dataclass
class Task:
    name: str
    inputs: list
    labels: list  # class name of each input
    classes: list  # the class names, in a fixed order (the order foo/bar are assigned in)

    def __len__(self) -> int:
        return len(self.inputs)

    def inputs_of(self, cls: str) -> list:
        return [x for x, y in zip(self.inputs, self.labels) if y == cls]


def available_tasks() -> list:
    """Names of the tasks that ship in data/tasks/."""
    return sorted(p.stem for p in TASK_DIR.glob("*.jsonl"))


PAIR_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")


def available_pair_tasks() -> list:
    """Names of the word-pair tasks (input -> output) in data/fv_tasks/: the shipped .jsonl files and
    any .json file (Todd et al.'s format) dropped there."""
    return sorted({p.stem for suffix in ("*.jsonl", "*.json") for p in PAIR_TASK_DIR.glob(suffix)})


def load_pair_task(name_or_path: str, input_key: str = "input", output_key: str = "output") -> list:
    """[(input, output), ...]: a word-pair task by name in data/fv_tasks/ ("country_capital", found as
    .jsonl, else .json) or by file path: .jsonl/.csv/.tsv rows, or a .json file holding ONE array of
    {"input": ..., "output": ...} objects, the format of Todd et al.'s released tasks
    (dataset_files/abstractive/antonym.json). Non-string values (numbers) are read with str()."""
    path = Path(name_or_path)
    if not path.suffix:
        found = [p for p in (PAIR_TASK_DIR / f"{name_or_path}{s}" for s in (".jsonl", ".json")) if p.exists()]
        if not found:
            raise TaskFormatError(f"Unknown word-pair task '{name_or_path}'. Shipped tasks: "
                                  f"{', '.join(available_pair_tasks())}; or pass a path to a .jsonl/.json/.csv/.tsv file.")
        path = found[0]
    if not path.exists():
        raise TaskFormatError(f"Task file {path} does not exist.")
    if path.suffix not in PAIR_SUFFIXES:
        raise TaskFormatError(f"{path}: unsupported file type; use .jsonl, .json (one array of objects), .csv or .tsv.")
    if path.suffix == ".json":
        return _read_json_array(path, input_key, output_key)
    pairs = _read_file(path, input_key, output_key, row=_pair_row)
    if not pairs:
        raise TaskFormatError(f"{path}: no rows; a task needs input/output pairs.")
    return pairs


def _read_json_array(path: Path, input_key: str, output_key: str) -> list:
    example = f'[{{"{input_key}": "hot", "{output_key}": "cold"}}, ...]'
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        raise TaskFormatError(
            f"{path}: not valid JSON ({err.msg}, line {err.lineno} column {err.colno}). A .json task file "
            f"must hold one array of objects like {example}; for one object per line use .jsonl."
        ) from None
    if not isinstance(data, list):
        found = f"an object with keys {list(data)}" if isinstance(data, dict) else f"a value of type {type(data).__name__}"
        raise TaskFormatError(f"{path}: expected one JSON array of objects like {example}, found {found}.")
    if not data:
        raise TaskFormatError(f"{path}: the array is empty; a task needs input/output pairs.")
    return [_pair_row(obj, input_key, output_key, f"{path}: element {i}") for i, obj in enumerate(data)]


def _pair_row(obj, input_key: str, output_key: str, where: str) -> tuple:
    """One (input, output) pair; numbers become strings (str()), missing keys and empty values are refused."""
    if not isinstance(obj, dict) or input_key not in obj or output_key not in obj:
        keys = f"keys {list(obj)}" if isinstance(obj, dict) else f"a {type(obj).__name__}, not an object"
        raise TaskFormatError(
            f"{where}: expected fields '{input_key}' and '{output_key}', found {keys}. "
            f"Rename the fields or pass input_key=/output_key=."
        )
    pair = []
    for key in (input_key, output_key):
        value = obj[key]
        if value is None or not str(value).strip():  # None: a missing CSV cell or a JSON null
            raise TaskFormatError(f"{where}: empty {'input' if key == input_key else 'output'} ('{key}').")
        if not isinstance(value, (str, int, float)):
            raise TaskFormatError(f"{where}: '{key}' must be a string or a number, found {type(value).__name__}.")
        pair.append(str(value).strip())
    return tuple(pair)


# ----------------------------------------------------------------------------------------------
# Classification tasks: the book's JSONL files, CSV/TSV/JSONL with named fields, and the files the
# papers' reference code reads (SST-2's `label sentence` lines, AG News's headerless CSV, TREC's
# `COARSE:fine question` lines).

TASK_FORMATS = ("jsonl", "csv", "tsv", "sst2", "ag_news", "trec")
# Class names as the Hugging Face copies of the same data name them, so that a file and the hub give
# the same classes (and, the texts being the same too, the same demonstration/selection/evaluation pools).
FORMAT_LABEL_NAMES = {
    "sst2": {"0": "negative", "1": "positive"},
    "ag_news": {"1": "World", "2": "Sports", "3": "Business", "4": "Sci/Tech"},
}
TREC_COARSE = ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")
AG_NEWS_TEXT = ("title", "description", "both")
FORMAT_EXAMPLES = {
    "sst2": "1 a gentle , funny and finally moving film about growing old",
    "ag_news": '"2","Late goal sends City through","A header in stoppage time put the hosts into the final."',
    "trec": "LOC:city What is the largest city in Canada ?",
}
FORMAT_SHAPES = {
    "sst2": "'<label> <sentence>' with label 0 (negative) or 1 (positive)",
    "ag_news": "three CSV fields class,title,description with class 1-4 (World, Sports, Business, Sci/Tech)",
    "trec": f"'<COARSE>:<fine> <question>' with COARSE one of {', '.join(TREC_COARSE)}",
}
RECOGNISED_NAMES = (
    "*.jsonl, *.csv, *.tsv (named fields); stsa.binary.* or sst2*.txt (sst2); ag_news*.csv or a .csv in a folder "
    "named ag_news*/agnews* (ag_news); *.label such as train_5500.label / TREC_10.label, or trec*.txt (trec); "
    "a .txt in a folder named sst2 / SST-2 (sst2) or trec (trec)"
)
SPEC_KEYS = ("format", "classes", "text", "input_key", "label_key")
SPEC_EXAMPLE = "'data/ag_news_csv/train.csv::classes=World,Sports::text=title'"
_SPACE_FOR_BAD_BYTES = "icl_utils.tasks.space"
codecs.register_error(_SPACE_FOR_BAD_BYTES, lambda err: (" ", err.end))  # TREC's one stray byte, as on the Hub


def load_task(
    name_or_path: str,
    input_key: str = "input",
    label_key: str = "label",
    classes: list | None = None,
    split: str = "train",
    format: str | None = None,
    text: str = "both",
    label_names: dict | None = None,
) -> Task:
    """Load a classification task: a shipped name ("animal_vehicle"), a file, or a Hugging Face dataset
    ("sst2", "ag_news", or "hf:<dataset id>" with input_key/label_key; `split` chooses the split).

    File formats (`format=`, else recognised from the file name, never guessed from the content):
      - "jsonl": one object per line, {"input": ..., "label": ...} (other field names: input_key=/label_key=);
      - "csv" / "tsv": a header row naming the fields, then one example per row (same keys);
      - "sst2": the SST-2 distribution of few-shot calibration work (stsa.binary.train/dev/test):
        one `label sentence` line per example, label 0 or 1;
      - "ag_news": AG News's headerless CSV `"class","title","description"`, class 1-4 (a first row
        `Class Index,Title,Description`, as in the Kaggle copy, is skipped); `text=` chooses the input:
        "title", "description" or "both" (title, a space, description: the Hub copy's text);
      - "trec": TREC's `COARSE:fine question` lines (train_5500.label, TREC_10.label); the class is the
        coarse label (ABBR, DESC, ENTY, HUM, LOC, NUM); a byte that is not UTF-8 reads as a space.
    Recognised names: *.jsonl/*.csv/*.tsv; stsa.binary.* and sst2*.txt; ag_news*.csv and any .csv in a
    folder named ag_news*/agnews*; *.label and trec*.txt; a .txt in a folder named sst2/SST-2 or trec.
    Any other name needs `format=`. Texts are kept as written (only surrounding whitespace is dropped).

    Class names: SST-2's 0/1 become "negative"/"positive" and AG News's 1-4 become "World", "Sports",
    "Business", "Sci/Tech" (the names of the Hub copies, so a file and the Hub give the same task);
    TREC keeps its coarse codes and the other formats keep their labels as written.
    label_names: {label as written: class name} replaces that naming (labels left out keep their
    written form; label_names={} keeps every label as written).

    classes: keep only these classes, in this order (their names after naming: e.g. ["World", "Sports"]);
    the first is assigned "foo", the second "bar". Without it, all classes in sorted order.

    A chapter's TASK parameter is one string, so everything after "::" in name_or_path is read as
    keyword arguments: "path::trec" (a format), "path::format=ag_news::classes=World,Sports::text=title",
    "SST-2/train.tsv::input_key=sentence". Keys: format, classes (comma-separated), text, input_key,
    label_key. The task's name is the string as given (plus "::classes=..." when `classes` is passed as
    an argument and differs from the default), so rankings saved per task never mix two tasks.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TaskFormatError(f"load_task takes a task name or a file path (a string), not {type(name_or_path).__name__}.")
    spec = str(name_or_path)
    base, options = _parse_task_spec(spec)
    given = {"format": format, "classes": classes, "text": text, "input_key": input_key, "label_key": label_key}
    defaults = {"format": None, "classes": None, "text": "both", "input_key": "input", "label_key": "label"}
    for key, value in options.items():
        if given[key] != defaults[key] and given[key] != value:
            raise TaskFormatError(f"'{spec}' sets {key}={value!r} and the argument {key}={given[key]!r} differs; give it once.")
        given[key] = value
    format, classes, text, input_key, label_key = (given[k] for k in ("format", "classes", "text", "input_key", "label_key"))
    if format is not None and format not in TASK_FORMATS:
        raise TaskFormatError(f"Unknown task format {format!r}; formats: {', '.join(TASK_FORMATS)}.")
    if text not in AG_NEWS_TEXT:
        raise TaskFormatError(f"text={text!r}: AG News's input is one of {', '.join(AG_NEWS_TEXT)}.")

    if base in HF_ALIASES or base.startswith("hf:"):
        if format is not None or text != "both":
            raise TaskFormatError(f"'{spec}' is a Hugging Face dataset: format= and text= apply to files only.")
        alias = HF_ALIASES.get(base, {})
        path = alias.get("path", base.removeprefix("hf:"))
        rows = _read_hf(path, split, alias.get("input_key", input_key), alias.get("label_key", label_key))
        fmt = None
    else:
        path = Path(base)
        if not path.suffix and format is None:
            path = TASK_DIR / f"{base}.jsonl"
            if not path.exists():
                raise TaskFormatError(
                    f"Unknown task '{base}'. Shipped tasks: {', '.join(available_tasks())}; "
                    f"or pass a path to a .jsonl/.csv/.tsv file (or a file of another format with format=, "
                    f"one of {', '.join(TASK_FORMATS)}), or 'sst2' / 'ag_news' / 'hf:<id>'."
                )
            fmt, chosen_by = "jsonl", "format"
        elif format is not None:
            fmt, chosen_by = format, "format"
        else:
            fmt, chosen_by = _format_from_name(path), "name"
        if text != "both" and fmt != "ag_news":
            raise TaskFormatError(f"text={text!r} chooses AG News's input; {path} is read as {fmt}.")
        if fmt in FORMAT_SHAPES and (input_key, label_key) != ("input", "label"):
            raise TaskFormatError(f"input_key=/label_key= name the fields of jsonl/csv/tsv files; {path} is read as {fmt}, "
                                  f"whose fields are fixed: {FORMAT_SHAPES[fmt]}.")
        rows = _read_classification_file(path, fmt, input_key, label_key, text, chosen_by)
    rows = _name_labels(rows, label_names, FORMAT_LABEL_NAMES.get(fmt, {}), spec)
    return _make_task(spec, rows, classes, name_classes="classes" not in options)


def _parse_task_spec(spec: str) -> tuple:
    """'path::key=value::format' -> ('path', {key: value}); classes become a list."""
    base, *parts = spec.split("::")
    options = {}
    for part in parts:
        key, eq, value = (s.strip() for s in part.partition("="))
        if not eq and key in TASK_FORMATS:
            key, value = "format", key
        elif not eq or key not in SPEC_KEYS:
            raise TaskFormatError(
                f"'{spec}': '::{part}' is neither a format ({', '.join(TASK_FORMATS)}) nor key=value with key one of "
                f"{', '.join(SPEC_KEYS)}. Example: {SPEC_EXAMPLE}."
            )
        if key in options:
            raise TaskFormatError(f"'{spec}' sets {key} twice.")
        if key == "classes":
            value = [c.strip() for c in value.split(",")]
        if not value or (key == "classes" and "" in value):
            raise TaskFormatError(f"'{spec}': empty value for {key}. Example: {SPEC_EXAMPLE}.")
        options[key] = value
    if not base.strip():
        raise TaskFormatError(f"'{spec}': no task name or path before '::'.")
    return base, options


def _format_from_name(path: Path) -> str:
    """The format a file's name announces; an unrecognised name is an error, never a guess."""
    name, folder = path.name.lower(), path.parent.name.lower().replace("-", "_")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return "jsonl"
    if suffix == ".tsv":
        return "tsv"
    if suffix == ".csv":
        ag_news = name.startswith(("ag_news", "agnews", "ag-news")) or folder.startswith(("ag_news", "agnews"))
        return "ag_news" if ag_news else "csv"
    if name.startswith("stsa.binary.") or (suffix == ".txt" and (name.startswith(("sst2", "sst-2")) or folder in ("sst2", "sst_2"))):
        return "sst2"
    if suffix == ".label" or (suffix == ".txt" and (name.startswith("trec") or folder == "trec")):
        return "trec"
    raise TaskFormatError(
        f"{path}: unsupported file type; use .jsonl, .csv or .tsv with named fields, or name the format: "
        f"load_task(path, format=...) or '{path}::<format>', with format one of {', '.join(TASK_FORMATS)}. "
        f"Names recognised without format=: {RECOGNISED_NAMES}."
    )


def _read_classification_file(path: Path, fmt: str, input_key: str, label_key: str, text: str, chosen_by: str) -> list:
    """[(input, label as written)] of one file in one of TASK_FORMATS."""
    if not path.exists():
        raise TaskFormatError(f"Task file {path} does not exist.")
    if fmt in ("jsonl", "csv", "tsv"):
        try:
            rows = _read_file(path, input_key, label_key, fmt=fmt)
        except TaskFormatError as err:
            if fmt == "csv" and _looks_like_ag_news(path):  # a hint, not a guess: the reader still chooses
                raise TaskFormatError(f"{err} The first row looks like AG News's headerless class,title,description "
                                      f"CSV: pass format='ag_news' (or '{path}::ag_news').") from None
            raise
    else:
        how = (f"{path} is read as {fmt} because of its name; for another format pass format= (one of "
               f"{', '.join(TASK_FORMATS)}), e.g. '{path}::csv'" if chosen_by == "name" else f"read as format={fmt!r}")

        def bad(lineno, found, what):
            return TaskFormatError(f"{path}:{lineno}: {what}, found {found[:120]!r}. Expected {FORMAT_SHAPES[fmt]}, "
                                   f"e.g. {FORMAT_EXAMPLES[fmt]!r} ({how}).")

        rows = {"sst2": _read_sst2, "ag_news": _read_ag_news, "trec": _read_trec}[fmt](path, bad, text)
    if not rows:
        raise TaskFormatError(f"{path}: no examples (read as {fmt}).")
    return rows


def _looks_like_ag_news(path: Path) -> bool:
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as f:
        first = next(csv.reader(f), [])
    return len(first) == 3 and first[0].strip() in FORMAT_LABEL_NAMES["ag_news"]


def _text_lines(path: Path):
    """(line number, line) of the non-blank lines; bytes that are not UTF-8 read as a space."""
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.decode("utf-8", errors=_SPACE_FOR_BAD_BYTES).lstrip("\ufeff").strip()
            if line:
                yield lineno, line


def _read_sst2(path: Path, bad, text: str) -> list:
    rows = []
    for lineno, line in _text_lines(path):
        label, *rest = line.split(None, 1)  # a space in the distribution; a tab is read the same way
        sentence = rest[0].strip() if rest else ""
        if label not in ("0", "1"):
            hint = "; GLUE's SST-2 (a 'sentence<TAB>label' header) is a tsv: '<path>::tsv::input_key=sentence'" \
                if lineno == 1 and "sentence" in line.lower() else ""
            raise bad(lineno, line, f"the label must be 0 or 1{hint}")
        if not sentence:
            raise bad(lineno, line, "no sentence after the label")
        rows.append((sentence, label))
    return rows


def _read_ag_news(path: Path, bad, text: str) -> list:
    content = path.read_bytes().decode("utf-8-sig", errors=_SPACE_FOR_BAD_BYTES)
    reader = csv.reader(io.StringIO(content, newline=""))
    rows = []
    for record in reader:
        lineno = reader.line_num
        if not record or not any(field.strip() for field in record):
            continue
        if len(rows) == 0 and record[0].strip().lower() == "class index":
            continue  # the Kaggle copy's header row
        if len(record) != 3:
            raise bad(lineno, ",".join(record), f"{len(record)} field(s) instead of 3")
        label, title, description = (field.strip() for field in record)
        if label not in FORMAT_LABEL_NAMES["ag_news"]:
            raise bad(lineno, ",".join(record), "the class must be 1, 2, 3 or 4")
        chosen = {"title": title, "description": description, "both": " ".join((title, description)).strip()}[text]
        if not chosen:
            raise bad(lineno, ",".join(record), f"empty {'title and description' if text == 'both' else text}")
        rows.append((chosen, label))
    return rows


def _read_trec(path: Path, bad, text: str) -> list:
    rows = []
    for lineno, line in _text_lines(path):
        label, _, question = line.partition(" ")
        coarse, colon, fine = label.partition(":")
        if not colon or not fine:
            raise bad(lineno, line, "no COARSE:fine label at the start of the line")
        if coarse not in TREC_COARSE:
            raise bad(lineno, line, f"unknown coarse class {coarse!r}")
        if not question.strip():
            raise bad(lineno, line, "no question after the label")
        rows.append((question.strip(), coarse))
    return rows


def _name_labels(rows: list, label_names: dict | None, default: dict, task: str) -> list:
    """Rename the labels as written to class names: label_names if given, else the format's names."""
    if label_names is None:
        mapping = default
    else:
        if not isinstance(label_names, dict):
            raise TaskFormatError(f"label_names must be a dict {{label as written: class name}}, e.g. "
                                  f"{{'0': 'negative', '1': 'positive'}}; got {type(label_names).__name__}.")
        mapping = {str(k).strip(): str(v).strip() for k, v in label_names.items()}
        written = sorted({label for _, label in rows})
        unknown = sorted(k for k in mapping if k not in written)
        if unknown:
            raise TaskFormatError(f"label_names names labels {unknown} that task '{task}' does not have; "
                                  f"its labels as written are {written}.")
        named = {label: mapping.get(label, label) for label in written}
        if "" in named.values() or len(set(named.values())) < len(named):
            raise TaskFormatError(f"label_names must give each label its own non-empty class name: {named}.")
    return [(x, mapping.get(label, label)) for x, label in rows]


def _read_file(path: Path, input_key: str, label_key: str, row=None, fmt: str | None = None) -> list:
    """Rows of a .jsonl/.csv/.tsv file (or a file of another name read as fmt "jsonl"/"csv"/"tsv"),
    each checked by row(obj, input_key, label_key, where) (default _row: a classification example)."""
    row = row or _row
    fmt = fmt or path.suffix.removeprefix(".")
    if not path.exists():
        raise TaskFormatError(f"Task file {path} does not exist.")
    rows = []
    if fmt == "jsonl":
        with path.open(encoding="utf-8-sig") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as err:
                    raise TaskFormatError(
                        f"{path}:{lineno}: not valid JSON ({err.msg}). Each line must be an object "
                        f'like {{"{input_key}": "a text", "{label_key}": "a class"}}.'
                    ) from None
                rows.append(row(obj, input_key, label_key, f"{path}:{lineno}"))
    elif fmt in ("csv", "tsv"):
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if fmt == "tsv" else ",")
            for lineno, obj in enumerate(reader, 2):
                rows.append(row(obj, input_key, label_key, f"{path}:{lineno}"))
    else:
        raise TaskFormatError(f"{path}: unsupported file type; use .jsonl, .csv or .tsv.")
    return rows


def _row(obj, input_key: str, label_key: str, where: str) -> tuple:
    if not isinstance(obj, dict) or input_key not in obj or label_key not in obj:
        keys = list(obj) if isinstance(obj, dict) else type(obj).__name__
        raise TaskFormatError(
            f"{where}: expected fields '{input_key}' and '{label_key}', found {keys}. "
            f"Rename the fields or pass input_key=/label_key=."
        )
    text, label = obj[input_key], obj[label_key]
    if not isinstance(text, str) or not text.strip() or label is None or str(label).strip() == "":
        raise TaskFormatError(f"{where}: empty input or label.")
    return text.strip(), str(label).strip()


def _read_hf(path: str, split: str, input_key: str, label_key: str) -> list:
    try:
        import datasets
    except ImportError:
        raise ModelNotAvailableError("Loading Hugging Face datasets needs `pip install datasets`.") from None
    try:
        ds = datasets.load_dataset(path, split=split)
    except Exception as err:  # offline: ConnectionError / DatasetNotFoundError, whose types vary by version
        raise ModelNotAvailableError(
            f"Could not load the dataset '{path}' ({type(err).__name__}). Datasets download from the "
            f"Hugging Face Hub (works on Colab); offline, use a shipped task: {', '.join(available_tasks())}."
        ) from None
    feature = ds.features.get(label_key)
    names = getattr(feature, "names", None)
    return [
        (str(x).strip(), names[y] if names else str(y))
        for x, y in zip(ds[input_key], ds[label_key])
    ]


def _make_task(name: str, rows: list, classes: list | None, name_classes: bool = False) -> Task:
    """name_classes: append "::classes=a,b" to the name when `classes` is not the default (all, sorted)."""
    seen = list(dict.fromkeys(label for _, label in rows))
    if classes is not None:
        if isinstance(classes, str) or not all(isinstance(c, str) for c in classes):
            raise TaskFormatError(f"classes must be a list of class names, e.g. {sorted(seen)[:2]}; got {classes!r}.")
        missing = [c for c in classes if c not in seen]
        if missing:
            raise TaskFormatError(f"Task '{name}' has no class {missing}; its classes are {sorted(seen)}.")
        if len(set(classes)) < len(classes):
            raise TaskFormatError(f"classes {list(classes)} names a class twice.")
        rows = [r for r in rows if r[1] in classes]
        if name_classes and list(classes) != sorted(seen):
            name = f"{name}::classes={','.join(classes)}"
        seen = list(classes)
    else:
        seen = sorted(seen)
    if len(seen) < 2:
        raise TaskFormatError(f"Task '{name}' needs at least two classes, found {seen}.")
    return Task(name, [r[0] for r in rows], [r[1] for r in rows], seen)
