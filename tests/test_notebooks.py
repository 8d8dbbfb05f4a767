"""Chapters: every .ipynb is generated from its .py (fast), and every chapter executes (slow tier).

The slow tier runs with `pytest -m notebooks`: papermill executes each chapter in _toc.yml with the
small parameters of chapters/smoke_parameters.yml on the embedded default model.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTER_SOURCES = sorted((ROOT / "chapters").glob("*.py"))


def _cells(notebook) -> list:
    return [(c.cell_type, c.source.strip()) for c in notebook.cells]


@pytest.mark.parametrize("source", CHAPTER_SOURCES, ids=lambda p: p.stem)
def test_ipynb_is_generated_from_py(source):
    paired = source.with_suffix(".ipynb")
    assert paired.exists(), f"{paired.name} missing: run scripts/sync_notebooks.sh"
    expected = jupytext.read(source)
    actual = nbformat.read(paired, as_version=4)
    assert _cells(actual) == _cells(expected), (
        f"{paired.name} differs from {source.name}: edit the .py, then run scripts/sync_notebooks.sh"
    )
    assert all(not c.get("outputs") for c in actual.cells if c.cell_type == "code"), (
        f"{paired.name} has outputs: commit notebooks stripped (scripts/sync_notebooks.sh)"
    )


def test_every_chapter_is_in_the_toc_and_has_smoke_parameters():
    import yaml

    sys.path.insert(0, str(ROOT / "scripts"))
    from run_chapters import toc_chapters

    in_toc = set(toc_chapters())
    on_disk = {p.stem for p in CHAPTER_SOURCES}
    assert on_disk == in_toc, f"chapters not in _toc.yml: {on_disk - in_toc}; in toc, no source: {in_toc - on_disk}"
    smoke = yaml.safe_load((ROOT / "chapters" / "smoke_parameters.yml").read_text())
    assert set(smoke) == in_toc, "every chapter needs an entry in chapters/smoke_parameters.yml"


@pytest.mark.notebooks
def test_all_chapters_execute_with_small_parameters():
    budget = os.environ.get("NOTEBOOK_BUDGET_S", "900")  # smoke run of all chapters: about 4 min on 2 idle cores
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "run_chapters.py"), "--profile", "smoke", "--budget-s", budget],
        cwd=ROOT, capture_output=True, text=True,
    )
    print(result.stdout[-5000:])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    for source in CHAPTER_SOURCES:
        executed = nbformat.read(ROOT / "book" / "chapters" / f"{source.stem}.ipynb", as_version=4)
        errors = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
        assert not errors, f"{source.stem}: error outputs {errors[:1]}"
        images = sum("image/png" in o.get("data", {}) for c in executed.cells for o in c.get("outputs", []))
        assert images >= 1, f"{source.stem} produced no figure"
        results = json.loads((ROOT / "results" / f"{source.stem}.json").read_text())
        assert results["claims"] or results["results"].get("gathers_claims"), f"{source.stem} wrote no paper-vs-book claims"


# The negative control: a task whose labels were assigned at random has nothing to learn, so no
# claim graded on it may come out "reproduced" (tests the preconditions and the grading together).
NEGATIVE_CONTROL = {
    "01_icl_with_unrelated_labels": {
        "WORD_TASKS": ["random_labels"], "SENTENCE_TASKS": [], "CONTROL_TASK": "", "DEMOS_PER_CLASS": [0, 8],
        "N_GROUPS": 4, "QUERIES_PER_GROUP": 8, "N_SELECT_GROUPS": 2, "CALIBRATION_PER_CLASS": 2,
        "COMPARE_MODELS": ["gemma3-270m"]},
    "03_in_context_heads": {
        "TASK": "random_labels", "OTHER_TASK": "animal_vehicle", "DEMOS_PER_CLASS": 2, "QUERIES_PER_GROUP": 4,
        "N_SELECT_GROUPS": 2, "N_EVAL_GROUPS": 4, "CALIBRATION_PER_CLASS": 1, "HEAD_FRACTIONS": [0.01],
        "N_RANDOM": 3},
}


@pytest.mark.notebooks
@pytest.mark.parametrize("chapter", NEGATIVE_CONTROL)
def test_nothing_is_reproduced_on_a_task_with_random_labels(chapter, tmp_path):
    import papermill as pm

    env = {**os.environ, "ICL_RESULTS_DIR": str(tmp_path)}  # the kernel inherits it: the book's results stay untouched
    old = dict(os.environ)
    os.environ.update(env)
    try:
        pm.execute_notebook(str(ROOT / "chapters" / f"{chapter}.ipynb"), str(tmp_path / f"{chapter}.ipynb"),
                            parameters=NEGATIVE_CONTROL[chapter], kernel_name="python3", cwd=str(ROOT / "chapters"),
                            progress_bar=False)
    finally:
        os.environ.clear()
        os.environ.update(old)
    claims = json.loads((tmp_path / f"{chapter}.json").read_text())["claims"]
    verdicts = {c["claim"]: c["verdict"] for c in claims}
    print(chapter, verdicts)
    assert claims and all(c["graded"] for c in claims)
    assert set(verdicts.values()) <= {"not testable", "contradicted"}, verdicts


def _parameter_names(source: Path) -> set:
    notebook = jupytext.read(source)
    cells = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{source.name} needs exactly one cell tagged 'parameters'"
    import ast

    return {t.id for node in ast.parse(cells[0].source).body if isinstance(node, ast.Assign) for t in node.targets
            if isinstance(t, ast.Name)}


@pytest.mark.parametrize("source", CHAPTER_SOURCES, ids=lambda p: p.stem)
def test_smoke_and_control_parameters_name_real_parameters(source):
    """papermill accepts a misspelt parameter silently; this test does not."""
    import yaml

    smoke = yaml.safe_load((ROOT / "chapters" / "smoke_parameters.yml").read_text()).get(source.stem) or {}
    names = _parameter_names(source)
    for where, given in (("smoke_parameters.yml", smoke), ("NEGATIVE_CONTROL", NEGATIVE_CONTROL.get(source.stem, {}))):
        unknown = set(given) - names
        assert not unknown, f"{where} sets {sorted(unknown)} for {source.stem}, whose parameters cell has {sorted(names)}"


def test_ruff_finds_nothing():
    """Unused or undefined names and pycodestyle errors (rules in pyproject.toml), in every source."""
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "icl_utils", "tests", "scripts", "benchmarks", "chapters"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
