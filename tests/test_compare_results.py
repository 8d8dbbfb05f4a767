"""scripts/compare_results.py lists changed verdicts and, with --same, fails on any difference."""
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_results.py"


def write(folder, claims):
    folder.mkdir()
    (folder / "03_demo.json").write_text(json.dumps({"chapter": "03_demo", "results": {}, "claims": claims}))


def row(verdict, estimate, claim="zeroing lowers accuracy"):
    return {"claim": claim, "task": "", "verdict": verdict, "estimate": estimate, "interval": "[+0.1, +0.3]",
            "settle": "n units < 8" if verdict == "inconclusive" else "", "role": "primary"}


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


def test_a_changed_verdict_is_listed_with_its_reason(tmp_path):
    write(tmp_path / "a", [row("reproduced", 0.2), row("contradicted", 0.0, "other")])
    write(tmp_path / "b", [row("inconclusive", 0.2), row("contradicted", 0.0, "other")])
    out = run(tmp_path / "a", tmp_path / "b")
    assert out.returncode == 0
    assert "zeroing lowers accuracy (primary): reproduced +0.200 [+0.1, +0.3] -> inconclusive" in out.stdout
    assert "n units < 8" in out.stdout and "other" not in out.stdout.split("\n\n")[1].split("\n2 claims")[0]
    assert "1 verdicts changed" in out.stdout
    assert run(tmp_path / "a", tmp_path / "b", "--same").returncode == 1
    assert run(tmp_path / "a", tmp_path / "a", "--same").returncode == 0


def test_a_folder_without_results_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    out = run(tmp_path / "empty", tmp_path / "empty")
    assert out.returncode == 2 and "run the chapters first" in out.stderr
