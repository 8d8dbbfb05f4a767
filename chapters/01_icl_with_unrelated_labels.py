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
# # 1. In-context learning with unrelated labels
#
# **Question.** Does a small language model learn a classification task *from the demonstrations
# in its prompt* when the label words mean nothing — `foo` and `bar` instead of `animal` and
# `vehicle`? {cite:t}`yu2024twotowers` study exactly this setting: with unrelated
# labels, the model cannot fall back on what the label words mean, so whatever it gets right it has
# read off the demonstrations. Every later chapter dissects this behaviour, so first we measure it,
# and choose the model and the task the later chapters use.
#
# **Method.** For each task we build prompts of $k$ demonstrations per class followed by a query,
# and read the model's next-token logits for the two label words at the last position:
#
# ```text
# Input: dog
# Label: foo
#
# Input: car
# Label: bar
#
# Input: cat
# Label:
# ```
#
# Three rules hold in every chapter of the book:
#
# * **Pools fixed by the data.** Each task's inputs are cut once, by a hash of their text, into a
#   *demonstration* pool, a *selection* pool (anything that chooses: here the model and the task)
#   and an *evaluation* pool (anything that grades a claim). What chooses never sees what grades.
# * **The demonstration set is the unit.** Prompts come in groups of `QUERIES_PER_GROUP` queries
#   sharing one set of demonstrations (the model reads each set once for the whole group,
#   `score_prompts(..., share_prefix=True)`), every group with its own queries. Intervals resample
#   whole demonstration sets, since the prompts of one set are right or wrong together.
# * **Claims are declared before their numbers** and graded by one function
#   (`icl_utils.reporting.grade`): *reproduced*, *contradicted*, *inconclusive* (with the effect
#   the design could have detected), *not testable* (the precondition fails) or *differs*.
#
# Small models put a prior on one label word whatever the input, so raw accuracy can sit at chance
# while the model separates the classes well. We report three numbers:
#
# * **raw accuracy**: argmax over the two label words (the paper's figure);
# * **calibrated accuracy**: batch calibration {cite}`zhou2024batch` divides each prompt's label
#   probabilities by their mean over *calibration prompts*: prompts with the same demonstrations
#   whose queries come from the demonstration pool (never a scored prompt, never one of the
#   prompt's own demonstrations);
# * **AUC** of the logit difference: how well the scores rank the two classes, with no threshold.
#
# Three controls: the foo/bar assignment **swapped** (bar for the first class), a **second pair**
# of unrelated words, and a task whose labels were assigned **at random** (`random_labels`: nothing
# to learn, so it must stay at chance).

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
MODEL = "gemma3-270m"  # embedded: "gemma3-270m", "smollm2-135m"; on Colab try "gpt2-large", "meta-llama/Llama-2-7b-hf"
COMPARE_MODELS = ["gemma3-270m", "smollm2-135m"]  # candidates for the book's default, compared on the selection pool
WORD_TASKS = ["animal_vehicle", "sentiment_words", "fruit_colour"]  # any of iu.available_tasks() or a file
SENTENCE_TASKS = ["sentiment_sentences", "topic_sentences"]  # the paper's kind of data; "sst2" where the hub is reachable
CONTROL_TASK = "random_labels"  # labels assigned at random: must stay at chance ("" to skip)
DEMOS_PER_CLASS = [0, 2, 8]  # k; claims are graded at the largest
N_GROUPS = 6  # demonstration sets per task, condition and k (evaluation pool): 12 units on the two sentence tasks
QUERIES_PER_GROUP = 6  # queries per demonstration set, balanced over the two classes
N_SELECT_GROUPS = 2  # demonstration sets per task and label assignment for choosing the model and task (selection pool)
CALIBRATION_PER_CLASS = 2  # calibration prompts per class and demonstration set
SECOND_PAIR = ("table", "moon")  # a second pair of unrelated one-token label words
SEED = 0
BATCH_SIZE = 16  # unused here (the scoring packs whole demonstration sets per pass); read by the benchmarks

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from IPython.display import display

import icl_utils as iu
from icl_utils.evaluation import score_calibrated_packed
from icl_utils.reporting import ClaimSpec, claims_table, declared_claims_table, grade, save_results
from icl_utils.stats import mean_interval, paired_difference

sns.set_theme(style="whitegrid", context="notebook")
start = time.time()
k_max = max(DEMOS_PER_CLASS)
FOO_BAR, SWAPPED = tuple(iu.FOO_BAR), tuple(reversed(iu.FOO_BAR))
tasks = {"word": list(WORD_TASKS), "sentence": list(SENTENCE_TASKS)}
kind_of = {t: kind for kind, names in tasks.items() for t in names}

# %% [markdown]
# ## Declared claims
#
# Each claim, before any number: the metric, the paper's direction, the smallest effect that
# counts and why, the control, the unit of its 95% interval (a Student-t interval over task x
# demonstration set; fewer than 8 such units are inconclusive), the precondition, and its role.
# The paper's claim has one primary row, on sentence tasks (the paper's kind of data); the word
# tasks, the raw argmax, the k = 0 contrast and the second word pair are exploratory. The
# precondition asks whether the task is learnable at all: with *meaningful* label words (the class
# names) the model must beat chance, else a foo/bar failure says nothing about in-context learning.

# %%
MEANINGFUL_PRECONDITION = "with meaningful labels (the class names) the calibrated accuracy's interval lies above 0.5"
UNIT = "demonstration set"
claim_specs = {
    "foo/bar, word tasks": ClaimSpec(
        claim="LLMs classify in context with semantically unrelated labels (word tasks)",
        paper="Llama-7B, 5 sentence datasets: 87.6% accuracy with foo/bar (Yu & Ananiadou 2024)",
        metric=f"calibrated accuracy at k={k_max}, foo/bar and swapped bar/foo pooled, mean over the word tasks",
        direction="increase", null=0.5, smallest_effect=0.10,
        smallest_effect_reason="10 points above chance: one query in ten more than guessing",
        control="the same prompts at k=0; the random-label task", unit=f"{UNIT} (task x set)", precondition=MEANINGFUL_PRECONDITION),
    "foo/bar, sentence tasks": ClaimSpec(
        claim="LLMs classify in context with semantically unrelated labels (sentence tasks, the paper's kind of data)",
        paper="Llama-7B, 5 sentence datasets: 87.6% accuracy with foo/bar (Yu & Ananiadou 2024)",
        metric=f"calibrated accuracy at k={k_max}, foo/bar and swapped bar/foo pooled, mean over the sentence tasks",
        direction="increase", null=0.5, smallest_effect=0.10,
        smallest_effect_reason="10 points above chance: one query in ten more than guessing",
        control="the same prompts at k=0; the random-label task", unit=f"{UNIT} (task x set)", precondition=MEANINGFUL_PRECONDITION,
        primary=True),
    "raw accuracy": ClaimSpec(
        claim="... and the raw argmax is right (the paper's figure is raw accuracy)",
        paper="Llama-7B: 87.6% raw accuracy with foo/bar",
        metric=f"raw accuracy at k={k_max}, foo/bar and bar/foo pooled, all tasks",
        direction="increase", null=0.5, smallest_effect=0.10,
        smallest_effect_reason="10 points above chance", control="calibrated accuracy on the same prompts",
        unit=f"{UNIT} (task x set)", precondition=MEANINGFUL_PRECONDITION),
    "needs demonstrations": ClaimSpec(
        claim="Accuracy with unrelated labels comes from the demonstrations (it needs k > 0)",
        paper="implicit in the setting: foo/bar carry no meaning",
        metric=f"calibrated accuracy at k={k_max} minus at k=0, same queries (paired), foo/bar, all tasks",
        direction="increase", smallest_effect=0.10, smallest_effect_reason="10 points: one query in ten",
        control="k=0 (no demonstrations) on the same queries", unit=f"{UNIT} (task x set)", precondition=MEANINGFUL_PRECONDITION),
    "second word pair": ClaimSpec(
        claim=f"It does not hinge on foo/bar: a second unrelated pair ({SECOND_PAIR[0]}/{SECOND_PAIR[1]}) works too",
        paper="not tested in the paper (foo/bar only)",
        metric=f"calibrated accuracy at k={k_max} with {SECOND_PAIR[0]}/{SECOND_PAIR[1]}, all tasks",
        direction="increase", null=0.5, smallest_effect=0.10, smallest_effect_reason="10 points above chance",
        control="foo/bar on the same queries and demonstrations", unit=f"{UNIT} (task x set)", precondition=MEANINGFUL_PRECONDITION),
}
declared_claims_table(claim_specs)

# %%
info = iu.load_model(MODEL)
info

# %% [markdown]
# One prompt, exactly as the model reads it, with the label positions the later chapters use:

# %%
example_task = iu.load_task((WORD_TASKS or SENTENCE_TASKS)[0])
example = iu.build_prompts(example_task, 1, demos_per_class=2, seed=SEED)[0]
print(example.text)
batch = iu.encode_prompts(info, [example])
tokens = info.tokenizer.convert_ids_to_tokens(batch.input_ids[0])
print("\nlabel positions:", batch.label_positions[0], "->", [tokens[i] for i in batch.label_positions[0]])
print("last position:", int(batch.last_positions[0]), "->", repr(tokens[int(batch.last_positions[0])]))
print("label token ids:", dict(zip(iu.FOO_BAR, iu.label_token_ids(info.tokenizer, iu.FOO_BAR))))
pools = iu.task_pools(example_task)
print(f"\npools of {example_task.name} (inputs per class): " + ", ".join(f"{name} {len(next(iter(pool.values())))}" for name, pool in pools.items()))

# %% [markdown]
# ## Choosing the model and the task (selection pool only)
#
# The rules, fixed before the numbers: the book's **default model** is the candidate with the
# higher mean AUC on the *sentence* tasks (the paper's kind of data), foo/bar and bar/foo pooled;
# the **main task** of the later chapters is the *word* task on which that model has the highest
# mean AUC (word prompts are about three times shorter than sentence prompts, and later chapters
# run hundreds of interventions on them). Both rules read only the selection pool.
#
# Every condition below is scored the same way (`icl_utils.evaluation.score_calibrated_packed`):
# each demonstration set is read once and its queries are replayed over it, several sets per
# forward pass; calibration prompts share their set's demonstrations.

# %%
def design(task_name, labels, k, pool="evaluation", n_groups=N_GROUPS):
    return iu.design_prompts(iu.load_task(task_name), n_groups, QUERIES_PER_GROUP, k, label_words=labels, pool=pool,
                             calibration_per_class=CALIBRATION_PER_CLASS, seed=SEED)


def scores_for(model_info, conditions, desc, **kwargs):
    """{(task, labels, k): calibrated ICLScores} for every condition, all read in shared passes."""
    designs = [design(*c, **kwargs) for c in conditions]
    return dict(zip(conditions, score_calibrated_packed(model_info, designs, progress=True, desc=desc)))


selection_rows = []
for name in COMPARE_MODELS:
    candidate = info if name == MODEL else iu.load_model(name)
    chosen = [(t, labels, k_max) for kind in tasks.values() for t in kind for labels in (FOO_BAR, SWAPPED)]
    for (task_name, labels, _), s in scores_for(candidate, chosen, f"{name}: selection pool", pool="selection",
                                               n_groups=N_SELECT_GROUPS).items():
        selection_rows.append({"model": name, "task": task_name, "kind": kind_of[task_name], "labels": "/".join(labels),
                               "raw accuracy": s.accuracy(), "calibrated accuracy": s.accuracy("prior"), "AUC": s.auc()})
    if candidate is not info:
        del candidate
selection = pd.DataFrame(selection_rows)
by_kind = selection.groupby(["model", "kind"])[["raw accuracy", "calibrated accuracy", "AUC"]].mean().unstack("kind")
display(by_kind.round(3))
sentence_auc = selection[selection.kind == "sentence"].groupby("model")["AUC"].mean()
chosen_model = sentence_auc.idxmax() if len(sentence_auc) else selection.groupby("model")["AUC"].mean().idxmax()
word_auc = selection[(selection.model == chosen_model) & (selection.kind == "word")].groupby("task")["AUC"].mean()
chosen_task = word_auc.idxmax() if len(word_auc) else None
print(f"default model by the rule: {chosen_model} (book's default: {iu.DEFAULT_MODEL}); "
      f"main task: {chosen_task} (selection AUC per word task: {word_auc.round(3).to_dict()})")
if chosen_model != iu.DEFAULT_MODEL:
    print(f"!! the measurement picks {chosen_model}, but the book's default is {iu.DEFAULT_MODEL}: "
          f"update icl_utils.models.DEFAULT_MODEL and every chapter's MODEL parameter")

# %% [markdown]
# ## Accuracy against the number of demonstrations (evaluation pool)
#
# For $k = 0$ the foo/bar condition has nothing to learn from: it shows the label prior alone.
# Error bars: 95% intervals over demonstration sets.

# %%
conditions = [(lw, k) for lw in (FOO_BAR, "meaningful") for k in DEMOS_PER_CLASS if not (lw == "meaningful" and k == 0)]
conditions += [(SWAPPED, k_max), (tuple(SECOND_PAIR), k_max)]
all_tasks = [t for kind in tasks.values() for t in kind] + ([CONTROL_TASK] if CONTROL_TASK else [])
scores, rows = {}, []
evaluated = scores_for(info, [(t, labels, k) for t in all_tasks for labels, k in conditions], f"{MODEL}: evaluation pool")
for task_name in all_tasks:
    for labels, k in conditions:
        name = labels if isinstance(labels, str) else "/".join(labels)
        s = evaluated[task_name, labels, k]
        scores[task_name, name, k] = s
        correct = s.correct("prior").numpy()
        ci = mean_interval(correct, s.demo_set) if len(np.unique(s.demo_set)) > 1 else None
        rows.append({"task": task_name, "kind": kind_of.get(task_name, "control"), "labels": name, "k": k,
                     "raw accuracy": s.accuracy(), "calibrated accuracy": s.accuracy("prior"), "AUC": s.auc(),
                     "low": ci.low if ci else np.nan, "high": ci.high if ci else np.nan})
results = pd.DataFrame(rows)
results.round(3)

# %%
curve = results[results.labels.isin(["foo/bar", "meaningful"])]
grid_plot = sns.relplot(data=curve, x="k", y="calibrated accuracy", hue="labels", col="task", kind="line",
                        markers=True, height=3.0, aspect=0.85, facet_kws={"ylim": (0.3, 1.02)})
for ax, task_name in zip(grid_plot.axes.flat, grid_plot.col_names):
    part = curve[curve.task == task_name]
    for (labels, colour) in zip(["foo/bar", "meaningful"], sns.color_palette()[:2]):
        p = part[part.labels == labels]
        ax.errorbar(p.k, p["calibrated accuracy"], yerr=[p["calibrated accuracy"] - p.low, p.high - p["calibrated accuracy"]],
                    fmt="none", ecolor=colour, capsize=3)
    raw = part[part.labels == "foo/bar"]
    ax.plot(raw.k, raw["raw accuracy"], "k:", lw=1, label="raw, foo/bar")
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xscale("symlog", base=2, linthresh=1)
    ax.set_xticks(DEMOS_PER_CLASS, labels=DEMOS_PER_CLASS)
grid_plot.set_axis_labels("demonstrations per class (k)", "calibrated accuracy")
grid_plot.figure.suptitle(f"{MODEL}: foo/bar vs meaningful labels (dotted black: raw accuracy with foo/bar)", y=1.04)
plt.show()

# %% [markdown]
# ## Controls at k = 8: swapped labels, a second word pair, random labels

# %%
at_k = results[results.k == k_max].pivot_table(index="task", columns="labels", values="calibrated accuracy")
at_k.round(3)

# %% [markdown]
# ## Verdicts
#
# Every number below is computed from the scores above; `grade` turns each estimate and its
# interval into the verdict.

# %%
def pooled(task_names, labels_list, k, metric="prior"):
    """Per-prompt correctness and cluster labels (task x demonstration set) over tasks and label assignments."""
    values, clusters = [], []
    for t in task_names:
        for labels in labels_list:
            s = scores[t, labels, k]
            values.append(s.correct(metric).numpy() if metric != "raw" else s.correct().numpy())
            clusters += [f"{t}/{d}" for d in s.demo_set]
    return (np.concatenate(values), np.array(clusters)) if values else (None, None)


def interval_or_none(values, clusters):
    if values is None or len(np.unique(clusters)) < 2:
        return None
    return mean_interval(values, clusters)


def learnable(task_names):
    v, c = pooled(task_names, ["meaningful"], k_max)
    ci = interval_or_none(v, c)
    return ci is not None and ci.low > 0.5, ci


graded = []
for kind, claim_name in (("word", "foo/bar, word tasks"), ("sentence", "foo/bar, sentence tasks")):
    ok, meaningful_ci = learnable(tasks[kind])
    v, c = pooled(tasks[kind], ["foo/bar", "bar/foo"], k_max)
    ci = interval_or_none(v, c)
    raw_v, _ = pooled(tasks[kind], ["foo/bar", "bar/foo"], k_max, metric="raw")
    book = (f"{MODEL}, {', '.join(tasks[kind]) or 'no tasks'}: calibrated {ci} (raw {raw_v.mean():.3f}); "
            f"meaningful labels {meaningful_ci}" if ci else f"{MODEL}: no {kind} tasks run")
    graded.append(grade(claim_specs[claim_name], ci, book, precondition_met=ok))

every_task = tasks["word"] + tasks["sentence"]
ok_all, meaningful_all = learnable(every_task)
raw_v, raw_c = pooled(every_task, ["foo/bar", "bar/foo"], k_max, metric="raw")
raw_ci = interval_or_none(raw_v, raw_c)
cal_v, _ = pooled(every_task, ["foo/bar", "bar/foo"], k_max)
graded.append(grade(claim_specs["raw accuracy"], raw_ci,
                    f"{MODEL}, all tasks: raw {raw_ci}, calibrated {cal_v.mean():.3f} on the same prompts", precondition_met=ok_all))

with_demos, clusters = pooled(every_task, ["foo/bar"], k_max)
without, _ = pooled(every_task, ["foo/bar"], 0)
same_queries = all(
    [p.query for p in iu.evaluation.design_prompts(iu.load_task(t), N_GROUPS, QUERIES_PER_GROUP, k_max, seed=SEED)[0]]
    == [p.query for p in iu.evaluation.design_prompts(iu.load_task(t), N_GROUPS, QUERIES_PER_GROUP, 0, seed=SEED)[0]]
    for t in every_task)
assert same_queries, "k=0 and k=k_max prompts must ask the same queries for a paired difference"
diff_ci = paired_difference(with_demos, without, clusters) if with_demos is not None and len(np.unique(clusters)) > 1 else None
graded.append(grade(claim_specs["needs demonstrations"], diff_ci,
                    f"{MODEL}: calibrated accuracy k={k_max} minus k=0: {diff_ci}", precondition_met=ok_all))

pair_name = "/".join(SECOND_PAIR)
pair_v, pair_c = pooled(every_task, [pair_name], k_max)
pair_ci = interval_or_none(pair_v, pair_c)
graded.append(grade(claim_specs["second word pair"], pair_ci, f"{MODEL}, {pair_name}: calibrated {pair_ci}",
                    precondition_met=ok_all))

if CONTROL_TASK:
    control = results[(results.task == CONTROL_TASK) & (results.k == k_max)]
    print(f"negative control {CONTROL_TASK} (nothing to learn), calibrated accuracy at k={k_max}: "
          + "; ".join(f"{r.labels} {r['calibrated accuracy']:.3f} [{r.low:.3f}, {r.high:.3f}]" for _, r in control.iterrows()))
claims_table(graded)

# %% [markdown]
# **What this means for the rest of the book.** Read the verdicts above with the raw-accuracy row:
# a small model can learn foo/bar tasks from its demonstrations while its raw answer is dominated
# by a prior for one label word, so the later chapters measure effects on the *logit difference*
# between the label words, on the AUC and on calibrated accuracy, and print raw accuracy beside
# them. Where a claim is *inconclusive*, its row says how small an effect the design could detect
# and how many demonstration sets would settle it. The paper's numbers come from 7B-parameter
# models on sentence datasets; this model is 25 times smaller. Readers with a GPU can set
# `MODEL = "meta-llama/Llama-2-7b-hf"` and `SENTENCE_TASKS = ["sst2"]` in the parameters cell.

# %%
save_results(
    "01_icl_with_unrelated_labels",
    {
        "model": MODEL, "k": k_max, "chosen_model": chosen_model, "main_task": chosen_task,
        "selection_auc_by_model_and_kind": {f"{m}/{k}": v for (m, k), v in
                                            selection.groupby(["model", "kind"])["AUC"].mean().items()},
        "evaluation": results.to_dict(orient="records"), "runtime_s": time.time() - start,
    },
    graded,
)
print(f"chapter runtime: {time.time() - start:.0f} s")
