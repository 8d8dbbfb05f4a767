"""Compare two runs' graded claims: results/*.json of a before run against an after run.

    python scripts/compare_results.py BEFORE_DIR AFTER_DIR             # every verdict that changed
    python scripts/compare_results.py BEFORE_DIR AFTER_DIR --all       # every claim, changed or not
    python scripts/compare_results.py BEFORE_DIR AFTER_DIR --same      # exit 1 unless verdicts are identical
                                                                       # and estimates agree (--rtol, 1e-6)

Claims are matched by chapter, claim text and task. A claim only in one run is listed as added or
removed. Each row shows the verdict and the estimate with its interval before and after, and the
after run's reason (units, precondition, check, Holm) where it has one.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def claims_of(folder: Path) -> dict:
    """(chapter, claim, task) -> the claim's row, for every results file in `folder`."""
    found = {}
    for path in sorted(folder.glob("[0-9][0-9]_*.json")):
        payload = json.loads(path.read_text())
        for row in payload.get("claims", []):
            found[payload.get("chapter", path.stem), row["claim"], row.get("task", "")] = row
    return found


def shown(row: dict | None) -> str:
    if row is None:
        return "-"
    estimate = row.get("estimate")
    number = f"{estimate:+.3f} {row.get('interval', '')}" if isinstance(estimate, (int, float)) else ""
    return f"{row['verdict']} {number}".strip()


def same_number(a, b, rtol: float) -> bool:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return a == b
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=rtol, abs_tol=rtol)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--all", action="store_true", help="list unchanged claims too")
    parser.add_argument("--same", action="store_true", help="fail unless verdicts and estimates are the same")
    parser.add_argument("--rtol", type=float, default=1e-6)
    args = parser.parse_args()
    for folder in (args.before, args.after):
        if not folder.is_dir() or not any(folder.glob("[0-9][0-9]_*.json")):
            parser.error(f"{folder} holds no chapter results (results/NN_*.json): run the chapters first")
    before, after = claims_of(args.before), claims_of(args.after)
    keys = list(dict.fromkeys([*before, *after]))
    changed = differing = 0
    chapter = None
    for key in keys:
        old, new = before.get(key), after.get(key)
        verdict_changed = (old or {}).get("verdict") != (new or {}).get("verdict")
        number_changed = not same_number((old or {}).get("estimate"), (new or {}).get("estimate"), args.rtol)
        changed += verdict_changed
        differing += verdict_changed or number_changed
        if not (verdict_changed or args.all):
            continue
        if key[0] != chapter:
            chapter = key[0]
            print(f"\n## {chapter}")
        why = (new or {}).get("settle", "") if new else "removed"
        role = (new or {}).get("role", "")
        print(f"- {key[1]}" + (f" [{key[2]}]" if key[2] else "") + (f" ({role})" if role else "")
              + f": {shown(old)} -> {shown(new)}" + (f"  -- {why}" if verdict_changed and why else ""))
    print(f"\n{len(keys)} claims; {changed} verdicts changed; {differing} claims differ in verdict or estimate "
          f"(rtol {args.rtol:g}); {sum(k not in before for k in keys)} added, {sum(k not in after for k in keys)} removed")
    return 1 if args.same and differing else 0


if __name__ == "__main__":
    sys.exit(main())
