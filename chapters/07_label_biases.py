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
# **Question.** In-context learning has well-known biases. *Majority-label bias*: the model leans
# towards the label that has more demonstrations. *Recency bias*: demonstrations near the end of the
# prompt weigh more, so accuracy depends on the order of the same demonstrations.
# {cite:t}`yu2024twotowers` explain both with the in-context heads of chapters 3-5. Softmax attention
# sums to one, so a label with more demonstrations collects more attention in total; and the rotary
# position inside $q \cdot k$ favours nearby label positions. They reduce each bias by editing only
# those heads: majority bias by 22% on average (Llama-7B 29.1%, GPT-J 14.9%), recency bias by 17%
# (Llama 23.4%, GPT-J 10.6%), with the attention spread in those heads about 40% lower. Does this
# hold for the small default model?
#
# **Method.** The in-context heads are found as in chapters 3 and 5 (same task, seed and ranking
# prompts). Both fixes act on those heads only, at the last position $T$ (`icl_utils.debias`):
#
# * **Majority fix.** Head $h$ writes $o_T = \sum_p \alpha_{T,p} W_O v_p$. At the label positions of
#   the minority label we scale the attention-weighted value-output vectors by $a = a_c \cdot a_v$,
#   with $a_v$ = majority count / minority count: $\alpha'_{T,p} = a\,\alpha_{T,p}$, without
#   renormalising (`scale_attention` with `minority_scale`). $a_c$ is chosen by a sweep on prompts from
#   the task's selection pool (never the evaluation pool) with one demonstration removed, and then used unchanged for the stronger imbalance
#   (there $a_v$ alone adapts $a$, as in the paper's formula).
# * **Recency fix.** The scores of those heads are computed from $q_T$ and $k_p$ with the rotary
#   rotation undone, $\alpha'_{T,p} = \mathrm{softmax}_p(s \cdot \mathrm{unrot}(q_T) \cdot
#   \mathrm{unrot}(k_p))$ over the keys the model lets $T$ see (`positionless_attention`). For
#   models with learned absolute positions (GPT-2) the position is mixed into the residual stream
#   before the first layer and cannot be removed from one head's $q$ and $k$; the book does not
#   apply this fix there (the function raises a `ValueError` that says so, and this chapter skips
#   part 2 with a message).
#
# **Metrics.** *Majority bias*: accuracy on balanced prompts minus accuracy on the same prompts with
# demonstration(s) of one label removed (each minority label in turn, averaged), over several
# independent seeds; reduction $= 1 - \text{bias}_\text{after}/\text{bias}_\text{before}$ with a
# bootstrap confidence interval over seeds. *Recency bias*: the standard deviation of accuracy over
# random orders of the same demonstrations. Chapter 1 showed that the default model's raw accuracy
# is dominated by a prior for one label word, so the headline metrics use **calibrated** accuracy,
# with the label prior estimated once per condition where the bias cannot hide in it: on the
# *balanced* prompts of the same seed (majority bias), pooled over *all* orders (recency bias). A
# per-prompt-set recalibration would remove exactly the shift we want to measure; it is shown as the
# output-calibration baseline {cite:p}`zhou2024batch` instead. Raw accuracy is shown beside it.
#
# **Prompts.** The heads come from chapter 5's ranking prompts (8 demonstrations per label); the
# bias experiments use 4 per label, so that removing one is a visible imbalance (4 against 3) and the
# many conditions fit the book's time budget on a CPU.
#
# **Controls.** The same edits on random heads (same number); overall accuracy and AUC after each
# fix (flattening predictions is not a fix); plain output calibration as a baseline.

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
RANK_DEMOS_PER_CLASS = 8  # the heads are found on chapter 5's ranking prompts (seed SEED)
N_RANK_PROMPTS = 16
N_HEADS = 3  # in-context heads that take the fixes (chapter 5's top 3); ~1% of heads on a 7B model
DEMOS_PER_CLASS = 4  # demonstrations per label in the bias experiments (8 or more on a GPU)
N_SEEDS = 6  # independent prompt sets for the majority bias (confidence intervals over seeds)
N_QUERIES = 12  # queries per seed, a multiple of 4: balanced over the gold label and over the minority label
REMOVED = [1, 2]  # demonstrations removed from the minority label: 1 is the paper's metric, 2 a stronger imbalance
A_C_GRID = [0.03, 0.8, 0.9, 1.0, 1.5]  # swept on held-out prompts; 0.03 is the published value (a_c = 1 / a_v is no edit)
N_HELDOUT = 24  # selection-pool prompts for the a_c sweep (never the evaluation pool), a multiple of 4
N_DEMO_SETS = 4  # recency: demonstration sets
N_ORDERS = 4  # random orders of each set
N_ORDER_QUERIES = 8  # queries asked after each order
N_BOOTSTRAP = 2000
SEED = 0
BATCH_SIZE = 16

# %%
import random
import time
from contextlib import nullcontext

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from tqdm.auto import tqdm

import icl_utils as iu
from icl_utils.debias import minority_scale, positionless_attention, scale_attention
from icl_utils.evaluation import batches, concat_scores, scores_from_logits
from icl_utils.heads import find_in_context_heads
from icl_utils.prompts import build_prompt_groups, render_prompt
from icl_utils.reporting import Claim, claims_table, save_results

sns.set_theme(style="whitegrid", context="notebook")
start = time.time()
info = iu.load_model(MODEL)
task = iu.load_task(TASK)
ranking = find_in_context_heads(info, task, N_RANK_PROMPTS, RANK_DEMOS_PER_CLASS, seed=SEED, batch_size=8)
heads = ranking.top(N_HEADS)
all_heads = info.all_heads
random_heads = random.Random(SEED).sample([lh for lh in all_heads if lh not in heads], N_HEADS)
watched = sorted(set(heads) | set(random_heads))
classes = task.classes
words = iu.build_prompts(task, 2, demos_per_class=1, seed=SEED)[0].label_words
print(f"{MODEL}: in-context heads {heads}; random control heads {random_heads}")
print(f"labels: {', '.join(f'{c} -> {words[c]}' for c in classes)}; {DEMOS_PER_CLASS} demonstrations per label")

# %% [markdown]
# One function runs every condition: one traced pass per batch, under an optional fix built from
# the batch (the fixes need its label and last positions), returning the label logits and the
# attention from the last position to every label position in the watched heads.

# %%
def run(prompts, fix=None):
    """ICLScores for `prompts` and, per prompt, {head: attention at each label position} (prompt order)."""
    logits, attention = [], []
    for chunk in batches(prompts, BATCH_SIZE):
        batch = iu.encode_prompts(info, chunk)
        with fix(batch) if fix else nullcontext():
            trace = iu.run_with_trace(info, batch,
                                      layers=sorted({l for l, _ in watched}), record=("attn", "logits"))
        logits.append(trace.logits[:, 0])
        for i, pos in enumerate(batch.label_positions):
            attention.append({lh: trace.attn[lh[0]][i, lh[1], 0, pos].float() for lh in watched})
    return scores_from_logits(info.tokenizer, torch.cat(logits), prompts), attention


def subset(scores, idx):
    return scores.take(idx)


def rebalance(on_heads, a_c):
    """The majority fix as a function of the batch: alpha' = a_c * a_v * alpha at minority label positions."""
    return lambda batch: scale_attention(info, on_heads, batch.last_positions, minority_scale(batch, a_c))


def remove_demos(prompt, cls, n, rng):
    """The same prompt with `n` randomly chosen demonstrations of class `cls` left out."""
    mine = [j for j, (_, c) in enumerate(prompt.demos) if c == cls]
    dropped = set(rng.sample(mine, n))
    demos = [d for j, d in enumerate(prompt.demos) if j not in dropped]
    return render_prompt(demos, prompt.query, prompt.gold, prompt.label_words)


def imbalanced_set(seed, n_prompts, removed, pool="evaluation"):
    """Balanced prompts (seed), and the same prompts with `removed` demonstrations of one label left
    out; prompt i loses label classes[(i // 2) % 2], so gold and minority label are crossed evenly."""
    if max(removed) >= DEMOS_PER_CLASS or n_prompts % 4:
        raise ValueError(f"REMOVED {removed} must stay below DEMOS_PER_CLASS ({DEMOS_PER_CLASS}), and the number of "
                         f"prompts ({n_prompts}) must be a multiple of 4 (gold label x minority label)")
    balanced = iu.build_prompts(task, n_prompts, demos_per_class=DEMOS_PER_CLASS, seed=seed, pool=pool)
    if pool == "evaluation":
        ranking.check_held_out(balanced)  # no query that ranked the heads
    rng = random.Random(seed)
    minority = [classes[(i // 2) % 2] for i in range(n_prompts)]
    return balanced, minority, {r: [remove_demos(p, m, r, rng) for p, m in zip(balanced, minority)] for r in removed}

# %% [markdown]
# ## 1. Majority-label bias and where it comes from
#
# The measure for each condition, on paired prompts (the same queries and demonstrations, minus the
# removed ones): calibrated accuracy with the label prior of the balanced prompts, per minority
# label, and the *majority shift*, the mean change of $\log p(\text{majority}) - \log
# p(\text{minority})$ from the balanced prompt to the imbalanced one (a continuous version of the
# same bias, in nats). First the sweep of $a_c$ on selection-pool prompts (seed `SEED + 1`), then the
# evaluation seeds.

# %%
def majority_metrics(bal, imb, minority):
    """Bias (accuracy points, balanced - imbalanced, averaged over the minority labels), calibrated and
    raw; the majority shift in nats; accuracy and AUC of the imbalanced prompts."""
    minority = np.array(minority)
    out = {"bias": 0.0, "bias_raw": 0.0}
    for m in classes:
        idx = np.flatnonzero(minority == m)
        b, i = subset(bal, idx), subset(imb, idx)
        out["bias"] += (b.accuracy("batch", reference=bal) - i.accuracy("batch", reference=bal)) / len(classes)
        out["bias_raw"] += (b.accuracy() - i.accuracy()) / len(classes)
    minor = torch.tensor([classes.index(m) for m in minority])
    rows = torch.arange(len(minor))

    def log_odds(s):  # log p(majority) - log p(minority), two labels
        lp = s.log_probs()
        return lp[rows, 1 - minor] - lp[rows, minor]

    out["majority_shift"] = (log_odds(imb) - log_odds(bal)).mean().item()
    # baseline: plain output calibration of the imbalanced prompts on themselves (one prior per minority label)
    shift_cal = []
    for m in classes:
        idx = np.flatnonzero(minority == m)
        prior_shift = subset(imb, idx).label_prior() - bal.label_prior()  # what self-calibration subtracts, beyond the balanced prior
        shift_cal.append(log_odds(imb)[idx] - log_odds(bal)[idx] - (prior_shift[1 - minor[idx]] - prior_shift[minor[idx]]))
    out["majority_shift_calibration_baseline"] = torch.cat(shift_cal).mean().item()
    out["accuracy"] = imb.accuracy("batch", reference=bal)
    out["accuracy_raw"] = imb.accuracy()
    out["auc"] = imb.auc()
    out["balanced_accuracy"] = bal.accuracy("batch")
    out["bias_calibration_baseline"] = sum(
        subset(bal, np.flatnonzero(minority == m)).accuracy("batch", reference=bal)
        - subset(imb, np.flatnonzero(minority == m)).accuracy("batch") for m in classes) / len(classes)
    return out


held_bal, held_minority, held_imb = imbalanced_set(SEED + 1, N_HELDOUT, REMOVED[:1], pool="selection")  # a_c is chosen here
held_bal_scores, _ = run(held_bal)
sweep_rows = [{"a_c": "no fix", **majority_metrics(held_bal_scores, run(held_imb[REMOVED[0]])[0], held_minority)}]
for a_c in tqdm(A_C_GRID, desc="a_c sweep (held-out)"):
    fixed, _ = run(held_imb[REMOVED[0]], rebalance(heads, a_c))
    sweep_rows.append({"a_c": a_c, **majority_metrics(held_bal_scores, fixed, held_minority)})
sweep = pd.DataFrame(sweep_rows)
grid = sweep[sweep.a_c != "no fix"]
A_C = float(grid.loc[grid.majority_shift.abs().idxmin(), "a_c"])  # the a_c that removes the shift best
print(f"held-out sweep: chosen a_c = {A_C} (smallest |majority shift|); a = a_c * a_v = "
      f"{A_C * DEMOS_PER_CLASS / (DEMOS_PER_CLASS - REMOVED[0]):.3f} with one demonstration removed")
sweep[["a_c", "majority_shift", "bias", "bias_raw", "accuracy", "auc"]].round(3)

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
base = sweep.iloc[0]
for ax, col, label in [(axes[0], "majority_shift", "majority shift (nats)"), (axes[1], "bias", "bias (calibrated accuracy difference)")]:
    ax.plot(grid.a_c.astype(float), grid[col], marker="o", label="fix on the in-context heads")
    ax.axhline(base[col], color="C3", ls="--", label="no fix")
    ax.axhline(0, color="black", lw=0.8)
    ax.axvline(A_C, color="C2", ls=":", label=f"chosen a_c = {A_C}")
    ax.set_xlabel("a_c")
    ax.set_ylabel(label)
axes[0].legend(fontsize=8)
fig.suptitle(f"Choosing a_c on {N_HELDOUT} held-out prompts ({REMOVED[0]} demonstration removed)", fontsize=10)
plt.tight_layout()
plt.show()

# %% [markdown]
# Now the evaluation seeds: balanced prompts, each imbalance without a fix, with the fix on the
# in-context heads, and with the same fix on random heads. The attention mass that the in-context
# heads put on each label's positions is recorded at the same time.

# %%
rows, mass_rows = [], []
for s in tqdm(range(N_SEEDS), desc="seeds"):
    bal, minority, imb = imbalanced_set(SEED + 10 + s, N_QUERIES, REMOVED)
    bal_scores, bal_attn = run(bal)
    conditions = [(r, "no fix", None) for r in REMOVED] + [(r, "fix: in-context heads", rebalance(heads, A_C)) for r in REMOVED]
    conditions += [(REMOVED[0], "fix: random heads", rebalance(random_heads, A_C))]
    for r, name, fix in conditions:
        scores, attn = run(imb[r], fix)
        rows.append({"seed": s, "removed": r, "condition": name, **majority_metrics(bal_scores, scores, minority)})
        if r == REMOVED[0] and name != "fix: random heads":
            label = "imbalanced" if name == "no fix" else "imbalanced + fix"
            sets = [("balanced", bal, bal_attn)] if name == "no fix" else []
            for label, prompts, att in sets + [(label, imb[r], attn)]:
                for p, a, m in zip(prompts, att, minority):
                    is_minor = torch.tensor([c == m for _, c in p.demos])
                    for lh in heads:
                        mass_rows.append({"prompt set": label, "head": f"{lh[0]}.{lh[1]}",
                                          "minority label": a[lh][is_minor].sum().item(),
                                          "majority label": a[lh][~is_minor].sum().item()})
results = pd.DataFrame(rows)
mass = pd.DataFrame(mass_rows)
mass_table = mass.groupby("prompt set", sort=False)[["minority label", "majority label"]].mean()
mass_table.round(3)

# %%
fig, axes = plt.subplots(1, len(heads), figsize=(3.6 * len(heads), 3.2), sharey=True, squeeze=False)
plot = mass.melt(id_vars=["prompt set", "head"], var_name="positions of", value_name="attention mass")
for ax, (head_name, part) in zip(axes[0], plot.groupby("head", sort=False)):
    sns.barplot(data=part, x="positions of", y="attention mass", hue="prompt set", ax=ax, errorbar=("ci", 95),
                palette=["#9ecae1", "#de2d26", "#31a354"], legend=ax is axes[0, 0])
    ax.set_title(f"head {head_name}", fontsize=10)
axes[0, 0].legend(fontsize=7)
fig.suptitle(f"In-context heads: attention from the last position to each label's positions "
             f"('minority' = the label that loses {REMOVED[0]} demonstration)", fontsize=10)
plt.tight_layout()
plt.show()

# %% [markdown]
# The bias per seed and the reduction, with a 95% bootstrap interval over seeds (resampling whole
# seeds, pairing each seed's before and after). The shift reduction uses the size of the majority
# shift, $1 - |\text{after}|/|\text{before}|$: pushing the prediction past balance towards the
# minority label is not a reduction.

# %%
def reduction(before, after, n=N_BOOTSTRAP, seed=SEED, size=lambda x: x):
    """1 - size(mean(after)) / size(mean(before)), and a percentile bootstrap 95% CI over the paired seeds.
    size=abs for a signed quantity (an overshoot past zero is not a reduction)."""
    before, after = np.asarray(before, float), np.asarray(after, float)
    point = 1 - size(after.mean()) / size(before.mean()) if size(before.mean()) > 0 else float("nan")
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n):
        idx = rng.integers(0, len(before), len(before))
        if size(before[idx].mean()) > 0:
            draws.append(1 - size(after[idx].mean()) / size(before[idx].mean()))
    lo, hi = np.percentile(draws, [2.5, 97.5]) if len(draws) > n // 2 else (float("nan"), float("nan"))
    return point, lo, hi


def by_seed(removed, condition, col):
    part = results[(results.removed == removed) & (results.condition == condition)].sort_values("seed")
    return part[col].to_numpy()


summary_rows = []
for r in REMOVED:
    before = by_seed(r, "no fix", "bias")
    shift_before = by_seed(r, "no fix", "majority_shift")
    candidates = [("fix: in-context heads", ""), ("fix: random heads", ""), ("no fix", "_calibration_baseline")]
    for name, suffix in candidates:
        after, shift_after = by_seed(r, name, "bias" + suffix), by_seed(r, name, "majority_shift" + suffix)
        if len(after) == 0:
            continue
        point, lo, hi = reduction(before, after)
        s_point, s_lo, s_hi = reduction(shift_before, shift_after, size=abs)
        label = "output calibration (baseline)" if suffix else name
        summary_rows.append({"removed": r, "method": label, "bias before": before.mean(), "bias after": after.mean(),
                             "reduction": point, "CI low": lo, "CI high": hi,
                             "majority shift before": shift_before.mean(), "majority shift after": shift_after.mean(),
                             "shift reduction": s_point, "shift CI low": s_lo, "shift CI high": s_hi,
                             "raw bias before": by_seed(r, "no fix", "bias_raw").mean(),
                             "raw bias after": by_seed(r, name, "bias_raw").mean(),
                             "accuracy after": by_seed(r, name, "accuracy").mean(),
                             "AUC before": by_seed(r, "no fix", "auc").mean(), "AUC after": by_seed(r, name, "auc").mean()})
majority = pd.DataFrame(summary_rows)
balanced_accuracy = results.balanced_accuracy.mean()
print(f"calibrated accuracy on the balanced prompts: {balanced_accuracy:.1%} (the fixes leave balanced prompts unchanged: no minority)")
majority.round(3)

# %%
fig, ax = plt.subplots(figsize=(8, 3.2))
plot = results.melt(id_vars=["seed", "removed", "condition"], value_vars=["bias", "bias_raw"], var_name="accuracy", value_name="bias (accuracy difference)")
plot["accuracy"] = plot["accuracy"].map({"bias": "calibrated", "bias_raw": "raw"})
sns.pointplot(data=plot, x="condition", y="bias (accuracy difference)", hue=plot["accuracy"] + ", removed " + plot["removed"].astype(str),
              dodge=0.4, errorbar=("ci", 95), ax=ax, linestyle="none")
ax.axhline(0, color="black", lw=0.8)
ax.set_title("Majority-label bias: balanced minus imbalanced accuracy (mean over seeds, 95% CI)", fontsize=10)
ax.legend(fontsize=7)
plt.show()

# %% [markdown]
# ## 2. Recency bias
#
# Each demonstration set (seed `SEED + 100 + d`) is shown in `N_ORDERS` random orders, each followed
# by the same queries. For each order we take the calibrated accuracy (prior pooled over all orders
# of that condition and set) and report its standard deviation over orders, averaged over the sets;
# the interval resamples sets and queries. The attention of the in-context heads to each label
# position is plotted against its distance from the end (0 = the last demonstration), and the
# *attention spread* is the standard deviation, over orders, of the attention that one
# demonstration's label receives from one query: with no positional effect the same content would
# get the same attention wherever it stands.

# %%
def order_prompts(d):
    group = build_prompt_groups(task, 1, N_ORDER_QUERIES, DEMOS_PER_CLASS, seed=SEED + 100 + d)[0]
    ranking.check_held_out(group)
    rng = random.Random(SEED + 100 + d)
    demos = list(group[0].demos)
    orders = []
    for _ in range(N_ORDERS):
        rng.shuffle(demos)
        orders.append([render_prompt(list(demos), p.query, p.gold, p.label_words) for p in group])
    return orders


rotary = info.positions == "rotary"
if not rotary:
    print(f"{MODEL} has {info.positions} positions: the position-free fix is not defined (see the method); part 2 "
          "reports the bias and the attention-vs-distance curve only.")
recency_conditions = {"no fix": None}
if rotary:
    recency_conditions["fix: in-context heads"] = lambda b: positionless_attention(info, heads, b.last_positions)
    recency_conditions["fix: random heads"] = lambda b: positionless_attention(info, random_heads, b.last_positions)

order_rows, attention_rows = [], []
correct = {name: np.zeros((N_DEMO_SETS, N_ORDERS, N_ORDER_QUERIES)) for name in recency_conditions}
for d in tqdm(range(N_DEMO_SETS), desc="demonstration sets"):
    orders = order_prompts(d)
    for name, fix in recency_conditions.items():
        runs = [run(prompts, fix) for prompts in orders]
        pooled = concat_scores([s for s, _ in runs])
        for o, ((scores, attn), prompts) in enumerate(zip(runs, orders)):
            correct[name][d, o] = (scores.predictions("batch", reference=pooled) == scores.gold).numpy()
            order_rows.append({"set": d, "order": o, "condition": name, "accuracy": correct[name][d, o].mean(),
                               "raw accuracy": scores.accuracy(), "own calibration": scores.accuracy("batch")})
            for q, (p, a) in enumerate(zip(prompts, attn)):
                n = len(p.demos)
                for lh in heads:
                    for j, (x, _) in enumerate(p.demos):
                        attention_rows.append({"set": d, "order": o, "condition": name, "query": q, "head": f"{lh[0]}.{lh[1]}",
                                               "demo": x, "distance from the end": n - 1 - j, "attention": a[lh][j].item()})
orders_df, attention_df = pd.DataFrame(order_rows), pd.DataFrame(attention_rows)


def order_std(condition, sets=None, queries=None):
    """Mean over demonstration sets of the std over orders of accuracy (on the chosen sets and queries)."""
    acc = correct[condition]
    acc = acc[np.arange(N_DEMO_SETS) if sets is None else sets][:, :, np.arange(N_ORDER_QUERIES) if queries is None else queries]
    return float(acc.mean(-1).std(axis=1, ddof=1).mean())


def recency_reduction(condition, n=N_BOOTSTRAP, seed=SEED):
    """1 - std_after / std_before, and a bootstrap 95% CI resampling sets and queries (paired)."""
    before = order_std("no fix")
    point = 1 - order_std(condition) / before if before > 0 else float("nan")
    rng, draws = np.random.default_rng(seed), []
    for _ in range(n):
        s, q = rng.integers(0, N_DEMO_SETS, N_DEMO_SETS), rng.integers(0, N_ORDER_QUERIES, N_ORDER_QUERIES)
        b = order_std("no fix", s, q)
        if b > 0:
            draws.append(1 - order_std(condition, s, q) / b)
    lo, hi = np.percentile(draws, [2.5, 97.5]) if len(draws) > n // 2 else (float("nan"), float("nan"))
    return point, lo, hi


def attention_spread(condition):
    """Std over orders of the attention one demonstration's label gets from one query, averaged."""
    part = attention_df[attention_df.condition == condition]
    return part.groupby(["set", "query", "head", "demo"])["attention"].std(ddof=1).mean()


recency_rows = []
for name in recency_conditions:
    point, lo, hi = recency_reduction(name) if name != "no fix" else (float("nan"),) * 3
    sub = orders_df[orders_df.condition == name]
    recency_rows.append({"condition": name, "accuracy std over orders": order_std(name),
                         "reduction": point, "CI low": lo, "CI high": hi,
                         "std, raw accuracy": sub.groupby("set")["raw accuracy"].std().mean(),
                         "std, own-order calibration (baseline)": sub.groupby("set")["own calibration"].std().mean(),
                         "mean accuracy": sub.accuracy.mean(), "mean raw accuracy": sub["raw accuracy"].mean(),
                         "attention spread": attention_spread(name)})
recency_table = pd.DataFrame(recency_rows).set_index("condition")
recency_table["spread change"] = recency_table["attention spread"] / recency_table.loc["no fix", "attention spread"] - 1
# how far each fix moves the in-context heads' attention at label positions (same prompt, head, demonstration)
paired = attention_df.pivot_table(index=["set", "order", "query", "head", "demo"], columns="condition", values="attention")
recency_table["mean |attention change| at label positions"] = [(paired[c] - paired["no fix"]).abs().mean() for c in recency_table.index]
recency_table.round(3)

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
sns.stripplot(data=orders_df, x="condition", y="accuracy", hue="set", dodge=True, ax=axes[0], size=6)
axes[0].set_title("Calibrated accuracy of each order (one dot per order)", fontsize=10)
curve = attention_df[attention_df.condition.isin(["no fix", "fix: in-context heads"])]
sns.lineplot(data=curve, x="distance from the end", y="attention", hue="condition", style="head", ax=axes[1],
             errorbar=None, marker="o")
axes[1].set_title("In-context heads: attention to a label position vs its distance\n(demonstrations from the end)", fontsize=10)
axes[1].invert_xaxis()
axes[1].legend(fontsize=7)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Verdict

# %%
def fmt_ci(point, lo, hi):
    return f"{point:+.0%} (95% CI {lo:+.0%} to {hi:+.0%})"


def mean_ci(values, n=N_BOOTSTRAP, seed=SEED):
    """Bootstrap 95% CI of a mean over seeds."""
    values, rng = np.asarray(values, float), np.random.default_rng(seed)
    return np.percentile([values[rng.integers(0, len(values), len(values))].mean() for _ in range(n)], [2.5, 97.5])


def verdict(point, lo, hi, paper, before=None):
    if np.isnan(point):
        return "not testable: no bias before the fix"
    if before is not None and mean_ci(before)[0] <= 0:
        return "not testable here: the bias before the fix is within noise (its 95% CI includes 0)"
    if lo > 0:
        return "reproduced" if point >= paper / 2 else "partly reproduced (smaller reduction)"
    if hi < 0:
        return "not reproduced: the fix increases the bias"
    return "not reproduced at this sample size: the 95% CI includes no reduction"


one = majority[majority.removed == REMOVED[0]].set_index("method")
fix_row, rand_row, cal_row = one.loc["fix: in-context heads"], one.loc["fix: random heads"], one.loc["output calibration (baseline)"]
minor_drop = mass_table.loc["balanced", "minority label"] - mass_table.loc["imbalanced", "minority label"]
major_gain = mass_table.loc["imbalanced", "majority label"] - mass_table.loc["balanced", "majority label"]
bias_before = fix_row["bias before"]
shift_ci = mean_ci(by_seed(REMOVED[0], "no fix", "majority_shift"))
claims = [
    Claim(
        claim="A label with more demonstrations collects more attention in the in-context heads, which biases ICL towards it",
        paper="Llama-7B / GPT-J: explanation of the majority-label bias (softmax attention sums to one)",
        book=f"{MODEL}, {N_SEEDS} seeds x {N_QUERIES} prompts, {DEMOS_PER_CLASS} per label, {REMOVED[0]} removed: heads {heads} "
             f"attend {minor_drop:+.3f} less to the minority label and {major_gain:+.3f} more to the majority; "
             f"calibrated accuracy drops {bias_before:+.1%} (raw {fix_row['raw bias before']:+.1%}), "
             f"majority shift {fix_row['majority shift before']:+.2f} nats (95% CI {shift_ci[0]:+.2f} to {shift_ci[1]:+.2f})",
        verdict=("reproduced" if minor_drop > 0 and shift_ci[0] > 0 else
                 "partly reproduced: attention moves as explained, the predictions shift within noise" if minor_drop > 0
                 else "not reproduced"),
    ),
    Claim(
        claim="Scaling the minority label's attention-weighted value-output vectors by a = a_c * a_v in the in-context heads reduces majority-label bias",
        paper="22% on average (Llama-7B 29.1%, GPT-J 14.9%), a_c = 0.03",
        book=f"a_c = {A_C} (held-out sweep): reduction {fmt_ci(fix_row['reduction'], fix_row['CI low'], fix_row['CI high'])}, "
             f"majority shift {fix_row['majority shift before']:+.2f} -> {fix_row['majority shift after']:+.2f} nats "
             f"(reduction {fmt_ci(fix_row['shift reduction'], fix_row['shift CI low'], fix_row['shift CI high'])}); "
             f"random heads {rand_row['reduction']:+.0%}; output calibration {cal_row['reduction']:+.0%}; "
             f"AUC {fix_row['AUC before']:.2f} -> {fix_row['AUC after']:.2f}",
        verdict=verdict(fix_row["reduction"], fix_row["CI low"], fix_row["CI high"], 0.22, by_seed(REMOVED[0], "no fix", "bias")),
    ),
]
if rotary:
    rec, rnd = recency_table.loc["fix: in-context heads"], recency_table.loc["fix: random heads"]
    std0 = recency_table.loc["no fix", "accuracy std over orders"]
    claims += [
        Claim(
            claim="Scoring the in-context heads without positions (rotation removed) reduces recency bias (accuracy std over orders)",
            paper="17% on average (Llama-7B 23.4%, GPT-J 10.6%)",
            book=f"{N_DEMO_SETS} sets x {N_ORDERS} orders x {N_ORDER_QUERIES} queries: std {std0:.3f} -> "
                 f"{rec['accuracy std over orders']:.3f}, reduction {fmt_ci(rec['reduction'], rec['CI low'], rec['CI high'])}; "
                 f"random heads {rnd['reduction']:+.0%}; mean accuracy {recency_table.loc['no fix', 'mean accuracy']:.1%} -> {rec['mean accuracy']:.1%}",
            verdict=verdict(rec["reduction"], rec["CI low"], rec["CI high"], 0.17),
        ),
        Claim(
            claim="The fix lowers the attention spread in the in-context heads",
            paper="about 40% lower attention std",
            book=f"std over orders of one demonstration's attention {recency_table.loc['no fix', 'attention spread']:.4f} -> "
                 f"{rec['attention spread']:.4f} ({rec['spread change']:+.0%}); random heads' fix: {rnd['spread change']:+.0%}",
            verdict=("reproduced" if rec["spread change"] <= -0.3 else "partly reproduced" if rec["spread change"] < -0.1
                     else "not reproduced"),
        ),
    ]
claims_table(claims)

# %% [markdown]
# **Reading the result.** Both fixes are one-line edits of the attention weights of a few heads,
# and the tests check each against a hand computation on tiny models; what they do to the biases
# is an empirical question, answered by the table with its intervals, beside the random-head
# control and the plain output calibration {cite:p}`zhou2024batch`, which needs no knowledge of the
# heads at all. Three differences from the paper matter when reading it. The model is a 270M model
# with 72 heads, not a 7B model with 1,024, and its in-context heads carry less of the prediction
# (chapter 3 measures how much). The prompts are short word lists with few demonstrations per label
# and tens of prompts per condition, so a bias of a few accuracy points is near the noise; the
# majority shift (in nats) is the more sensitive reading of the same bias. And the published
# $a_c = 0.03$, taken literally as a multiplier, would nearly erase the minority label's vectors
# and increase the bias, so the book treats $a_c$ as a free constant chosen on held-out prompts (the
# sweep includes 0.03 and shows what it does). On Colab, run this chapter with a 7B model and more
# seeds to compare with the paper at its scale.

# %%
save_results(
    "07_label_biases",
    {"model": MODEL, "task": TASK, "heads": heads, "random_heads": random_heads, "a_c": A_C,
     "majority": majority.to_dict(orient="records"), "recency": recency_table.reset_index().to_dict(orient="records"),
     "attention_mass": mass_table.to_dict(), "runtime_s": time.time() - start},
    claims,
)
print(f"chapter runtime: {time.time() - start:.0f} s")
