"""Execute every chapter listed in _toc.yml with papermill, into book/chapters/, timing each.

    python scripts/run_chapters.py                   # full parameters (the published book)
    python scripts/run_chapters.py --profile smoke   # small parameters (the test tier)
    python scripts/run_chapters.py --only 01         # chapters whose name starts with 01

The smoke profile's parameters are in chapters/smoke_parameters.yml. A failing chapter stops
the run with its notebook (error cell marked) kept in book/chapters/ and the error printed.
Timings go to book/chapters/timings.json and are printed as a table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def toc_chapters() -> list:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    found = []

    def walk(node):
        if isinstance(node, dict):
            if str(node.get("file", "")).startswith("chapters/"):
                found.append(node["file"].removeprefix("chapters/"))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=["full", "smoke"], default="full")
    parser.add_argument("--only", default="", help="run chapters whose name starts with this")
    parser.add_argument("--budget-s", type=float, default=None, help="fail if the whole run takes longer")
    args = parser.parse_args()

    import papermill as pm

    smoke = yaml.safe_load((ROOT / "chapters" / "smoke_parameters.yml").read_text()) or {}
    out_dir = ROOT / "book" / "chapters"
    out_dir.mkdir(parents=True, exist_ok=True)
    timings, total_start = {}, time.time()
    for name in toc_chapters():
        if not name.startswith(args.only):
            continue
        source = ROOT / "chapters" / f"{name}.ipynb"
        params = smoke.get(name, {}) if args.profile == "smoke" else {}
        print(f"== {name} ({args.profile}) {params or ''}", flush=True)
        start = time.time()
        try:
            pm.execute_notebook(
                str(source), str(out_dir / f"{name}.ipynb"), parameters=params, kernel_name="python3",
                cwd=str(ROOT / "chapters"), progress_bar=False, log_output=False,
            )
        except pm.PapermillExecutionError as err:
            print(f"!! {name} failed in cell {err.exec_count}: {err.ename}: {err.evalue}", file=sys.stderr)
            print(f"!! the executed notebook with the error is {out_dir / (name + '.ipynb')}", file=sys.stderr)
            return 1
        timings[name] = round(time.time() - start, 1)
        print(f"   {timings[name]:.0f} s", flush=True)
    total = round(time.time() - total_start, 1)
    (out_dir / "timings.json").write_text(json.dumps({"profile": args.profile, "chapters": timings, "total_s": total}, indent=2))
    print("\nchapter execution times (s):")
    for name, seconds in timings.items():
        print(f"  {seconds:8.1f}  {name}")
    print(f"  {total:8.1f}  total ({args.profile})")
    if args.budget_s is not None and total > args.budget_s:
        print(f"!! over budget: {total:.0f} s > {args.budget_s:.0f} s", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
