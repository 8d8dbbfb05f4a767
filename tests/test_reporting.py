"""save_results writes a chapter's results and claims; load_results reads them back."""
import json
import math

import pytest

import icl_utils.reporting as reporting
from icl_utils.reporting import Claim, load_results, save_results


@pytest.fixture
def results_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(reporting, "RESULTS_DIR", tmp_path / "results")
    return tmp_path / "results"


def test_save_then_load_round_trips(results_dir):
    claims = [Claim("heads matter", "12 of 1,024 heads", "1 of 72 heads", "reproduced"),
              Claim("q.k is similarity", "AUC high", "AUC 0.53", "not reproduced")]
    path = save_results("07_demo", {"model": "tiny", "accuracy": 0.75, "auc": float("nan")}, claims)
    assert path == results_dir / "07_demo.json"
    loaded = load_results("07_demo")
    assert loaded["chapter"] == "07_demo"
    assert loaded["claims"] == claims  # Claim rows again, in order
    assert loaded["results"]["accuracy"] == 0.75 and math.isnan(loaded["results"]["auc"])
    assert loaded["written"] == pytest.approx(path.stat().st_mtime)
    assert json.loads(path.read_text())["claims"][1]["verdict"] == "not reproduced"


def test_load_results_of_a_chapter_that_never_ran_says_what_to_do(results_dir):
    with pytest.raises(FileNotFoundError, match="run chapter 08_missing first"):
        load_results("08_missing")
