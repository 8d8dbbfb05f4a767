"""benchmarks/run_benchmarks.py: figures streamed and saved as measured, partial runs merged, the
--quick sample, the token counts (hook and physical limit), chapters found through _toc.yml.
No embedded model is loaded: the token counter runs on the tiny random models of conftest."""
from __future__ import annotations

import importlib.util
import json
from argparse import Namespace
from pathlib import Path

import pytest
import torch

import icl_utils

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("run_benchmarks", ROOT / "benchmarks" / "run_benchmarks.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_distinct_prefix_tokens_counts_each_shared_prefix_once():
    assert bench.distinct_prefix_tokens([]) == 0
    assert bench.distinct_prefix_tokens([[1, 2, 3]]) == 3
    assert bench.distinct_prefix_tokens([[1, 2, 3], [1, 2, 4], [1, 2, 3]]) == 4  # a repeated prompt is free
    assert bench.distinct_prefix_tokens([[1, 2], [2, 1]]) == 4  # the same tokens in another order are not
    assert bench.distinct_prefix_tokens([torch.tensor([5, 6]), [5]]) == 2  # tensors and lists alike


def test_figures_are_printed_and_appended_at_once(tmp_path, capsys):
    partial = tmp_path / "p.jsonl"
    out = bench.Figures("forward", "m", partial)
    out.add("traced_over_plain", 1.2, "x", ("<=", 1.5), "a note")
    assert "traced_over_plain = 1.20 x  [MET, budget <= 1.5]  (a note)" in capsys.readouterr().out
    (record,) = [json.loads(line) for line in partial.read_text().splitlines()]
    assert record == {"section": "forward", "model": "m", "name": "traced_over_plain", "value": 1.2, "unit": "x",
                      "budget": "<= 1.5", "verdict": "MET", "note": "a note", "quick": False}
    out.add("ranking_speedup", 30.0, "x", (">=", 50))
    assert json.loads(partial.read_text().splitlines()[-1])["verdict"] == "MISSED"
    out.row("cost", {"n": 4, "seconds": 0.5})
    assert len(partial.read_text().splitlines()) == 3


def test_merge_keeps_sections_not_run_again(tmp_path):
    partial, results = tmp_path / "p.jsonl", tmp_path / "r.json"
    first = {"started": "t1", "quick": False}
    bench.Figures("load", "m", partial).add("cached_load_s", 1.0, "s")
    fig = bench.Figures("scaling", "m", partial)
    fig.row("cost", {"n": 4})
    fig.row("cost", {"n": 8})
    merged = bench.merge_partial(partial, results, first)
    assert merged["sections"]["m"]["load"]["figures"] == {"cached_load_s": 1.0}
    assert merged["sections"]["m"]["scaling"]["tables"] == {"cost": [{"n": 4}, {"n": 8}]}
    assert json.loads(results.read_text()) == merged  # saved, not only returned

    partial.write_text("")  # a second run that re-measures only `load`, and stops half-way
    bench.Figures("load", "m", partial, quick=True).add("cached_load_s", 2.0, "s")
    merged = bench.merge_partial(partial, results, {"started": "t2", "quick": True})
    assert merged["sections"]["m"]["load"]["figures"] == {"cached_load_s": 2.0}
    assert merged["sections"]["m"]["load"]["quick"] is True
    assert merged["sections"]["m"]["scaling"]["measured_at"] == "t1"  # kept from the first run


def test_quick_sweeps_a_sample_and_says_so():
    heads = [(layer, head) for layer in range(18) for head in range(4)]
    args = Namespace(sweep_heads=0, quick=True)
    sample = bench.sweep_sample(heads, args)
    assert len(sample) == bench.QUICK_SWEEP_HEADS and set(sample) <= set(heads)
    assert sample == bench.sweep_sample(heads, args)  # seeded
    assert bench.extrapolation_note(sample, heads) == "extrapolated from 8 of 72 heads"
    full = bench.sweep_sample(heads, Namespace(sweep_heads=0, quick=False))
    assert full == heads and bench.extrapolation_note(full, heads) == ""
    assert len(bench.sweep_sample(heads, Namespace(sweep_heads=3, quick=False))) == 3


def test_help_documents_every_option_and_section(capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--help"])
    text = capsys.readouterr().out
    for word in ["--quick", "--sections", "--models", "--sweep-heads", "--fv-prompts", "--run-book", "extrapolated",
                 "benchmarks.partial.jsonl", *bench.SECTIONS]:
        assert word in text, word
    with pytest.raises(SystemExit):
        bench.parse_args(["--batch-size", "0"])


def test_chapters_come_from_the_toc(tmp_path):
    toc = tmp_path / "_toc.yml"
    toc.write_text("format: jb-book\nroot: intro\nchapters:\n  - file: chapters/01_a\n  - file: chapters/09_new\n"
                   "    sections:\n      - file: chapters/10_reproduction_table\n")
    assert bench.toc_chapters(toc) == ["01_a", "09_new", "10_reproduction_table"]
    assert bench.chapter_stem("10", toc) == "10_reproduction_table"
    with pytest.raises(LookupError, match="08"):
        bench.chapter_stem("08", toc)


def test_parameters_cell_is_read_without_running_the_chapter(tmp_path):
    chapter = tmp_path / "01_x.py"
    chapter.write_text('# %%\nimport os\n\n# %% tags=["parameters"]\nN = 3  # comment\nTASKS = None\nK = [0, 2]\n'
                       'PAIR = ("a", "b")\n\n# %%\nN = 99\n')
    assert bench.chapter_parameters(chapter) == {"N": 3, "TASKS": None, "K": [0, 2], "PAIR": ("a", "b")}
    chapter.write_text("# %%\nN = 3\n")
    with pytest.raises(LookupError, match="no parameters cell"):
        bench.chapter_parameters(chapter)


@pytest.mark.parametrize("number, keys", [
    ("01", ["WORD_TASKS", "DEMOS_PER_CLASS", "N_GROUPS", "QUERIES_PER_GROUP", "CALIBRATION_PER_CLASS", "SEED", "BATCH_SIZE"]),
    ("03", ["TASK", "N_SELECT_GROUPS", "N_EVAL_GROUPS", "QUERIES_PER_GROUP", "DEMOS_PER_CLASS", "CALIBRATION_PER_CLASS",
            "HEAD_FRACTIONS", "N_RANDOM", "SEED", "BATCH_SIZE"]),
    ("08", ["TASKS", "EVALUATION_SHARE", "N_MEAN_PROMPTS", "N_PATCH_PROMPTS", "N_EVAL_PROMPTS", "N_DEMOS", "SEED", "BATCH_SIZE"]),
])
def test_the_book_chapters_have_the_parameters_the_token_counts_read(number, keys):
    assert number in bench.TOKEN_CHAPTERS
    params = bench.chapter_parameters(ROOT / "chapters" / f"{bench.chapter_stem(number)}.py")
    assert set(keys) <= set(params), set(keys) - set(params)


def test_counter_sees_every_decoder_token_and_prefix_sharing_stays_above_the_limit(info, task):
    groups = icl_utils.build_prompt_groups(task, 2, 4, demos_per_class=2, seed=0)
    prompts = [p for g in groups for p in g]
    ids = bench.prompt_token_ids(info, prompts)
    needed = bench.distinct_prefix_tokens(ids)
    with bench.count_decoder_tokens(info) as whole:
        icl_utils.score_prompts(info, prompts, batch_size=4, progress=False)
    padded = sum(icl_utils.encode_prompts(info, prompts[s:s + 4]).input_ids.numel() for s in (0, 4))
    assert whole == {"forward": padded, "backward": 0, "passes": 2}
    with bench.count_decoder_tokens(info) as shared:
        icl_utils.score_prompts(info, prompts, batch_size=4, progress=False, share_prefix=True)
    assert needed <= shared["forward"] < whole["forward"]  # never below the physical limit
    assert shared["passes"] == 4  # per demonstration set: the prefix once, then the queries
    with bench.count_decoder_tokens(info) as grad, torch.enable_grad():
        info.decoder(input_ids=torch.tensor([ids[0]]))
    assert grad["forward"] == grad["backward"] == len(ids[0])
    info.decoder(input_ids=torch.tensor([ids[0]]))
    assert grad["forward"] == len(ids[0])  # the hook is gone after the block


def test_book_section_times_the_toc_chapters_against_their_budgets(tmp_path, monkeypatch, capsys):
    (tmp_path / "_toc.yml").write_text("root: intro\nchapters:\n  - file: chapters/01_a\n  - file: chapters/02_b\n"
                                       "  - file: chapters/03_c\n")
    (tmp_path / "book" / "chapters").mkdir(parents=True)
    (tmp_path / "book" / "chapters" / "timings.json").write_text(json.dumps(
        {"profile": "full", "chapters": {"01_a": 100.0, "02_b": 700.0}, "total_s": 800.0}))
    monkeypatch.setattr(bench, "ROOT", tmp_path)
    assert bench.main(["--sections", "book"]) == 0
    printed = capsys.readouterr().out
    assert "### the whole book" in printed and "wall time" in printed
    book = json.loads((tmp_path / "results" / "benchmarks.json").read_text())["sections"]["book"]["book"]
    rows = book["tables"]["chapters"]
    assert [(r["chapter"], r["budget_s"], r["verdict"]) for r in rows] == [
        ("01_a", 400, "MET"), ("02_b", 400, "MISSED"), ("03_c", 400, "not timed")]  # an equal share of 20 minutes
    assert book["figures"]["chapters_timed"] == 2 and book["figures"]["book_s"] == 800.0
    verdicts = {r["name"]: r["verdict"] for r in book["records"] if "row" not in r}
    assert verdicts["book_s"] is None  # no verdict on a book with chapters missing
    assert len((tmp_path / "results" / "benchmarks.partial.jsonl").read_text().splitlines()) == 5
