"""Speed and memory of the book's building blocks, measured on demand (not a test).

    python benchmarks/run_benchmarks.py                       # every section, both embedded models
    python benchmarks/run_benchmarks.py --sections forward ranking --models gemma3-270m
    python benchmarks/run_benchmarks.py --sections book --run-book   # also execute the whole book

Sections (each runs in its own Python process, so its peak resident memory is its own):
  load     model load from the GGUF file (cold: dequantise into an empty cache) vs from the cache
  forward  tokens/s of a plain forward pass (transformers' SDPA attention; icl_utils' eager
           attention) vs a traced one (icl_utils.run_with_trace recording what chapter 3 records)
  ranking  ranking all heads by log-probability increase (chapter 3) vs zeroing one head at a time
  fv       function-vector scores: exact patching one head per pass vs batched vs attribution patching
  scaling  head-ranking time vs number of prompts and vs demonstrations per class (prompt length)
  book     per-chapter execution times of the whole book (book/chapters/timings.json, written by
           scripts/run_chapters.py; --run-book executes it first)

Budgets (issue 8) are printed beside the figures with MET / MISSED. Results also go to
results/benchmarks.json. Timings are wall-clock on whatever else the machine is doing: run it on
an idle machine.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGETS = {
    "traced_over_plain": 1.5,  # traced forward within 1.5x of a plain forward
    "ranking_speedup": 50.0,  # all-heads ranking at least 50x faster than the ablation sweep
    "book_s": 20 * 60,  # whole book on the embedded default model, 2 CPU cores
    "peak_rss_gb": 4.0,
}


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


def prompts_for(info, n_prompts: int, demos_per_class: int = 8, task: str = "sentiment_words"):
    import icl_utils as iu

    return iu.build_prompts(iu.load_task(task), n_prompts, demos_per_class=demos_per_class, seed=0)


# ----------------------------------------------------------------------------------------------
# Sections: each returns a dict of figures


def section_load(model: str, args) -> dict:
    import icl_utils as iu

    with tempfile.TemporaryDirectory() as empty:
        os.environ["ICL_UTILS_CACHE"] = empty
        t0 = time.perf_counter()
        iu.load_model(model, device="cpu")
        cold = time.perf_counter() - t0
    os.environ.pop("ICL_UTILS_CACHE")
    iu.load_model(model, device="cpu")  # make sure the real cache exists
    t0 = time.perf_counter()
    iu.load_model(model, device="cpu")
    cached = time.perf_counter() - t0
    return {"cold_load_s": cold, "cached_load_s": cached}


def section_forward(model: str, args) -> dict:
    import torch

    import icl_utils as iu
    from icl_utils.tracing import ATTENTION_NAME

    info = iu.load_model(model, device="cpu")
    batch = iu.encode_prompts(info, prompts_for(info, args.batch_size))
    n_tokens = int(batch.attention_mask.sum())
    ids, mask = batch.input_ids, batch.attention_mask

    def plain():
        with torch.no_grad():
            info.decoder(input_ids=ids, attention_mask=mask, use_cache=False)

    def traced():  # what chapter 3's head ranking records
        iu.run_with_trace(info, ids, mask, batch.last_positions, record=("resid", "head_out", "attn_out", "attn"))

    eager = timed(plain)
    traced_s = timed(traced)
    info.model.config._attn_implementation = "sdpa"
    for module in info.model.modules():
        if getattr(module, "config", None) is not None and hasattr(module.config, "_attn_implementation"):
            module.config._attn_implementation = "sdpa"
    sdpa = timed(plain)
    iu.tracing.use_recording_attention(info.model)
    assert info.model.config._attn_implementation == ATTENTION_NAME
    return {
        "tokens": n_tokens, "plain_sdpa_tok_s": n_tokens / sdpa, "plain_eager_tok_s": n_tokens / eager,
        "traced_tok_s": n_tokens / traced_s, "traced_over_plain": traced_s / eager,
        "traced_over_sdpa": traced_s / sdpa,
    }


def section_ranking(model: str, args) -> dict:
    import random

    import icl_utils as iu
    from icl_utils.heads import rank_heads

    info = iu.load_model(model, device="cpu")
    prompts = prompts_for(info, args.batch_size)
    rank_s = timed(lambda: rank_heads(info, prompts, batch_size=args.batch_size, progress=False), repeats=2)
    heads = [(l, h) for l in range(info.n_layers) for h in range(info.n_heads)]
    sample = heads if args.sweep_heads <= 0 else random.Random(0).sample(heads, min(args.sweep_heads, len(heads)))
    iu.score_prompts(info, prompts, batch_size=args.batch_size, progress=False)  # warm-up
    t0 = time.perf_counter()
    iu.score_prompts(info, prompts, batch_size=args.batch_size, progress=False)  # the unablated baseline
    for head in sample:
        with iu.ablate_heads(info, [head]):
            iu.score_prompts(info, prompts, batch_size=args.batch_size, progress=False)
    measured = time.perf_counter() - t0
    sweep_s = measured * (len(heads) + 1) / (len(sample) + 1)  # every ablated pass costs the same
    return {
        "n_prompts": len(prompts), "n_heads": len(heads), "swept_heads": len(sample),
        "ranking_s_per_prompt": rank_s / len(prompts), "sweep_s_per_prompt": sweep_s / len(prompts),
        "ranking_speedup": sweep_s / rank_s,
    }


def section_fv(model: str, args) -> dict:
    """FV scores of every head on shuffled-label prompts, three ways (chapter 8): one full forward
    pass per head (the plain way), all heads as rows of one batch over a cached prefix
    (fv_scores_exact), and attribution patching (fv_scores_attribution)."""
    import torch

    import icl_utils as iu
    from icl_utils import function_vectors as fv
    from icl_utils.stats import spearman

    info = iu.load_model(model, device="cpu")
    pairs = iu.load_pair_task("country_capital")
    build = lambda shuffle: fv.build_fv_prompts(pairs, args.fv_prompts, 10, seed=0, fmt=fv.ARROW,  # noqa: E731
                                                shuffle_labels=shuffle, task="country_capital")
    means = fv.run_fv_prompts(info, build(False)).head_out.mean(0)  # (layers, heads, d_head)
    corrupted = build(True)
    t0 = time.perf_counter()
    batched = fv.fv_scores_exact(info, corrupted, means)
    batched_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    attribution = fv.fv_scores_attribution(info, corrupted, means)
    attribution_s = time.perf_counter() - t0

    # the plain way, on the first prompt: one full forward per head with its mean at the last token
    prompt = corrupted[0]
    ids, mask, last = fv.encode_texts(info, [prompt.text])
    answer = int(fv.answer_ids(info.tokenizer, [prompt])[0])
    heads = info.all_heads

    def p_answer():
        with torch.no_grad():
            hidden = info.decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state[0, -1]
        return torch.softmax(info.logits_from_final_hidden(hidden[None]).float(), -1)[0, answer].item()

    t0 = time.perf_counter()
    base = p_answer()
    plain = torch.zeros(info.n_layers, info.n_heads)
    for l, h in heads:
        with iu.ablate_heads(info, [(l, h)], positions=last[:, None], mode="mean", means={(l, h): means[l, h]}):
            plain[l, h] = p_answer() - base
    plain_s = (time.perf_counter() - t0) * len(corrupted)  # scaled to all prompts
    k = max(1, round(0.05 * len(heads)))
    top = lambda x: set(iu.top_heads(x, k))  # noqa: E731
    return {
        "n_prompts": len(corrupted), "n_heads": len(heads),
        "plain_s": plain_s, "batched_s": batched_s, "attribution_s": attribution_s,
        "batched_speedup": plain_s / batched_s, "attribution_speedup": plain_s / attribution_s,
        "batched_vs_plain_max_abs_diff": float((batched[0] - plain).abs().max()),
        "attribution_vs_exact_spearman": spearman(attribution.mean(0), batched.mean(0)),
        f"attribution_vs_exact_top{k}_overlap": len(top(attribution.mean(0)) & top(batched.mean(0))) / k,
    }


def section_scaling(model: str, args) -> dict:
    import icl_utils as iu
    from icl_utils.heads import rank_heads

    info = iu.load_model(model, device="cpu")
    rows = []
    for n_prompts in (4, 8, 16, 32):
        prompts = prompts_for(info, n_prompts)
        s = timed(lambda: rank_heads(info, prompts, batch_size=8, progress=False), repeats=1)
        rows.append({"vary": "prompts", "n_prompts": n_prompts, "demos_per_class": 8,
                     "tokens_per_prompt": _mean_tokens(info, prompts), "seconds": s})
    for demos in (2, 4, 8, 16):
        prompts = prompts_for(info, 8, demos_per_class=demos)
        s = timed(lambda: rank_heads(info, prompts, batch_size=8, progress=False), repeats=1)
        rows.append({"vary": "demos", "n_prompts": 8, "demos_per_class": demos,
                     "tokens_per_prompt": _mean_tokens(info, prompts), "seconds": s})
    return {"rows": rows}


def _mean_tokens(info, prompts) -> float:
    import icl_utils as iu

    return float(iu.encode_prompts(info, prompts).attention_mask.sum(1).float().mean())


def section_book(model: str, args) -> dict:
    timings = ROOT / "book" / "chapters" / "timings.json"
    if args.run_book:
        cmd = [sys.executable, str(ROOT / "scripts" / "run_chapters.py"), "--profile", "full"]
        subprocess.run(cmd, cwd=ROOT, check=True)
    if not timings.exists():
        return {"skipped": "no book/chapters/timings.json: run scripts/run_chapters.py (or pass --run-book)"}
    data = json.loads(timings.read_text())
    if data.get("profile") != "full":
        return {"skipped": f"timings.json is from the {data.get('profile')!r} profile; pass --run-book"}
    return data


SECTIONS = {"load": section_load, "forward": section_forward, "ranking": section_ranking, "fv": section_fv,
            "scaling": section_scaling, "book": section_book}
PER_MODEL = ["load", "forward", "ranking", "fv", "scaling"]


# ----------------------------------------------------------------------------------------------
# Report


def verdict(value: float, budget: float, higher_is_better: bool) -> str:
    ok = value >= budget if higher_is_better else value <= budget
    return "MET" if ok else "MISSED"


def report(results: dict) -> None:
    print("\n## Benchmarks\n")
    for model, sections in results["models"].items():
        print(f"### {model}\n")
        for name, figures in sections.items():
            if "skipped" in figures:
                print(f"- {name}: skipped ({figures['skipped']})")
                continue
            rss = figures.get("peak_rss_gb", float("nan"))
            rss_txt = f"peak RSS {rss:.2f} GB ({verdict(rss, BUDGETS['peak_rss_gb'], False)} <= {BUDGETS['peak_rss_gb']:.0f} GB)"
            if name == "load":
                print(f"- load: cold (dequantise GGUF) {figures['cold_load_s']:.1f} s, cached {figures['cached_load_s']:.1f} s; {rss_txt}")
            elif name == "forward":
                r = figures["traced_over_plain"]
                print(f"- forward ({figures['tokens']} tokens): SDPA {figures['plain_sdpa_tok_s']:.0f} tok/s, eager "
                      f"{figures['plain_eager_tok_s']:.0f} tok/s, traced {figures['traced_tok_s']:.0f} tok/s; traced/plain "
                      f"{r:.2f}x ({verdict(r, BUDGETS['traced_over_plain'], False)} <= {BUDGETS['traced_over_plain']}x), "
                      f"traced/SDPA {figures['traced_over_sdpa']:.2f}x; {rss_txt}")
            elif name == "ranking":
                r = figures["ranking_speedup"]
                print(f"- ranking {figures['n_heads']} heads on {figures['n_prompts']} prompts: {figures['ranking_s_per_prompt']:.3f} "
                      f"s/prompt vs one-head-at-a-time sweep {figures['sweep_s_per_prompt']:.2f} s/prompt "
                      f"(timed on {figures['swept_heads']} heads, scaled to all): {r:.0f}x "
                      f"({verdict(r, BUDGETS['ranking_speedup'], True)} >= {BUDGETS['ranking_speedup']:.0f}x); {rss_txt}")
            elif name == "fv":
                k = [key for key in figures if key.startswith("attribution_vs_exact_top")][0]
                print(f"- FV scores of {figures['n_heads']} heads on {figures['n_prompts']} prompts: one full pass per head "
                      f"{figures['plain_s']:.1f} s (timed on one prompt, scaled), batched over a cached prefix "
                      f"{figures['batched_s']:.1f} s ({figures['batched_speedup']:.0f}x; max |diff| "
                      f"{figures['batched_vs_plain_max_abs_diff']:.1e}), attribution patching {figures['attribution_s']:.1f} s "
                      f"({figures['attribution_speedup']:.0f}x; Spearman with exact {figures['attribution_vs_exact_spearman']:.2f}, "
                      f"top-5% overlap {figures[k]:.0%}); {rss_txt}")
            elif name == "scaling":
                print("- head ranking cost:")
                print("  | vary | prompts | demos/class | tokens/prompt | seconds | s/prompt |")
                print("  | --- | --- | --- | --- | --- | --- |")
                for row in figures["rows"]:
                    print(f"  | {row['vary']} | {row['n_prompts']} | {row['demos_per_class']} | {row['tokens_per_prompt']:.0f} | "
                          f"{row['seconds']:.2f} | {row['seconds'] / row['n_prompts']:.3f} |")
                print(f"  {rss_txt}")
            else:
                shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in figures.items()}
                print(f"- {name}: {shown}")
        print()
    book = results.get("book")
    if book:
        if "skipped" in book:
            print(f"### whole book: skipped ({book['skipped']})")
        else:
            total = book["total_s"]
            print(f"### whole book ({book['profile']} parameters): {total:.0f} s "
                  f"({verdict(total, BUDGETS['book_s'], False)} <= {BUDGETS['book_s']} s)")
            for chapter, seconds in book["chapters"].items():
                print(f"  {seconds:7.1f} s  {chapter}")


def run_child(section: str, model: str, argv: list) -> dict:
    """Run one section in a fresh interpreter; it prints one JSON line last."""
    cmd = [sys.executable, __file__, "--child", section, "--models", model] + argv
    print(f"== {section} on {model} ...", flush=True)
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        print(out.stdout[-2000:], out.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"benchmark section {section} on {model} failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    parser.add_argument("--models", nargs="+", default=["gemma3-270m", "smollm2-135m"])
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass (forward, ranking)")
    parser.add_argument("--sweep-heads", type=int, default=0, help="time the ablation sweep on this many heads and scale (0: all)")
    parser.add_argument("--fv-prompts", type=int, default=6, help="shuffled-label prompts for the FV section")
    parser.add_argument("--run-book", action="store_true", help="execute the whole book first (section book)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        figures = SECTIONS[args.child](args.models[0], args)
        figures["peak_rss_gb"] = peak_rss_gb()
        print(json.dumps(figures, default=float))
        return 0

    passthrough = ["--batch-size", str(args.batch_size), "--sweep-heads", str(args.sweep_heads),
                   "--fv-prompts", str(args.fv_prompts)]
    results = {"models": {}, "budgets": BUDGETS}
    for model in args.models:
        results["models"][model] = {s: run_child(s, model, passthrough) for s in args.sections if s in PER_MODEL}
    if "book" in args.sections:
        results["book"] = section_book(args.models[0], args)
    out = ROOT / "results" / "benchmarks.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=float))
    report(results)
    print(f"\n(figures saved to {out.relative_to(ROOT)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
