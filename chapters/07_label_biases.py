# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 7. Majority-label bias and recency bias, explained and reduced
#
# **Question.** In-context learning has well-known biases {cite}`zhao2021calibrate`. *Majority-label
# bias*: the model leans towards the label that has more demonstrations. *Recency bias*:
# demonstrations near the end of the prompt weigh more, so the prediction depends on the order of
# the same demonstrations. {cite:t}`yu2024twotowers` explain both with the in-context heads of
# chapters 3-5. Softmax attention sums to one, so a label with more demonstrations collects more
# attention in total; and the rotary position inside $q \cdot k$ favours nearby label positions.
# They reduce each bias by editing only those heads: majority bias by 22% on average (Llama-7B
# 29.1%, GPT-J 14.9%), recency bias by 17% (Llama 23.4%, GPT-J 10.6%), with the attention spread
# in those heads about 40% lower. Does this hold for the small default model?
#
# **The majority fix, and what could not be checked.** At the label positions of the minority
# label, the fix scales the attention-weighted value-output vectors of the in-context heads by
# $a = a_c \cdot a_v$, with $a_v$ = majority count / minority count and a published $a_c = 0.03$.
# We searched for the section's exact equation (the stored arXiv HTML of 2402.02872v3, the
# project page, the authors' repository): the stored copies we could read give the abstract and
# introduction only, and the authors' repository holds a README that says the code "will be
# published soon". So we could **not** read the literal equation, and we quote none. Two readings
# fit the words, and they disagree sharply about $a_c = 0.03$ (with 4 demonstrations against 3,
# $a_v = 4/3$ and $a = 0.04$):
#
# * **multiply**: $\alpha'_{T,p} = a\,\alpha_{T,p}$ — the minority label's attention falls to 4%,
#   which must *increase* the bias; $a_c = 1/a_v$ leaves the prompt unchanged;
# * **one plus**: $\alpha'_{T,p} = (1 + a)\,\alpha_{T,p}$ — a 4% *upweight* of the minority label;
#   $a_c = 0$ leaves the prompt unchanged.
#
# Both are implemented (`icl_utils.debias.minority_scale(..., reading=)`), neither renormalises,
# and both are graded at the published $a_c$. A third variant takes $a_c$ from a grid that spans
# both readings and includes the no-edit value of each, chosen on the task's *selection* pool and
# graded on the *evaluation* pool.
#
# **The recency fix.** The scores of the in-context heads at the last position are computed from
# $q_T$ and $k_p$ with the rotary rotation undone, $\alpha'_{T,p} = \mathrm{softmax}_p(s \cdot
# \mathrm{unrot}(q_T) \cdot \mathrm{unrot}(k_p))$ over the keys the model lets $T$ see
# (`positionless_attention`). Models with learned absolute positions (GPT-2) mix the position into
# the residual stream before the first layer; there the fix is not defined (the function raises a
# `ValueError`) and part 2 is skipped.
#
# **Metrics** (continuous, because accuracy on tens of prompts moves in coarse steps). *Majority
# shift*: the change of $\log p(\text{majority}) - \log p(\text{minority})$ (over the two label
# words) from a balanced prompt to the same prompt with one demonstration of the minority label
# removed, same query, in nats; per demonstration set (seed) the mean over its queries and over
# which label is the minority. A fix's effect is the paired difference, shift before minus shift
# after, per seed; every interval is a Student-t interval over seeds (df = seeds - 1, jackknife
# standard error). *Recency*: for each query, the standard deviation of the gold-label logit
# margin over many orders of the same demonstrations, averaged over queries, per demonstration
# set; a fix's effect is $\log(\text{spread before}) - \log(\text{spread after})$ per set (0.19 is
# a 17% reduction), with its t interval over demonstration sets. A row on fewer than 8 seeds or
# sets is inconclusive whatever its interval says; each paper claim has one primary row (main
# task), the others are exploratory.
#
# **Baselines and controls, on the same prompts.** Output calibration {cite:p}`zhou2024batch`: each
# prompt's label probabilities divided by the mean over calibration prompts with the *same*
# demonstrations (queries from the demonstration pool). Anchor re-weighting {cite:p}`wang2023label`:
# the last position's attention to each label position multiplied by $\exp(\beta)$, not
# renormalised, in all heads of the deep half of the layers, with one $\beta$ per group of label
# positions chosen on the selection pool by the gold label's log-loss (the form of $a_c a_v$
# with fitted constants): for the majority bias the groups are the minority and the majority label
# (the imbalance flips between prompts, so a per-word $\beta$ could not address it); for the
# recency bias, the two label words (Wang et al.'s per-class $\beta$). The same edits on random
# heads (same number, outside the in-context heads) and accuracy and AUC after every fix:
# flattening the predictions is not a fix.
#
# **Cost.** Every edit changes only the last position's attention row, so each set of
# demonstrations runs once, each query's tokens before the last once, and the last token once per
# fix, all fixes in one batch (`debias.last_token_runs`; the tests check it against full passes).

# %% tags=["hide-input"]
# Set-up for Google Colab, the same in every chapter: on Colab it fetches the book and installs what
# Colab lacks (scripts/colab_setup.py; torch and numpy stay as Colab has them). Anywhere else it does
# nothing. The model runs on a GPU whenever there is one.
import sys

if "google.colab" in sys.modules:
    import os
    import subprocess

    BOOK = "/content/icl-heads-book"
    if not os.path.isdir(BOOK):
        subprocess.run(["git", "clone", "--depth", "1", "https://github.com/icl-heads/icl-heads-book", BOOK], check=True)
    sys.path.insert(0, f"{BOOK}/scripts")
    import colab_setup

    colab_setup.install(BOOK)

# %% tags=["parameters"]
MODEL = "gemma3-270m"  # on Colab try "meta-llama/Llama-2-7b-hf" (the paper's model); GPT-2 skips the recency fix
TASK = "animal_vehicle"  # chapter 1's main task, as in chapters 3-5
OTHER_TASK = "topic_sentences"  # a sentence task, for the per-task table (majority bias only)
RANK_DEMOS_PER_CLASS = 8  # heads: chapter 3's saved ranking, else ranked here on selection prompts
N_RANK_PROMPTS = 16
N_HEADS = 3  # in-context heads that take the fixes (chapter 5's top 3); ~1% of heads on a 7B model
DEMOS_PER_CLASS = 4  # demonstrations per label; removing one gives 4 against 3
N_SEEDS = 20  # independent demonstration sets (each with its own queries) for the majority bias
N_QUERIES = 16  # queries per demonstration set, balanced over the gold label
N_CALIBRATION = 1  # calibration queries per class and prompt set (output-calibration baseline)
N_SWAP_SEEDS = 10  # the majority bias with the label words swapped (no fix and the chosen fix only)
N_OTHER_SEEDS = 8  # majority bias on OTHER_TASK (fewer: sentences are long; 8, the fewest units graded)
N_OTHER_QUERIES = 6  # (8 x 6 prompts: as many as 6 seeds x 8 before)
N_SELECT_SEEDS = 3  # selection-pool demonstration sets for choosing a_c and fitting the anchors
A_C_MULTIPLY = [0.03, 0.375, 0.8, 0.9, 1.05, 1.2]  # reading multiply: alpha times a (1 / a_v, no edit, is added)
A_C_ONE_PLUS = [0.0, 0.03, 0.1, 0.2, 0.4, 0.8]  # reading one plus: alpha times (1 + a) (0: no edit)
PUBLISHED_A_C = 0.03
ANCHOR_BETAS = [-0.5, 0.0, 0.5]  # grid for each anchor re-weighting constant beta
N_RANDOM = 20  # random head sets (same size) for the control
RANDOM_PER_SEED = 2  # of them on each seed for the chosen fix (cycling, so each set serves several seeds)
N_DEMO_SETS = 12  # recency: demonstration sets (the interval's unit)
N_ORDERS = 12  # distinct random orders of each set
N_ORDER_QUERIES = 16  # queries asked after every order
RANDOM_PER_SET = 2  # random head sets under the recency fix, per demonstration set (12 x 2: 24 draws of the 20 sets)
SEED = 0

# %%
import random
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from tqdm.auto import tqdm

import icl_utils as iu
from icl_utils.debias import Fix, class_scale, last_token_runs, minority_scale, role_scale
from icl_utils.heads import find_in_context_heads
from icl_utils.prompts import build_prompt_groups, calibration_prompts, encode_prompts, render_prompt
from icl_utils.reporting import (Check, ClaimSpec, claims_table, declared_claims_table, grade, per_task_table, room_to_move,
                                 save_results)
from icl_utils.stats import mean_interval

sns.set_theme(style="whitegrid", context="notebook")
start = time.time()
SEEDS = "demonstration set (seed)"
LEARNS = "the clean model learns the task: calibrated accuracy on the balanced prompts, interval above 0.5"
BIAS = LEARNS + "; and the majority bias exists (its interval lies above 0)"

# %% [markdown]
# ## Declared claims
#
# Declared before any number is computed. Smallest effects: a majority shift of 0.1 nats moves the
# majority:minority odds by 10%; a fix must remove at least 0.025 nats, about the paper's 22% of
# that smallest bias; recency and attention spreads are compared on a log scale, with half the
# paper's reductions (17% and 40%) as the smallest effects that count. One primary row per paper
# claim, on the main task: the majority bias, its attention explanation, the majority fix with
# $a_c$ chosen on the selection pool (the literal equation is unknown, see above), the recency fix
# and the attention spread. The published-$a_c$ variants, the label-swap controls and the sentence
# task are exploratory; Holm's correction runs over the five primary rows.

# %%
def fix_spec(variant, paper_a_c, primary=False):
    return ClaimSpec(
        claim=f"Scaling the minority label's attention in the in-context heads reduces majority-label bias ({variant})",
        paper=f"22% on average (Llama-7B 29.1%, GPT-J 14.9%), {paper_a_c}",
        metric="majority shift without the fix minus with it (nats), minus the same for random head sets",
        direction="increase", smallest_effect=0.025,
        smallest_effect_reason="about 22% (the paper's reduction) of the smallest bias that counts (0.1 nats)",
        control=f"the same edit on {N_RANDOM} random sets of {N_HEADS} heads", unit=SEEDS, precondition=BIAS,
        primary=primary)


claim_specs = {
    "majority bias": ClaimSpec(
        claim="ICL is biased towards the label with more demonstrations",
        paper="Llama-7B / GPT-J: accuracy changes when one demonstration of a label is removed",
        metric="majority shift: change of log p(majority) - log p(minority) from balanced to one-removed prompts (nats)",
        direction="increase", smallest_effect=0.1, smallest_effect_reason="the majority:minority odds move by 10%",
        control="0 (no shift)", unit=SEEDS, precondition=LEARNS, primary=True),
    "majority bias, labels swapped": ClaimSpec(
        claim="The bias follows the majority label, not a label word (labels swapped)",
        paper="implicit; the book's control",
        metric="majority shift (nats) on prompts with the two label words swapped",
        direction="increase", smallest_effect=0.1, smallest_effect_reason="the majority:minority odds move by 10%",
        control="the original assignment", unit=SEEDS, precondition=LEARNS),
    "attention explanation": ClaimSpec(
        claim="The minority label collects less of the in-context heads' attention (softmax sums to one)",
        paper="Llama-7B / GPT-J: explanation of the majority-label bias",
        metric="fall of the minority label's share of the in-context heads' label attention, balanced -> one removed",
        direction="increase", smallest_effect=0.02, smallest_effect_reason="two points of attention share",
        control="0 (no change)", unit=SEEDS, precondition=LEARNS, primary=True),
    "fix, multiply": fix_spec("published a_c, alpha' = a * alpha", "a_c = 0.03"),
    "fix, one plus": fix_spec("published a_c, alpha' = (1 + a) * alpha", "a_c = 0.03"),
    "fix, chosen": fix_spec("a_c chosen on the selection pool", "a_c = 0.03 (book: chosen)", primary=True),
    "fix, labels swapped": ClaimSpec(
        claim="The chosen majority fix also reduces the bias with the label words swapped",
        paper="implicit; the book's control",
        metric="majority shift without minus with the chosen fix (nats), labels swapped",
        direction="increase", smallest_effect=0.025,
        smallest_effect_reason="about 22% of the smallest bias that counts (0.1 nats)",
        control="the original assignment", unit=SEEDS, precondition=BIAS),
    "recency fix": ClaimSpec(
        claim="Scoring the in-context heads without positions (rotation removed) reduces recency bias",
        paper="17% on average (Llama-7B 23.4%, GPT-J 10.6%), std of accuracy over orders",
        metric="log(spread before) - log(spread after); spread = std over orders of the gold-label logit margin, mean over queries",
        direction="increase", smallest_effect=round(-np.log(1 - 0.085), 3),
        smallest_effect_reason="an 8.5% smaller spread, half the paper's 17%",
        control="the same edit on random head sets", unit="demonstration set", precondition=LEARNS, primary=True),
    "attention spread": ClaimSpec(
        claim="The recency fix lowers the attention spread in the in-context heads (about 40%)",
        paper="about 40% lower std of attention",
        metric="log(spread before) - log(spread after); spread = std over orders of the attention one demonstration's label gets",
        direction="increase", smallest_effect=round(-np.log(1 - 0.2), 3),
        smallest_effect_reason="a 20% smaller spread, half the paper's 40%",
        control="the same edit on random head sets", unit="demonstration set", precondition=LEARNS, primary=True),
}
declared_claims_table(claim_specs)

# %%
info = iu.load_model(MODEL)
task = iu.load_task(TASK)
ranking = find_in_context_heads(info, task, N_RANK_PROMPTS, RANK_DEMOS_PER_CLASS, seed=SEED, batch_size=8)
heads = ranking.top(N_HEADS)
all_heads = info.all_heads
deep_heads = [(l, h) for l, h in all_heads if l >= info.n_layers // 2]  # where anchor re-weighting acts


def random_head_sets(avoid, n, seed):
    rng = random.Random(seed)
    outside = [lh for lh in all_heads if lh not in avoid]
    return [sorted(rng.sample(outside, N_HEADS)) for _ in range(n)]


random_sets = random_head_sets(heads, N_RANDOM, SEED)
words = build_prompt_groups(task, 1, 2, 1, seed=SEED)[0][0].label_words
classes = task.classes
print(f"{MODEL}: in-context heads {heads}; {N_RANDOM} random sets of {N_HEADS} heads (e.g. {random_sets[0]}); "
      f"anchor re-weighting in the {len(deep_heads)} heads of layers {info.n_layers // 2}-{info.n_layers - 1}")
print(f"labels: {', '.join(f'{c} -> {words[c]}' for c in classes)}; {DEMOS_PER_CLASS} demonstrations per label")

# %% [markdown]
# ## 1. Majority-label bias
#
# Each seed is one demonstration set with its own queries: the balanced prompts, and the same
# prompts with one (random) demonstration of label $c$ removed, for each label $c$ in turn, plus
# calibration prompts for each of the three contexts (same demonstrations, queries from the
# demonstration pool).

# %%
def remove_one(demos, cls, rng):
    """The demonstrations without one randomly chosen demonstration of class `cls`."""
    drop = rng.choice([j for j, (_, c) in enumerate(demos) if c == cls])
    return [d for j, d in enumerate(demos) if j != drop]


def majority_design(task, seed, n_queries, pool="evaluation", label_words="foo/bar"):
    """{context: (prompts, calibration prompts)} for context "balanced" and each minority class."""
    group = build_prompt_groups(task, 1, n_queries, DEMOS_PER_CLASS, label_words=label_words, seed=seed, pool=pool)[0]
    cal = calibration_prompts(task, group, per_class=N_CALIBRATION, seed=seed)
    rng = random.Random(seed)
    design = {"balanced": (group, cal)}
    for c in task.classes:
        demos = remove_one(group[0].demos, c, rng)
        design[c] = tuple([render_prompt(demos, p.query, p.gold, p.label_words) for p in ps] for ps in (group, cal))
    return design


def log_odds(logits, m):
    """log p(majority) - log p(minority) over the two label words, class m the minority; logits (..., n_prompts, 2)."""
    lp = torch.log_softmax(logits.float(), -1)
    return lp[..., 1 - m] - lp[..., m]


def log_prior(logits):
    """Log of the mean label probabilities of calibration prompts: what output calibration removes."""
    lp = torch.log_softmax(logits.float(), -1)
    return torch.logsumexp(lp, -2) - np.log(lp.shape[-2])


def take(runs, start, stop):
    """The runs of prompts start..stop-1 only."""
    return type(runs)(runs.fixes, runs.label_logits[:, start:stop], {l: a[:, start:stop] for l, a in runs.attention.items()})


def run_contexts(design, contexts, fixes, record_layers=()):
    """{context: LastTokenRuns} for the given contexts of one design, all in one call."""
    prompts = [p for c in contexts for part in design[c] for p in part]
    runs, out, at = last_token_runs(info, prompts, fixes, record_layers, progress=True), {}, 0
    for c in contexts:
        n = sum(len(part) for part in design[c])
        out[c], at = take(runs, at, at + n), at + n
    return out


def minority_labels(design):
    return [c for c in design if c != "balanced"]


def label_share(runs, prompts, minority, heads_):
    """Per prompt: share of the minority label in the heads' attention to label positions (mean over heads)."""
    batch = encode_prompts(info, prompts)
    shares = []
    for i, (pos, cls) in enumerate(zip(batch.label_positions, batch.label_classes)):
        pos, is_min = torch.tensor(pos), torch.tensor([c == minority for c in cls])
        per_head = []
        for l, h in heads_:
            a = runs.attention[l][0, i, h, pos]
            per_head.append((a[is_min].sum() / a.sum()).item())
        shares.append(np.mean(per_head))
    return np.array(shares)


def seed_metrics(design, runs, fix_names, heads_):
    """Per fix: majority shift (mean over queries and minority labels) and, for "no fix", the
    output-calibration baseline and the attention-share fall; plus the balanced prompts' accuracy."""
    n_q = len(design["balanced"][0])
    bal = runs["balanced"].label_logits[0]
    bal_prior = log_prior(bal[n_q:])
    gold = torch.tensor([minority_labels(design).index(p.gold) for p in design["balanced"][0]])
    correct = ((torch.log_softmax(bal[:n_q], -1) - bal_prior).argmax(-1) == gold).float().numpy()
    shift = {name: [] for name in fix_names}
    shift["output calibration"], share_fall, share_balanced = [], [], []
    for m, c in enumerate(minority_labels(design)):
        before = log_odds(bal[:n_q], m)
        imb = runs[c].label_logits
        for i, name in enumerate(fix_names):
            shift[name].append(log_odds(imb[i, :n_q], m) - before)
        prior = log_prior(imb[0, n_q:])
        calibrated = log_odds(imb[0, :n_q], m) - (prior[1 - m] - prior[m])
        shift["output calibration"].append(calibrated - (before - (bal_prior[1 - m] - bal_prior[m])))
        if runs["balanced"].attention:
            share_balanced.append(label_share(runs["balanced"], design["balanced"][0], c, heads_))
            share_fall.append(share_balanced[-1] - label_share(runs[c], design[c][0], c, heads_))
    out = {name: torch.stack(v).mean().item() for name, v in shift.items()}
    out["share fall"] = float(np.mean(share_fall)) if share_fall else float("nan")
    out["share balanced"] = float(np.mean(share_balanced)) if share_balanced else float("nan")
    return out, correct


def imbalanced_scores(runs, design, fix_index):
    """Calibrated (balanced prompts' prior) correctness and the logit difference, per one-removed prompt."""
    n_q = len(design["balanced"][0])
    bal_prior = log_prior(runs["balanced"].label_logits[0, n_q:])
    rows = []
    for c in minority_labels(design):
        logits = runs[c].label_logits[fix_index, :n_q]
        gold = torch.tensor([minority_labels(design).index(p.gold) for p in design[c][0]])
        pred = (torch.log_softmax(logits, -1) - bal_prior).argmax(-1)
        rows.append(np.c_[(pred == gold).numpy(), (logits[:, 1] - logits[:, 0]).numpy(), gold.numpy(),
                          (logits.argmax(-1) == gold).numpy()])
    return np.concatenate(rows)


# %% [markdown]
# ### Choosing $a_c$ and fitting the anchors (selection pool)
#
# On `N_SELECT_SEEDS` demonstration sets whose queries come from the selection pool: every $a_c$
# of both readings (the no-edit value of each included), the fix on the in-context heads; the
# chosen $a_c$ gives the smallest |majority shift|. The anchor constants are fitted on the same
# prompts by the gold label's log-loss: $(\beta_\text{minority}, \beta_\text{majority})$ on the
# one-removed prompts, $(\beta_\text{foo}, \beta_\text{bar})$ on the balanced ones.

# %%
a_v = DEMOS_PER_CLASS / (DEMOS_PER_CLASS - 1)
grid = [("multiply", a) for a in sorted(set(A_C_MULTIPLY) | {1 / a_v})] + [("one_plus", a) for a in A_C_ONE_PLUS]
multiplier = {(r, a): (a * a_v if r == "multiply" else 1 + a * a_v) for r, a in grid}
anchor_grid = sorted(set(ANCHOR_BETAS) | {0.0})  # 0: no re-weighting, always in the grid
betas = [(b1, b2) for b1 in anchor_grid for b2 in anchor_grid]


def minority_fix(on, reading, a_c, name=None):
    return Fix(name or f"{reading} a_c={a_c:g}", tuple(on), lambda b, r=reading, a=a_c: minority_scale(b, a, r))


def role_anchor(b_min, b_maj, name=None):
    return Fix(name or f"anchor {b_min:+g}/{b_maj:+g}", tuple(deep_heads),
               lambda b: role_scale(b, float(np.exp(b_min)), float(np.exp(b_maj))))


def class_anchor(b_first, b_second, name=None):
    scales = {classes[0]: float(np.exp(b_first)), classes[1]: float(np.exp(b_second))}
    return Fix(name or f"class anchor {b_first:+g}/{b_second:+g}", tuple(deep_heads), lambda b: class_scale(b, scales))


def gold_log_loss(logits, prompts):
    gold = torch.tensor([classes.index(p.gold) for p in prompts])
    return -torch.log_softmax(logits.float(), -1)[..., torch.arange(len(gold)), gold].mean(-1)


sweep_fixes = [Fix("no fix")] + [minority_fix(heads, r, a) for r, a in grid] + [role_anchor(*b) for b in betas]
sel_designs = [majority_design(task, SEED + 1000 + s, N_QUERIES, pool="selection") for s in range(N_SELECT_SEEDS)]
sel_balanced = run_contexts({s: d["balanced"][:1] for s, d in enumerate(sel_designs)}, range(N_SELECT_SEEDS),
                            [class_anchor(*b) for b in betas])
sel_removed = run_contexts({(s, c): d[c][:1] for s, d in enumerate(sel_designs) for c in classes},
                           [(s, c) for s in range(N_SELECT_SEEDS) for c in classes], sweep_fixes)
sel_shift = np.zeros((N_SELECT_SEEDS, len(sweep_fixes)))
sel_loss = np.zeros((N_SELECT_SEEDS, len(sweep_fixes)))
class_loss = np.zeros((N_SELECT_SEEDS, len(betas)))
for s, design in enumerate(sel_designs):
    bal_prompts = design["balanced"][0]
    bal = sel_balanced[s]
    class_loss[s] = gold_log_loss(bal.label_logits, bal_prompts).numpy()
    for m, c in enumerate(classes):
        runs = sel_removed[(s, c)]
        base = log_odds(bal.label_logits[betas.index((0.0, 0.0))], m)  # the no-edit anchor: the balanced prompts as they are
        sel_shift[s] += (log_odds(runs.label_logits, m) - base).mean(-1).numpy() / len(classes)
        sel_loss[s] += gold_log_loss(runs.label_logits, design[c][0]).numpy() / len(classes)

sweep = pd.DataFrame({"fix": [f.name for f in sweep_fixes], "majority shift": sel_shift.mean(0), "log-loss": sel_loss.mean(0)})
in_grid = sweep.iloc[1 : 1 + len(grid)].copy()
in_grid["reading"], in_grid["a_c"] = [r for r, _ in grid], [a for _, a in grid]
in_grid["multiplier"] = [multiplier[g] for g in grid]
best = in_grid["majority shift"].abs().idxmin()
CHOSEN = grid[best - 1]
anchor_rows = sweep.iloc[1 + len(grid):]
ANCHOR_ROLE = betas[int(np.argmin(anchor_rows["log-loss"].to_numpy()))]
ANCHOR_CLASS = betas[int(np.argmin(class_loss.mean(0)))]
print(f"selection pool, no fix: majority shift {sweep['majority shift'][0]:+.3f} nats")
print(f"chosen: reading {CHOSEN[0]}, a_c = {CHOSEN[1]:g} (minority attention x {multiplier[CHOSEN]:.3f}); "
      f"anchors: beta(minority, majority) = {ANCHOR_ROLE}, beta({words[classes[0]]}, {words[classes[1]]}) = {ANCHOR_CLASS}")
in_grid[["reading", "a_c", "multiplier", "majority shift", "log-loss"]].round(3)

# %%
fig, ax = plt.subplots(figsize=(7, 3.2))
for reading, marker in [("multiply", "o"), ("one_plus", "s")]:
    part = in_grid[in_grid.reading == reading]
    ax.plot(part.multiplier, part["majority shift"], marker=marker, ls="-", label=f"reading {reading}")
ax.axhline(0, color="black", lw=0.8)
ax.axvline(1, color="grey", ls=":", label="no edit (multiplier 1)")
ax.axvline(multiplier[CHOSEN], color="C2", ls="--", label=f"chosen ({CHOSEN[0]}, a_c = {CHOSEN[1]:g})")
for reading in ("multiply", "one_plus"):
    ax.annotate(f"published a_c, {reading}", (multiplier[(reading, PUBLISHED_A_C)],
                in_grid[(in_grid.reading == reading) & (in_grid.a_c == PUBLISHED_A_C)]["majority shift"].item()),
                fontsize=7, xytext=(4, 6), textcoords="offset points")
ax.set_xscale("log")
ax.set_xlabel("multiplier of the minority label's attention in the in-context heads")
ax.set_ylabel("majority shift (nats)")
ax.set_title(f"Selection pool ({N_SELECT_SEEDS} sets x {N_QUERIES} queries x 2 minority labels)", fontsize=10)
ax.legend(fontsize=7)
plt.show()

# %% [markdown]
# ### The evaluation seeds
#
# Each seed runs the balanced prompts once, and each one-removed context under every fix: none,
# the three variants of the majority fix on the in-context heads, the anchor re-weighting, and
# the three variants on random head sets (`RANDOM_PER_SEED` sets for the chosen variant, one for
# each published variant; the sets cycle so that all `N_RANDOM` are used). Attention is recorded
# in the in-context heads' layers.

# %%
published = {"fix, multiply": ("multiply", PUBLISHED_A_C), "fix, one plus": ("one_plus", PUBLISHED_A_C), "fix, chosen": CHOSEN}


def majority_fixes(heads_, random_sets_, seed_of):
    """The conditions of the one-removed prompts. Random head sets differ between seeds (seed_of:
    a prompt's seed), so one run serves every seed."""
    def random_heads(index):  # index(seed) -> which random set
        return lambda p: tuple(random_sets_[index(seed_of(p)) % len(random_sets_)])

    fixes = [Fix("no fix")] + [minority_fix(heads_, r, a, name) for name, (r, a) in published.items()]
    fixes.append(role_anchor(*ANCHOR_ROLE, name="anchor re-weighting"))
    for j in range(RANDOM_PER_SEED):
        fixes.append(Fix(f"random: fix, chosen #{j}", random_heads(lambda s, j=j: s * RANDOM_PER_SEED + j),
                         minority_fix((), *CHOSEN).scale))
    for k, name in enumerate(("fix, multiply", "fix, one plus")):
        fixes.append(Fix(f"random: {name} #0", random_heads(lambda s, k=k: s + 7 * k + 3), minority_fix((), *published[name]).scale))
    return fixes


def majority_experiment(task_, ranking_, random_sets_, n_seeds, n_queries, seed0, label_words="foo/bar", full=True):
    """Per seed metrics (a DataFrame), the balanced prompts' correctness with seed labels, and the
    one-removed prompts' scores per fix. full=False: only no fix and the chosen fix."""
    heads_ = ranking_.top(N_HEADS)
    layers = sorted({l for l, _ in heads_}) if full else ()
    designs = [majority_design(task_, seed0 + s, n_queries, label_words=label_words) for s in range(n_seeds)]
    for design in designs:
        ranking_.check_held_out(design["balanced"][0])  # no query that ranked the heads
    balanced = {(s, "balanced"): design["balanced"] for s, design in enumerate(designs)}
    removed = {(s, c): design[c] for s, design in enumerate(designs) for c in minority_labels(design)}
    seed_of = {tuple(parts[0][0].demos): s for (s, _), parts in removed.items()}
    fixes = (majority_fixes(heads_, random_sets_, lambda p: seed_of[tuple(p.demos)]) if full
             else [Fix("no fix"), minority_fix(heads_, *CHOSEN, "fix, chosen")])
    names = [f.name for f in fixes]
    print(f"{task_.name}: {n_seeds} seeds, every seed's prompts in one run per condition set")
    runs_all = {**run_contexts(balanced, list(balanced), [Fix("no fix")], layers),  # the balanced prompts
                **run_contexts(removed, list(removed), fixes, layers)}  # the one-removed prompts under every fix
    rows, correct, clusters, scores = [], [], [], {}
    for s, design in enumerate(designs):
        runs = {"balanced": runs_all[(s, "balanced")], **{c: runs_all[(s, c)] for c in minority_labels(design)}}
        metrics, ok = seed_metrics(design, runs, names, heads_)
        rows.append({"seed": s, **metrics})
        correct.append(ok)
        clusters += [s] * len(ok)
        for i, name in enumerate(names):
            scores.setdefault(name, []).append(imbalanced_scores(runs, design, i))
    table = pd.DataFrame(rows)
    for name in published:
        random_cols = [c for c in table.columns if c.startswith(f"random: {name} #")]
        if name in table and random_cols:
            table[f"random: {name}"] = table[random_cols].mean(axis=1)
    return table, np.concatenate(correct), np.array(clusters), {k: np.concatenate(v) for k, v in scores.items()}


per_seed, balanced_correct, balanced_clusters, imb_scores = majority_experiment(task, ranking, random_sets, N_SEEDS, N_QUERIES, SEED + 10)
learns = mean_interval(balanced_correct, balanced_clusters, unit=SEEDS)
print(f"calibrated accuracy on the balanced prompts: {learns} ({len(balanced_correct)} prompts, {N_SEEDS} seeds)")


def shift_interval(values):
    values = np.asarray(values, float)
    return mean_interval(values, np.arange(len(values)), unit=SEEDS)


def fix_summary(per_seed, imb_scores):
    """One row per condition: majority shift [interval], its fall from no fix [interval], a derived
    % reduction, and the one-removed prompts' calibrated accuracy and AUC."""
    rows = []
    before = per_seed["no fix"].to_numpy()
    for name in [c for c in per_seed.columns if c not in ("seed", "share fall", "share balanced") and "#" not in c]:
        after = per_seed[name].to_numpy()
        fall = shift_interval(before - after)
        sc = imb_scores.get(name, imb_scores["no fix"])
        auc = iu.stats.auc(sc[sc[:, 2] == 1, 1], sc[sc[:, 2] == 0, 1])
        rows.append({"condition": name, "majority shift": str(shift_interval(after)), "fall from no fix": str(fall),
                     "reduction (derived)": fall.estimate / before.mean() if before.mean() > 0 else float("nan"),
                     "calibrated accuracy": sc[:, 0].mean() if name in imb_scores else float("nan"),
                     "raw accuracy": sc[:, 3].mean() if name in imb_scores else float("nan"),
                     "AUC": auc if name in imb_scores else float("nan")})
    return pd.DataFrame(rows).set_index("condition")


majority_table = fix_summary(per_seed, imb_scores)
majority_table.round(3)

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 3.6), gridspec_kw={"width_ratios": [3, 1]})
cols = ["no fix", "fix, multiply", "fix, one plus", "fix, chosen", "random: fix, chosen", "anchor re-weighting", "output calibration"]
long = per_seed.melt(id_vars="seed", value_vars=cols, var_name="condition", value_name="majority shift (nats)")
sns.pointplot(data=long, x="condition", y="majority shift (nats)", errorbar=("ci", 95), ax=axes[0], linestyle="none")
sns.stripplot(data=long, x="condition", y="majority shift (nats)", ax=axes[0], alpha=0.3, size=3, color="grey")
axes[0].axhline(0, color="black", lw=0.8)
axes[0].tick_params(axis="x", labelrotation=25, labelsize=8)
axes[0].set_title(f"Majority shift per seed ({N_SEEDS} seeds; mean and 95% CI)", fontsize=10)
axes[1].hist(per_seed["share fall"], bins=10, color="C1")
axes[1].axvline(0, color="black", lw=0.8)
axes[1].set_xlabel("fall of the minority label's attention share")
axes[1].set_title(f"In-context heads {heads}", fontsize=9)
plt.tight_layout()
plt.show()

# %% [markdown]
# ### Label-swap control
#
# The same design with the two label words swapped (the first class is now "bar"): a bias towards
# the *majority* must not depend on which word it is.

# %%
swap_seed, _, _, swap_scores = majority_experiment(task, ranking, random_sets, N_SWAP_SEEDS, N_QUERIES, SEED + 500,
                                                   label_words=(words[classes[1]], words[classes[0]]), full=False)
fix_summary(swap_seed, swap_scores).round(3)

# %% [markdown]
# ## 2. Recency bias
#
# Each demonstration set (seed `SEED + 100 + d`) is shown in `N_ORDERS` distinct random orders,
# each followed by the same `N_ORDER_QUERIES` queries (and calibration queries). Conditions: no
# fix, the position-free fix on the in-context heads, the per-word anchor re-weighting, and the
# position-free fix on `RANDOM_PER_SET` random head sets per demonstration set. The *attention
# spread* is the standard deviation, over orders, of the attention that one demonstration's label
# receives from one query in an in-context head: with no positional effect the same content would
# get the same attention wherever it stands.

# %%
def order_prompts(d):
    seed = SEED + 100 + d
    group = build_prompt_groups(task, 1, N_ORDER_QUERIES, DEMOS_PER_CLASS, seed=seed)[0]
    ranking.check_held_out(group)
    cal = calibration_prompts(task, group, per_class=N_CALIBRATION, seed=seed)
    rng, demos, seen, orders = random.Random(seed), list(group[0].demos), set(), []
    while len(orders) < N_ORDERS:
        rng.shuffle(demos)
        if tuple(demos) not in seen:
            seen.add(tuple(demos))
            orders.append([render_prompt(list(demos), p.query, p.gold, p.label_words) for p in group + cal])
    return orders


def two_class_auc(logits, gold):
    """AUC of logit(second class) - logit(first) over all (order, query) pairs; logits (orders, queries, 2)."""
    diff = (logits[..., 1] - logits[..., 0]).numpy()
    return iu.stats.auc(diff[:, gold.numpy() == 1].ravel(), diff[:, gold.numpy() == 0].ravel())


rotary = info.positions == "rotary"
recency_sets = []
if not rotary:
    print(f"{MODEL} has {info.positions} positions: the position-free fix is not defined (see the method); part 2 is skipped.")
else:
    n_q = N_ORDER_QUERIES
    for d in tqdm(range(N_DEMO_SETS), desc="recency: demonstration sets"):
        orders = order_prompts(d)
        fixes = [Fix("no fix"), Fix("fix: in-context heads", tuple(heads), positionless=True),
                 class_anchor(*ANCHOR_CLASS, name="anchor re-weighting")]
        fixes += [Fix(f"random #{j}", tuple(random_sets[(d * RANDOM_PER_SET + j) % N_RANDOM]), positionless=True)
                  for j in range(RANDOM_PER_SET)]
        runs = last_token_runs(info, [p for o in orders for p in o], fixes, record_layers=sorted({l for l, _ in heads}),
                               progress=True)
        per_order = len(orders[0])
        logits = runs.label_logits.view(len(fixes), N_ORDERS, per_order, 2)
        gold = torch.tensor([classes.index(p.gold) for p in orders[0]])
        sign = (gold * 2 - 1).float()  # margin = logit(gold) - logit(other)
        margin = (logits[..., 1] - logits[..., 0]) * sign
        prior = log_prior(logits[:, :, n_q:])  # (fixes, orders, 2): each order's own calibration prompts
        calibrated = margin[:, :, :n_q] - (prior[..., 1] - prior[..., 0])[..., None] * sign[:n_q]
        # attention to each demonstration's label, by demonstration (same content in every order)
        att = np.zeros((len(fixes), N_ORDERS, n_q, len(heads), 2 * DEMOS_PER_CLASS))
        for o, prompts in enumerate(orders):
            batch = encode_prompts(info, prompts[:1])  # every query of an order has the same label positions
            where = {x: p for (x, _), p in zip(prompts[0].demos, batch.label_positions[0])}
            for j, (x, _) in enumerate(orders[0][0].demos):
                for k, (l, h) in enumerate(heads):
                    att[:, o, :, k, j] = runs.attention[l][:, o * per_order: o * per_order + n_q, h, where[x]].numpy()
        recency_sets.append({
            "names": [f.name for f in fixes],
            "spread": margin[:, :, :n_q].std(1, unbiased=True).mean(-1).numpy(),
            "spread calibrated": calibrated.std(1, unbiased=True).mean(-1).numpy(),
            "attention spread": att.std(1, ddof=1).mean((1, 2, 3)),
            "mean |margin|": margin[:, :, :n_q].abs().mean((1, 2)).numpy(),
            "calibrated accuracy": (calibrated > 0).float().mean((1, 2)).numpy(),
            "auc": [two_class_auc(logits[i, :, :n_q], gold[:n_q]) for i in range(len(fixes))],
            "distance curve": [(i, o, 2 * DEMOS_PER_CLASS - 1 - jj, att[i, o, :, :, j].mean())
                               for i in (0, 1) for o in range(N_ORDERS)
                               for j, (x, _) in enumerate(orders[0][0].demos)
                               for jj, (y, _) in enumerate(orders[o][0].demos) if y == x],
        })


def recency_rows():
    rows = []
    for d, r in enumerate(recency_sets):
        for i, name in enumerate(r["names"]):
            rows.append({"set": d, "condition": "random heads" if name.startswith("random") else name,
                         "margin spread": r["spread"][i], "attention spread": r["attention spread"][i],
                         "margin spread, own-order calibration": r["spread calibrated"][0] if i == 0 else np.nan,
                         "mean |margin|": r["mean |margin|"][i], "calibrated accuracy": r["calibrated accuracy"][i],
                         "AUC": r["auc"][i]})
    return pd.DataFrame(rows).groupby(["set", "condition"], sort=False).mean().reset_index()


if rotary:
    recency_df = recency_rows()
    recency_table = recency_df.groupby("condition", sort=False).mean().drop(columns="set")
    base = recency_df[recency_df.condition == "no fix"].set_index("set")
    for col in ("margin spread", "attention spread"):
        recency_table[f"log ratio, {col}"] = [
            np.mean(np.log(base[col]) - np.log(recency_df[recency_df.condition == c].set_index("set")[col]))
            for c in recency_table.index]
    recency_table.round(3)

# %%
if rotary:
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    sns.stripplot(data=recency_df, x="condition", y="margin spread", hue="set", ax=axes[0], size=5, legend=False)
    axes[0].set_title("Spread of the gold margin over orders (one dot per set)", fontsize=10)
    axes[0].tick_params(axis="x", labelrotation=15, labelsize=8)
    curve = pd.DataFrame([c for r in recency_sets for c in r["distance curve"]],
                         columns=["fix", "order", "distance from the end", "attention"])
    curve["condition"] = curve.fix.map({0: "no fix", 1: "fix: in-context heads"})
    sns.lineplot(data=curve, x="distance from the end", y="attention", hue="condition", marker="o", ax=axes[1])
    axes[1].set_title("In-context heads: attention to a label vs its distance\n(demonstrations from the end)", fontsize=10)
    axes[1].invert_xaxis()
    plt.tight_layout()
    plt.show()

# %% [markdown]
# ## 3. A sentence task
#
# The majority-bias design on `OTHER_TASK`, with its own in-context heads (chapter 3's saved
# ranking for that task if there is one, else ranked here on its selection pool) and its own
# random head sets; $a_c$ and the anchor constants are the ones chosen above on the main task's
# selection pool (fewer seeds: sentence prompts are several times longer).

# %%
other_task = iu.load_task(OTHER_TASK)
other_ranking = find_in_context_heads(info, other_task, N_RANK_PROMPTS, DEMOS_PER_CLASS, seed=SEED, batch_size=8)
other_heads = other_ranking.top(N_HEADS)
other_random = random_head_sets(other_heads, N_RANDOM, SEED + 1)
other_seed, other_correct, other_clusters, other_scores = majority_experiment(
    other_task, other_ranking, other_random, N_OTHER_SEEDS, N_OTHER_QUERIES, SEED + 10)
other_learns = mean_interval(other_correct, other_clusters, unit=SEEDS)
print(f"{OTHER_TASK}: in-context heads {other_heads}; calibrated accuracy on balanced prompts {other_learns}")
fix_summary(other_seed, other_scores).round(3)

# %% [markdown]
# ## Verdicts

# %%
def chosen_edit(key):
    """A measured precondition of the chosen variant: the selection pool chose an edit at all (a
    multiplier of 1 is the no-edit value, and a no-edit 'fix' has nothing to test)."""
    m = multiplier[published[key]]
    return Check("an edit to test", abs(m - 1) > 1e-9,
                 f"{published[key][0]}, a_c = {published[key][1]:g}: minority attention x {m:.3f}"
                 + ("" if abs(m - 1) > 1e-9 else ", the no-edit value chosen on the selection pool"))


def fix_checks(key, before, what):
    """Design checks of a fix: it can remove at most the bias there is (the no-fix shift must leave
    the smallest effect between it and 0), and the chosen variant must be an edit."""
    checks = [room_to_move(float(np.mean(before)), 0.0, claim_specs[key].smallest_effect,
                           f"majority shift without the fix ({what}, nats)")]
    return checks + ([chosen_edit("fix, chosen")] if key in ("fix, chosen", "fix, labels swapped") else [])


def grade_majority(per_seed, learns_ci, task_name, heads_, keys=("majority bias", "attention explanation", "fix, multiply",
                                                                  "fix, one plus", "fix, chosen"), exploratory=False):
    ok = learns_ci.low > 0.5
    out = []
    bias = shift_interval(per_seed["no fix"])
    bias_ok = ok and bias.low > 0
    for key in keys:
        checks = []
        if key == "majority bias":
            ci, book, pre = bias, f"{len(per_seed)} seeds: majority shift {bias} nats (clean calibrated accuracy {learns_ci})", ok
        elif key == "attention explanation":
            ci = shift_interval(per_seed["share fall"])
            book, pre = f"heads {heads_}: minority share of label attention falls {ci}", ok
            checks = [room_to_move(float(per_seed["share balanced"].mean()), 0.0, claim_specs[key].smallest_effect,
                                   f"{task_name}: a label's share of the in-context heads' label attention, balanced prompts")]
        else:
            before, after = per_seed["no fix"].to_numpy(), per_seed[key].to_numpy()
            beyond = (before - after) - (before - per_seed[f"random: {key}"].to_numpy())
            ci = shift_interval(beyond)
            r, a = published[key]
            book = (f"{r}, a_c = {a:g} (minority attention x {(a * a_v if r == 'multiply' else 1 + a * a_v):.3f}): "
                    f"shift {before.mean():+.3f} -> {after.mean():+.3f} nats; fall {shift_interval(before - after)}; "
                    f"beyond random heads {ci}")
            pre = bias_ok
            checks = fix_checks(key, before, task_name)
        out.append(grade(claim_specs[key], ci, book, precondition_met=pre, checks=checks, task=task_name,
                         exploratory=exploratory))
    return out


graded = grade_majority(per_seed, learns, TASK, heads)
swap_fall = shift_interval(swap_seed["no fix"] - swap_seed["fix, chosen"])
swap_bias = shift_interval(swap_seed["no fix"])
graded.append(grade(claim_specs["majority bias, labels swapped"], swap_bias,
                    f"{N_SWAP_SEEDS} seeds, {classes[0]} -> {words[classes[1]]}: majority shift {swap_bias} nats",
                    precondition_met=learns.low > 0.5, task=TASK))
graded.append(grade(claim_specs["fix, labels swapped"], swap_fall,
                    f"chosen fix ({CHOSEN[0]}, a_c = {CHOSEN[1]:g}) on swapped labels: shift falls {swap_fall} nats",
                    precondition_met=learns.low > 0.5 and swap_bias.low > 0,
                    checks=fix_checks("fix, labels swapped", swap_seed["no fix"], "labels swapped"), task=TASK))
if rotary:
    for key, col in [("recency fix", "margin spread"), ("attention spread", "attention spread")]:
        ratio = np.log(base[col].to_numpy()) - np.log(recency_df[recency_df.condition == "fix: in-context heads"].set_index("set")[col].to_numpy())
        ci = mean_interval(ratio, np.arange(len(ratio)), unit="demonstration set")
        rnd = recency_table.loc["random heads", f"log ratio, {col}"]
        book = (f"{N_DEMO_SETS} sets x {N_ORDERS} orders x {N_ORDER_QUERIES} queries: {col} "
                f"{base[col].mean():.3f} -> {recency_table.loc['fix: in-context heads', col]:.3f}, log ratio {ci} "
                f"({1 - np.exp(-ci.estimate):+.0%}); random heads' log ratio {rnd:+.3f} ({N_DEMO_SETS * RANDOM_PER_SET} sets)")
        graded.append(grade(claim_specs[key], ci, book, precondition_met=learns.low > 0.5, task=TASK))
else:
    for key in ("recency fix", "attention spread"):
        graded.append(grade(claim_specs[key], None, f"{MODEL}: learned absolute positions", task=TASK,
                            precondition_met=learns.low > 0.5,
                            differs="no rotary positions: the position-free fix is not defined for this model"))
graded_other = grade_majority(other_seed, other_learns, OTHER_TASK, other_heads,
                              keys=("majority bias", "attention explanation", "fix, chosen"), exploratory=True)
key_of = {id(spec): key for key, spec in claim_specs.items()}
print("Design checks (measured before the verdicts; a failing check makes its row not testable):")
for g in graded + graded_other:
    for c in g.checks:
        print(f"  {g.task}, {key_of[id(g.spec)]}: {c}")
claims_table(graded + graded_other)

# %% [markdown]
# The headline claims on the two tasks side by side:

# %%
headline = ("majority bias", "attention explanation", "fix, chosen")
per_task_table([g for g in graded + graded_other if g.spec in [claim_specs[k] for k in headline]])

# %% [markdown]
# **Reading the result.** Both fixes are one-line edits of the attention weights of a few heads,
# and the tests check each against a hand computation and against full passes on tiny models; what
# they do to the biases is an empirical question, answered by the tables with their intervals,
# beside the random-head control, the output calibration {cite:p}`zhou2024batch` (which needs no
# knowledge of the heads) and the anchor re-weighting {cite:p}`wang2023label` (which learns its
# constants). Four points help to read them.
#
# * The published $a_c = 0.03$ means opposite things under the two readings. Read as a multiplier
#   it removes 96% of the minority label's attention in those heads: the majority shift grows by
#   nats and the AUC falls to chance, so that reading cannot be what reduced the bias in the paper.
#   Read as "one plus" it adds 4%, a gentle edit of the kind the selection-pool sweep above favours:
#   the figure shows where the shift crosses zero as the multiplier grows past 1.
# * The fix claims are graded only if the bias exists. Removing one of four demonstrations moves a
#   few tenths of a nat in some seeds and the other way in others (which demonstration is removed
#   matters); if the interval of the majority shift includes 0, the fix claims are "not testable",
#   and the settle column says how many seeds would decide the bias itself. A fix can remove at
#   most the bias there is, so each fix row also checks that the mean shift without it leaves the
#   smallest effect that counts (0.025 nats) above 0 ("room to move", printed before the table).
#   When the selection pool shows no bias either, the chosen $a_c$ is the no-edit value: the rule
#   picks "no fix" rather than an edit fitted to noise, and the chosen-fix rows are then not
#   testable ("an edit to test" fails): a no-edit fix measures nothing.
# * The explanation (the minority label's share of the in-context heads' attention falls) is
#   measured on the same prompts and does not need the prediction to move.
# * For recency, a smaller spread of the gold margin with an unchanged or larger mean margin and AUC
#   is a reduction of order sensitivity, not a flattening. The own-order output calibration removes
#   the part of the order effect that is a shift of the label prior; the anchor re-weighting scales
#   the attention itself, so its attention spread falls by construction.
#
# The model is a 270M model with 72 heads, not a 7B model with 1,024; the prompts are short word
# lists with 4 demonstrations per label. On Colab, run this chapter with a 7B model to compare with
# the paper at its scale.

# %%
save_results(
    "07_label_biases",
    {"model": MODEL, "task": TASK, "other_task": OTHER_TASK, "heads": heads, "other_heads": other_heads,
     "random_sets": random_sets, "chosen": {"reading": CHOSEN[0], "a_c": CHOSEN[1], "multiplier": multiplier[CHOSEN]},
     "anchor_role_betas": ANCHOR_ROLE, "anchor_class_betas": ANCHOR_CLASS,
     "selection_sweep": in_grid.to_dict(orient="records"),
     "majority": majority_table.reset_index().to_dict(orient="records"),
     "majority_per_seed": per_seed.to_dict(orient="records"),
     "recency": recency_table.reset_index().to_dict(orient="records") if rotary else None,
     "runtime_s": time.time() - start},
    graded + graded_other,
)
print(f"chapter runtime: {time.time() - start:.0f} s")
