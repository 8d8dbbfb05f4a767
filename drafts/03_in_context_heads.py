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
# ```{warning}
# DRAFT, not part of the book yet (issue: step 2 of 7). Known problems from a smoke run
# (k=2, 4 prompts): (1) one head, (11, 2), tops both the foo and the bar ranking, so "foo heads
# only" and "bar heads only" ablate the same head; select them disjointly by S(foo) - S(bar);
# (2) the agreement with a one-head-at-a-time ablation sweep (Spearman 0.05 on 2 prompts) must be
# measured at full size before any claim; (3) ranking took 6-13 s per prompt under load, to profile.
# ```
#
# # 3. Locating the in-context heads
#
# **Question.** {cite:t}`yu2024twotowers` report that about 1% of attention heads — 12 of
# Llama-7B's 1,024, six "foo heads" and six "bar heads" — carry in-context classification with
# unrelated labels: zeroing them drops accuracy from 87.6% to 24.4%. Does the small default model
# also concentrate the work in a few heads, where do they sit, and do they split into heads that
# push "foo" and heads that push "bar"?
#
# **Method.** Every head is scored on many prompts by the log-probability increase of
# {cite:t}`yu2024neuron`, at the last position, for the gold label word $y$:
#
# $$S(l, h) = \log p\big(y \mid o^{l,h} + x^{l-1}_T\big) - \log p\big(y \mid x^{l-1}_T\big),$$
#
# where $x^{l-1}_T$ is the residual stream entering layer $l$ and $o^{l,h}$ what head $h$ adds to
# it ($p$ applies the final norm, frozen at the real final residual, and the unembedding). One
# traced forward pass per batch scores all heads (`icl_utils.attribution.head_scores_over_prompts`).
# For Gemma, whose attention output passes through a norm before it joins the residual stream, each
# head's share goes through that norm with its scale frozen, so the heads add up to the layer's
# real output. Then we zero the top-ranked heads (their slice of the output-projection input, at
# every position) on *held-out* prompts and compare with random heads of the same number.

# %% tags=["parameters"]
MODEL = "gemma3-270m"  # on Colab try "gpt2-large" or "meta-llama/Llama-2-7b-hf" (1,024 heads: 1% = 10)
TASK = "animal_vehicle"  # learned in context by the default model (chapter 1: AUC 0.99 with foo/bar, k=8)
DEMOS_PER_CLASS = 8
N_RANK_PROMPTS = 32  # prompts used to rank the heads
N_EVAL_PROMPTS = 32  # held-out prompts (other seed) used to test the ablations
HEAD_FRACTIONS = [0.01, 0.02, 0.05, 0.10]  # share of all heads to ablate (at least one head)
N_RANDOM = 5  # random head sets per size
N_SWEEP_PROMPTS = 8  # prompts for the one-head-at-a-time ablation sweep (the slow baseline)
SEED = 0
BATCH_SIZE = 8

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
from icl_utils.attribution import head_scores_over_prompts
from icl_utils.reporting import Claim, claims_table, save_results

sns.set_theme(style="whitegrid", context="notebook")
start = time.time()
info = iu.load_model(MODEL)
task = iu.load_task(TASK)
rank_prompts = iu.build_prompts(task, N_RANK_PROMPTS, demos_per_class=DEMOS_PER_CLASS, seed=SEED)
eval_prompts = iu.build_prompts(task, N_EVAL_PROMPTS, demos_per_class=DEMOS_PER_CLASS, seed=SEED + 1)
words = rank_prompts[0].label_words  # class -> label word (foo/bar)
print(info)
print(f"{info.n_total_heads} heads; labels {words}; {N_RANK_PROMPTS} ranking prompts, {N_EVAL_PROMPTS} held-out prompts")

# %% [markdown]
# ## Ranking every head

# %%
t0 = time.time()
scores = head_scores_over_prompts(info, rank_prompts, batch_size=BATCH_SIZE)
ranking_seconds_per_prompt = (time.time() - t0) / N_RANK_PROMPTS
importance = scores["importance"].mean(0)  # (layers, heads)
foo_word, bar_word = words[task.classes[0]], words[task.classes[1]]
gold = scores["gold"]
foo_score = scores[f"importance_{foo_word}"][gold == 0].mean(0)  # pushes foo on gold-foo prompts
bar_score = scores[f"importance_{bar_word}"][gold == 1].mean(0)
print(f"ranking all {info.n_total_heads} heads: {ranking_seconds_per_prompt:.2f} s per prompt")

fig, axes = plt.subplots(1, 3, figsize=(13, 0.28 * info.n_layers + 1.5), sharey=True)
for ax, values, title in zip(axes, [importance, foo_score, bar_score],
                             ["gold label", f"'{foo_word}' on gold-{foo_word} prompts", f"'{bar_word}' on gold-{bar_word} prompts"]):
    sns.heatmap(values.numpy(), ax=ax, cmap="RdBu_r", center=0, cbar_kws={"shrink": 0.6})
    ax.set_title(f"log-prob increase: {title}", fontsize=10)
    ax.set_xlabel("head")
axes[0].set_ylabel("layer")
plt.tight_layout()
plt.show()

# %%
def top_heads(values: torch.Tensor, n: int) -> list:
    flat = values.flatten().topk(n).indices
    return [divmod(int(i), info.n_heads) for i in flat]


sizes = sorted({max(1, round(f * info.n_total_heads)) for f in HEAD_FRACTIONS})
n_per_label = max(1, round(6 / 1024 * info.n_total_heads))  # the paper: 6 foo + 6 bar heads of Llama-7B's 1,024
in_context_heads = top_heads(importance, max(sizes))
table = pd.DataFrame([
    {"rank": r + 1, "layer": l, "head": h, "S (gold)": importance[l, h].item(),
     f"S({foo_word}) on gold {foo_word}": foo_score[l, h].item(), f"S({bar_word}) on gold {bar_word}": bar_score[l, h].item(),
     "kind": f"{foo_word} head" if foo_score[l, h] > bar_score[l, h] else f"{bar_word} head",
     "label attention": scores["label_attention"].mean(0)[l, h].item()}
    for r, (l, h) in enumerate(in_context_heads)
])
table.round(3)

# %% [markdown]
# Where do the top heads sit? The paper finds in-context heads in deep layers.

# %%
top_n = max(sizes)
depth = np.array([l for l, _ in in_context_heads]) / (info.n_layers - 1)
fig, ax = plt.subplots(figsize=(7, 2.8))
ax.bar(range(info.n_layers), importance.clamp(min=0).sum(1).numpy(), color="C0", label="sum of positive S over heads")
for l, h in in_context_heads:
    ax.scatter(l, importance[l].clamp(min=0).sum().item(), color="C3", zorder=3)
ax.set_xlabel("layer")
ax.set_ylabel("sum of positive S")
ax.set_title(f"Where the top {top_n} heads sit (red dots mark their layers)")
plt.show()
print(f"mean relative depth of the top {top_n} heads: {depth.mean():.2f} (0 = first layer, 1 = last)")

# %% [markdown]
# ## Zeroing the top heads on held-out prompts
#
# Each head set is zeroed at every position. Metrics on the held-out prompts: accuracy calibrated
# with the *clean* model's label prior (so a shift towards one label shows up instead of being
# calibrated away), accuracy per gold label, and the mean logit margin of the gold label word.

# %%
clean = iu.score_prompts(info, eval_prompts, batch_size=BATCH_SIZE, progress=False)


def evaluate(heads, name, size, draw=0):
    with iu.ablate_heads(info, heads):
        s = iu.score_prompts(info, eval_prompts, batch_size=BATCH_SIZE, progress=False)
    per = s.per_class_accuracy("batch", reference=clean)
    return {"heads": name, "n": size, "draw": draw, "accuracy": s.accuracy("batch", reference=clean),
            f"acc gold {foo_word}": per[task.classes[0]], f"acc gold {bar_word}": per[task.classes[1]],
            "margin": s.gold_logit_margin(), "raw accuracy": s.accuracy()}


rows = [evaluate([], "none", 0)]
rng = random.Random(SEED)
all_heads = [(l, h) for l in range(info.n_layers) for h in range(info.n_heads)]
label_attention = scores["label_attention"].mean(0)
for n in tqdm(sizes, desc="head-set sizes"):
    rows.append(evaluate(top_heads(importance, n), "top by S", n))
    rows.append(evaluate(top_heads(label_attention, n), "top by label attention", n))
    for d in range(N_RANDOM):
        rows.append(evaluate(rng.sample(all_heads, n), "random", n, d))
rows.append(evaluate(top_heads(foo_score, n_per_label), f"{foo_word} heads only", n_per_label))
rows.append(evaluate(top_heads(bar_score, n_per_label), f"{bar_word} heads only", n_per_label))
ablations = pd.DataFrame(rows)
summary = (ablations.groupby(["heads", "n"], sort=False)
           .agg(accuracy=("accuracy", "mean"), accuracy_std=("accuracy", "std"), margin=("margin", "mean"),
                **{f"acc gold {foo_word}": (f"acc gold {foo_word}", "mean"), f"acc gold {bar_word}": (f"acc gold {bar_word}", "mean")})
           .reset_index())
summary.round(3)

# %%
fig, ax = plt.subplots(figsize=(7, 3.5))
for name, style in [("top by S", "o-"), ("top by label attention", "s--"), ("random", "x:")]:
    part = summary[summary.heads == name]
    ax.errorbar(part.n, part.accuracy, yerr=part.accuracy_std.fillna(0), fmt=style, capsize=3, label=name)
ax.axhline(clean.accuracy("batch"), color="grey", lw=1, label="no ablation")
ax.axhline(0.5, color="grey", lw=0.8, ls=":")
ax.set_xscale("log")
ax.set_xticks(sizes, labels=[f"{n}\n({n / info.n_total_heads:.0%})" for n in sizes])
ax.set_xlabel("heads zeroed (share of all heads)")
ax.set_ylabel("calibrated accuracy (held out)")
ax.set_title(f"{MODEL}: zeroing top-ranked vs random heads")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## Does the cheap ranking agree with ablating heads one at a time?
#
# The slow way to find important heads is to zero each head alone and watch the gold label's
# margin fall. We do it on a few prompts and compare the two rankings, and their cost.

# %%
sweep_prompts = eval_prompts[:N_SWEEP_PROMPTS]
t0 = time.time()
base = iu.score_prompts(info, sweep_prompts, batch_size=BATCH_SIZE, progress=False).gold_logit_margin()
drops = torch.zeros(info.n_layers, info.n_heads)
for l, h in tqdm(all_heads, desc="one head at a time"):
    with iu.ablate_heads(info, [(l, h)]):
        drops[l, h] = base - iu.score_prompts(info, sweep_prompts, batch_size=BATCH_SIZE, progress=False).gold_logit_margin()
sweep_seconds_per_prompt = (time.time() - t0) / N_SWEEP_PROMPTS
t0 = time.time()
sweep_scores = head_scores_over_prompts(info, sweep_prompts, batch_size=BATCH_SIZE, progress=False)
rank_seconds_same_prompts = (time.time() - t0) / N_SWEEP_PROMPTS


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.flatten().argsort().argsort().float(), b.flatten().argsort().argsort().float()
    return torch.corrcoef(torch.stack([ra, rb]))[0, 1].item()


rho = spearman(sweep_scores["importance"].mean(0), drops)
k = max(sizes)
overlap = len(set(top_heads(sweep_scores["importance"].mean(0), k)) & set(top_heads(drops, k)))
print(f"one-head-at-a-time sweep: {sweep_seconds_per_prompt:.1f} s per prompt; "
      f"ranking by log-prob increase: {rank_seconds_same_prompts:.2f} s per prompt "
      f"({sweep_seconds_per_prompt / rank_seconds_same_prompts:.0f}x faster)")
print(f"Spearman correlation of the two rankings over all {info.n_total_heads} heads: {rho:.2f}; "
      f"top-{k} overlap: {overlap}/{k}")

# %% [markdown]
# ## Verdict

# %%
clean_acc = clean.accuracy("batch")
smallest = sizes[0]
top_small = summary[(summary.heads == "top by S") & (summary.n == smallest)].iloc[0]
top_large = summary[(summary.heads == "top by S") & (summary.n == max(sizes))].iloc[0]
rand_large = summary[(summary.heads == "random") & (summary.n == max(sizes))].iloc[0]
foo_only = summary[summary.heads == f"{foo_word} heads only"].iloc[0]
bar_only = summary[summary.heads == f"{bar_word} heads only"].iloc[0]
clean_per = clean.per_class_accuracy("batch")
print(f"clean calibrated accuracy {clean_acc:.1%}; zeroing the top {smallest} head(s) "
      f"({smallest / info.n_total_heads:.1%} of heads): {top_small.accuracy:.1%}; top {max(sizes)}: {top_large.accuracy:.1%} "
      f"vs random {max(sizes)}: {rand_large.accuracy:.1%} ± {rand_large.accuracy_std:.1%}")
print(f"zeroing {foo_word} heads: gold-{foo_word} accuracy {clean_per[task.classes[0]]:.1%} -> {foo_only[f'acc gold {foo_word}']:.1%}, "
      f"gold-{bar_word} {clean_per[task.classes[1]]:.1%} -> {foo_only[f'acc gold {bar_word}']:.1%}")
print(f"zeroing {bar_word} heads: gold-{foo_word} accuracy {clean_per[task.classes[0]]:.1%} -> {bar_only[f'acc gold {foo_word}']:.1%}, "
      f"gold-{bar_word} {clean_per[task.classes[1]]:.1%} -> {bar_only[f'acc gold {bar_word}']:.1%}")

beats_random = top_large.accuracy < rand_large.accuracy - 2 * max(rand_large.accuracy_std, 0.02)
foo_effect = (foo_only[f"acc gold {foo_word}"] < clean_per[task.classes[0]]) and (foo_only[f"acc gold {bar_word}"] >= clean_per[task.classes[1]])
bar_effect = (bar_only[f"acc gold {bar_word}"] < clean_per[task.classes[1]]) and (bar_only[f"acc gold {foo_word}"] >= clean_per[task.classes[0]])
claims = [
    Claim(
        claim="Zeroing ~1% of heads (the in-context heads) destroys ICL with foo/bar labels",
        paper="Llama-7B: 12 of 1,024 heads (1.2%), 87.6% -> 24.4%",
        book=f"{MODEL}: {smallest} of {info.n_total_heads} heads ({smallest / info.n_total_heads:.1%}): {clean_acc:.1%} -> {top_small.accuracy:.1%}; "
             f"{max(sizes)} heads ({max(sizes) / info.n_total_heads:.0%}): {top_large.accuracy:.1%} (random: {rand_large.accuracy:.1%})",
        verdict=("reproduced" if top_small.accuracy <= 0.6 else
                 "partly reproduced: a few top heads matter far more than random ones, but more than 1% are needed" if beats_random else
                 "not reproduced"),
    ),
    Claim(
        claim="Foo heads push foo, bar heads push bar: zeroing foo heads lowers gold-foo accuracy and raises gold-bar",
        paper="Llama-7B / GPT-J: reported qualitatively, both directions",
        book=f"foo heads zeroed: gold-{foo_word} {clean_per[task.classes[0]]:.0%} -> {foo_only[f'acc gold {foo_word}']:.0%}, gold-{bar_word} "
             f"{clean_per[task.classes[1]]:.0%} -> {foo_only[f'acc gold {bar_word}']:.0%}; bar heads zeroed: gold-{bar_word} "
             f"{clean_per[task.classes[1]]:.0%} -> {bar_only[f'acc gold {bar_word}']:.0%}",
        verdict="reproduced" if foo_effect and bar_effect else "partly reproduced" if foo_effect or bar_effect else "not reproduced",
    ),
    Claim(
        claim="In-context heads sit in deep layers",
        paper="Llama-7B: mostly in the upper half of the layers",
        book=f"top {max(sizes)} heads: mean relative depth {depth.mean():.2f}",
        verdict="reproduced" if depth.mean() > 0.5 else "not reproduced",
    ),
    Claim(
        claim="Log-probability increase locates the heads that matter from one forward pass",
        paper="method claim (Yu & Ananiadou, neuron attribution paper)",
        book=f"Spearman {rho:.2f} with one-head-at-a-time ablation, top-{k} overlap {overlap}/{k}, "
             f"{sweep_seconds_per_prompt / rank_seconds_same_prompts:.0f}x faster",
        verdict="reproduced" if rho > 0.5 else "partly reproduced" if rho > 0.2 else "not reproduced",
    ),
]
claims_table(claims)

# %% [markdown]
# **Reading the result.** The paper's "1%" is 12 heads of a 1,024-head model; this model has
# 72 heads, so 1% rounds to a single head and the comparison is one of shape, not of size: does a
# small set of deep heads, found from one forward pass, matter far more than random heads? The
# table above answers it for this run. Readers with a GPU can repeat the chapter on
# `meta-llama/Llama-2-7b-hf`, where 1% is ten heads.

# %%
save_results(
    "03_in_context_heads",
    {
        "model": MODEL, "task": TASK, "in_context_heads": in_context_heads[:sizes[0]], "foo_heads": top_heads(foo_score, n_per_label), "bar_heads": top_heads(bar_score, n_per_label), "clean_accuracy": clean_acc,
        "ablated_accuracy_smallest": float(top_small.accuracy), "smallest_size": smallest,
        "spearman_vs_ablation": rho, "ranking_s_per_prompt": ranking_seconds_per_prompt,
        "sweep_s_per_prompt": sweep_seconds_per_prompt, "runtime_s": time.time() - start,
    },
    claims,
)
print(f"chapter runtime: {time.time() - start:.0f} s")
