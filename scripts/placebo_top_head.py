"""A placebo that must not pass the gate: random single heads, each labelled "the top head".

    python scripts/placebo_top_head.py            # 50 placebo heads, chapter 3's task, small design
    python scripts/placebo_top_head.py --draws 20 --max-rate 0.10

Chapter 3's headline claim ("zeroing ~1% of heads destroys ICL", `icl_utils.heads.headline_claim`)
is graded, with the chapter's own grader and design checks, for heads drawn at random instead of
chosen by the ranking, against every other head zeroed alone (the chapter's control at one head).
A head drawn at random is not an in-context head (except by luck: the model's few real ones can be
drawn), so the claim should come out *reproduced* for about 5% of draws at most. The script
prints the rate and exits 1 above `--max-rate` (0.10: binomial slack around 5% for 50 draws).

One sweep of every head zeroed alone serves all draws; the design is chapter 3's evaluation pool
at small size, but with enough demonstration sets (16) that the unit rule does not make every row
inconclusive. Each draw is graded twice: with every design check (the book's verdict; at this size
the able-to-detect check may block it) and by the interval rule alone (room to move only), so the
rule itself is always tested. The book's verdict must stay under --max-rate; the rule-alone rate is
printed (measured on Gemma-3-270M with 16 sets: 18%, since several single heads really do matter
there beyond the average head: a finding about the control, not a false positive).
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

import numpy as np

import icl_utils as iu
from icl_utils.heads import headline_claim
from icl_utils.reporting import design_checks, grade
from icl_utils.stats import difference_from_random, mean_interval, null_standard_error


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=iu.DEFAULT_MODEL)
    parser.add_argument("--task", default="animal_vehicle", help="chapter 3's main task")
    parser.add_argument("--draws", type=int, default=50, help="placebo heads drawn (without replacement)")
    parser.add_argument("--sets", type=int, default=16, help="evaluation demonstration sets (the units)")
    parser.add_argument("--queries", type=int, default=4, help="queries per demonstration set")
    parser.add_argument("--demos-per-class", type=int, default=4)
    parser.add_argument("--max-rate", type=float, default=0.10, help="fail above this share of 'reproduced'")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    start = time.time()
    info = iu.load_model(args.model)
    task = iu.load_task(args.task)
    prompts, calibration = iu.design_prompts(task, args.sets, args.queries, args.demos_per_class, pool="evaluation",
                                             calibration_per_class=1, seed=args.seed)
    clean = iu.score_calibrated(info, prompts, calibration, progress=False, share_prefix=True)
    heads = info.all_heads
    if args.draws > len(heads):
        parser.error(f"--draws {args.draws}: the model has only {len(heads)} heads to draw from")
    singles = iu.score_head_ablations(info, prompts, [[lh] for lh in heads], desc="every head zeroed alone")
    clean_correct = clean.correct("prior").numpy()
    falls = np.stack([clean_correct - s.correct("prior", reference=clean).numpy() for s in singles], 1)  # (prompts, heads)

    spec = headline_claim(n_random=len(heads) - 1)
    learns = mean_interval(clean_correct, clean.demo_set)
    checks = design_checks(learns, bound=0.5, smallest_effect=spec.smallest_effect, measure="clean calibrated accuracy",
                           null_se=null_standard_error(falls, clean.demo_set))
    print(f"{info.name}, {args.task}: {len(prompts)} prompts in {args.sets} demonstration sets; clean calibrated accuracy {learns}")
    for check in checks:
        print(check)
    rng = np.random.default_rng(args.seed)
    # graded twice: with every design check (the book's verdict), and with the statistical rule alone
    # (only room to move), so the interval rule is exercised even where the power check blocks the design
    verdicts, rule_alone = Counter(), Counter()
    for i in rng.choice(len(heads), args.draws, replace=False):
        others = np.delete(falls, i, axis=1)
        interval = difference_from_random(falls[:, i], others, clean.demo_set)
        graded = grade(spec, interval, f"placebo head {heads[i]}", precondition_met=learns.low > 0.5, checks=checks)
        alone = grade(spec, interval, f"placebo head {heads[i]}", precondition_met=learns.low > 0.5, checks=checks[:1])
        verdicts[graded.verdict.value] += 1
        rule_alone[alone.verdict.value] += 1
        if iu.Verdict.REPRODUCED in (graded.verdict, alone.verdict):
            print(f"  reproduced for {heads[i]}: fall beyond every other head {interval}")
    rates = {"with every check": verdicts["reproduced"] / args.draws, "interval rule alone": rule_alone["reproduced"] / args.draws}
    print(f"placebo heads, with every check: {dict(verdicts)}; by the interval rule alone: {dict(rule_alone)}")
    print("reproduced in " + ", ".join(f"{rate:.0%} of {args.draws} draws {how}" for how, rate in rates.items())
          + f" (allowed: {args.max_rate:.0%}); {time.time() - start:.0f} s")
    if rule_alone["not testable"] == args.draws:
        print("!! every placebo row is not testable even by the interval rule: the design never reached the gate; "
              "enlarge it (--sets, --queries)", file=sys.stderr)
        return 1
    if rates["interval rule alone"] > args.max_rate:  # reported, not failed: it is a property of the model, see below
        print(f"note: by the interval rule alone {rates['interval rule alone']:.0%} of random single heads pass: zeroing these "
              f"heads alone does lower accuracy by more than the smallest effect beyond the average head (the headline's "
              f"control at one head is every other head, most of which do nothing); the book's verdict also asks that the "
              f"design be able to detect the effect")
    if rates["with every check"] > args.max_rate:
        print(f"!! the headline claim passed for {rates['with every check']:.0%} of random heads: the gate is too weak",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
