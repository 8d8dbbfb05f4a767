"""The factual-recall prompts of chapter 2 (data/facts): well formed, and the file is what make_facts.py writes."""
import json
import subprocess
import sys
from pathlib import Path

FACTS = Path(__file__).resolve().parents[1] / "data" / "facts"


def rows() -> list:
    return [json.loads(line) for line in (FACTS / "factual_recall.jsonl").read_text(encoding="utf-8").splitlines()]


def test_every_prompt_is_well_formed_and_unique():
    facts = rows()
    assert len(facts) >= 200  # chapter 2 needs >= 100 that a small model answers right at top 1
    for row in facts:
        assert set(row) == {"prompt", "answer", "category"}
        assert row["prompt"] == row["prompt"].strip() and row["prompt"]
        assert row["answer"].startswith(" ") and len(row["answer"].split()) == 1, row
    assert len({r["prompt"] for r in facts}) == len(facts)
    assert len({r["category"] for r in facts}) >= 8


def test_the_file_is_what_the_script_writes(tmp_path):
    (tmp_path / "make_facts.py").write_text((FACTS / "make_facts.py").read_text())
    subprocess.run([sys.executable, "make_facts.py"], cwd=tmp_path, check=True, capture_output=True)
    assert (tmp_path / "factual_recall.jsonl").read_text() == (FACTS / "factual_recall.jsonl").read_text()
