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
# # 8. Induction heads, function-vector heads, and where the in-context heads belong
#
# **Question.** {cite:t}`yin2025heads` compare two mechanisms proposed for in-context learning.
# *Induction heads* {cite}`olsson2022induction` find an earlier copy of the current token and copy the token that followed it.
# *Function-vector (FV) heads* {cite}`todd2024function` write, at the last token, a vector that
# encodes the task itself. In twelve models (Pythia, GPT-2, Llama-2-7B) they find that the two sets
# of heads barely overlap, that FV heads sit a little deeper, and that ablating FV heads hurts
# few-shot ICL while ablating induction heads that are not also FV heads does about as little as
# ablating random heads; the token-loss metric of ICL tells the opposite story. None of the source
# papers ran this comparison on the same model and prompts as Yu & Ananiadou's *in-context heads*
# (chapter 3). Here all three rankings meet on one model: which kind are the in-context heads?
#
# **Method.**
# 1. *Induction score*: on sequences `[BOS, r_1..r_50, r_1..r_50]` of random word tokens, the mean
#    over the second half of a head's attention from each token to the token that followed its
#    first copy (the mean of that offset diagonal, at most 1; the authors' released code divides by
#    all positions instead, which caps it near 0.5).
# 2. *FV score*: word tasks written for this book (antonyms, country → capital, capitalisation,
#    English → French, categories, past tense), 10 demonstrations per prompt, answers scored by the
#    first token of " y". Each head's mean output at the last token (before the output projection)
#    over clean prompts of a task is patched into prompts whose demonstration labels are shuffled,
#    at the last token; the FV score is the rise in the probability of the correct first token,
#    averaged over prompts and tasks. Because the patch touches only the last token, the rest of a
#    prompt runs once (its keys and values are cached) and all heads are patched in one batch, one
#    row per head (`icl_utils.function_vectors`). Attribution patching (one forward and one backward
#    pass: the gradient of that probability times the patch) is checked against it.
# 3. The in-context heads of chapter 3, ranked exactly as chapter 3 ranks them.
# 4. Mean ablation at the last token of the top heads by each score, with the exclusion control,
#    against random heads; metrics: few-shot accuracy on held-out prompts and the token-loss
#    difference on natural text.
# 5. The function vector: the top FV heads' mean outputs summed into one vector, added to one
#    layer's residual stream on zero-shot prompts.

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
MODEL = "gemma3-270m"  # also "smollm2-135m" (270 heads); on Colab try "gpt2-xl" or "meta-llama/Llama-2-7b-hf" (the paper's models)
TASKS = None  # None: every task in data/fv_tasks/ that the model does in context; or a list of names
N_DEMOS = 10  # demonstrations per prompt, as in the paper
N_PROMPTS = 8  # clean prompts per task: task accuracy and the mean head outputs
N_PATCH_PROMPTS = 2  # of those, how many (labels shuffled) are patched head by head for the FV score
N_EVAL_PROMPTS = 4  # held-out prompts per task (another seed) for the ablations and the function vector
MIN_ACCURACY_GAIN = 0.2  # keep a task if 10-shot accuracy beats its chance level by this much
N_INDUCTION_SEQS = 8
HALF_LEN = 50  # random tokens per half, as in the paper
HEAD_PERCENTS = [1, 5, 10, 20]  # ablate the top n% of heads (at least one head)
EXCLUDE_PERCENT = 5  # the exclusion control drops the other score's top n% first (paper: 2%, one head of 72 here)
N_RANDOM = 2  # random head sets per size
TOKEN_LOSS_PERCENTS = [10]  # sizes at which the token-loss difference is measured (a forward pass of all text per ablation)
TEXT_TOKENS = 512  # tokens per natural-text sequence (loss at ~50 vs ~500)
N_TEXT_SEQS = 2  # sequences cut from data/text/ (it holds 3 of 512 Gemma tokens)
FV_HEAD_PERCENT = 5  # the function vector sums the top FV heads (Todd et al.: 10 of ~1,000 heads)
FV_LAYER_STEP = 2  # try the function vector at every FV_LAYER_STEP-th layer (plus n_layers // 3)
ICL_TASK = "animal_vehicle"  # chapter 3's task, seed and prompts, so these are the book's in-context heads
N_ICL_RANK_PROMPTS = 32  # chapter 3's N_RANK_PROMPTS
ICL_DEMOS_PER_CLASS = 8  # chapter 3's DEMOS_PER_CLASS
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
from IPython.display import display

import icl_utils as iu
from icl_utils import function_vectors as fv
from icl_utils import induction as ind
from icl_utils.stats import spearman
from icl_utils.heads import find_in_context_heads, top_heads
from icl_utils.reporting import Claim, claims_table, save_results

sns.set_theme(style="whitegrid", context="notebook")
start = time.time()
timings = {}
info = iu.load_model(MODEL)
N = info.n_total_heads
all_heads = info.all_heads
n_heads_for = lambda percent: max(1, round(percent / 100 * N))  # noqa: E731
sizes = sorted({n_heads_for(p) for p in HEAD_PERCENTS})
print(info)
print(f"{N} heads: the top {HEAD_PERCENTS}% are {[n_heads_for(p) for p in HEAD_PERCENTS]} heads "
      f"(at least one), so the sizes tested are {sizes}")

# %% [markdown]
# ## The tasks, and the prompt format
#
# Todd et al. write prompts as `Q: x\nA: y`; a plainer `x -> y` per line is shorter. We measure
# both on every task with the same queries and demonstrations and use the format with the higher
# mean accuracy. Chance level for a task is the accuracy of always answering its most common first
# answer token (1/6 for the six categories, about 0 elsewhere); a task is kept if 10-shot accuracy
# beats it by `MIN_ACCURACY_GAIN`.

# %%
t0 = time.time()
task_names = TASKS or iu.available_pair_tasks()
pairs = {name: iu.load_pair_task(name) for name in task_names}
formats = {"Q: x / A: y": fv.QA, "x -> y": fv.ARROW}
clean_runs, rows = {}, []
for fname, fmt in formats.items():
    for name in task_names:
        prompts = fv.build_fv_prompts(pairs[name], N_PROMPTS, N_DEMOS, seed=SEED, fmt=fmt, task=name)
        run = fv.run_fv_prompts(info, prompts, batch_size=BATCH_SIZE)
        clean_runs[fname, name] = (prompts, run)
        first_tokens = fv.answer_ids(info.tokenizer, [fv.FVPrompt("", x, y) for x, y in pairs[name]])
        chance = first_tokens.unique(return_counts=True)[1].max().item() / len(first_tokens)
        rows.append({"format": fname, "task": name, "accuracy": run.correct.float().mean().item(),
                     "p(answer)": run.answer_prob.mean().item(), "chance": chance})
task_table = pd.DataFrame(rows)
format_acc = task_table.groupby("format", sort=False).accuracy.mean()
FORMAT = format_acc.idxmax()
fmt = formats[FORMAT]
chosen = task_table[task_table.format == FORMAT].set_index("task")
tasks = [t for t in task_names if chosen.accuracy[t] >= chosen.chance[t] + MIN_ACCURACY_GAIN]
if not tasks:
    raise RuntimeError(f"{MODEL} does none of the tasks in context above chance; FV heads cannot be scored")
timings["tasks"] = time.time() - t0
print(f"mean accuracy with {N_DEMOS} demonstrations: " + ", ".join(f"{f} {a:.0%}" for f, a in format_acc.items())
      + f" -> using '{FORMAT}'. Tasks kept: {tasks} ({len(tasks)} of {len(task_names)})")
task_table.pivot(index="task", columns="format", values="accuracy").assign(chance=chosen.chance).round(2)

# %% [markdown]
# ## 1. Induction scores

# %%
t0 = time.time()
seqs = ind.repeated_random_tokens(info.tokenizer, N_INDUCTION_SEQS, HALF_LEN, seed=SEED)
induction = ind.induction_scores(info, seqs, batch_size=BATCH_SIZE)
timings["induction"] = time.time() - t0
print(f"{N_INDUCTION_SEQS} sequences of 2 x {HALF_LEN} random tokens, one traced pass per batch: {timings['induction']:.1f} s; "
      f"top heads: " + ", ".join(f"{l}.{h} ({induction[l, h]:.2f})" for l, h in top_heads(induction, 5)))

# %% [markdown]
# ## 2. FV scores: exact patching, and attribution patching
#
# Per task: the mean of every head's last-token output over the clean prompts; then, on the first
# `N_PATCH_PROMPTS` prompts with their demonstration labels shuffled (same inputs and query),
# each head's mean is patched in alone and the probability of the correct first token is read.
# The FV score averages the rise over prompts and tasks. Attribution patching estimates the same
# rise to first order from the gradient of that probability.

# %%
task_means = {t: clean_runs[FORMAT, t][1].head_out.mean(0) for t in tasks}
corrupted = [p for t in tasks for p in fv.build_fv_prompts(pairs[t], N_PROMPTS, N_DEMOS, seed=SEED, fmt=fmt, task=t,
                                                             shuffle_labels=True)[:N_PATCH_PROMPTS]]
means_of = lambda p: task_means[p.task]  # noqa: E731  each prompt gets its own task's means
shuffled = fv.run_fv_prompts(info, corrupted, batch_size=BATCH_SIZE)
clean_patch = torch.cat([clean_runs[FORMAT, t][1].correct[:N_PATCH_PROMPTS] for t in tasks]).float().mean().item()
t0 = time.time()
exact = fv.fv_scores_exact(info, corrupted, means_of, progress=True)
timings["fv_exact"] = time.time() - t0
t0 = time.time()
attribution = fv.fv_scores_attribution(info, corrupted, means_of, batch_size=BATCH_SIZE, progress=True)
timings["fv_attribution"] = time.time() - t0
fv_score = exact.mean(0)
fv_attr = attribution.mean(0)
k_check = n_heads_for(5)
rho_attr = spearman(fv_score, fv_attr)
overlap_attr = len(set(top_heads(fv_score, k_check)) & set(top_heads(fv_attr, k_check)))
print(f"{len(corrupted)} shuffled-label prompts ({N_PATCH_PROMPTS} per task): accuracy {shuffled.correct.float().mean():.0%} "
      f"(the same prompts with true labels: {clean_patch:.0%}), p(answer) {shuffled.answer_prob.mean():.3f}")
print(f"exact patching of all {N} heads: {timings['fv_exact']:.1f} s ({timings['fv_exact'] / len(corrupted):.2f} s per prompt, "
      f"one batch of {N + 1} last-token rows each); attribution patching: {timings['fv_attribution']:.1f} s")
print(f"attribution vs exact: Spearman {rho_attr:.2f} over {N} heads, top-{k_check} overlap {overlap_attr}/{k_check}")

fig, axes = plt.subplots(1, 3, figsize=(13, 0.22 * info.n_layers + 2), gridspec_kw={"width_ratios": [1, 1, 1.3]})
sns.heatmap(induction.numpy(), ax=axes[0], cmap="viridis", cbar_kws={"shrink": 0.6})
axes[0].set_title("induction score", fontsize=10)
lim = fv_score.abs().max().item()
sns.heatmap(fv_score.numpy(), ax=axes[1], cmap="RdBu_r", center=0, vmin=-lim, vmax=lim, cbar_kws={"shrink": 0.6})
axes[1].set_title("FV score (exact patching)", fontsize=10)
for ax in axes[:2]:
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
axes[2].scatter(fv_score.flatten(), fv_attr.flatten(), s=14)
for l, h in top_heads(fv_score, 4):
    axes[2].annotate(f"{l}.{h}", (fv_score[l, h], fv_attr[l, h]), fontsize=8)
axes[2].axline((0, 0), slope=1, color="grey", lw=0.8, ls=":")
axes[2].set_xlabel("exact: rise of p(answer)")
axes[2].set_ylabel("attribution patching estimate")
axes[2].set_title(f"Spearman {rho_attr:.2f}", fontsize=10)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 3. Three rankings: overlap and depth
#
# The in-context heads are chapter 3's: heads ranked by the log-probability increase of the gold
# label word on foo/bar prompts of the same task, seed and number of prompts.

# %%
t0 = time.time()
icl_ranking = find_in_context_heads(info, iu.load_task(ICL_TASK), n_prompts=N_ICL_RANK_PROMPTS,
                                    demos_per_class=ICL_DEMOS_PER_CLASS, seed=SEED, batch_size=BATCH_SIZE)
icl_score = icl_ranking.importance
timings["in_context_heads"] = time.time() - t0
scores = {"induction": induction, "FV": fv_score, "in-context (ch. 3)": icl_score}
k = n_heads_for(5)
tops = {name: top_heads(s, k) for name, s in scores.items()}
names = list(scores)
overlap_rows = []
for i, a in enumerate(names):
    for b in names[i + 1:]:
        overlap_rows.append({"pair": f"{a} & {b}", f"top-{k} overlap": len(set(tops[a]) & set(tops[b])),
                             "shared heads": sorted(set(tops[a]) & set(tops[b])), "Spearman (all heads)": spearman(scores[a], scores[b])})
overlaps = pd.DataFrame(overlap_rows)
depth = {name: np.mean([l for l, _ in tops[name]]) / (info.n_layers - 1) for name in names}
print(f"top {k} heads ({k / N:.0%}) by each score: " + "; ".join(f"{n}: {tops[n]}" for n in names))
print(f"random top-{k} sets would share {k * k / N:.2f} heads on average")
print("mean relative depth (0 = first layer, 1 = last): " + ", ".join(f"{n} {d:.2f}" for n, d in depth.items()))
display(overlaps.round(2))
rank_of = lambda values: {lh: r + 1 for r, lh in enumerate(top_heads(values, N))}  # noqa: E731
ranks = {name: rank_of(s) for name, s in scores.items()}
pd.DataFrame([{"in-context head": f"{l}.{h}", "S (ch. 3)": icl_score[l, h].item(), "induction score": induction[l, h].item(),
               "induction rank": ranks["induction"][l, h], "FV score": fv_score[l, h].item(), "FV rank": ranks["FV"][l, h]}
              for l, h in tops["in-context (ch. 3)"]]).round(3)

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
markers = {"induction": "o", "FV": "s", "in-context (ch. 3)": "^"}
for name in names:
    s = scores[name] / scores[name].abs().max()
    axes[0].plot(range(info.n_layers), s.clamp(min=0).amax(1).numpy(), marker=markers[name], label=name)
axes[0].set_xlabel("layer")
axes[0].set_ylabel("largest score in the layer\n(scaled to the top head)")
axes[0].legend(fontsize=8)
axes[0].set_title("Layer distribution of the three scores", fontsize=10)
axes[1].scatter(induction.flatten(), fv_score.flatten(), s=14, c="grey", label="all heads")
for name, color in [("in-context (ch. 3)", "C3")]:
    ls, hs = zip(*tops[name])
    axes[1].scatter(induction[list(ls), list(hs)], fv_score[list(ls), list(hs)], s=60, facecolors="none", edgecolors=color,
                    label=f"top-{k} {name}")
for l, h in set(tops["induction"]) | set(tops["FV"]):
    axes[1].annotate(f"{l}.{h}", (induction[l, h], fv_score[l, h]), fontsize=7)
axes[1].set_xlabel("induction score")
axes[1].set_ylabel("FV score")
axes[1].legend(fontsize=8)
axes[1].set_title("Each head by both scores", fontsize=10)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 4. Ablations: few-shot accuracy
#
# Each head set is mean-ablated at the last token of held-out prompts (another seed): its output
# there is replaced by its mean last-token output over the clean prompts of all tasks (each task
# weighted equally, so the replacement carries no single task). Head sets: the top n by each score;
# the exclusion control (top n by one score after dropping the other score's top
# `EXCLUDE_PERCENT`%); chapter 3's in-context heads; random heads. All sets of one prompt run in one
# batch at its last token.

# %%
pooled_means = torch.stack([task_means[t] for t in tasks]).mean(0)
n_exclude = n_heads_for(EXCLUDE_PERCENT)
not_induction = [h for h in all_heads if h not in top_heads(induction, n_exclude)]
not_fv = [h for h in all_heads if h not in top_heads(fv_score, n_exclude)]
rng = random.Random(SEED)
conditions = [("none", 0, 0, [])]
for n in sizes:
    conditions += [("FV heads", n, 0, top_heads(fv_score, n)), ("induction heads", n, 0, top_heads(induction, n)),
                   ("FV heads, top induction excluded", n, 0, top_heads(fv_score, n, among=not_induction)),
                   ("induction heads, top FV excluded", n, 0, top_heads(induction, n, among=not_fv)),
                   ("in-context heads (ch. 3)", n, 0, top_heads(icl_score, n))]
    conditions += [("random", n, d, rng.sample(all_heads, n)) for d in range(N_RANDOM)]
eval_prompts = {t: fv.build_fv_prompts(pairs[t], N_EVAL_PROMPTS, N_DEMOS, seed=SEED + 1, fmt=fmt, task=t) for t in tasks}
flat_eval = [p for t in tasks for p in eval_prompts[t]]
t0 = time.time()
probs, correct = fv.patched_answers(info, flat_eval, [c[3] for c in conditions], pooled_means, progress=True, desc="ablations")
timings["ablations"] = time.time() - t0
ablation_rows = [{"heads": name, "n": n, "draw": d, "accuracy": correct[:, i].float().mean().item(), "p(answer)": probs[:, i].mean().item()}
                 for i, (name, n, d, _) in enumerate(conditions)]
ablations = pd.DataFrame(ablation_rows)
clean_eval_acc = ablations.accuracy[0]
summary = (ablations[ablations.n > 0].groupby(["heads", "n"], sort=False)
           .agg(accuracy=("accuracy", "mean"), accuracy_std=("accuracy", "std"), p_answer=("p(answer)", "mean")).reset_index())
print(f"{len(flat_eval)} held-out prompts ({N_EVAL_PROMPTS} per task), {len(conditions)} head sets in one batch per prompt: "
      f"{timings['ablations']:.1f} s; unablated accuracy {clean_eval_acc:.0%}")
summary.pivot(index="n", columns="heads", values="accuracy").round(2)

# %%
fig, ax = plt.subplots(figsize=(8, 4))
styles = {"FV heads": "s-", "induction heads": "o-", "FV heads, top induction excluded": "s--",
          "induction heads, top FV excluded": "o--", "in-context heads (ch. 3)": "^-.", "random": "x:"}
for name, style in styles.items():
    part = summary[summary.heads == name]
    ax.errorbar(part.n / N * 100, part.accuracy, yerr=part.accuracy_std.fillna(0), fmt=style, capsize=3, label=name)
ax.axhline(clean_eval_acc, color="grey", lw=1, label="no ablation")
ax.set_xlabel("share of heads mean-ablated at the last token (%)")
ax.set_ylabel(f"few-shot accuracy ({len(tasks)} tasks)")
ax.set_title(f"{MODEL}: ablating heads by each score (random: mean ± std of {N_RANDOM})", fontsize=10)
ax.legend(fontsize=7)
plt.show()

# %% [markdown]
# ## 4b. Ablations: the token-loss difference
#
# Loss at tokens 40-59 minus loss at tokens 490-509 (with `TEXT_TOKENS = 512`) of natural English text written for the book
# (`data/text/`): how much the model gains from the context it has read. Here a head set is
# mean-ablated at *every* position (its mean over all positions of the text but the first), since the metric
# reads every token. One forward pass over all the text per head set, so only the sizes in
# `TOKEN_LOSS_PERCENTS` are run.

# %%
t0 = time.time()
text = ind.text_sequences(info.tokenizer, TEXT_TOKENS)[:N_TEXT_SEQS]
positions = torch.arange(text.shape[1]).expand(len(text), -1)
text_trace = iu.run_with_trace(info, text, torch.ones_like(text), positions, record=("head_out",))
text_means = {(l, h): text_trace.head_out[l][:, 1:, h].float().mean((0, 1)) for l, h in all_heads}  # BOS left out
del text_trace
early, late = range(40, 60), range(TEXT_TOKENS - 22, TEXT_TOKENS - 2)  # tokens ~50 and ~500 at 512 tokens
clean_tld = ind.token_loss_difference(info, text, early, late)
tl_sizes = sorted({n_heads_for(p) for p in TOKEN_LOSS_PERCENTS})
if not set(tl_sizes) <= set(sizes):
    raise ValueError(f"TOKEN_LOSS_PERCENTS {TOKEN_LOSS_PERCENTS} give {tl_sizes} heads; use percentages from HEAD_PERCENTS {HEAD_PERCENTS}")
loss_rows = [{"heads": "none", "n": 0, "draw": 0, "token-loss difference": clean_tld}]
for n in tl_sizes:
    for name, size, d, heads in conditions:
        if size == n and name in ("FV heads", "induction heads", "in-context heads (ch. 3)", "random"):
            ablate = lambda heads=heads: iu.ablate_heads(info, heads, mode="mean", means=text_means)  # noqa: E731
            loss_rows.append({"heads": name, "n": n, "draw": d,
                              "token-loss difference": ind.token_loss_difference(info, text, early, late, intervention=ablate)})
token_loss = pd.DataFrame(loss_rows)
timings["token_loss"] = time.time() - t0
accuracy_of = ablations.set_index(["heads", "n", "draw"]).accuracy
token_loss["few-shot accuracy"] = [clean_eval_acc if r.n == 0 else accuracy_of[r.heads, r.n, r.draw] for r in token_loss.itertuples()]
print(f"{len(text)} sequences of {text.shape[1]} tokens, loss at tokens {early.start}-{early.stop - 1} minus {late.start}-{late.stop - 1}; "
      f"{timings['token_loss']:.1f} s")
token_loss.round(3)

# %% [markdown]
# ## 5. The function vector
#
# Per task, the function vector is what the top `FV_HEAD_PERCENT`% FV heads write into the
# residual stream when they output their mean (a sum of $W_O^h \bar o_h$; where the model has a
# post-attention norm, through that norm linearised at the layer's mean output). It is added at the
# last token of *zero-shot* prompts (the query alone, no demonstrations) to the residual stream
# entering one layer. The layer is chosen on zero-shot versions of the patched prompts' queries and then
# tested on the held-out queries; Todd et al. use a layer near $L/3$, also shown. Controls: the
# same construction from as many random heads. A more direct form of the same test patches the FV
# heads' mean outputs themselves into the zero-shot prompt's last token.

# %%
t0 = time.time()
n_fv = n_heads_for(FV_HEAD_PERCENT)
fv_heads = top_heads(fv_score, n_fv)
random_heads = random.Random(SEED + 2).sample(all_heads, n_fv)
third = info.n_layers // 3
layers = sorted(set(range(0, info.n_layers, FV_LAYER_STEP)) | {third})
vectors = {t: fv.function_vector(info, task_means[t], fv_heads) for t in tasks}
controls = {t: fv.function_vector(info, task_means[t], random_heads) for t in tasks}
select_rows = []
for t in tasks:  # choose the layer on the scoring prompts' queries
    queries = fv.zero_shot_prompts(clean_runs[FORMAT, t][0][:N_PATCH_PROMPTS], fmt)
    _, c = fv.answers_with_additions(info, queries, [(l, vectors[t]) for l in layers])
    select_rows.append(c.float().mean(0))
fv_layer = layers[int(torch.stack(select_rows).mean(0).argmax())]
fv_rows = []
for t in tasks:  # test on the held-out queries
    zero_shot = fv.zero_shot_prompts(eval_prompts[t], fmt)
    additions = [None] + [(l, vectors[t]) for l in layers] + [(fv_layer, controls[t])]
    _, c_add = fv.answers_with_additions(info, zero_shot, additions)
    _, c_patch = fv.patched_answers(info, zero_shot, [fv_heads, random_heads], task_means[t])
    fv_rows += [{"task": t, "added": "nothing", "layer": -1, "accuracy": c_add[:, 0].float().mean().item()}]
    fv_rows += [{"task": t, "added": "function vector", "layer": l, "accuracy": c_add[:, 1 + i].float().mean().item()}
                for i, l in enumerate(layers)]
    fv_rows += [{"task": t, "added": "random-head vector", "layer": fv_layer, "accuracy": c_add[:, -1].float().mean().item()},
                {"task": t, "added": "FV heads' means patched", "layer": -1, "accuracy": c_patch[:, 0].float().mean().item()},
                {"task": t, "added": "random heads' means patched", "layer": -1, "accuracy": c_patch[:, 1].float().mean().item()}]
fv_table = pd.DataFrame(fv_rows)
timings["function_vector"] = time.time() - t0
zs = fv_table.groupby("added", sort=False).accuracy.mean()
by_layer = fv_table[fv_table.added == "function vector"].groupby("layer").accuracy.mean()
zs_clean, zs_fv, zs_third, zs_random = zs["nothing"], by_layer[fv_layer], by_layer[third], zs["random-head vector"]
zs_patch, zs_patch_random = zs["FV heads' means patched"], zs["random heads' means patched"]
vector_norm = float(np.mean([v.norm().item() for v in vectors.values()]))
print(f"function vector from the top {n_fv} FV heads {fv_heads} (mean norm {vector_norm:.0f}); zero-shot accuracy over "
      f"{len(tasks)} tasks, held-out queries: nothing added {zs_clean:.0%}; FV at layer {fv_layer} (chosen on other prompts) "
      f"{zs_fv:.0%}, at layer {third} (n_layers // 3) {zs_third:.0%}; random-head vector {zs_random:.0%}")
print(f"patching the FV heads' mean outputs into the last token: {zs_patch:.0%} (random heads: {zs_patch_random:.0%})")
zs_ids, zs_mask, zs_last = fv.encode_texts(info, [p.text for p in fv.zero_shot_prompts(flat_eval, fmt)])
resid_trace = iu.run_with_trace(info, zs_ids, zs_mask, zs_last, record=("resid",))
resid_norm = [resid_trace.resid[l][:, 0].norm(dim=-1).mean().item() for l in range(info.n_layers)]
print(f"for scale, the residual stream's norm at the last token entering layer 0: {resid_norm[0]:.0f}, layer {third}: "
      f"{resid_norm[third]:.0f}, layer {fv_layer}: {resid_norm[fv_layer]:.0f}, layer {info.n_layers - 1}: {resid_norm[-1]:.0f}")
at_chosen = fv_table[(fv_table.added != "function vector") | (fv_table.layer == fv_layer)]  # the sweep is plotted below
at_chosen.pivot_table(index="task", columns="added", values="accuracy", aggfunc="mean", sort=False).rename(
    columns={"function vector": f"function vector (layer {fv_layer})"}).round(2)

# %%
fig, ax = plt.subplots(figsize=(7.5, 3.5))
sns.lineplot(data=fv_table[fv_table.added == "function vector"], x="layer", y="accuracy", hue="task", ax=ax, alpha=0.5, lw=1)
ax.plot(by_layer.index, by_layer.values, "k-o", lw=2, label="mean over tasks")
ax.axhline(zs_clean, color="grey", ls=":", label="zero-shot, nothing added")
ax.axhline(zs_patch, color="C2", ls="--", label="FV heads' means patched")
ax.scatter([fv_layer], [zs_random], marker="x", color="C3", s=60, zorder=5, label="random-head vector")
ax.set_ylabel("zero-shot accuracy")
ax.set_xlabel("layer whose input the function vector is added to")
ax.set_title(f"Adding the function vector ({n_fv} heads) to one layer", fontsize=10)
ax.legend(fontsize=7, ncol=2)
plt.show()

# %% [markdown]
# ## Verdict

# %%
row = lambda name, n: summary[(summary.heads == name) & (summary.n == n)].iloc[0]  # noqa: E731
mean_over_sizes = lambda name: summary[summary.heads == name].accuracy.mean()  # noqa: E731
acc = {name: mean_over_sizes(name) for name in styles}
rand_std = summary[summary.heads == "random"].accuracy_std.fillna(0).mean()
noise = max(rand_std, (0.25 / len(flat_eval)) ** 0.5)  # spread of random draws, or one accuracy's standard error
largest = sizes[-1]
n_tl = int(token_loss.n.max())  # the largest size measured
tl = token_loss[token_loss.n.isin([0, n_tl])].groupby("heads")["token-loss difference"].mean()  # random: mean of the draws
tl_drop = {name: clean_tld - tl[name] for name in ["FV heads", "induction heads", "random"] if name in tl}
ind_fv_overlap = len(set(tops["induction"]) & set(tops["FV"]))
icl_in_fv = len(set(tops["in-context (ch. 3)"]) & set(tops["FV"]))
icl_in_ind = len(set(tops["in-context (ch. 3)"]) & set(tops["induction"]))
kinds = [("FV" if h in tops["FV"] else "") + ("+" if h in tops["FV"] and h in tops["induction"] else "")
         + ("induction" if h in tops["induction"] else "") or "neither" for h in tops["in-context (ch. 3)"]]
belongs = ", ".join(f"{kinds.count(kind)} {kind}" for kind in ["FV+induction", "FV", "induction", "neither"] if kind in kinds)
one_layer = 1 / (info.n_layers - 1)
fv_gain = zs_fv - zs_clean
claims = [
    Claim(
        claim="Induction heads and FV heads are mostly different heads",
        paper="12 models (Pythia 70M-6.9B, GPT-2, Llama-2-7B): little overlap between the top 2% of each",
        book=f"{MODEL}: top {k} of {N} ({k / N:.0%}) share {ind_fv_overlap} head(s) (random sets: {k * k / N:.1f}); "
             f"Spearman of the scores {spearman(induction, fv_score):.2f}",
        verdict="reproduced" if ind_fv_overlap <= k / 4 else "partly reproduced" if ind_fv_overlap < k / 2 else "not reproduced",
    ),
    Claim(
        claim="FV heads sit a little deeper than induction heads",
        paper="induction heads in early-middle layers, FV heads slightly later",
        book=f"mean relative depth of the top {k}: induction {depth['induction']:.2f}, FV {depth['FV']:.2f}",
        verdict=("reproduced" if depth["FV"] > depth["induction"] + one_layer else
                 "partly reproduced (same depth within a layer)" if depth["FV"] > depth["induction"] - one_layer else "not reproduced"),
    ),
    Claim(
        claim="Ablating FV heads hurts few-shot ICL far more than ablating induction heads",
        paper="mean ablation at the last token of the top 1-20%: FV heads drop accuracy steeply, induction heads much less",
        book=f"accuracy {clean_eval_acc:.0%} unablated; mean over sizes {sizes}: FV {acc['FV heads']:.0%}, induction "
             f"{acc['induction heads']:.0%}, random {acc['random']:.0%}; top {largest}: FV {row('FV heads', largest).accuracy:.0%}, "
             f"induction {row('induction heads', largest).accuracy:.0%}",
        verdict=("reproduced" if acc["FV heads"] < acc["induction heads"] - 2 * noise else
                 "partly reproduced (FV ablation hurts more, within noise)" if acc["FV heads"] < acc["induction heads"] else "not reproduced"),
    ),
    Claim(
        claim="Induction heads that are not FV heads matter little for few-shot ICL (exclusion control ~ random)",
        paper=f"top induction heads after removing the top {EXCLUDE_PERCENT}% FV heads: close to random",
        book=f"mean over sizes: induction without the top {n_exclude} FV head(s) ({EXCLUDE_PERCENT}%) {acc['induction heads, top FV excluded']:.0%} vs random "
             f"{acc['random']:.0%} (noise ~{noise:.0%}); FV without the top {n_exclude} induction head(s) {acc['FV heads, top induction excluded']:.0%}",
        verdict="reproduced" if abs(acc["induction heads, top FV excluded"] - acc["random"]) <= 2 * noise else "not reproduced",
    ),
    Claim(
        claim="The token-loss metric tells the opposite story: induction heads matter more for it than FV heads",
        paper="ablating induction heads lowers the token-loss difference more than ablating FV heads",
        book=f"token-loss difference {clean_tld:.2f} nats unablated; top {n_tl} ablated: induction {tl['induction heads']:.2f}, "
             f"FV {tl['FV heads']:.2f}, random {tl['random']:.2f} (mean of {N_RANDOM}); in-context {tl['in-context heads (ch. 3)']:.2f}",
        verdict=("reproduced" if tl_drop["induction heads"] > max(tl_drop["FV heads"], tl_drop["random"]) else
                 "partly reproduced (induction heads lower it more than FV heads, but random sets lower it more still)"
                 if tl_drop["induction heads"] > tl_drop["FV heads"] else "not reproduced"),
    ),
    Claim(
        claim="A function vector added to a middle layer makes zero-shot prompts do the task",
        paper="Todd et al.: large zero-shot gains from 10 heads' FV in GPT-J / Llama (e.g. antonyms, capitals)",
        book=f"zero-shot accuracy over {len(tasks)} tasks: {zs_clean:.0%} -> {zs_fv:.0%} with the FV of {n_fv} heads at layer "
             f"{fv_layer} of {info.n_layers} ({zs_third:.0%} at layer {third}; random-head vector {zs_random:.0%}); "
             f"the FV heads' means patched in: {zs_patch:.0%} (random heads {zs_patch_random:.0%})",
        verdict=("reproduced" if fv_gain >= 0.2 and zs_fv > zs_random + 2 * noise else
                 "partly reproduced" if fv_gain > 2 * noise else "not reproduced"),
    ),
    Claim(
        claim="Attribution patching approximates exact activation patching of heads",
        paper="method (Nanda 2023; Syed et al. 2023): first-order estimate from one forward and one backward pass",
        book=f"FV scores: Spearman {rho_attr:.2f} over {N} heads, top-{k_check} overlap {overlap_attr}/{k_check}; "
             f"{timings['fv_exact'] / timings['fv_attribution']:.0f}x faster than batched exact patching",
        verdict="reproduced" if rho_attr > 0.7 and overlap_attr >= k_check / 2 else "partly reproduced" if rho_attr > 0.4 else "not reproduced",
    ),
    Claim(
        claim="(Book's question) Are Yu & Ananiadou's in-context heads FV heads or induction heads?",
        paper="not studied by either paper",
        book=f"top {k} in-context heads {tops['in-context (ch. 3)']}: {icl_in_fv} among the top-{k} FV heads, {icl_in_ind} among the "
             f"top-{k} induction heads; ablating the top {largest}: accuracy {row('in-context heads (ch. 3)', largest).accuracy:.0%} "
             f"(FV {row('FV heads', largest).accuracy:.0%}, random {row('random', largest).accuracy:.0%})",
        verdict=f"answer (of the top {k} in-context heads): {belongs}",
    ),
]
claims_table(claims)

# %% [markdown]
# **Reading the result.** The claims above are computed in this run; here is how to read them.
# The model is far smaller than the paper's (Gemma-3-270M has 72 heads, so "1%" and "2%" are one
# head each, and the percentages are coarse), and each score averages few prompts, so a top-k
# overlap can change by a head with another seed (this run uses one seed): read the shape of the
# curves more than their decimals. The FV score measures how much one head's mean restores the
# task when the demonstrations' labels are shuffled; the shuffled prompts' accuracy printed in
# section 2 shows how much there was to restore (a model that still answers from the query alone
# leaves less). Mean ablation here replaces a head's last-token output by its mean over all tasks,
# so the replacement carries no single task.
#
# The token-loss difference needs long texts and a forward pass over all of them per head set, so
# it is measured at one size on a few sequences of the book's own text: a noisy figure, reported
# beside the accuracy of the same ablation so that the two stories can be compared row by row.
# Mean ablation at *every* position is a blunter tool than at the last token: a random set that
# happens to include an early head the whole stream depends on can move the loss more than any
# chosen set, so compare against the spread of the random draws.
#
# The function vector is added to one layer's input. In the default model the residual stream's
# norm grows many-fold from the first layer to the last (printed above), so a vector of the size
# the FV heads write (they sit in the middle and upper layers) can swamp the stream in early
# layers; the layer sweep shows where it helps. Patching the FV heads' mean outputs into the zero-shot prompt, at
# their own layers, is the same test without that choice.
#
# Readers with a GPU can set `MODEL = "meta-llama/Llama-2-7b-hf"` (1,024 heads, so 1% is ten heads)
# and raise the prompt counts.

# %%
save_results(
    "08_induction_and_fv_heads",
    {
        "model": MODEL, "format": FORMAT, "tasks": tasks,
        "task_accuracy": {t: float(chosen.accuracy[t]) for t in task_names},
        "top_induction_heads": tops["induction"], "top_fv_heads": tops["FV"], "top_in_context_heads": tops["in-context (ch. 3)"],
        "overlaps": {r["pair"]: int(r[f"top-{k} overlap"]) for r in overlap_rows}, "depth": depth,
        "attribution_vs_exact_spearman": rho_attr, "attribution_vs_exact_topk_overlap": overlap_attr,
        "ablation_accuracy": {f"{r.heads} | {r.n}": float(r.accuracy) for r in summary.itertuples()},
        "clean_accuracy": clean_eval_acc,
        "token_loss_difference": {f"{h} | {n} | {d}": float(v) for h, n, d, v in
                                  zip(token_loss.heads, token_loss.n, token_loss.draw, token_loss["token-loss difference"])},
        "zero_shot_accuracy": {"nothing": zs_clean, "function_vector": zs_fv, "function_vector_layer": fv_layer,
                               "random_vector": zs_random, "fv_heads_patched": zs_patch, "random_heads_patched": zs_patch_random},
        "timings_s": timings, "runtime_s": time.time() - start,
    },
    claims,
)
print("seconds per step: " + ", ".join(f"{name} {s:.0f}" for name, s in timings.items()))
print(f"chapter runtime: {time.time() - start:.0f} s")
