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
# # 6. Shallow layers gather the features
#
# **Question.** The two-tower picture of {cite:t}`yu2024twotowers` needs the right features in the
# right places before the deep in-context heads compare them: the *key* side reads each
# demonstration's label position, so that position must carry the demonstration's features; the
# *query* side reads the last position, so it must carry the input's. Their claim is that
# **shallow layers** do this moving: demonstration features flow into label positions, and the
# input's features into the last position. {cite:t}`wang2023label` ("label words are anchors") made
# the same claim for GPT2-XL and GPT-J and tested it causally: cutting the label words off from
# the text before them in the first 5 layers changed the predictions far more than doing so in the
# last 5 layers.
#
# **Method.** Two experiments on foo/bar prompts built in demonstration sets (12 sets of 8
# demonstrations per class, each with 10 queries of its own from the task's evaluation pool: 120
# of the 128 prompts the evaluation pool holds); every interval is a Student-t interval over
# demonstration sets (df = sets - 1, jackknife standard error), and a row on fewer than 8 sets is
# inconclusive whatever its interval says.
#
# 1. **Attention knock-out** (`icl_utils.knockout.knock_out`). In a window of consecutive layers,
#    every head's attention from chosen positions to chosen keys is set to zero and the row
#    renormalised, which is exactly a score of $-\infty$ before the softmax. Two paths:
#    * **demonstration → label**: each label position cannot see its own demonstration's input
#      tokens (`label_demo_pairs`);
#    * **query → last**: the last position cannot see the query's input tokens (`last_query_pairs`).
#
#    The input tokens are not the only route: "\nLabel:" sits between an input and its label and may
#    carry the input onwards, so each path also has a **whole-text** variant that blocks all of the
#    demonstration's (or the query's) text before its label (Wang et al.'s isolation, restricted to
#    its own demonstration). The window (a third of the layers, `WINDOW_FRACTION`) slides through
#    the depth by a sixth (`STRIDE_FRACTION`); the first window is the paper's "shallow layers" and
#    the last one the deep contrast, so the claims need no runs beyond the slide (Wang et al. cut
#    the first 5 of GPT-J's 28 layers, 18%: a third is the more generous reading of "shallow").
#    **Control**, in every window: the same positions blocked from as many *random* earlier
#    positions (`random_pairs`: the same number of blocked pairs per prompt; never the first token,
#    which most heads use as an attention sink). **Measure**: the fall of the gold-label logit
#    margin (knock-out vs clean, same prompts) minus the fall under the control. With queries
#    balanced over the classes, a knock-out that merely shifts the model towards one label word
#    raises the margin of half the prompts and lowers it for the other half, so the mean margin
#    answers "does the model still tell the classes apart?", not "does it still say foo?".
#    Accuracy, calibrated with the *clean* run's label prior from calibration prompts, is shown
#    beside it.
# 2. **Vocabulary view.** At each label position, the sum of the attention blocks' outputs of the
#    layers below $l$, read through the final norm and the unembedding. If the shallow attention
#    layers moved the demonstration's input there, the input's own token should rank high in that
#    projection. Statistic: the rank of the demonstration's input token (1 = top of the 262k
#    vocabulary for Gemma), against two controls: another demonstration's input token at the same
#    label position, and the same input token at a random other position after it. The same at
#    the last position for the query's input.
#
# Both knock-outs are computed exactly without a full pass per setting (`icl_utils.knockout`):
# the query → last knock-out edits only the last position, so each demonstration set and each query
# run once and only the last token is replayed under each setting (`last_position_runs`); the
# demonstration → label knock-out edits only positions inside the demonstrations that a set's queries
# share, so the demonstrations run once per setting under it and every query is replayed on the
# cached keys and values (`shared_prefix_runs`); below a window's first layer nothing differs from
# the clean run, so those layers are taken from one recorded clean pass instead of being computed
# again. The tests check both against full passes. The vocabulary view reads the 262k-token
# vocabulary in chunks without materialising the logits (`unembedded_log_probs`).
#
# The same headline claims (the two input paths and the query's whole text, in the first window) are
# graded on two sentence tasks with fewer demonstration sets, to see whether the answer depends on
# the data. No label-swap control is run: every knock-out claim is about the *gold* label's margin
# and every vocabulary claim about input tokens, so none is about the words foo and bar themselves.

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
MODEL = "gemma3-270m"  # on Colab try "gpt2-large" or "meta-llama/Llama-2-7b-hf"
TASK = "animal_vehicle"  # chapter 1's main task (its selection-pool choice)
OTHER_TASKS = ["topic_sentences", "sentiment_sentences"]  # the headline claims again, on sentences
DEMOS_PER_CLASS = 8
N_GROUPS = 12  # demonstration sets on the main task (evaluation pool), each with its own queries: the interval's unit
QUERIES_PER_GROUP = 10  # queries per set, balanced over the classes (a query costs far less than a set)
OTHER_GROUPS = 8  # demonstration sets on each other task (their prompts are about twice as long)
OTHER_QUERIES = 8  # queries per set there
CALIBRATION_PER_CLASS = 2  # calibration prompts per class and set (for calibrated accuracy)
WINDOW_FRACTION = 1 / 3  # a window knocks out round(f * n_layers) consecutive layers
STRIDE_FRACTION = 1 / 6  # and slides by round(f * n_layers) layers (the last window always ends at the top)
N_VOCAB_GROUPS = 16  # demonstration sets for the vocabulary view, one query each
LENS_FRACTIONS = [0.17, 0.33, 0.67, 1.0]  # sum of attention outputs below layer max(1, round(f * n_layers))
SEED = 0

# %%
import random
import time
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from tqdm.auto import tqdm

import icl_utils as iu
from icl_utils.attribution import attention_block_output, unembedded_log_probs
from icl_utils.evaluation import ICLScores, scores_from_hidden
from icl_utils.knockout import (blocking_mask, label_demo_pairs, last_position_runs, last_query_pairs, random_pairs,
                                shared_prefix_runs)
from icl_utils.prompts import demo_set_ids, input_positions
from icl_utils.reporting import (Check, ClaimSpec, claims_table, declared_claims_table, grade, moves_at_all, per_task_table,
                                 save_results)
from icl_utils.stats import cluster_jackknife, mean_interval
from icl_utils.vocab import top_tokens

sns.set_theme(style="whitegrid", context="notebook")
start = time.time()
UNIT = "demonstration set"
LEARNS = "the clean model learns the task: calibrated accuracy's interval (evaluation pool) lies above 0.5"

# %% [markdown]
# ## Declared claims
#
# Declared before any number is computed. "First window" is the first `WINDOW_FRACTION` of the
# layers (the paper's shallow layers), "last window" the last. The smallest effect that counts for
# the knock-outs is a quarter logit of gold-label margin beyond the random control; for the
# vocabulary view, the own token must outrank its control in at least 60% of comparisons.
#
# One primary row per paper claim, on the main task: demonstration features move into the label
# positions (the input-token knock-out in the first window), the input's features move into the
# last position (likewise), and Wang et al.'s shallow-not-deep contrast (the whole-text isolation of
# the label positions, first window minus last). The other rows, the vocabulary view (a second
# reading of the first claim) and the sentence tasks are exploratory; Holm's correction runs over
# the three primary rows. A knock-out that removes what the model reads takes the class-balanced
# mean gold margin from its clean value towards 0 (no class information), so each knock-out row
# checks that the clean margin leaves the smallest effect that counts above 0 ("room to move",
# printed before the verdicts); a task whose clean margin is below a quarter logit is not testable.

# %%
first_layers = f"the first {WINDOW_FRACTION:.0%} of the layers"
MARGIN_EFFECT = dict(direction="increase", smallest_effect=0.25,
                     smallest_effect_reason="a quarter logit of gold-label margin: the gold label's odds fall by a fifth "
                                            "beyond what blocking as many random keys does")
WANG = ("qualitative (Yu & Ananiadou 2024); Wang et al. 2023: isolating label words in the first 5 layers of GPT2-XL / "
        "GPT-J changes predictions far more than in the last 5")


PRIMARY = {"demo input → label: shallow", "query input → last: shallow", "demo text → label: shallow vs deep"}


def knockout_claims(path, what, blocked_from):
    return {
        f"{path}: shallow": ClaimSpec(
            claim=f"In shallow layers, {what}: cutting {blocked_from} in {first_layers} hurts ICL beyond a random control",
            paper=WANG,
            metric=f"per prompt: fall of the gold-label logit margin (knock-out vs clean) in {first_layers}, minus the fall "
                   f"under the random control",
            control="the same positions blocked from as many random earlier positions (same pairs per prompt, same layers)",
            unit=UNIT, precondition=LEARNS, primary=f"{path}: shallow" in PRIMARY, **MARGIN_EFFECT),
        f"{path}: shallow vs deep": ClaimSpec(
            claim=f"Shallow, not deep, layers do it: the same cut hurts more in {first_layers} than in the last",
            paper=WANG,
            metric="per prompt: (fall beyond control in the first window) minus (fall beyond control in the last window)",
            control="the same knock-out and its random control in the last window", unit=UNIT, precondition=LEARNS,
            primary=f"{path}: shallow vs deep" in PRIMARY, **MARGIN_EFFECT),
    }


claim_specs = {
    **knockout_claims("demo input → label", "demonstration features move into label positions",
                      "each label position off from its demonstration's input tokens"),
    **knockout_claims("demo text → label", "demonstration features move into label positions",
                      "each label position off from its demonstration's whole text (Wang et al.'s isolation)"),
    **knockout_claims("query input → last", "the input's features move into the last position",
                      "the last position off from the query's input tokens"),
    **knockout_claims("query text → last", "the input's features move into the last position",
                      "the last position off from the query's whole text"),
}
VIEW = dict(direction="increase", null=0.5, smallest_effect=0.10,
            smallest_effect_reason="the own input token ranks above its control in at least 60% of comparisons",
            unit=UNIT, precondition=LEARNS)
view_metric = f"share of comparisons (ties half) in which the token ranks higher, in the attention outputs of {first_layers} summed"
claim_specs |= {
    "label view vs other demonstration": ClaimSpec(
        claim="The shallow attention outputs at a label position carry its demonstration's input (vocabulary view)",
        paper="qualitative: the projected sum of lower attention outputs shows the demonstration's words",
        metric=f"{view_metric}: own input at the label vs another demonstration's input at the same label",
        control="another demonstration's input token at the same label position", **VIEW),
    "label view vs other position": ClaimSpec(
        claim="... and carry it at the label position more than elsewhere (vocabulary view)",
        paper="qualitative: the projected sum of lower attention outputs shows the demonstration's words",
        metric=f"{view_metric}: own input at its label vs the same input at a random later non-label position",
        control="the same input token at a random other position after the demonstration", **VIEW),
    "last view": ClaimSpec(
        claim="The shallow attention outputs at the last position carry the query's input (vocabulary view)",
        paper="qualitative",
        metric=f"{view_metric}: the query's input vs a random demonstration's input, at the last position",
        control="a random demonstration's input token at the last position", **VIEW),
}
HEADLINE = ["demo input → label: shallow", "query input → last: shallow", "query text → last: shallow"]
declared_claims_table(claim_specs)

# %% [markdown]
# ## The model and its windows
#
# Which layers attend only within a sliding window and which globally is read from the model's
# configuration. Gemma-3-270M has **one key/value head per layer**: its 4 query heads share one
# $W_K$ and one $W_V$, so knocking out a layer's attention removes one shared key/value stream for
# all four heads at once, not four independent channels.

# %%
info = iu.load_model(MODEL)
task = iu.load_task(TASK)
L = info.n_layers
k_window = max(1, round(WINDOW_FRACTION * L))
stride = max(1, round(STRIDE_FRACTION * L))
starts = sorted(set(range(0, L - k_window + 1, stride)) | {L - k_window})
windows = {s: range(s, s + k_window) for s in starts}
first, last = starts[0], starts[-1]
layer_types = getattr(info.model.config, "layer_types", None) or ["full_attention"] * L
global_layers = [l for l, t in enumerate(layer_types) if "sliding" not in t]
sliding_size = getattr(info.model.config, "sliding_window", None)
print(f"{MODEL}: {L} layers, {info.n_heads} query heads sharing {info.n_kv_heads} key/value head(s) per layer; "
      f"global attention in layers {global_layers}" + (f", the others see the last {sliding_size} tokens" if sliding_size
                                                       and len(global_layers) < L else ""))
print(f"windows of {k_window} layers, stride {stride}: " + ", ".join(f"{s}-{s + k_window - 1}" for s in starts))

# %% [markdown]
# One prompt's paths, as token strings (the first two demonstrations):

# %%
(example,) = iu.build_prompt_groups(task, 1, 1, demos_per_class=DEMOS_PER_CLASS, seed=SEED, pool="evaluation")
b0 = iu.encode_prompts(info, example)
ip0 = input_positions(info, b0)
tok = lambda i: repr(info.tokenizer.decode([int(b0.input_ids[0, i])]))  # noqa: E731
for (q, keys), (_, whole) in list(zip(label_demo_pairs(b0, ip0)[0], label_demo_pairs(b0, ip0, whole=True)[0]))[:2]:
    print(f"label {q} {tok(q)} cannot see its input {[tok(k) for k in keys]} (whole text: {[tok(k) for k in whole]})")
(q, keys), = last_query_pairs(b0, ip0)[0]
print(f"last {q} {tok(q)} cannot see the query input {[tok(k) for k in keys]}")
if sliding_size:
    print(f"prompt length {int(b0.attention_mask.sum())} tokens "
          f"({'within' if b0.attention_mask.sum() <= sliding_size else 'beyond'} the sliding window of {sliding_size})")

# %% [markdown]
# ## Knock-out through the depth
#
# For each demonstration set: the query → last settings in one last-token step, the
# demonstration → label settings with the demonstrations run once per setting. The whole-text
# variant of the demonstration path, the costliest, runs in the first and last windows only.

# %%
VARIANTS = {"input": False, "text": True}


@dataclass
class KnockOut:
    """One task's knock-out runs: the clean scores (calibrated) and each setting's scores, same prompts."""

    task: str
    clean: ICLScores
    runs: dict  # (path, variant, control, window start) -> ICLScores

    @property
    def sets(self):
        return self.clean.demo_set

    def beyond_control(self, path, variant, window) -> np.ndarray:
        """Per prompt: fall of the gold margin under the knock-out minus its fall under the control."""
        return (self.runs[path, variant, True, window].gold_margins() - self.runs[path, variant, False, window].gold_margins()).numpy()


@torch.no_grad()  # the label logits are read off the weights: nothing here needs gradients
def knockout_runs(task, n_groups, n_queries, query_windows, demo_windows, demo_text_windows, seed=SEED) -> KnockOut:
    groups = iu.build_prompt_groups(task, n_groups, n_queries, demos_per_class=DEMOS_PER_CLASS, seed=seed,
                                    distinct_queries=True, pool="evaluation")
    prompts = [p for g in groups for p in g]
    calibration = iu.calibration_prompts(task, prompts, per_class=CALIBRATION_PER_CLASS, seed=seed)
    clean, calib, hidden = [], [], {}
    for g, group in enumerate(tqdm(groups, desc=f"{task.name}: knock-outs per demonstration set")):
        n_q = len(group)
        # query → last: the set's demonstrations and queries (with its calibration queries) run once,
        # the last token once per setting
        batch = iu.encode_prompts(info, group + [p for p in calibration if p.demos == group[0].demos])
        ip = input_positions(info, batch)
        settings, keys = [((), None)], []
        for variant, whole in VARIANTS.items():
            pairs = last_query_pairs(batch, ip, whole=whole)
            masks = {False: blocking_mask(batch, pairs), True: blocking_mask(batch, random_pairs(pairs, seed=seed + g))}
            for control in (False, True):
                for s in query_windows:
                    keys.append(("query → last", variant, control, s))
                    settings.append((windows[s], masks[control]))
        out = last_position_runs(info, batch, settings)
        clean.append(out[0, :n_q])
        calib.append(out[0, n_q:])
        for key, h in zip(keys, out[1:]):
            hidden.setdefault(key, []).append(h[:n_q])
        # demonstration → label: one prompt's pairs (the demonstrations are shared), the same for all queries
        batch = iu.encode_prompts(info, group)
        ip = input_positions(info, batch)
        settings, keys = [], []
        for variant, whole in VARIANTS.items():
            (pairs,) = label_demo_pairs(batch, ip, whole=whole)[:1]
            (control_pairs,) = random_pairs([pairs], seed=seed + g)
            masks = {False: blocking_mask(batch, [pairs] * n_q), True: blocking_mask(batch, [control_pairs] * n_q)}
            for control in (False, True):
                for s in (demo_windows if variant == "input" else demo_text_windows):
                    keys.append(("demo → label", variant, control, s))
                    settings.append((windows[s], masks[control]))
        for key, h in zip(keys, shared_prefix_runs(info, batch, settings)):
            hidden.setdefault(key, []).append(h)
    clean_scores = scores_from_hidden(info, torch.cat(clean), prompts).calibrated_with(
        scores_from_hidden(info, torch.cat(calib), calibration))
    runs = {key: scores_from_hidden(info, torch.cat(h), prompts) for key, h in hidden.items()}
    return KnockOut(task.name, clean_scores, runs)


t0 = time.time()
main = knockout_runs(task, N_GROUPS, QUERIES_PER_GROUP, starts, starts, [first, last])
main_seconds = time.time() - t0
n = len(main.clean.gold)
learns = main.clean.accuracy_interval("prior")
print(f"{TASK}: {n} prompts in {N_GROUPS} demonstration sets, {len(main.runs)} knock-out settings in {main_seconds:.0f} s; "
      f"clean calibrated accuracy {learns}, raw {main.clean.accuracy():.3f}, gold margin {main.clean.gold_logit_margin():+.3f}")

# %%
def window_table(result: KnockOut) -> pd.DataFrame:
    clean_margin = result.clean.gold_margins()
    rows = []
    for (path, variant, control, s), scores in result.runs.items():
        if control:
            continue
        effect = mean_interval(result.beyond_control(path, variant, s), result.sets)
        ctrl = result.runs[path, variant, True, s]
        rows.append({"path": f"{path.split(' → ')[0]} {variant} → {path.split(' → ')[1]}", "window": s,
                     "layers": f"{s}-{s + k_window - 1}",
                     "margin fall": (clean_margin - scores.gold_margins()).mean().item(),
                     "control's fall": (clean_margin - ctrl.gold_margins()).mean().item(),
                     "beyond control": effect.estimate, "low": effect.low, "high": effect.high,
                     "accuracy": scores.accuracy("prior", reference=result.clean),
                     "control's accuracy": ctrl.accuracy("prior", reference=result.clean)})
    return pd.DataFrame(rows).sort_values(["path", "window"]).reset_index(drop=True)


table = window_table(main)
for path, part in table.groupby("path", sort=False):
    top = part.loc[part["beyond control"].idxmax()]
    print(f"{path}: the largest fall beyond the control is in layers {top.layers}: {top['beyond control']:+.3f} "
          f"[{top.low:+.3f}, {top.high:+.3f}] (first window {part.iloc[0]['beyond control']:+.3f})")
table.drop(columns="window").round(3)

# %%
paths = ["demo input → label", "demo text → label", "query input → last", "query text → last"]
colours = dict(zip(paths, ["C3", "C1", "C0", "C2"]))
centre = lambda s: s + (k_window - 1) / 2  # noqa: E731
fig, axes = plt.subplots(2, 2, figsize=(13, 7), sharex=True)
for col, group in enumerate((paths[:2], paths[2:])):
    for row, ax in enumerate(axes[:, col]):
        for l in global_layers:
            ax.axvspan(l - 0.5, l + 0.5, color="0.85", lw=0, label="global-attention layer" if l == global_layers[0] else None)
        for path in group:
            part = table[table.path == path]
            x = part.window.map(centre)
            line = "-" if len(part) == len(starts) else ""  # a path measured in a few windows only: no line between them
            if row == 0:
                ax.errorbar(x, part["beyond control"], yerr=[part["beyond control"] - part.low, part.high - part["beyond control"]],
                            xerr=(k_window - 1) / 2, fmt="o" + line, color=colours[path], capsize=3, label=path)
            else:
                ax.plot(x, part.accuracy, "o" + line, color=colours[path], label=f"{path}: knock-out")
                ax.plot(x, part["control's accuracy"], "x--" if line else "x", color=colours[path], alpha=0.6,
                        label=f"{path}: random control")
        if row == 0:
            ax.axhline(0, color="0.4", lw=0.8)
            ax.axhline(claim_specs["demo input → label: shallow"].smallest_effect, color="0.4", lw=0.8, ls=":",
                       label="smallest effect that counts")
            ax.set_ylabel("fall of gold margin beyond\nrandom control (logits, 95% CI)")
        else:
            ax.axhline(main.clean.accuracy("prior"), color="0.4", lw=0.8, label="clean")
            ax.set_ylabel("calibrated accuracy")
            ax.set_xlabel("layers knocked out (window centre; bar: its extent)")
        ax.legend(fontsize=7, loc="best")
    axes[0, col].set_title(["demonstration → its label position", "query → last position"][col], fontsize=11)
axes[1, 0].set_xticks(range(L))
plt.tight_layout()
plt.show()

# %% [markdown]
# Each point is one window of consecutive layers, placed at its centre, with a bar over the layers it
# covers; the grey bands are the layers with global attention (the others attend within a sliding
# window). Top: how much more the gold-label margin falls when the path is cut than when as many
# random earlier positions are cut, with its 95% interval over demonstration sets; the dotted line
# is the smallest effect the claims count. Bottom: calibrated accuracy under the knock-out (solid)
# and under its random control (dashed). The whole-text cut of the demonstrations is measured in
# the first and last windows only.

# %% [markdown]
# ## Vocabulary view: what the lower attention layers wrote at a label position
#
# One traced pass records every attention block's output at the label positions, at one random
# other position per demonstration (after that demonstration's input, not a label), and at the last
# position. For each $l$ we sum the blocks below $l$ and project the sum (final norm, unembedding).
# One prompt per demonstration set (queries alternate over the classes), so each set contributes
# all its label positions and one last position.

# %%
vocab_groups = iu.build_prompt_groups(task, N_VOCAB_GROUPS, 2, demos_per_class=DEMOS_PER_CLASS, seed=SEED,
                                      distinct_queries=True, pool="evaluation")
vocab_batch = iu.encode_prompts(info, [g[i % 2] for i, g in enumerate(vocab_groups)])
vocab_inputs = input_positions(info, vocab_batch)
vocab_sets = demo_set_ids(vocab_batch.prompts)
rng = random.Random(SEED)
n_demos = len(vocab_batch.label_positions[0])
random_pos, other_demo, last_demo = [], [], []
for i, labels in enumerate(vocab_batch.label_positions):
    last_pos = int(vocab_batch.last_positions[i])
    row_pos, row_other = [], []
    for j, demo in enumerate(vocab_inputs.demos[i]):
        candidates = [p for p in range(demo[-1] + 1, last_pos) if p not in labels]
        row_pos.append(rng.choice(candidates))
        row_other.append(rng.choice([jj for jj in range(n_demos) if jj != j]))
    random_pos.append(row_pos)
    other_demo.append(row_other)
    last_demo.append(rng.randrange(n_demos))  # the control token at the last position
positions = torch.tensor([labels + rp + [int(t)] for labels, rp, t in
                          zip(vocab_batch.label_positions, random_pos, vocab_batch.last_positions)])
trace = iu.run_with_trace(info, vocab_batch.input_ids, vocab_batch.attention_mask, positions, record=("attn_out",))
below = torch.stack([attention_block_output(info, trace, l) for l in range(L)]).cumsum(0)  # below[l - 1]: layers 0 .. l-1
lens_layers = sorted({max(1, round(f * L)) for f in LENS_FRACTIONS} | {k_window})


def best_ranks(hidden: torch.Tensor, token_sets: list) -> torch.Tensor:
    """Per row of final-normed hidden (rows, d_model) and each of its token sets: 1 + the number of
    tokens scored above the best of the set (1 = top of the vocabulary). The vocabulary is read in
    chunks, all rows at once, without materialising the logits (unembedded_log_probs): the set's best
    token is found among its own logits, then ranked."""
    width = max(len(sets) for sets in token_sets)
    best = torch.zeros(len(token_sets), width, dtype=torch.long)
    w_u = info.unembed.weight
    for r, sets in enumerate(token_sets):
        for j, ids_ in enumerate(sets + [sets[0]] * (width - len(sets))):  # padded with the first set
            ids_ = torch.as_tensor(ids_)
            best[r, j] = ids_[(w_u[ids_.to(w_u.device)].float() @ hidden[r].to(w_u.device).float()).argmax().cpu()]
    return unembedded_log_probs(info, hidden, best, rank=True)[1]


ids = vocab_batch.input_ids
n_pos = positions.shape[1]
token_sets = []  # per prompt and recorded position: the token sets to rank there
for i in range(len(vocab_batch.prompts)):
    demo_tokens = [ids[i, d].tolist() for d in vocab_inputs.demos[i]]
    token_sets += [[demo_tokens[j], demo_tokens[other_demo[i][j]]] for j in range(n_demos)]  # label positions
    token_sets += [[demo_tokens[j]] for j in range(n_demos)]  # the random other positions
    token_sets.append([ids[i, vocab_inputs.query[i]].tolist(), demo_tokens[last_demo[i]]])  # the last position
# every lens layer's rows in one read of the unembedding: (layers x prompts x positions, d_model)
normed = torch.cat([info.final_norm(below[l - 1].to(info.device)).flatten(0, 1) for l in lens_layers])
ranks_all = best_ranks(normed, token_sets * len(lens_layers)).view(len(lens_layers), len(vocab_batch.prompts), n_pos, -1)
rank_rows = []
for l, rank in zip(lens_layers, ranks_all):
    for i in range(len(vocab_batch.prompts)):
        row = {"l": l, "set": vocab_sets[i]}
        for j in range(n_demos):
            rank_rows += [
                {**row, "where": "label position", "token": "its demonstration's input", "rank": int(rank[i, j, 0])},
                {**row, "where": "label position", "token": "another demonstration's input", "rank": int(rank[i, j, 1])},
                {**row, "where": "label position", "token": "its input, at a random other position",
                 "rank": int(rank[i, n_demos + j, 0])},
            ]
        rank_rows += [
            {**row, "where": "last position", "token": "the query's input", "rank": int(rank[i, -1, 0])},
            {**row, "where": "last position", "token": "a demonstration's input", "rank": int(rank[i, -1, 1])},
        ]
ranks = pd.DataFrame(rank_rows)
median_ranks = ranks.groupby(["where", "token", "l"])["rank"].median().unstack("l")
median_ranks  # median rank (1 = top token) of each token kind in the projection of the attention outputs below l

# %%
fig, axes = plt.subplots(1, 2, figsize=(13, 3.8))
for ax, where in zip(axes, ["label position", "last position"]):
    sns.lineplot(data=ranks[ranks["where"] == where], x="l", y="rank", hue="token", estimator="median",
                 errorbar=("pi", 50), marker="o", ax=ax)
    ax.axhline(info.vocab_size / 2, color="0.5", ls=":", lw=1, label="chance (half the vocabulary)")
    ax.set_yscale("log")
    ax.invert_yaxis()
    ax.axvline(k_window, color="0.7", lw=0.8)
    ax.set_xlabel("l: attention outputs of layers 0 .. l-1, summed")
    ax.set_ylabel("rank in the vocabulary (median, IQR)")
    ax.set_title(f"at the {where}", fontsize=11)
    ax.legend(fontsize=7)
plt.tight_layout()
plt.show()

# %% [markdown]
# The tokens the sum promotes at the first label position of the first prompt (its demonstration's
# input is named in the column header):

# %%
first_input = info.tokenizer.decode(ids[0, vocab_inputs.demos[0][0]].tolist())
pd.DataFrame({f"below layer {l}": top_tokens(info, below[l - 1][0, 0], 8) for l in lens_layers}).rename_axis(
    f"input {first_input!r}, label {info.tokenizer.decode([int(ids[0, vocab_batch.label_positions[0][0]])])!r}")

# %% [markdown]
# ## The headline claims on sentence tasks
#
# The same knock-outs in the first window only (input tokens of both paths, the query's whole
# text), on `OTHER_GROUPS` demonstration sets of each sentence task: its inputs are sentences of
# 8 to 15 words, so a label position's own demonstration is most of what precedes the first label,
# and the random control spreads its keys over the later labels (`random_pairs`).

# %%
t0 = time.time()
others = {name: knockout_runs(iu.load_task(name), OTHER_GROUPS, OTHER_QUERIES, [first], [first], []) for name in OTHER_TASKS}
print(f"{len(OTHER_TASKS)} sentence tasks, {OTHER_GROUPS * OTHER_QUERIES} prompts each: {time.time() - t0:.0f} s")

# %% [markdown]
# ## Verdicts
#
# Every estimate comes with a 95% interval over demonstration sets; `grade` applies the declared
# rule (reproduced, contradicted, or inconclusive with the design's minimum detectable effect), with
# Holm's correction over the primary rows. The design checks are printed first.

# %%
def grade_knockouts(result: KnockOut, names, exploratory=False) -> list:
    ok = result.clean.accuracy_interval("prior")
    # room to move: losing what the path carries takes the class-balanced mean gold margin towards 0
    # (no class information), so the clean margin must leave the smallest effect above 0
    clean_margin, effect = result.clean.gold_logit_margin(), MARGIN_EFFECT["smallest_effect"]
    room = Check("room to move", clean_margin >= effect,
                 f"{result.task}: clean class-balanced mean gold-label margin {clean_margin:+.3f} logits, bound 0 "
                 f"(no class information), room {max(clean_margin, 0.0):.3f} vs smallest effect {effect:g}")
    out = []
    for name in names:
        path_label, contrast = name.split(": ")
        source, variant_target = path_label.split(" ", 1)
        variant, target = variant_target.split(" → ")
        path = f"{source} → {target}"
        shallow = result.beyond_control(path, variant, first)
        if contrast == "shallow":
            values, detail = shallow, f"first window (layers {first}-{first + k_window - 1})"
        else:
            values = shallow - result.beyond_control(path, variant, last)
            detail = f"layers {first}-{first + k_window - 1} minus layers {last}-{last + k_window - 1}"
        ci = mean_interval(values, result.sets)
        knocked = result.runs[path, variant, False, first]
        out.append(grade(claim_specs[name], ci,
                         f"{MODEL}, {result.task}, {len(values)} prompts in {len(set(result.sets))} sets, {detail}: {ci} logits; "
                         f"first window: calibrated accuracy {result.clean.accuracy('prior'):.2f} -> "
                         f"{knocked.accuracy('prior', reference=result.clean):.2f} (control "
                         f"{result.runs[path, variant, True, first].accuracy('prior', reference=result.clean):.2f}); "
                         f"clean accuracy {ok}",
                         precondition_met=ok.low > 0.5, checks=[room], task=result.task, exploratory=exploratory))
    return out


knockout_names = [name for name in claim_specs if "→" in name]
graded = grade_knockouts(main, knockout_names)

# the vocabulary view at l = the first window's top: share of comparisons the own token wins, clustered by set
at_view = ranks[ranks.l == k_window]


def wins(where, token, control):
    a = at_view[(at_view["where"] == where) & (at_view.token == token)]
    b = at_view[(at_view["where"] == where) & (at_view.token == control)]
    won = (a["rank"].to_numpy() < b["rank"].to_numpy()) + 0.5 * (a["rank"].to_numpy() == b["rank"].to_numpy())
    return won, a["set"].to_numpy(), a["rank"].median(), b["rank"].median()


vocab_ok = learns.low > 0.5
own = "its demonstration's input"
for name, where, token, control in [("label view vs other demonstration", "label position", own, "another demonstration's input"),
                                    ("label view vs other position", "label position", own, "its input, at a random other position"),
                                    ("last view", "last position", "the query's input", "a demonstration's input")]:
    won, sets, med_a, med_b = wins(where, token, control)
    ci = cluster_jackknife(lambda r: won[r].mean(), sets)
    # a share won (or lost) in every comparison of every set has no interval to grade: not testable
    checks = [moves_at_all({f"{token} vs {control}": won}, "comparisons won")]
    graded.append(grade(claim_specs[name], ci,
                        f"{MODEL}, {TASK}, attention outputs of layers 0-{k_window - 1}, {len(won)} comparisons in "
                        f"{len(set(sets))} sets: the token ranks higher in {ci} of them (median rank {med_a:.0f} vs {med_b:.0f} "
                        f"of {info.vocab_size})", precondition_met=vocab_ok, checks=checks, task=TASK))
print("Design checks (a failing check makes its row not testable):")
for g in graded:
    for c in g.checks:
        print(f"  {[k for k, v in claim_specs.items() if v is g.spec][0]}: {c}")
claims_table(graded)

# %% [markdown]
# The headline claims side by side on the main task and the two sentence tasks (the main task with
# 12 demonstration sets of 10 queries, the others with 8 sets of 8; the sentence-task rows are
# exploratory):

# %%
headline = [g for g in graded if g.spec in [claim_specs[h] for h in HEADLINE]]
for result in others.values():
    headline += grade_knockouts(result, HEADLINE, exploratory=True)
for g in headline[len(HEADLINE):]:
    print(f"{g.task}: {g.checks[0]}")
per_task_table(headline)

# %% [markdown]
# **Reading the result.** The knock-out asks whether the *direct* attention path matters in a given
# band of layers; it cannot see features that reach a position by a detour (through "\nLabel:", or
# through later layers of the positions in between), which is why the whole-text knock-out sits
# beside the input-token one. A claim graded *contradicted* means the interval rules out a fall of
# a quarter logit beyond the control: this model does not depend on that path in those layers as
# much as the claim needs; *inconclusive* comes with the detectable effect of this design and the
# number of demonstration sets that would settle it. The window curves above say where the model
# *does* depend on each path, which is the answer to set beside the paper's "shallow layers": in a
# model of 18 layers the middle of the depth may play the part that the first few layers play in a
# model of 28 or 48.
#
# Two measures can disagree, and both are shown on purpose. A knock-out can shift the model
# towards one label word for every query: accuracy calibrated with the *clean* run's prior counts
# that shift as errors, while the mean gold margin over class-balanced queries does not (half the
# prompts gain what the other half lose). A falling accuracy beside a steady or rising margin is a
# prior shift, not a loss of the features that tell the classes apart. On the sentence tasks the
# random control is itself a large cut: each label position has few earlier positions besides its
# own sentence, so the control blocks most of what it can read (the "\nLabel:" before it, the
# earlier labels); the margin falls in its table show each knock-out's fall and its control's
# separately.
#
# Because a layer's four heads share one key/value head, a knock-out of a layer is already
# all-or-nothing for the information its keys and values carry; the grey bands show whether an
# effect sits on the few global-attention layers. The vocabulary view asks a different question —
# whether the input's identity is *present* in what the lower attention layers wrote — and can
# agree with the knock-out on where the features arrive while the knock-out shows whether the model
# *needs* them there. A median rank near half the vocabulary means the projection does not single
# the token out at all: the logit lens reads shallow-layer vectors of small models poorly, so a
# null in the vocabulary view is weaker evidence than a null in the knock-out.

# %%
save_results(
    "06_shallow_layers",
    {"model": MODEL, "task": TASK, "n_prompts": n, "n_groups": N_GROUPS, "window_layers": k_window, "stride": stride,
     "windows": starts, "global_layers": global_layers, "kv_heads_per_layer": info.n_kv_heads,
     "clean_calibrated_accuracy": main.clean.accuracy("prior"), "clean_margin": main.clean.gold_logit_margin(),
     "knockout": table.to_dict(orient="records"),
     "other_tasks": {name: window_table(r).to_dict(orient="records") for name, r in others.items()},
     "median_ranks": {f"{w} | {t}": {int(l): float(v) for l, v in r.items()} for (w, t), r in median_ranks.iterrows()},
     "knockout_s": main_seconds, "runtime_s": time.time() - start},
    graded + headline[len(HEADLINE):],
)
print(f"chapter runtime: {time.time() - start:.0f} s")
