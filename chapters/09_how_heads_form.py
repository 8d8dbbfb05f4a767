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
# # 9. How induction and FV heads form during training
#
# **Question.** {cite:t}`yin2025heads` follow Pythia's heads over its training checkpoints and
# find that many heads that end up as *function-vector (FV) heads* were *induction heads* earlier
# in training: induction, they suggest, helps the model learn the FV mechanism. Do the heads with
# the highest FV score at the end have high induction scores earlier?
#
# Offline there are no checkpoints of any model to load, so this chapter trains its own: a small
# GPTNeoX (Pythia's family, `transformers.GPTNeoXForCausalLM` from a config) on a 2-core CPU, in
# a few minutes per seed, saving checkpoints into the model cache (never into git; the chapter
# trains them when they are missing). With a GPU and the network (Colab), set `MODEL` to a Pythia
# size and the same analysis runs over Pythia's own checkpoints.
#
# **The training mixture** (`icl_utils.training`) lets both mechanisms pay off:
# - natural text (`data/text/`, public-domain prose);
# - repeated random spans `r_1..r_k r_1..r_k`: the second copy is predictable only by induction;
# - in-context task sequences `x1 -> y1 \n x2 -> y2 ...`, one task per sequence: the book's six
#   word-pair tasks (`data/fv_tasks/`) and eight new ones whose inputs are shared (a number
#   n -> n+1, n-1, 2n, n+10 or its last digit; a word -> its capital form, French, first letter,
#   last letter or length), so the answer to a query depends on the task the demonstrations show:
#   a latent task encoding pays off. Pairs are drawn with replacement, so a query sometimes repeats
#   an earlier demonstration and induction pays off there too.
#
# **The model and its budget.** Two layers, four heads, width 64, sequences of 64 tokens, batches
# of 32, 800 AdamW steps (learning rate 2e-3 with a 5% warm-up and a cosine decay, betas 0.9/0.98,
# no weight decay, gradients clipped at 1), untied embeddings; a tenth of the sequences are text,
# four tenths repeated spans, half task sequences. Two layers are all an induction circuit needs,
# and a small model runs about 15 steps a second on two CPU cores, so three seeds of 800 steps fit
# in the chapter's few minutes. This was chosen on training loss and on induction scores of random
# sequences, never on the numbers graded below, in a search run once while the chapter was written
# (seed 100, not one of the chapter's seeds; the figures in this paragraph are from that search,
# not from this run): it learns the tasks far better than the earlier four-layer, 250-step setting
# (task-sequence loss about 0.9 against 1.8), but in no trial of up to
# 1,500 steps (repeat-only data, spans drawn from 30-100 tokens, learning rates 2e-3 to 1e-2,
# larger initial weights, tied embeddings, a quarter or half of each head rotated) did an induction
# head form that copies a 25-token half: the repeated-half loss stays near ln(vocabulary).
#
# **Protocol.** At every checkpoint of every seed: the loss on each kind of sequence; every head's
# induction score (the book's diagonal measure, chapter 8); every head's FV score (mean head
# outputs over clean prompts, attribution patching on shuffled-label prompts, both on each task's
# scoring pool); accuracy on evaluation-pool prompts with fresh demonstrations, beside the same
# queries zero-shot (without demonstrations the task is ambiguous, so zero-shot is the level ICL
# must beat); and accuracy on a task never trained on (copying, `x -> x`). Seeds are the
# intervals' unit: a Student-t interval over the runs, on (runs - 1) degrees of freedom.
#
# **What "held out" means here.** A task's answers are facts (Paris, chien, 38); a model can only
# produce facts it has seen. So the FV tasks are the training tasks, measured on prompts never seen
# in training (fresh demonstration sets, scoring and evaluation pools split by hash); the one task
# held out entirely is copying, which needs no fact.

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
MODEL = None  # None: train the small model here (offline). On Colab with a GPU: "EleutherAI/pythia-70m" ... "EleutherAI/pythia-1.4b"
PYTHIA_STEPS = [0, 512, 1000, 2000, 4000, 8000, 16000, 33000, 66000, 143000]  # Pythia's checkpoints ("step{n}" revisions)
SEEDS = [0, 1, 2]  # training seeds of the small model (the interval's unit)
STEPS = 800  # optimiser steps per seed (about 50 s each on two CPU cores)
CHECKPOINTS = [0, 50, 100, 200, 400, 600, 800]  # steps at which the model is saved and measured
N_LAYERS = 2  # two layers suffice for an induction circuit; a small model buys more steps
N_HEADS = 4
D_MODEL = 64
N_DEMOS = 8  # demonstrations per prompt
N_MEAN_PROMPTS = 6  # clean scoring-pool prompts per task: the mean head outputs
N_PATCH_PROMPTS = 4  # shuffled-label scoring-pool prompts per task (other queries): the FV scores
N_EVAL_PROMPTS = 8  # evaluation-pool prompts per task: accuracy, and zero-shot on the same queries
N_INDUCTION_SEQS = 8
HALF_LEN = 25  # random tokens per half of an induction sequence (the training sequences hold 64 tokens)
TOP_PERCENT = 10  # "top FV heads": the top n% of heads by the final FV score (at least two)
SEED = 0

# %%
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
from icl_utils import training as tr
from icl_utils.heads import top_heads
from icl_utils.reporting import (MIN_UNITS, ClaimSpec, able_to_detect, claims_table, declared_claims_table, grade, grade_or_describe, moves_at_all,
                                 room_to_move, save_results)
from icl_utils.stats import cluster_jackknife, mean_interval

sns.set_theme(style="whitegrid", context="notebook")
start = time.time()
config = tr.TrainConfig(n_layers=N_LAYERS, n_heads=N_HEADS, d_model=D_MODEL, d_ff=4 * D_MODEL, steps=STEPS,
                        warmup=max(1, STEPS // 20), checkpoints=tuple(CHECKPOINTS))
runs = [MODEL] if MODEL else SEEDS  # the independent training runs: one Pythia model, or the seeds trained here
print(f"{'Pythia checkpoints of ' + MODEL if MODEL else f'the small model, {len(SEEDS)} seeds'}; "
      f"checkpoint cache: {iu.models.cache_root() / 'trained' / config.key()}")

# %% [markdown]
# ## The claims, declared before any number
#
# The unit is the training run (seed): heads of one run share its history, so an interval over
# heads would overstate what several runs show. With one run (a Pythia model), the FV-history claim
# falls back to heads as its units, and says so. "Top FV heads" are the top `TOP_PERCENT`% of heads
# by FV score at the last checkpoint; a head's *earlier induction score* is its highest induction
# score at any checkpoint before the last. Each claim is graded once and its row is primary (Holm's
# correction over the chapter's primary rows); a row on fewer than 8 runs is *inconclusive* ("n units < 8")
# by rule, whatever its interval, so with the chapter's three seeds no row here can come out
# reproduced or contradicted: the seeds are few because each costs a training run. The FV claims'
# precondition reads the intervals of 'ICL forms' and 'induction forms' directly (lower bounds
# above 0), so it can hold on three seeds; when it fails, those rows are *not testable*. Claims
# about an accuracy or an induction score, both bounded, print *room to move* (the control arm's
# value leaves the smallest effect between it and 1) and whether the measure moves at all before
# the table; with at least 8 runs they also print *able to detect* (the design's detectable effect
# at 80% power). A value every seed shares exactly (the top-2 overlap, say) would give a
# zero-width interval; it is shown beside the table as a description, not graded.

# %%
ICL_PRECONDITION = "in-context accuracy above zero-shot (claim 'ICL forms': lower bound above 0)"
INDUCTION_PRECONDITION = ("induction heads form (claim 'induction forms': the rise's lower bound above 0 and its estimate at "
                          "least its smallest effect, read off the interval whatever the number of seeds)")
claim_specs = {
    "ICL forms": ClaimSpec(
        claim="(Precondition of the FV claims) The model learns in context: demonstrations raise accuracy on new prompts",
        paper="Pythia learns few-shot ICL of word tasks during pre-training (the tasks of Yin & Steinhardt, Todd et al.)",
        metric="accuracy on evaluation prompts minus zero-shot accuracy on the same queries, last checkpoint, mean over tasks",
        direction="increase", smallest_effect=0.1, smallest_effect_reason="ten points of accuracy",
        control="the same queries without demonstrations (the task is then ambiguous)", unit="training seed", primary=True),
    "held-out task": ClaimSpec(
        claim="(Book) ICL reaches a task never trained on: copying x -> x",
        paper="not in the paper (its tasks are all held out of an ordinary pre-training corpus)",
        metric="accuracy on copy prompts minus zero-shot accuracy, last checkpoint",
        direction="increase", smallest_effect=0.1, smallest_effect_reason="ten points of accuracy",
        control="the same queries without demonstrations", unit="training seed", primary=True),
    "induction forms": ClaimSpec(
        claim="Induction heads form during training (a phase change)",
        paper="Olsson et al.; Yin & Steinhardt Fig. on Pythia checkpoints: induction scores jump early in training",
        metric="highest induction score of any head at the last checkpoint minus at initialisation",
        direction="increase", smallest_effect=0.2,
        smallest_effect_reason="a fifth of a head's attention moved onto induction targets (random heads: ~1/length)",
        control="the same heads at initialisation", unit="training seed", primary=True),
    "FV heads were induction heads": ClaimSpec(
        claim="Heads that end as FV heads had high induction scores earlier in training",
        paper="Pythia 70M-6.9B: many top FV heads start as induction heads, then their induction score falls",
        metric=f"earlier induction score (highest before the last checkpoint) of the top {TOP_PERCENT}% final FV heads "
               "minus that of the other heads",
        direction="increase", smallest_effect=0.05, smallest_effect_reason="five points of attention on induction targets",
        control="the other heads of the same run", unit="training seed",
        precondition=f"{ICL_PRECONDITION}, and {INDUCTION_PRECONDITION}", primary=True),
    "distinct at the end": ClaimSpec(
        claim="At the end of training, FV heads and induction heads are mostly different heads",
        paper="12 models: little overlap between the top heads of the two scores",
        metric=f"share of the top {TOP_PERCENT}% final FV heads that are also top {TOP_PERCENT}% final induction heads",
        direction="decrease", null=1.0, smallest_effect=0.5, smallest_effect_reason="at most half shared (1.0: the same heads)",
        control=f"random sets share about {TOP_PERCENT}%", unit="training seed",
        precondition=f"{ICL_PRECONDITION}, and {INDUCTION_PRECONDITION}", primary=True),
}
declared_claims_table(claim_specs)

# %% [markdown]
# ## Training (or loading) the checkpoints
#
# Each seed trains from scratch and saves model and tokenizer at every step in `CHECKPOINTS`
# under the model cache (`icl_utils.models.cache_root()`, folder named by a hash of the training
# settings). A run whose checkpoints are all there is loaded, not retrained.

# %%
timings = {}
if MODEL is None:
    t0 = time.time()
    trained = tr.ensure_trained(config, SEEDS)
    timings["training"] = time.time() - t0
    for seed, (log, how) in trained.items():
        print(f"seed {seed}: {how} ({log.seconds:.0f} s of training, {log.tokens_per_second:,.0f} tokens/s when trained)")
    steps_of = {seed: list(CHECKPOINTS) for seed in SEEDS}
    load = lambda run, step: tr.load_checkpoint(config, run, step)  # noqa: E731
    tasks, held_out, mixture = tr.training_setup(config, SEEDS[0])
    fmt = fv.ARROW  # the format the small model was trained on
else:
    steps_of = {MODEL: list(PYTHIA_STEPS)}
    load = lambda run, step: iu.load_model(run, revision=f"step{step}")  # noqa: E731
    tasks = {name: iu.load_pair_task(name) for name in iu.available_pair_tasks()}
    held_out, mixture, fmt = {}, None, fv.QA  # Todd et al.'s format for a pre-trained model
    trained = {}
example = load(runs[0], steps_of[runs[0]][-1])
print(example)
print(f"{example.n_total_heads} heads; {len(tasks)} FV tasks: {', '.join(tasks)}; held out: {', '.join(held_out) or 'none'}")

# %% [markdown]
# ## Measuring every checkpoint
#
# The same induction sequences (from the run's own tokenizer) and the same prompts at every
# checkpoint, so the curves move only because the weights do.

# %%
scores = {}
t0 = time.time()
for run in runs:
    seqs = ind.repeated_random_tokens(example.tokenizer, N_INDUCTION_SEQS, HALF_LEN, seed=SEED)
    scores[run] = []
    for step in steps_of[run]:
        info = load(run, step)
        scores[run].append(tr.checkpoint_scores(info, tasks, step, fmt, N_DEMOS, N_MEAN_PROMPTS, N_PATCH_PROMPTS,
                                                N_EVAL_PROMPTS, seqs, held_out, mixture, seed=SEED))
        del info
    last = scores[run][-1]
    print(f"run {run}: last checkpoint: ICL accuracy {np.mean(list(last.accuracy[t] for t in tasks)):.2f}, zero-shot "
          f"{np.mean(list(last.zero_shot[t] for t in tasks)):.2f}; highest induction score {last.induction.max():.2f}; "
          f"highest FV score {last.fv.max():.4f}")
timings["measuring"] = time.time() - t0
print(f"{sum(len(s) for s in scores.values())} checkpoints measured in {timings['measuring']:.0f} s")

# %%
rows = []
for run in runs:
    for s in scores[run]:
        row = {"run": run, "step": s.step, "ICL accuracy": np.mean([s.accuracy[t] for t in tasks]),
               "zero-shot": np.mean([s.zero_shot[t] for t in tasks]),
               "max induction score": s.induction.max().item(), "max FV score": s.fv.max().item(), **s.losses}
        row.update({f"{t} (held out)": s.accuracy[t] for t in held_out})
        rows.append(row)
history = pd.DataFrame(rows)
history.round(3)

# %% [markdown]
# ## The phase change: loss and induction score over training
#
# Left: the training loss of each kind of sequence (thin: each seed's logged batches). Middle: the
# loss on fixed held-out sequences at each checkpoint, with the loss on the *copied* half of the
# repeated spans, the tokens only induction predicts. Right: every run's highest induction score
# and its in-context accuracy.

# %%
fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
for run, (log, _) in trained.items():
    for i, (kind, losses) in enumerate(log.loss.items()):
        axes[0].plot(log.steps, pd.Series(losses).rolling(10, min_periods=1).mean(), color=f"C{i}", lw=0.8,
                     label=kind if run == runs[0] else None)
axes[0].set(xlabel="training step", ylabel="training loss (10-step mean)", title="training loss by kind of sequence")
if trained:
    axes[0].legend(fontsize=7)
loss_kinds = [k for k in ("text", "repeats", "repeats (copies)", "tasks") if k in history]
for i, kind in enumerate(loss_kinds):
    for run in runs:
        part = history[history.run == run]
        axes[1].plot(part.step, part[kind], marker="o", ms=3, color=f"C{i}", label=kind if run == runs[0] else None)
axes[1].set(xlabel="checkpoint step", ylabel="loss (held-out sequences)", title="loss at each checkpoint")
if loss_kinds:
    axes[1].legend(fontsize=7)
for run in runs:
    part = history[history.run == run]
    axes[2].plot(part.step, part["max induction score"], marker="o", ms=3, color="C3", label="highest induction score" if run == runs[0] else None)
    axes[2].plot(part.step, part["ICL accuracy"], marker="s", ms=3, color="C0", label="ICL accuracy" if run == runs[0] else None)
    axes[2].plot(part.step, part["zero-shot"], ls=":", color="C0", label="zero-shot accuracy" if run == runs[0] else None)
axes[2].set(xlabel="checkpoint step", ylabel="score / accuracy", title="induction and in-context learning")
axes[2].legend(fontsize=7)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Every head over training (the paper's figure)
#
# One row per run. Left: each head's induction score at each checkpoint; right: its FV score.
# The top `TOP_PERCENT`% heads by final FV score are drawn in colour, the others in grey: if FV
# heads begin as induction heads, the coloured lines rise on the left before they rise on the right.

# %%
def n_top(info):
    return max(2, round(TOP_PERCENT / 100 * info.n_total_heads))


k = n_top(example)
fig, axes = plt.subplots(len(runs), 2, figsize=(12, 3.2 * len(runs)), squeeze=False)
for row, run in enumerate(runs):
    steps = [s.step for s in scores[run]]
    induction = torch.stack([s.induction for s in scores[run]])  # (checkpoints, layers, heads)
    fv_over = torch.stack([s.fv for s in scores[run]])
    top = top_heads(scores[run][-1].fv, k)
    for l, h in example.all_heads:
        colour = f"C{top.index((l, h))}" if (l, h) in top else "0.8"
        label = f"{l}.{h}" if (l, h) in top else None
        axes[row, 0].plot(steps, induction[:, l, h], color=colour, lw=1.8 if label else 0.7, label=label)
        axes[row, 1].plot(steps, fv_over[:, l, h], color=colour, lw=1.8 if label else 0.7, label=label)
    axes[row, 0].set(ylabel=f"run {run}\ninduction score", xlabel="step")
    axes[row, 1].set(ylabel="FV score", xlabel="step")
    axes[row, 1].legend(title=f"top {k} FV heads", fontsize=7)
axes[0, 0].set_title("induction score of every head")
axes[0, 1].set_title("FV score of every head")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Verdict

# %%
def earlier_induction(run):
    """(n_layers, n_heads): each head's highest induction score before the last checkpoint."""
    return torch.stack([s.induction for s in scores[run][:-1]]).max(0).values


def top_minus_rest(run):
    top = top_heads(scores[run][-1].fv, k)
    earlier = earlier_induction(run)
    is_top = torch.zeros_like(earlier, dtype=torch.bool)
    for l, h in top:
        is_top[l, h] = True
    return (earlier[is_top].mean() - earlier[~is_top].mean()).item()


def overlap(run):
    last = scores[run][-1]
    return len(set(top_heads(last.fv, k)) & set(top_heads(last.induction, k))) / k


per_run = pd.DataFrame([{
    "run": run,
    "ICL accuracy": np.mean([scores[run][-1].accuracy[t] for t in tasks]),
    "zero-shot": np.mean([scores[run][-1].zero_shot[t] for t in tasks]),
    **{f"{t} (held out)": scores[run][-1].accuracy[t] - scores[run][-1].zero_shot[t] for t in held_out},
    "induction rise": (scores[run][-1].induction.max() - scores[run][0].induction.max()).item(),
    "top FV minus rest, earlier induction": top_minus_rest(run),
    "top-FV / top-induction overlap": overlap(run),
    "top FV heads": top_heads(scores[run][-1].fv, k),
} for run in runs])
display(per_run.round(3))

graded, described = [], []
units = np.arange(len(runs))


def over_runs(values):
    """An interval over training runs (seeds); None with a single run."""
    return mean_interval(np.asarray(values, float), units, unit="training seed") if len(runs) > 1 else None


def grade_over_runs(name, values, book, checks=(), **kwargs):
    """Grade claim `name` on one value per run; a value every run shares exactly has no interval and
    is shown beside the table instead (reporting.grade_or_describe)."""
    for check in checks:
        print(f"{name}: {check}")
    row = grade_or_describe(claim_specs[name], over_runs(np.asarray(values, float)), book, described, checks=checks, **kwargs)
    if row is not None:
        graded.append(row)


def design(clean_per_run, bound, name, measure):
    """Room to move (the control arm's mean against the bound it must move towards) and, once there
    are MIN_UNITS runs, able to detect (its standard error over runs); below MIN_UNITS runs a row is
    inconclusive by rule."""
    spec, clean_per_run = claim_specs[name], np.asarray(clean_per_run, float)
    found = [room_to_move(clean_per_run.mean(), bound, spec.smallest_effect, measure)]
    if len(runs) >= MIN_UNITS:
        clean = over_runs(clean_per_run)
        found.append(able_to_detect(clean.se, clean.n_units, spec.smallest_effect, measure))
    return found


gain = per_run["ICL accuracy"] - per_run["zero-shot"]
icl_gain = over_runs(gain)
grade_over_runs("ICL forms", gain,
                f"{len(runs)} runs; last checkpoint: ICL {per_run['ICL accuracy'].mean():.2f}, zero-shot "
                f"{per_run['zero-shot'].mean():.2f} ({len(tasks)} tasks x {N_EVAL_PROMPTS} evaluation prompts)",
                checks=design(per_run["zero-shot"], 1.0, "ICL forms", "accuracy, zero-shot, against 1")
                + [moves_at_all({"ICL": per_run["ICL accuracy"], "zero-shot": per_run["zero-shot"]}, "accuracy per run")])
for i, t in enumerate(held_out):
    last = [scores[run][-1] for run in runs]
    grade_over_runs("held-out task", per_run[f"{t} (held out)"],
                    f"{t}: accuracy minus zero-shot per run {per_run[f'{t} (held out)'].round(2).tolist()}", task=t,
                    exploratory=i > 0,
                    checks=design([s.zero_shot[t] for s in last], 1.0, "held-out task", f"{t}: accuracy, zero-shot, against 1")
                    + [moves_at_all({"ICL": [s.accuracy[t] for s in last], "zero-shot": [s.zero_shot[t] for s in last]},
                                    f"{t}: accuracy per run")])
rise = over_runs(per_run["induction rise"])
initial = [scores[r][0].induction.max().item() for r in runs]
grade_over_runs("induction forms", per_run["induction rise"],
                f"highest induction score: at initialisation {np.mean(initial):.3f}, "
                f"at the end {np.mean([scores[r][-1].induction.max().item() for r in runs]):.3f}",
                checks=design(initial, 1.0, "induction forms", "highest induction score at initialisation, against 1"))
# The precondition of the FV claims reads the two intervals themselves (their lower bounds above 0,
# the rise's estimate at least its smallest effect), not the rows' verdicts: a verdict on fewer
# than MIN_UNITS runs is inconclusive by rule, which would make the FV claims "not testable" for
# a reason that is not theirs (too few seeds is the reason their own rows then give).
if len(runs) > 1:
    ready = bool(icl_gain.low > 0 and rise.low > 0 and rise.estimate >= claim_specs["induction forms"].smallest_effect)
else:  # one run has no interval over runs: its point estimates must reach the smallest effects
    ready = ((per_run["ICL accuracy"] - per_run["zero-shot"]).iloc[0] >= claim_specs["ICL forms"].smallest_effect
             and per_run["induction rise"].iloc[0] >= claim_specs["induction forms"].smallest_effect)
print(f"precondition of the FV claims (ICL above zero-shot and induction heads form): {'holds' if ready else 'fails'}")
book = (f"top {k} FV heads' earlier induction score minus the rest's, per run "
        f"{per_run['top FV minus rest, earlier induction'].round(3).tolist()}")
if len(runs) > 1:
    grade_over_runs("FV heads were induction heads", per_run["top FV minus rest, earlier induction"],
                    f"{len(runs)} seeds; {book}", precondition_met=ready)
else:  # one run (a Pythia model): heads are the only units there are
    earlier, top = earlier_induction(runs[0]).flatten().numpy(), top_heads(scores[runs[0]][-1].fv, k)
    is_top = np.array([h in top for h in example.all_heads])
    history_interval = cluster_jackknife(lambda rows: earlier[rows][is_top[rows]].mean() - earlier[rows][~is_top[rows]].mean()
                                         if is_top[rows].any() and (~is_top[rows]).any() else 0.0,
                                         np.arange(len(is_top)), unit="head")
    graded.append(grade(claim_specs["FV heads were induction heads"], history_interval,
                        f"one run: the interval's units are heads; {book}", precondition_met=ready))
grade_over_runs("distinct at the end", per_run["top-FV / top-induction overlap"],
                f"top {k} of {example.n_total_heads} heads; shared per run {per_run['top-FV / top-induction overlap'].round(2).tolist()}",
                precondition_met=ready)
if described:
    print("Shown as descriptions, not graded:")
    display(pd.DataFrame(described))
claims_table(graded)

# %% [markdown]
# **Reading the result.** The numbers above are this run's. What a few CPU minutes can and cannot
# show:
#
# - *In-context learning forms; induction may not.* In 800 small batches the model can learn the
#   tasks' facts and to read the task from the demonstrations (accuracy above zero-shot), but
#   induction heads need the model to find a two-layer circuit (a previous-token head feeding a
#   head that matches it), which small models find after a plateau of thousands of steps. Where
#   no head's induction score rises, the FV-history claim is *not testable*, not refuted: there
#   was no induction head for the FV heads to begin as. Copying (`x -> x`) is not an induction
#   task either: it needs a head that repeats the query, which nothing in the mixture rewards.
# - *What it would likely take.* Induction heads form reliably in two-layer models after a few
#   thousand steps of batches ten to a hundred times larger than these (tens of millions of
#   tokens), and Pythia-70M shows them within its first few thousand steps (billions of tokens).
#   This chapter's model sees about 1.6 million tokens per seed; the trials behind its setting found
#   only short-range copying (predicting tokens seen a few positions back), not a head that finds
#   and copies a 25-token half. With a GPU, set `MODEL = "EleutherAI/pythia-70m"` (or up to
#   `pythia-1.4b`) to run the same measurements on Pythia's own checkpoints, or raise `STEPS` and
#   the batch of `TrainConfig`.
# - *Facts, not novelty.* The FV tasks are trained tasks measured on unseen prompts; only copying
#   is held out entirely, since a model cannot answer with facts it has never seen.
# - *Three seeds are few.* A t interval over three runs has two degrees of freedom and is wide,
#   and every row on fewer than 8 runs is *inconclusive* by rule ("n units < 8"); the table gives
#   each seed's number beside it. Settling these claims needs at least 8 seeds, each one more
#   training run.

# %%
save_results(
    "09_how_heads_form",
    {
        "trained_model": MODEL or f"{config.name} ({config.key()})",
        "config": {k: v for k, v in vars(config).items()},
        "runs": [str(r) for r in runs],
        "trained_or_loaded": {str(s): how for s, (_, how) in trained.items()},
        "training_seconds": {str(s): log.seconds for s, (log, _) in trained.items()},
        "per_run": per_run.drop(columns="top FV heads").to_dict("records"),
        "top_fv_heads": {str(r): top for r, top in zip(runs, per_run["top FV heads"])},
        "history": history.to_dict("records"),
        "described_not_graded": described,  # values every run shares exactly (see grade_over_runs)
        "timings_s": timings,
        "runtime_s": time.time() - start,
    },
    graded,
)
print("seconds: " + ", ".join(f"{name} {s:.0f}" for name, s in timings.items()))
print(f"chapter runtime: {time.time() - start:.0f} s")
