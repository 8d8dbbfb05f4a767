"""Claims checked against the papers, and each chapter's headline results as a small JSON file.

A claim row holds the paper's figure, the book's figure (computed in this run) and a verdict, so
the closing chapter can gather every chapter's rows into one reproduction table.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

RESULTS_DIR = Path(os.environ.get("ICL_RESULTS_DIR", Path(__file__).resolve().parents[1] / "results"))


@dataclass
class Claim:
    claim: str  # what the paper says, in one line
    paper: str  # the paper's figure, with its setting (model, data)
    book: str  # the book's figure, computed in this run, with its setting
    verdict: str  # "reproduced", "partly reproduced", "not reproduced", or "differs (reason)"


def claims_table(claims: list):
    """The claims as a pandas DataFrame (displayed as a table in the notebook)."""
    import pandas as pd

    return pd.DataFrame([asdict(c) for c in claims])


def save_results(chapter: str, results: dict, claims: list = ()) -> Path:
    """Write results/<chapter>.json: headline numbers plus the claim rows."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{chapter}.json"
    payload = {"chapter": chapter, "results": results, "claims": [asdict(c) for c in claims]}
    path.write_text(json.dumps(payload, indent=2, default=float))
    return path


def load_results(chapter: str) -> dict:
    """Read results/<chapter>.json back: {"chapter", "results", "claims" (Claim rows), "written"}.

    "written" is the file's modification time (seconds since the epoch), so a reader can tell
    results older than the chapter's source. A chapter that has not run raises FileNotFoundError.
    """
    path = RESULTS_DIR / f"{chapter}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run chapter {chapter} first (it ends with save_results)")
    payload = json.loads(path.read_text())
    payload["claims"] = [Claim(**c) for c in payload.get("claims", [])]
    payload["written"] = path.stat().st_mtime
    return payload
