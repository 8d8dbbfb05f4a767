"""Two-or-more-class tasks as plain data: the project's JSONL files, local CSV/TSV/JSONL, or HF datasets."""
from __future__ import annotations

import csv
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


def load_task(
    name_or_path: str,
    input_key: str = "input",
    label_key: str = "label",
    classes: list | None = None,
    split: str = "train",
) -> Task:
    """Load a task by shipped name ("animal_vehicle"), file path (.jsonl/.csv/.tsv) or
    Hugging Face dataset ("sst2", "ag_news", or "hf:<dataset id>" with input_key/label_key).

    classes: keep only these classes, in this order (e.g. two of AG News's four).
    """
    if name_or_path in HF_ALIASES or name_or_path.startswith("hf:"):
        alias = HF_ALIASES.get(name_or_path, {})
        path = alias.get("path", name_or_path.removeprefix("hf:"))
        rows = _read_hf(path, split, alias.get("input_key", input_key), alias.get("label_key", label_key))
        name = name_or_path
    else:
        path = Path(name_or_path)
        if not path.suffix:
            path = TASK_DIR / f"{name_or_path}.jsonl"
            if not path.exists():
                raise TaskFormatError(
                    f"Unknown task '{name_or_path}'. Shipped tasks: {', '.join(available_tasks())}; "
                    f"or pass a path to a .jsonl/.csv/.tsv file, or 'sst2' / 'ag_news' / 'hf:<id>'."
                )
        rows = _read_file(path, input_key, label_key)
        name = path.stem
    return _make_task(name, rows, classes)


def _read_file(path: Path, input_key: str, label_key: str, row=None) -> list:
    """Rows of a .jsonl/.csv/.tsv file, each checked by row(obj, input_key, label_key, where)
    (default _row: a classification example)."""
    row = row or _row
    if not path.exists():
        raise TaskFormatError(f"Task file {path} does not exist.")
    rows = []
    if path.suffix == ".jsonl":
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
    elif path.suffix in (".csv", ".tsv"):
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ",")
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


def _make_task(name: str, rows: list, classes: list | None) -> Task:
    seen = list(dict.fromkeys(label for _, label in rows))
    if classes is not None:
        missing = [c for c in classes if c not in seen]
        if missing:
            raise TaskFormatError(f"Task '{name}' has no class {missing}; its classes are {seen}.")
        rows = [r for r in rows if r[1] in classes]
        seen = list(classes)
    else:
        seen = sorted(seen)
    if len(seen) < 2:
        raise TaskFormatError(f"Task '{name}' needs at least two classes, found {seen}.")
    return Task(name, [r[0] for r in rows], [r[1] for r in rows], seen)
