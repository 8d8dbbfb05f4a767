"""Speed, memory and token counts of the book's building blocks, measured on demand (not a test).

    python benchmarks/run_benchmarks.py --quick                # every section, both models, a few minutes
    python benchmarks/run_benchmarks.py                        # every section, both embedded models
    python benchmarks/run_benchmarks.py --sections forward ranking --models gemma3-270m
    python benchmarks/run_benchmarks.py --sections tokens      # tokens processed vs strictly needed
    python benchmarks/run_benchmarks.py --sections book --run-book   # also execute the whole book

Sections (each runs in its own Python process, so its peak resident memory is its own):
  load     model load from the GGUF file (cold: dequantise into an empty cache) vs from the cache
  forward  tokens/s of a plain forward pass (transformers' SDPA attention; icl_utils' eager
           attention) vs a traced one (icl_utils.run_with_trace recording what chapter 3 records)
  ranking  ranking all heads by log-probability increase (chapter 3) vs zeroing one head at a time
  fv       function-vector scores: exact patching one head per pass vs batched vs attribution patching
  scaling  head-ranking time vs number of prompts and vs demonstrations per class (prompt length)
  tokens   chapters 1, 3 and 8: tokens the chapter's code runs through the model (counted by a hook
           on the decoder while a slice of the chapter's own workload runs, built with the library's
           prompt builders and the parameters cell of the chapter's .py) vs tokens strictly needed
           (each distinct token prefix once per distinct intervention that changes it, plus one
           backward token per attribution-patched prompt)
  book     per-chapter execution times of the whole book against per-chapter budgets
           (book/chapters/timings.json, written by scripts/run_chapters.py; --run-book runs it first)

Every figure is printed the moment it is measured and appended as one JSON line (section, model,
name, value, unit, budget, verdict, note) to results/benchmarks.partial.jsonl; after each section
the figures are merged into results/benchmarks.json (sections not run now keep their earlier
figures), so an interrupted run keeps what it measured. --quick writes results/benchmarks.quick.json
(and .quick.partial.jsonl) instead, so its extrapolated figures never overwrite full ones.

--quick: the slow sweeps (one head at a time, exact FV patching one head per pass) are timed on a
random sample of --sweep-heads heads (default 8) and extrapolated to all heads, which the output
says ("extrapolated from N of M heads"); every timing is the best of 1 run instead of 3; the cold
GGUF load is skipped; fewer FV prompts and scaling points. Budgets (issue 8) are printed beside
the figures with MET / MISSED. Timings are wall-clock on whatever else the machine is doing: run
it on an idle machine.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGETS = {
    "traced_over_plain": ("<=", 1.5),  # traced forward within 1.5x of a plain forward
    "ranking_speedup": (">=", 50.0),  # all-heads ranking at least 50x faster than the ablation sweep
    "book_s": ("<=", 20 * 60),  # whole book on the embedded default model, 2 CPU cores
    "peak_rss_gb": ("<=", 4.0),
}
QUICK_SWEEP_HEADS = 8
TOKEN_CHAPTERS = ("01", "03", "08")  # chapter numbers whose token counts the tokens section reports


# ----------------------------------------------------------------------------------------------
# Figures: printed and saved the moment they are measured


def verdict(value: float, budget: tuple) -> str:
    op, limit = budget
    return "MET" if (value <= limit if op == "<=" else value >= limit) else "MISSED"


def fmt_value(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


class Figures:
    """Where a section puts its figures: each is printed (flushed) and appended as one JSON line to
    the partial results file at once, so nothing measured is lost if the run stops later."""

    def __init__(self, section: str, model: str, partial: Path | None, quick: bool = False):
        self.section, self.model, self.partial, self.quick = section, model, partial, quick
        self.values: dict = {}

    def _write(self, record: dict) -> None:
        if self.partial is not None:
            self.partial.parent.mkdir(parents=True, exist_ok=True)
            with self.partial.open("a") as f:
                f.write(json.dumps(record, default=float) + "\n")

    def add(self, name: str, value, unit: str = "", budget: tuple | None = None, note: str = ""):
        """One figure; budget: ("<=" or ">=", limit)."""
        value = float(value) if hasattr(value, "item") else value
        record = {"section": self.section, "model": self.model, "name": name, "value": value, "unit": unit,
                  "budget": None if budget is None else f"{budget[0]} {budget[1]:g}",
                  "verdict": None if budget is None else verdict(value, budget), "note": note, "quick": self.quick}
        self.values[name] = value
        self._write(record)
        print("  " + describe(record), flush=True)
        return value

    def row(self, table: str, row: dict, note: str = "") -> None:
        """One row of a table (e.g. one scaling point)."""
        self._write({"section": self.section, "model": self.model, "name": table, "row": row, "note": note,
                     "quick": self.quick})
        self.values.setdefault(table, []).append(row)
        print(f"  {table}: " + ", ".join(f"{k} {fmt_value(v)}" for k, v in row.items()) + (f"  ({note})" if note else ""),
              flush=True)


def describe(record: dict) -> str:
    text = f"{record['name']} = {fmt_value(record['value'])}" + (f" {record['unit']}" if record.get("unit") else "")
    if record.get("budget"):
        text += f"  [{record['verdict']}, budget {record['budget']}]"
    if record.get("note"):
        text += f"  ({record['note']})"
    return text


def merge_partial(partial: Path, results_path: Path, run: dict) -> dict:
    """Fold the partial file's records into the results file: every (model, section) this run
    measured replaces that section there; the rest of the file is kept."""
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    if "sections" not in results:  # an older layout: start afresh
        results = {"sections": {}}
    measured: dict = {}
    if partial.exists():
        for line in partial.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                measured.setdefault(r["model"], {}).setdefault(r["section"], []).append(r)
    for model, sections in measured.items():
        for section, records in sections.items():
            figures = {r["name"]: r["value"] for r in records if "row" not in r}
            tables: dict = {}
            for r in records:
                if "row" in r:
                    tables.setdefault(r["name"], []).append(r["row"])
            results["sections"].setdefault(model, {})[section] = {
                "figures": figures, "tables": tables, "records": records, "quick": run["quick"],
                "measured_at": run["started"]}
    results["budgets"] = {k: f"{op} {v:g}" for k, (op, v) in BUDGETS.items()}
    results["last_run"] = run
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(results, indent=2, default=float))
    return results


# ----------------------------------------------------------------------------------------------
# Helpers


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB


def timed(fn, repeats: int = 3) -> float:
    """Best of `repeats` wall times after one warm-up call (the first call pays one-off costs)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def repeats(args, full: int = 3) -> int:
    return 1 if args.quick else full


def sweep_sample(heads: list, args) -> list:
    """The heads a slow sweep is timed on: all of them, or a seeded sample (--sweep-heads; 8 in --quick)."""
    n = args.sweep_heads if args.sweep_heads > 0 else (QUICK_SWEEP_HEADS if args.quick else 0)
    return heads if n <= 0 or n >= len(heads) else random.Random(0).sample(heads, n)


def extrapolation_note(sample: list, heads: list) -> str:
    return "" if len(sample) == len(heads) else f"extrapolated from {len(sample)} of {len(heads)} heads"


def prompts_for(info, n_prompts: int, demos_per_class: int = 8, task: str = "sentiment_words"):
    import icl_utils as iu

    return iu.build_prompts(iu.load_task(task), n_prompts, demos_per_class=demos_per_class, seed=0)


def progress(iterable, desc: str, **kwargs):
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=False, file=sys.stderr, **kwargs)


# ----------------------------------------------------------------------------------------------
# Sections: each puts its figures into `out` as it measures them


def section_load(model: str, args, out: Figures) -> None:
    import icl_utils as iu

    if args.quick:
        print("  cold load (dequantise the GGUF file) skipped in --quick", flush=True)
    else:
        with tempfile.TemporaryDirectory() as empty:
            os.environ["ICL_UTILS_CACHE"] = empty
            t0 = time.perf_counter()
            iu.load_model(model, device="cpu")
            out.add("cold_load_s", time.perf_counter() - t0, "s", note="dequantise the GGUF file into an empty cache")
        os.environ.pop("ICL_UTILS_CACHE")
    iu.load_model(model, device="cpu")  # make sure the real cache exists
    t0 = time.perf_counter()
    iu.load_model(model, device="cpu")
    out.add("cached_load_s", time.perf_counter() - t0, "s")


def section_forward(model: str, args, out: Figures) -> None:
    import torch

    import icl_utils as iu
    from icl_utils.tracing import ATTENTION_NAME

    info = iu.load_model(model, device="cpu")
    batch = iu.encode_prompts(info, prompts_for(info, args.batch_size))
    n_tokens = out.add("tokens", int(batch.attention_mask.sum()), note=f"{args.batch_size} prompts, 8 demonstrations per class")
    ids, mask = batch.input_ids, batch.attention_mask

    def plain():
        with torch.no_grad():
            info.decoder(input_ids=ids, attention_mask=mask, use_cache=False)

    def traced():  # what chapter 3's head ranking records
        iu.run_with_trace(info, ids, mask, batch.last_positions, record=("resid", "head_out", "attn_out", "attn"))

    eager = timed(plain, repeats(args))
    out.add("plain_eager_tok_s", n_tokens / eager, "tok/s", note="icl_utils' recording attention, nothing recorded")
    traced_s = timed(traced, repeats(args))
    out.add("traced_tok_s", n_tokens / traced_s, "tok/s")
    out.add("traced_over_plain", traced_s / eager, "x", BUDGETS["traced_over_plain"], "traced time / plain eager time")
    info.model.config._attn_implementation = "sdpa"
    for module in info.model.modules():
        if getattr(module, "config", None) is not None and hasattr(module.config, "_attn_implementation"):
            module.config._attn_implementation = "sdpa"
    sdpa = timed(plain, repeats(args))
    out.add("plain_sdpa_tok_s", n_tokens / sdpa, "tok/s")
    iu.tracing.use_recording_attention(info.model)
    assert info.model.config._attn_implementation == ATTENTION_NAME
    out.add("traced_over_sdpa", traced_s / sdpa, "x", note="traced time / transformers' SDPA time")


def section_ranking(model: str, args, out: Figures) -> None:
    import icl_utils as iu
    from icl_utils.heads import rank_heads

    info = iu.load_model(model, device="cpu")
    prompts = prompts_for(info, args.batch_size)
    out.add("n_prompts", len(prompts))
    rank_s = timed(lambda: rank_heads(info, prompts, batch_size=args.batch_size, progress=False), repeats(args, 2))
    out.add("ranking_s_per_prompt", rank_s / len(prompts), "s", note="every head ranked, one traced pass per batch")
    heads = info.all_heads
    sample = sweep_sample(heads, args)
    note = extrapolation_note(sample, heads)
    if note:
        print(f"  one-head-at-a-time sweep: {note}", flush=True)
    iu.score_prompts(info, prompts, batch_size=args.batch_size, progress=False)  # warm-up
    t0 = time.perf_counter()
    iu.score_prompts(info, prompts, batch_size=args.batch_size, progress=False)  # the unablated baseline
    for head in progress(sample, f"{model}: zeroing one head at a time"):
        with iu.ablate_heads(info, [head]):
            iu.score_prompts(info, prompts, batch_size=args.batch_size, progress=False)
    measured = time.perf_counter() - t0
    sweep_s = measured * (len(heads) + 1) / (len(sample) + 1)  # every ablated pass costs the same
    out.add("sweep_s_per_prompt", sweep_s / len(prompts), "s", note=note or f"all {len(heads)} heads")
    out.add("ranking_speedup", sweep_s / rank_s, "x", BUDGETS["ranking_speedup"],
            "one-head-at-a-time sweep time / ranking time" + (f"; sweep {note}" if note else ""))


def section_fv(model: str, args, out: Figures) -> None:
    """FV scores of every head on shuffled-label prompts, three ways (chapter 8): one full forward
    pass per head (the plain way), all heads as rows of one batch over a cached prefix
    (fv_scores_exact), and attribution patching (fv_scores_attribution)."""
    import torch

    import icl_utils as iu
    from icl_utils import function_vectors as fv
    from icl_utils.stats import spearman

    info = iu.load_model(model, device="cpu")
    n_prompts = args.fv_prompts or (2 if args.quick else 6)
    pairs = iu.load_pair_task("country_capital")
    build = lambda shuffle: fv.build_fv_prompts(pairs, n_prompts, 10, seed=0, fmt=fv.ARROW,  # noqa: E731
                                                shuffle_labels=shuffle, task="country_capital")
    means = fv.run_fv_prompts(info, build(False)).head_out.mean(0)  # (layers, heads, d_head)
    corrupted = build(True)
    heads = info.all_heads
    out.add("n_prompts", len(corrupted))
    out.add("n_heads", len(heads))
    t0 = time.perf_counter()
    batched = fv.fv_scores_exact(info, corrupted, means, progress=True)
    batched_s = out.add("batched_s", time.perf_counter() - t0, "s", note="all heads as rows of one batch over a cached prefix")
    t0 = time.perf_counter()
    attribution = fv.fv_scores_attribution(info, corrupted, means, progress=True)
    attribution_s = out.add("attribution_s", time.perf_counter() - t0, "s", note="attribution patching")

    # the plain way, on the first prompt: one full forward per head with its mean at the last token
    prompt = corrupted[0]
    ids, mask, last = fv.encode_texts(info, [prompt.text])
    answer = int(fv.answer_ids(info.tokenizer, [prompt])[0])
    sample = sweep_sample(heads, args)
    note = extrapolation_note(sample, heads)

    def p_answer():
        with torch.no_grad():
            hidden = info.decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state[0, -1]
        return torch.softmax(info.logits_from_final_hidden(hidden[None]).float(), -1)[0, answer].item()

    t0 = time.perf_counter()
    base = p_answer()
    plain = {}
    for l, h in progress(sample, f"{model}: FV exact patching, one head per pass"):
        with iu.ablate_heads(info, [(l, h)], positions=last[:, None], mode="mean", means={(l, h): means[l, h]}):
            plain[l, h] = p_answer() - base
    measured = time.perf_counter() - t0
    plain_s = measured * (len(heads) + 1) / (len(sample) + 1) * len(corrupted)  # to all heads and prompts
    scaled = f"timed on one prompt, scaled to {len(corrupted)}" + (f"; {note}" if note else "")
    out.add("plain_s", plain_s, "s", note="one full forward pass per head; " + scaled)
    out.add("batched_speedup", plain_s / batched_s, "x", note="one-at-a-time / batched")
    out.add("attribution_speedup", plain_s / attribution_s, "x", note="one-at-a-time / attribution patching")
    out.add("batched_vs_plain_max_abs_diff", max(abs(batched[0, l, h].item() - v) for (l, h), v in plain.items()),
            note=f"on the {len(plain)} heads run one at a time")
    out.add("attribution_vs_exact_spearman", spearman(attribution.mean(0), batched.mean(0)))
    k = max(1, round(0.05 * len(heads)))
    top = lambda x: set(iu.top_heads(x, k))  # noqa: E731
    out.add("attribution_vs_exact_top5pct_overlap", len(top(attribution.mean(0)) & top(batched.mean(0))) / k,
            note=f"top {k} heads")


def section_scaling(model: str, args, out: Figures) -> None:
    import icl_utils as iu
    from icl_utils.heads import rank_heads

    info = iu.load_model(model, device="cpu")
    points = [("prompts", n, 8) for n in ((4, 8) if args.quick else (4, 8, 16, 32))]
    points += [("demos", 8, d) for d in ((2, 8) if args.quick else (2, 4, 8, 16))]
    for vary, n_prompts, demos in progress(points, f"{model}: ranking cost vs prompts and length"):
        prompts = prompts_for(info, n_prompts, demos_per_class=demos)
        s = timed(lambda: rank_heads(info, prompts, batch_size=8, progress=False), repeats=1)
        out.row("ranking_cost", {"vary": vary, "n_prompts": n_prompts, "demos_per_class": demos,
                                 "tokens_per_prompt": _mean_tokens(info, prompts), "seconds": s,
                                 "s_per_prompt": s / n_prompts})


def _mean_tokens(info, prompts) -> float:
    import icl_utils as iu

    return float(iu.encode_prompts(info, prompts).attention_mask.sum(1).float().mean())


# ----------------------------------------------------------------------------------------------
# Tokens processed vs tokens strictly needed


def toc_chapters(toc: Path | None = None) -> list:
    """Chapter stems in the order of _toc.yml (e.g. "03_in_context_heads"): never hard-coded, since
    chapters get added and renumbered."""
    import yaml

    data = yaml.safe_load((toc or ROOT / "_toc.yml").read_text())
    stems = []

    def walk(entries):
        for entry in entries or []:
            if isinstance(entry, dict):
                if str(entry.get("file", "")).startswith("chapters/"):
                    stems.append(Path(entry["file"]).name)
                walk(entry.get("sections"))
                walk(entry.get("chapters"))
                for part in entry.get("parts", []) or []:
                    walk(part.get("chapters"))

    walk(data.get("chapters"))
    for part in data.get("parts", []) or []:
        walk(part.get("chapters"))
    return stems


def chapter_stem(number: str, toc: Path | None = None) -> str:
    """The _toc.yml chapter whose name starts with `number` + "_"."""
    found = [s for s in toc_chapters(toc) if s.split("_")[0] == number]
    if len(found) != 1:
        raise LookupError(f"_toc.yml lists {len(found)} chapters numbered {number}: {found}")
    return found[0]


def chapter_parameters(path: Path) -> dict:
    """The literal assignments of a chapter's parameters cell (`# %% tags=["parameters"]`), as the
    chapter runs with its full parameters."""
    lines = path.read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("# %%") and '"parameters"' in line]
    if not starts:
        raise LookupError(f"{path} has no parameters cell")
    cell = []
    for line in lines[starts[0] + 1:]:
        if line.startswith("# %%"):
            break
        cell.append(line)
    params = {}
    for node in ast.parse("\n".join(cell)).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            params[node.targets[0].id] = ast.literal_eval(node.value)
    return params


def distinct_prefix_tokens(sequences) -> int:
    """Tokens strictly needed to compute every position of `sequences` once: the number of distinct
    prefixes (nodes of a trie of the token sequences). A shared set of demonstrations counts once;
    two queries after it count separately from where they differ."""
    root, count = {}, 0
    for seq in sequences:
        node = root
        for token in seq:
            token = int(token)
            if token not in node:
                node[token] = {}
                count += 1
            node = node[token]
    return count


@contextmanager
def count_decoder_tokens(info):
    """Count the token positions every call of info.decoder runs (input_ids.numel(): padding and
    replayed copies included, cached keys and values not), and those run with autograd on (they
    are also run backward). Yields a dict updated in place."""
    import torch

    counts = {"forward": 0, "backward": 0, "passes": 0}

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            raise RuntimeError("count_decoder_tokens: a decoder call without input_ids cannot be counted")
        counts["forward"] += ids.numel()
        counts["passes"] += 1
        if torch.is_grad_enabled():
            counts["backward"] += ids.numel()

    handle = info.decoder.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield counts
    finally:
        handle.remove()


def prompt_token_ids(info, prompts) -> list:
    """Unpadded token ids of each prompt (ICL prompts or FV prompts: anything with .text)."""
    return [info.tokenizer(p.text)["input_ids"] for p in prompts]


def count_part(info, out: Figures, key: str, label: str, run, needed: int, counted: str, full_rows: int | None = None,
               needed_backward: int = 0) -> dict:
    """Run `run()` with the decoder's tokens counted; add processed, needed and their ratio."""
    with count_decoder_tokens(info) as counts:
        t0 = time.perf_counter()
        run()
        seconds = time.perf_counter() - t0
    print(f"  -- {label}: {counted}", flush=True)
    out.add(f"{key}_processed", counts["forward"], "tokens", note=f"{counts['passes']} decoder calls, {seconds:.1f} s")
    out.add(f"{key}_needed", needed, "tokens")
    out.add(f"{key}_ratio", counts["forward"] / needed, "x", note="processed / needed")
    if full_rows is not None:
        out.add(f"{key}_full_prompt_per_row", full_rows, "tokens",
                note=f"{full_rows / needed:.2f}x needed: every row's whole prompt, no prefix sharing, no padding")
    if counts["backward"] or needed_backward:
        out.add(f"{key}_backward_processed", counts["backward"], "tokens")
        out.add(f"{key}_backward_needed", needed_backward, "tokens")
    return {"part": label, "processed": counts["forward"], "needed": needed, "backward": counts["backward"],
            "needed_backward": needed_backward}


def section_tokens(model: str, args, out: Figures) -> None:
    """Chapters 1, 3 and 8: a slice of each chapter's work, built with the chapter's parameters,
    run through the model with a counting hook on the decoder."""
    import icl_utils as iu
    from icl_utils import function_vectors as fv

    info = iu.load_model(model, device="cpu")
    rng = random.Random(0)
    table = []
    stems = {n: chapter_stem(n) for n in TOKEN_CHAPTERS}

    # Chapter 1: score_task on the evaluation pool (one word task, foo/bar, every k); the chapter
    # repeats this for each task, label assignment and model.
    p = chapter_parameters(ROOT / "chapters" / f"{stems['01']}.py")
    task = iu.load_task(p["WORD_TASKS"][0])
    designs = [iu.design_prompts(task, p["N_GROUPS"], p["QUERIES_PER_GROUP"], k, pool="evaluation",
                                 calibration_per_class=p["CALIBRATION_PER_CLASS"], seed=p["SEED"]) for k in p["DEMOS_PER_CLASS"]]
    rows = [q for prompts, cal in designs for q in list(prompts) + list(cal)]
    ids = prompt_token_ids(info, rows)
    print(f"\n  chapter {stems['01']}: task {task.name}, foo/bar, k = {p['DEMOS_PER_CLASS']}, {p['N_GROUPS']} demonstration "
          f"sets x ({p['QUERIES_PER_GROUP']} queries + calibration prompts) each: {len(rows)} prompts", flush=True)
    table.append(("01", count_part(
        info, out, "ch01_scoring", "scoring (score_calibrated, share_prefix=True)",
        lambda: [iu.score_calibrated(info, prompts, cal, batch_size=p["BATCH_SIZE"], progress=False, share_prefix=True,
                                     normaliser=False) for prompts, cal in designs],
        distinct_prefix_tokens(ids), "processed = each demonstration prefix once per batch + every query's tokens, "
        "padded to the batch's longest; needed = distinct token prefixes over all these prompts",
        full_rows=sum(map(len, ids)))))

    # Chapter 3: ranking on the selection pool, then zeroing head sets on the evaluation pool
    p = chapter_parameters(ROOT / "chapters" / f"{stems['03']}.py")
    task = iu.load_task(p["TASK"])
    n_select = 1 if args.quick else p["N_SELECT_GROUPS"]
    select = [q for g in iu.build_prompt_groups(task, n_select, p["QUERIES_PER_GROUP"], demos_per_class=p["DEMOS_PER_CLASS"],
                                                seed=p["SEED"], distinct_queries=True, pool="selection") for q in g]
    ids = prompt_token_ids(info, select)
    print(f"\n  chapter {stems['03']}: task {task.name}; ranking on {n_select} of {p['N_SELECT_GROUPS']} selection demonstration "
          f"sets ({len(select)} prompts)", flush=True)
    from icl_utils.heads import rank_heads
    table.append(("03", count_part(
        info, out, "ch03_ranking", "ranking (rank_heads: one traced pass per batch)",
        lambda: rank_heads(info, select, batch_size=p["BATCH_SIZE"], progress=False), distinct_prefix_tokens(ids),
        "processed = every prompt whole, padded; needed = distinct token prefixes (each demonstration set once)",
        full_rows=sum(map(len, ids)))))
    evaluation, calibration = iu.design_prompts(task, p["N_EVAL_GROUPS"], p["QUERIES_PER_GROUP"], p["DEMOS_PER_CLASS"],
                                                pool="evaluation", calibration_per_class=p["CALIBRATION_PER_CLASS"], seed=p["SEED"])
    n_sets = 2 if args.quick else 8
    head_sets = [[h] for h in rng.sample(info.all_heads, n_sets)]
    eval_ids, cal_ids = prompt_token_ids(info, evaluation), prompt_token_ids(info, calibration)
    sizes = {max(1, round(f * info.n_total_heads)) for f in p["HEAD_FRACTIONS"]}
    chapter_sets = info.n_total_heads + sum(2 + p["N_RANDOM"] for n in sizes if n > 1) + 2  # singles, top/random, foo/bar
    print(f"  chapter {stems['03']}: clean scoring + {n_sets} single-head sets (the chapter zeroes {chapter_sets}) "
          f"on {len(evaluation)} evaluation prompts (+{len(calibration)} calibration)", flush=True)

    def ablations():
        iu.score_calibrated(info, evaluation, calibration, batch_size=p["BATCH_SIZE"], progress=False, share_prefix=True,
                            normaliser=True)
        iu.score_head_ablations(info, evaluation, head_sets, normaliser=True, progress=False)

    # zeroing a head at every position changes every token from its layer up: each set needs all
    # its prompts' distinct prefixes again
    table.append(("03", count_part(
        info, out, "ch03_ablations", "zeroing head sets (score_head_ablations)", ablations,
        distinct_prefix_tokens(eval_ids + cal_ids) + n_sets * distinct_prefix_tokens(eval_ids),
        "processed = clean: prefix once per batch + queries; per head set: the demonstrations once (one row) + "
        "every query replayed, padded; needed = distinct prefixes once clean + once per head set (a zeroed head "
        "changes every position above its layer; resuming at that layer would need fewer layer-tokens: not counted)",
        full_rows=sum(map(len, eval_ids + cal_ids)) + n_sets * sum(map(len, eval_ids)))))

    # Chapter 8: clean runs (mean head outputs), attribution patching on shuffled-label prompts,
    # ablations at the last token of held-out prompts
    p = chapter_parameters(ROOT / "chapters" / f"{stems['08']}.py")
    name = (p["TASKS"] or iu.available_pair_tasks())[0]
    pools = fv.pair_pools(iu.load_pair_task(name), p["EVALUATION_SHARE"])
    n = 4 if args.quick else 8
    fmt = fv.QA
    scoring = lambda shuffle: fv.build_fv_prompts(  # noqa: E731  the chapter's scoring_prompts
        pools["scoring"], p["N_MEAN_PROMPTS"] + p["N_PATCH_PROMPTS"], p["N_DEMOS"], seed=p["SEED"], fmt=fmt,
        shuffle_labels=shuffle, task=name)
    clean = scoring(False)[:n]
    patched = scoring(True)[p["N_MEAN_PROMPTS"]:][:n]
    held_out = fv.build_fv_prompts(pools["evaluation"], p["N_EVAL_PROMPTS"], p["N_DEMOS"], seed=p["SEED"] + 1, fmt=fmt,
                                   task=name)[:n]
    n_sets = 8
    conditions = [[]] + [rng.sample(info.all_heads, max(1, round(0.05 * info.n_total_heads))) for _ in range(n_sets - 1)]
    print(f"\n  chapter {stems['08']}: task {name}, Q/A format, {p['N_DEMOS']} demonstrations; {n} prompts per part "
          f"(the chapter: {p['N_MEAN_PROMPTS']} clean, {p['N_PATCH_PROMPTS']} patched, {p['N_EVAL_PROMPTS']} held-out per task "
          f"and model); {n_sets} head sets (the chapter: about 105); token loss and the function vector not sliced",
          flush=True)
    runs = {}
    ids = prompt_token_ids(info, clean)
    table.append(("08", count_part(
        info, out, "ch08_clean", "clean runs (run_fv_prompts: one traced pass per batch)",
        lambda: runs.setdefault("clean", fv.run_fv_prompts(info, clean, batch_size=p["BATCH_SIZE"])),
        distinct_prefix_tokens(ids), "processed = every prompt whole, padded; needed = distinct prefixes",
        full_rows=sum(map(len, ids)))))
    means = runs["clean"].head_out.mean(0)
    ids = prompt_token_ids(info, patched)
    table.append(("08", count_part(
        info, out, "ch08_attribution", "attribution patching (fv_scores_attribution)",
        lambda: fv.fv_scores_attribution(info, patched, means), distinct_prefix_tokens(ids),
        "processed = each prompt's tokens but the last once without gradients + the last with them; needed = "
        "distinct prefixes forward, plus one backward token per prompt", full_rows=sum(map(len, ids)),
        needed_backward=len(patched))))
    ids = prompt_token_ids(info, held_out)
    table.append(("08", count_part(
        info, out, "ch08_ablations", "ablations at the last token (patched_answers)",
        lambda: fv.patched_answers(info, held_out, conditions, means),
        distinct_prefix_tokens(ids) + (len(conditions) - 1) * len(held_out),
        "processed = each prompt but its last token once + one last token per head set; needed = distinct "
        "prefixes once + one last token per prompt for every head set beyond the first (the sets act on the last "
        "token only, so nothing before it changes)", full_rows=len(conditions) * sum(map(len, ids)))))

    print("\n  | chapter | part | processed | needed | processed / needed | backward processed / needed |", flush=True)
    print("  | --- | --- | --- | --- | --- | --- |")
    for number, part in table:
        back = f"{part['backward']} / {part['needed_backward']}" if part["backward"] or part["needed_backward"] else ""
        print(f"  | {stems[number]} | {part['part']} | {part['processed']:,} | {part['needed']:,} | "
              f"{part['processed'] / part['needed']:.2f} | {back} |")
    for number in TOKEN_CHAPTERS:
        parts = [part for num, part in table if num == number]
        processed, needed = sum(x["processed"] for x in parts), sum(x["needed"] for x in parts)
        out.add(f"ch{number}_ratio", processed / needed, "x",
                note=f"{stems[number]}, the slice above: {processed:,} tokens processed / {needed:,} needed")
    print("  (processed: token positions the decoder ran, counted by a hook, padding and replayed copies included; "
          "needed: one forward per distinct token prefix per distinct intervention that changes it)", flush=True)


# ----------------------------------------------------------------------------------------------
# The whole book


def section_book(model: str, args, out: Figures) -> None:
    timings = ROOT / "book" / "chapters" / "timings.json"
    if args.run_book:
        cmd = [sys.executable, str(ROOT / "scripts" / "run_chapters.py"), "--profile", "full"]
        subprocess.run(cmd, cwd=ROOT, check=True)
    if not timings.exists():
        print("  skipped: no book/chapters/timings.json: run scripts/run_chapters.py (or pass --run-book)", flush=True)
        return
    data = json.loads(timings.read_text())
    if data.get("profile") != "full":
        print(f"  skipped: timings.json is from the {data.get('profile')!r} profile; pass --run-book", flush=True)
        return
    chapters = toc_chapters()
    share = BUDGETS["book_s"][1] / len(chapters)  # no chapter has its own budget: an equal share of the book's
    times = data.get("chapters", {})
    for stem in chapters:
        if stem in times:
            out.row("chapters", {"chapter": stem, "seconds": times[stem], "budget_s": round(share),
                                 "verdict": "MET" if times[stem] <= share else "MISSED"})
        else:
            out.row("chapters", {"chapter": stem, "seconds": None, "budget_s": round(share), "verdict": "not timed"})
    timed_all = all(stem in times for stem in chapters)
    out.add("chapters_timed", sum(stem in times for stem in chapters), note=f"of {len(chapters)} in _toc.yml")
    out.add("book_s", sum(times.get(stem, 0) for stem in chapters), "s", BUDGETS["book_s"] if timed_all else None,
            "" if timed_all else "chapters not timed are missing from this sum; run scripts/run_chapters.py --profile full")


SECTIONS = {"load": section_load, "forward": section_forward, "ranking": section_ranking, "fv": section_fv,
            "scaling": section_scaling, "tokens": section_tokens, "book": section_book}
PER_MODEL = ["load", "forward", "ranking", "fv", "scaling", "tokens"]


# ----------------------------------------------------------------------------------------------
# Report


RATIOS = [("forward", "traced_over_plain", "traced / plain forward (time)"),
          ("ranking", "ranking_speedup", "one-head-at-a-time sweep / ranking (time)"),
          ("fv", "batched_speedup", "FV: one head per pass / batched (time)"),
          ("fv", "attribution_speedup", "FV: one head per pass / attribution patching (time)")]
RATIOS += [("tokens", f"ch{n}_ratio", f"chapter {n}: tokens processed / needed (slice)") for n in TOKEN_CHAPTERS]


def report(results: dict, models: list, sections: list) -> None:
    """Everything this run measured, by model and section, then the key ratios side by side."""
    print("\n## Benchmarks\n")
    measured = results.get("sections", {})

    def this_run(model, section):  # only what this run measured (the file keeps older sections too)
        entry = measured.get(model, {}).get(section, {})
        return entry.get("figures", {}) if entry.get("measured_at") == results["last_run"]["started"] else {}

    for model in models + ["book"]:
        for section in sections:
            if not this_run(model, section):
                continue
            entry = measured[model][section]
            print(("### the whole book" if model == "book" else f"### {section} on {model}")
                  + (" (--quick)" if entry["quick"] else ""))
            for r in entry["records"]:
                if "row" not in r:
                    print("- " + describe(r))
            for name, rows in entry["tables"].items():
                keys = list(rows[0])
                print(f"\n  | {' | '.join(keys)} |\n  |{' --- |' * len(keys)}")
                for row in rows:
                    print("  | " + " | ".join(fmt_value(row[k]) for k in keys) + " |")
            print()
    lines = []
    for section, name, label in RATIOS:
        cells = [this_run(m, section).get(name) for m in models]
        if any(c is not None for c in cells):
            budget = BUDGETS.get(name)
            lines.append(f"| {label} | " + " | ".join("" if c is None else f"{c:.2f}x" + (
                f" ({verdict(c, budget)})" if budget else "") for c in cells) + " | "
                + (f"{budget[0]} {budget[1]:g}x" if budget else "") + " |")
    if lines:
        print(f"### Ratios\n\n| | {' | '.join(models)} | budget |\n|{' --- |' * (len(models) + 2)}")
        print("\n".join(lines))


def run_child(section: str, model: str, argv: list) -> int:
    """Run one section in a fresh interpreter, its output streamed through as it comes."""
    cmd = [sys.executable, __file__, "--child", section, "--models", model] + argv
    print(f"\n== {section} on {model}", flush=True)
    return subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}).returncode


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS),
                        help="sections to run (default: all; per model, in this order; book last)")
    parser.add_argument("--models", nargs="+", default=["gemma3-270m", "smollm2-135m"], help="models (default: both embedded)")
    parser.add_argument("--quick", action="store_true",
                        help="a few minutes: sweeps timed on a sample of heads and extrapolated, best of 1 run, "
                             "no cold load, fewer FV prompts, scaling points and token-count prompts; writes "
                             "results/benchmarks.quick.json")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass (forward, ranking)")
    parser.add_argument("--sweep-heads", type=int, default=0,
                        help=f"time the one-head-at-a-time sweeps on this many heads and extrapolate "
                             f"(0: all heads; {QUICK_SWEEP_HEADS} with --quick)")
    parser.add_argument("--fv-prompts", type=int, default=0, help="shuffled-label prompts for the FV section (0: 6; 2 with --quick)")
    parser.add_argument("--run-book", action="store_true", help="execute the whole book first (section book)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--partial", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("batch_size", "sweep_heads", "fv_prompts"):
        if getattr(args, name) < (1 if name == "batch_size" else 0):
            parser.error(f"--{name.replace('_', '-')} must be {'>= 1' if name == 'batch_size' else '>= 0'}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    stem = "benchmarks.quick" if args.quick else "benchmarks"
    results_path = ROOT / "results" / f"{stem}.json"
    partial = Path(args.partial) if args.partial else ROOT / "results" / f"{stem}.partial.jsonl"

    if args.child:
        out = Figures(args.child, args.models[0], partial, args.quick)
        SECTIONS[args.child](args.models[0], args, out)
        out.add("peak_rss_gb", peak_rss_gb(), "GB", BUDGETS["peak_rss_gb"], "this section's process")
        return 0

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill, like Ctrl-C, still saves what was measured
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_text("")  # this run's figures only; the results file keeps earlier ones
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    run = {"started": started, "quick": args.quick, "models": args.models, "sections": args.sections}
    passthrough = ["--batch-size", str(args.batch_size), "--sweep-heads", str(args.sweep_heads),
                   "--fv-prompts", str(args.fv_prompts), "--partial", str(partial)] + (["--quick"] if args.quick else [])
    failed, t0, finished = [], time.perf_counter(), False
    try:
        for model in args.models:
            for section in [s for s in args.sections if s in PER_MODEL]:
                if run_child(section, model, passthrough) != 0:
                    failed.append(f"{section} on {model}")
                    print(f"!! benchmark section {section} on {model} failed (its figures so far are kept)", file=sys.stderr)
                merge_partial(partial, results_path, run)
        if "book" in args.sections:
            print("\n== book", flush=True)
            section_book("book", args, Figures("book", "book", partial, args.quick))
        finished = True
    finally:  # also on Ctrl-C or a kill: keep what was measured
        run["wall_s"] = round(time.perf_counter() - t0, 1)
        run["failed"] = failed + ([] if finished else ["interrupted"])
        results = merge_partial(partial, results_path, run)
        if not finished:
            print(f"\n!! interrupted after {run['wall_s']:.0f} s: the figures measured so far are in "
                  f"{results_path.relative_to(ROOT)}", file=sys.stderr, flush=True)
    report(results, args.models, args.sections)
    print(f"\nwall time {run['wall_s']:.0f} s{' (--quick)' if args.quick else ''}; figures saved to "
          f"{results_path.relative_to(ROOT)} (one line per figure, as measured: {partial.relative_to(ROOT)})")
    if failed:
        print(f"!! failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
