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
