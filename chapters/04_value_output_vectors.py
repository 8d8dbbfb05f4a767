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
# # 4. What the value-output matrices extract
#
# **Question.** Chapter 3 found a few in-context heads. What do they move into the last position?
# {cite:t}`yu2024twotowers` look at each head's write split by the position it reads from,
#
# $$vo_p = \alpha_{T,p}\, W_O^h W_V^h\, \mathrm{LN}(x_p^{l-1}),$$
#
# and read it in vocabulary space (final norm, then unembedding). Their finding: at a demonstration's
# label position, $vo_p$ of an in-context head points at that label — foo-like tokens at "foo"
# positions, bar-like tokens at "bar" positions — and it is near zero elsewhere. Per position they
# use the metric
#
# $$M_p = \log p(\text{foo} \mid vo_p) - \log p(\text{bar} \mid vo_p),$$
#
# positive where the head carries "foo", negative where it carries "bar".
#
# **Method.** The in-context heads are chapter 3's (ranked on the selection pool; every prompt here
# comes from the evaluation pool, in demonstration sets: the independent units of every interval). One traced
# forward pass per batch splits every head's write at the last position by source position
# (`icl_utils.attribution.head_position_contributions`; the terms sum exactly to the head's
# output), and `icl_utils.vocab.value_output_log_odds` reads each term through the final norm with
# its scale frozen at the prompt's real final residual, as the attribution of chapter 2 does: so
# $M_p$ is linear in $vo_p$, a position the head barely attends to counts little, and the terms add
# up over positions to the head's direct effect on the foo-bar log-odds. (The real norm applied to
# $vo_p$ alone would be scale-free and would hide the attention weight; we use it only to list the
# tokens a vector promotes.) $M_p$ is computed with the attention weight $\alpha_{T,p}$ (what the
# head actually moves) and without it ($W_O W_V \mathrm{LN}(x_p)$: is the label feature *there*
# whether or not the head attends?).
#
# **Three checks a reader should ask for.**
# * *Against random heads.* Every head's $M_p$ is computed in the same pass, so the in-context heads
#   are compared with 20 or more random head sets of the same size (from outside the top quarter of
#   the ranking).
# * *"Near zero elsewhere", at matched attention.* A mean over all other positions passes trivially:
#   most positions get almost no attention, so their weighted $M_p$ is near zero whatever they
#   carry. The fair comparison pairs each label position with a non-label position that gets about
#   the *same* attention from the head (nearest attention weight, each used once;
#   `icl_utils.stats.nearest_matches`) and asks which carries more label information.
# * *The label swap.* With the words swapped (bar names the first class), a head that extracts the
#   *word* at a label position still writes foo at "foo" positions; one that encodes the class
#   would flip.
#
# **Shared keys and values.** Models with grouped-query attention share one key and value
# projection among several query heads. Gemma-3-270M has a single key/value head per layer, so all
# four heads of a layer read the *same* value vectors $W_V \mathrm{LN}(x_p)$; what differs between
# them is $W_O^h$ and where they attend. The chapter prints which of the studied heads share a
# value matrix.

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
OTHER_TASKS = ["topic_sentences", "sentiment_sentences"]  # the headline claims on sentence tasks too
DEMOS_PER_CLASS = 8
N_RANK_PROMPTS = 16  # selection-pool prompts that rank the heads of a task chapter 3 did not rank
N_GROUPS = 16  # demonstration sets (evaluation pool) on the main task: the independent units of the intervals
QUERIES_PER_GROUP = 2  # queries per set, one per class: many sets of few queries (the sets, not the queries, are the units)
N_OTHER_GROUPS = 10  # demonstration sets on each other task (at least 10 units per row)
OTHER_DEMOS_PER_CLASS = 4  # sentences are long: 4 per class keeps each prompt near the word prompts' length
CALIBRATION_PER_CLASS = 2  # calibration prompts per class and set (the precondition's accuracy)
N_TOP_HEADS = 4  # in-context heads studied (top by S)
N_PER_LABEL = 2  # foo heads and bar heads (disjoint)
N_RANDOM = 20  # random head sets of N_TOP_HEADS heads, from outside the top quarter of the ranking
TOP_K_TOKENS = 8
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
from icl_utils.attribution import head_position_contributions
from icl_utils.evaluation import batches_by_demonstrations, score_calibrated_packed
from icl_utils.heads import find_in_context_heads, top_heads
from icl_utils.prompts import demo_set_ids
from icl_utils.reporting import (ClaimSpec, claims_table, declared_claims_table, grade, per_task_table,
                                 save_results)
from icl_utils.stats import cluster_jackknife, mean_interval, nearest_matches
from icl_utils.vocab import label_log_odds, top_tokens, value_output_log_odds

sns.set_theme(style="whitegrid", context="notebook")
start = time.time()
UNIT = "demonstration set"
LEARNS = "the clean model learns the task: calibrated accuracy's interval (evaluation pool) lies above 0.5"

# %% [markdown]
# ## Declared claims
#
# The label-signed $M$ of a head on a prompt is the mean over the prompt's label positions of $M_p$,
# with the sign flipped at "bar" positions: positive when the head writes foo at foo positions and
# bar at bar positions. A quarter of a nat is not tiny in this unit for a *single* position: the
# 16 label positions of a prompt would add up to several nats of the foo-bar log-odds.
#
# Three of the claims are the paper's (its $M_p$ signs, "near zero elsewhere", and the
# value-output half of the two-tower hypothesis): each has one *primary* row, on the main task,
# and the three are decided together with Holm's correction. The label swap is the book's own
# control, and the same claims on the sentence tasks are *exploratory* rows (each on its own 95%).
# Every interval is a Student-t interval over demonstration sets (at the book's parameters 16 on
# the main task and 10 on each sentence task; fewer than 8 units never count as evidence), its
# standard error from leaving one set out at a time. All four claims are about log-odds or a share of matched pairs compared with
# an even split, not about a fall of accuracy towards chance, so no room-to-move check applies:
# the clean model's accuracy enters only as the precondition that it learns the task.

# %%
claim_specs = {
    "label features": ClaimSpec(
        claim="In in-context heads, vo_p at a label position carries that label (M_p > 0 at foo, < 0 at bar positions)",
        paper="Llama-7B / GPT-J: foo heads positive at foo positions, bar heads negative at bar positions",
        metric="label-signed M (with alpha, nats per label position), top heads minus the mean of random head sets",
        direction="increase", smallest_effect=0.02,
        smallest_effect_reason="0.02 nats per label position, ~0.3 nats over a prompt's 16 labels: a visible share of the head's vote",
        control=f"{N_RANDOM} random sets of {N_TOP_HEADS} heads from outside the top quarter", unit=UNIT, precondition=LEARNS,
        primary=True),
    "labels swapped": ClaimSpec(
        claim="The feature is the label word, not the class: with the words swapped, foo positions still carry foo",
        paper="implicit in 'label features'; the book's control",
        metric="the same label-signed M (signs by the word at each position), on label-swapped prompts",
        direction="increase", smallest_effect=0.02,
        smallest_effect_reason="as for the original assignment",
        control="random head sets on the same swapped prompts", unit=UNIT, precondition=LEARNS),
    "near zero elsewhere": ClaimSpec(
        claim="The value-output vectors carry label information at label positions, not elsewhere",
        paper="qualitative: label positions dominate M",
        metric="share of (label position, attention-matched other position) pairs where |M| without alpha is larger at the label position",
        direction="increase", null=0.5, smallest_effect=0.15,
        smallest_effect_reason="label positions win at least 65% of matched pairs",
        control="non-label positions with the same attention weight from the head (nearest match, each used once)",
        unit=UNIT, precondition=LEARNS, primary=True),
    "without attention": ClaimSpec(
        claim="The label feature is extracted by W_O W_V itself, whatever the attention",
        paper="implied by the two-tower hypothesis (value-output extracts, query-key selects)",
        metric="label-signed M without alpha (nats per label position), top heads minus random head sets",
        direction="increase", smallest_effect=0.25,
        smallest_effect_reason="a quarter nat for a unit-attention read of one label position",
        control=f"{N_RANDOM} random head sets, same prompts", unit=UNIT, precondition=LEARNS, primary=True),
}
declared_claims_table(claim_specs)

# %%
info = iu.load_model(MODEL)
task = iu.load_task(TASK)
ranking = find_in_context_heads(info, task, N_RANK_PROMPTS, DEMOS_PER_CLASS, seed=SEED, batch_size=BATCH_SIZE)
foo_word, bar_word = ranking.words


def head_groups_for(ranking, seed):
    """The studied heads of a ranking: top by S, foo heads, bar heads, and random sets from outside the top quarter."""
    outside = [lh for lh in info.all_heads if lh not in top_heads(ranking.importance, info.n_total_heads // 4)]
    rng = random.Random(seed)
    return {"in-context (top S)": ranking.top(N_TOP_HEADS),
            f"{foo_word} heads": ranking.label_heads(foo_word, N_PER_LABEL),
            f"{bar_word} heads": ranking.label_heads(bar_word, N_PER_LABEL),
            "random": [rng.sample(outside, N_TOP_HEADS) for _ in range(N_RANDOM)]}


head_groups = head_groups_for(ranking, SEED)
for name, heads in head_groups.items():
    print(f"{name:>20}: {heads if name != 'random' else f'{len(heads)} sets, e.g. {heads[0]}'}")
per_kv = info.n_heads // info.n_kv_heads
shared_values = {}
for l, h in sorted(set(head_groups["in-context (top S)"] + head_groups[f"{foo_word} heads"] + head_groups[f"{bar_word} heads"])):
    shared_values.setdefault((l, h // per_kv), []).append(f"{l}.{h}")
print(f"{MODEL}: {info.n_heads} query heads and {info.n_kv_heads} key/value head(s) per layer, so each W_V is shared by "
      f"{per_kv} heads. Studied heads reading the same value vectors: "
      + "; ".join(f"layer {l}: {', '.join(hs)}" for (l, _), hs in shared_values.items()))

# %% [markdown]
# ## One prompt, one head
#
# The top in-context head on one prompt: its attention from the last position, and $M_p$ of its
# value-output vector at every position.

# %%
prompts, calibration = iu.design_prompts(task, N_GROUPS, QUERIES_PER_GROUP, DEMOS_PER_CLASS, pool="evaluation",
                                         calibration_per_class=CALIBRATION_PER_CLASS, seed=SEED + 1)
ranking.check_held_out(prompts)  # evaluation pool: no query that ranked the heads
RECORD = ("resid", "attn", "qkv", "attn_out")
word_ids = iu.label_token_ids(info.tokenizer, [foo_word, bar_word])


def trace_batch(chunk):
    """One traced pass; prompts that share their demonstrations run them once (share_prefix)."""
    batch = iu.encode_prompts(info, chunk)
    return batch, iu.run_with_trace(info, batch, record=RECORD, share_prefix=True)


batch, trace = trace_batch(prompts[:1])
layer, head = head_groups["in-context (top S)"][0]
length = int(batch.attention_mask[0].sum())
tokens = [info.tokenizer.decode([t]) for t in batch.input_ids[0, :length]]
vo = head_position_contributions(info, trace, layer)[0, head, :length]  # (seq, d_model)
final = trace.final_resid[:, 0]  # (batch, d_model): real final residual at the last position
m_weighted = label_log_odds(info, vo, word_ids, frozen_at=final[0])
attention = trace.attn[layer][0, head, 0, :length]
label_of = dict(zip(batch.label_positions[0], batch.label_classes[0]))
colours = ["C3" if label_of.get(p) == task.classes[0] else "C0" if p in label_of else "0.75" for p in range(length)]

fig, axes = plt.subplots(2, 1, figsize=(12, 4.5), sharex=True)
axes[0].bar(range(length), attention.numpy(), color=colours)
axes[0].set_ylabel("attention\nfrom last")
axes[1].bar(range(length), m_weighted.numpy(), color=colours)
axes[1].axhline(0, color="black", lw=0.6)
axes[1].set_ylabel(f"M_p = log p({foo_word})\n- log p({bar_word})")
axes[1].set_xticks(range(length), labels=[t.replace("\n", "\\n") for t in tokens], rotation=90, fontsize=6)
axes[0].set_title(f"head {layer}.{head}: red = '{foo_word}' label positions, blue = '{bar_word}', grey = other; "
                  f"gold label of this prompt: {prompts[0].label_words[prompts[0].gold]}", fontsize=10)
plt.tight_layout()
plt.show()

# %% [markdown]
# ### Exercise: the value-output vectors
#
# Split the head's write at the last position by source position, $vo_p = \alpha_{T,p} W_O^h v_p$,
# for every position $p$ of the prompt above. You get the head's attention weights `alpha` (seq,),
# its value vectors `values` (seq, d_head), which are $W_V^h \mathrm{LN}(x_p)$ as the model
# computed them, `w_o` (d_model, d_head), the columns of the output projection that read this
# head, and `post_norm`: Gemma normalises the attention output before adding it to the residual
# stream, and `post_norm` is that norm with its scale frozen at the real attention output (the
# identity for models without one). The check compares with
# `icl_utils.attribution.head_position_contributions`. (Solution in the next cell.)

# %%
from icl_utils.exercises import check_value_output


def my_value_output(alpha, values, w_o, post_norm):
    """alpha: (seq,), values: (seq, d_head), w_o: (d_model, d_head). Returns vo: (seq, d_model)."""
    raise NotImplementedError  # your code


check_value_output(my_value_output, info, trace, layer, head)

# %% tags=["hide-input"]
# Solution
def solution_value_output(alpha, values, w_o, post_norm):
    return post_norm(alpha[:, None] * (values @ w_o.T))


assert check_value_output(solution_value_output, info, trace, layer, head)

# %% [markdown]
# ### Exercise: reading a vector as label log-odds
#
# Now compute $M_p = \log p(\text{foo} \mid vo_p) - \log p(\text{bar} \mid vo_p)$ for the
# value-output vectors at this prompt's label positions. As in chapter 2, `to_logits(x)` maps
# vectors (batch, ..., d_model) to logits through the final norm frozen at the prompt's real final
# residual. One thing to notice once it passes: the softmax's normaliser is the same for both words,
# so it cancels (that is why `icl_utils.vocab.label_log_odds` needs only two rows of the
# unembedding). (Solution in the next cell.)

# %%
from icl_utils.exercises import check_label_log_odds


def my_label_log_odds(to_logits, vectors, word_ids):
    """vectors: (batch, n, d_model); word_ids: [foo id, bar id]. Returns M: (batch, n)."""
    raise NotImplementedError  # your code


ex_vectors = vo[sorted(label_of)][None]  # (1, n_labels, d_model): vo_p at the label positions
check_label_log_odds(my_label_log_odds, info, ex_vectors, word_ids, final[:1])

# %% tags=["hide-input"]
# Solution
def solution_label_log_odds(to_logits, vectors, word_ids):
    logp = torch.log_softmax(to_logits(vectors), -1)
    return logp[..., word_ids[0]] - logp[..., word_ids[1]]


assert check_label_log_odds(solution_label_log_odds, info, ex_vectors, word_ids, final[:1])

# %% [markdown]
# ## $M_p$ of every head, on every prompt
#
# One traced pass per batch gives $M_p$ (with and without $\alpha$) for all heads at all
# positions. Per prompt and head we keep the mean $M_p$ at foo positions and at bar positions (by
# the *word* at the position), and, for the top heads, the attention-matched comparison.

# %%
def measure(prompts, groups, desc):
    """Per prompt: mean M at foo and at bar positions for every head, with and without alpha
    ((n_prompts, n_layers, n_heads) each), and for the top heads the attention-matched comparison."""
    top = groups["in-context (top S)"]
    out = {key: [] for key in ("foo_w", "bar_w", "foo_u", "bar_u", "wins", "label_abs", "matched_abs",
                               "label_attn", "matched_attn", "other_w")}
    order = batches_by_demonstrations(prompts, BATCH_SIZE)
    if [i for idx in order for i in idx] != list(range(len(prompts))):
        raise ValueError("measure() needs the prompts of each demonstration set next to each other (design_prompts order)")
    for idx in tqdm(order, desc=desc):
        chunk = [prompts[i] for i in idx]
        batch, trace = trace_batch(chunk)
        m_w = value_output_log_odds(info, trace, word_ids)  # (batch, layers, heads, seq)
        m_u = value_output_log_odds(info, trace, word_ids, weighted=False)
        for i, p in enumerate(chunk):
            positions = batch.label_positions[i]
            words = [p.label_words[c] for c in batch.label_classes[i]]
            foo_pos = [q for q, w in zip(positions, words) if w == foo_word]
            bar_pos = [q for q, w in zip(positions, words) if w == bar_word]
            for key, m in (("w", m_w[i]), ("u", m_u[i])):
                out[f"foo_{key}"].append(m[..., foo_pos].mean(-1))
                out[f"bar_{key}"].append(m[..., bar_pos].mean(-1))
            length = int(batch.attention_mask[i].sum())
            others = np.array([q for q in range(1, length) if q not in positions])  # the first token is a sink
            wins, l_abs, o_abs, l_att, o_att, other_w = [], [], [], [], [], []
            for l, h in top:
                alpha = trace.attn[l][i, h, 0].float().numpy()
                matched = others[nearest_matches(alpha[positions], alpha[others])]
                # compared without alpha: the matches still get somewhat less attention than the
                # labels (labels are where the head attends most), which must not count for the labels
                m = m_u[i, l, h].numpy()
                a, b = np.abs(m[positions]), np.abs(m[matched])
                wins.append(np.mean((a > b) + 0.5 * (a == b)))
                l_abs.append(a.mean()), o_abs.append(b.mean())
                m = m_w[i, l, h].numpy()
                l_att.append(alpha[positions].mean()), o_att.append(alpha[matched].mean())
                other_w.append(np.abs(m[others]).mean())
            for key, values in (("wins", wins), ("label_abs", l_abs), ("matched_abs", o_abs), ("label_attn", l_att),
                                ("matched_attn", o_att), ("other_w", other_w)):
                out[key].append(float(np.mean(values)))
    result = {k: (torch.stack(v).numpy() if torch.is_tensor(v[0]) else np.array(v)) for k, v in out.items()}
    result["signed_w"] = (result["foo_w"] - result["bar_w"]) / 2  # foo and bar positions are equally many
    result["signed_u"] = (result["foo_u"] - result["bar_u"]) / 2
    result["demo_set"] = demo_set_ids(prompts)
    return result


def mean_over(values, heads):
    """Per prompt, the mean of (n_prompts, layers, heads) values over a list of (layer, head)."""
    return np.mean([values[:, l, h] for l, h in heads], axis=0)


def random_mean(values, groups):
    return np.mean([mean_over(values, heads) for heads in groups["random"]], axis=0)


clean = score_calibrated_packed(info, [(prompts, calibration)])[0]
main = measure(prompts, head_groups, "value-output vectors")
print(f"clean model on {len(prompts)} evaluation prompts: calibrated accuracy {clean.accuracy('prior'):.3f}, "
      f"raw {clean.accuracy():.3f}, AUC {clean.auc():.3f}")

# %% [markdown]
# ### By head group and position type
#
# Mean $M_p$ at foo positions and at bar positions for each group (random: all 20 sets pooled),
# with the attention weight (left) and without it (right). Error bars: 95% intervals over
# demonstration sets.

# %%
group_names = [g for g in head_groups if g != "random"] + ["random"]
rows = []
for column, weighted in (("with attention", "w"), ("no attention weight", "u")):
    for group in group_names:
        for where, key in ((foo_word, "foo"), (bar_word, "bar")):
            values = main[f"{key}_{weighted}"]
            per_prompt = random_mean(values, head_groups) if group == "random" else mean_over(values, head_groups[group])
            ci = mean_interval(per_prompt, main["demo_set"])
            rows.append({"measure": column, "group": group, "positions": f"'{where}' positions",
                         "M": ci.estimate, "low": ci.low, "high": ci.high})
by_group = pd.DataFrame(rows)
fig, axes = plt.subplots(1, 2, figsize=(13, 3.8))
for ax, (column, part) in zip(axes, by_group.groupby("measure", sort=False)):
    for j, (where, sub) in enumerate(part.groupby("positions", sort=False)):
        x = np.arange(len(sub)) + (j - 0.5) * 0.38
        ax.bar(x, sub.M, width=0.38, color=["C3", "C0"][j], label=where)
        ax.errorbar(x, sub.M, yerr=[sub.M - sub.low, sub.high - sub.M], fmt="none", color="black", capsize=3)
    ax.set_xticks(range(len(group_names)), group_names, fontsize=8)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_title(f"M_p {column} (mean over label positions)", fontsize=10)
axes[0].legend(fontsize=8)
plt.tight_layout()
plt.show()
by_group.pivot_table(index=["measure", "positions"], columns="group", values="M", sort=False)[group_names].round(3)

# %% [markdown]
# ### Label positions against attention-matched positions
#
# For the top heads: each label position paired with the other position that gets the nearest
# attention weight. Label positions are usually where a head attends most, so even the nearest
# matches get somewhat less attention; the pairs are therefore compared on $|M_p|$ *without*
# $\alpha$ (what the position carries), among positions the head attends to about as much. The
# naive check (mean weighted $|M|$ over *all* other positions) is printed beside it.

# %%
print(f"top heads, mean over prompts: attention {main['label_attn'].mean():.4f} at label positions vs "
      f"{main['matched_attn'].mean():.4f} at their matches; |M| without alpha {main['label_abs'].mean():.3f} vs "
      f"{main['matched_abs'].mean():.3f}; label positions win {main['wins'].mean():.0%} of matched pairs")
print(f"the naive check: |M| averaged over all other positions {main['other_w'].mean():.5f} "
      f"(small because most positions get almost no attention, whatever they carry)")

# %% [markdown]
# ## What the vectors say in words
#
# Mean value-output vector (without the attention weight) of the top head at each position type,
# read through the final norm (applied to the vector alone) and the unembedding. The paper reports
# foo-like tokens at foo positions and bar-like tokens at bar positions.

# %%
batch, trace = trace_batch(prompts[:QUERIES_PER_GROUP])  # one demonstration set
layer, head = head_groups["in-context (top S)"][0]
unweighted = head_position_contributions(info, trace, layer, weighted=False)[:, head]  # (batch, seq, d)
position_order = [f"{foo_word} positions", f"{bar_word} positions", "other positions"]
by_kind = {kind: [] for kind in position_order}
for i in range(unweighted.shape[0]):
    label_of = dict(zip(batch.label_positions[i], batch.label_classes[i]))
    for p in range(1, int(batch.attention_mask[i].sum())):
        kind = (f"{foo_word} positions" if label_of.get(p) == task.classes[0] else
                f"{bar_word} positions" if p in label_of else "other positions")
        by_kind[kind].append(unweighted[i, p])
words_table = pd.DataFrame({kind: top_tokens(info, torch.stack(vs).mean(0), TOP_K_TOKENS) for kind, vs in by_kind.items()})
words_table.index.name = f"rank (head {layer}.{head})"
words_table

# %% [markdown]
# ## Explore the heads yourself
#
# Pick a prompt (upper tabs: one prompt of each gold class) and a head (lower tabs: the heads
# studied above, two random heads included). The prompt is shown with the head's attention
# from the last position as an orange background, and the label positions underlined in their
# label's colour; the table lists, at each label position, the attention weight and $M_p$ with and
# without it, and the header gives the head's importance $S$ on this very prompt
# (`icl_utils.explorer`). Every view is computed while the chapter runs and switching tabs needs no
# Python, so the explorer also works on the book's web page. The figure below it shows the first
# prompt for readers without JavaScript.

# %%
from icl_utils.explorer import explorer, head_views, plot_views

roles = {}  # (layer, head) -> the first group it belongs to, as a short tab title
for group, heads in head_groups.items():
    for lh in heads[0][:2] if group == "random" else heads:
        roles.setdefault(lh, group.split(" ")[0])
explorer_prompts = [next(p for p in prompts if p.gold == c) for c in task.classes]
views = head_views(info, explorer_prompts, list(roles))
explorer(views, head_names=roles)

# %%
plot_views(views, prompt_index=0)
plt.show()

# %% [markdown]
# ## The label swap and the sentence tasks
#
# The same measurements on label-swapped prompts (same demonstration sets, bar names the first
# class) and, with each task's own in-context heads (ranked on its selection pool), on the
# sentence tasks.

# %%
swapped, swapped_calibration = iu.design_prompts(task, N_GROUPS, QUERIES_PER_GROUP, DEMOS_PER_CLASS,
                                                 label_words=(bar_word, foo_word), pool="evaluation",
                                                 calibration_per_class=CALIBRATION_PER_CLASS, seed=SEED + 1)
swap_clean = score_calibrated_packed(info, [(swapped, swapped_calibration)])[0]
swap = measure(swapped, head_groups, "label-swapped prompts")
others = {}
for name in OTHER_TASKS:
    other = iu.load_task(name)
    other_ranking = find_in_context_heads(info, other, N_RANK_PROMPTS, OTHER_DEMOS_PER_CLASS, seed=SEED, batch_size=BATCH_SIZE)
    other_prompts, other_calibration = iu.design_prompts(other, N_OTHER_GROUPS, QUERIES_PER_GROUP, OTHER_DEMOS_PER_CLASS,
                                                         pool="evaluation", calibration_per_class=CALIBRATION_PER_CLASS,
                                                         seed=SEED + 1)
    other_ranking.check_held_out(other_prompts)
    other_groups = head_groups_for(other_ranking, SEED)
    others[name] = {"groups": other_groups, "data": measure(other_prompts, other_groups, name),
                    "clean": score_calibrated_packed(info, [(other_prompts, other_calibration)])[0]}
    print(f"{name}: top heads {other_groups['in-context (top S)']}; clean calibrated accuracy "
          f"{others[name]['clean'].accuracy('prior'):.3f}")

# %% [markdown]
# ## Verdicts
#
# Each estimate is a per-prompt difference (or share) averaged over the evaluation prompts, with a
# 95% Student-t interval over demonstration sets (standard error from leaving out one whole set at
# a time); `grade` applies the declared rule. The main task's rows of the paper's claims are
# primary (Holm-corrected together); the label swap and the sentence tasks are exploratory.

# %%
def learns(scores):
    ci = scores.accuracy_interval("prior")
    return ci, ci.low > 0.5


def beyond_random(data, groups, key):
    top, random_sets = mean_over(data[key], groups["in-context (top S)"]), random_mean(data[key], groups)  # per prompt
    return cluster_jackknife(lambda r: top[r].mean() - random_sets[r].mean(), data["demo_set"])


def grade_task(name, data, groups, scores, swapped_data=None, swapped_scores=None):
    """The declared claims on one task's data (primary rows on the main task, exploratory elsewhere)."""
    (acc, ok), top = learns(scores), groups["in-context (top S)"]
    exploratory = name != TASK
    graded = []
    signed = beyond_random(data, groups, "signed_w")
    foo_at_foo = mean_over(data["foo_w"], groups[f"{foo_word} heads"]).mean()
    bar_at_bar = mean_over(data["bar_w"], groups[f"{bar_word} heads"]).mean()
    graded.append(grade(claim_specs["label features"], signed,
                        f"{MODEL}, {name}, top {len(top)} heads {top}: label-signed M beyond random {signed} "
                        f"(top {mean_over(data['signed_w'], top).mean():+.3f}, random {random_mean(data['signed_w'], groups).mean():+.3f}); "
                        f"{foo_word} heads at {foo_word} positions {foo_at_foo:+.3f}, {bar_word} heads at {bar_word} positions "
                        f"{bar_at_bar:+.3f}; clean accuracy {acc}", precondition_met=ok, task=name, exploratory=exploratory))
    if swapped_data is not None:
        s_acc, s_ok = learns(swapped_scores)
        swapped_signed = beyond_random(swapped_data, groups, "signed_w")
        graded.append(grade(claim_specs["labels swapped"], swapped_signed,
                            f"{name}, labels swapped: label-signed M (by word) beyond random {swapped_signed}; clean accuracy {s_acc}",
                            precondition_met=s_ok, task=name))
    wins = mean_interval(data["wins"], data["demo_set"])
    graded.append(grade(claim_specs["near zero elsewhere"], wins,
                        f"{name}: label positions win {wins} of matched pairs (mean attention {data['label_attn'].mean():.4f} "
                        f"vs {data['matched_attn'].mean():.4f} at the matches; |M| without alpha {data['label_abs'].mean():.3f} vs "
                        f"{data['matched_abs'].mean():.3f}); naive mean weighted |M| elsewhere {data['other_w'].mean():.5f}",
                        precondition_met=ok, task=name, exploratory=exploratory))
    unweighted = beyond_random(data, groups, "signed_u")
    graded.append(grade(claim_specs["without attention"], unweighted,
                        f"{name}: label-signed M without alpha beyond random {unweighted} (top "
                        f"{mean_over(data['signed_u'], top).mean():+.2f}, random {random_mean(data['signed_u'], groups).mean():+.2f})",
                        precondition_met=ok, task=name, exploratory=exploratory))
    return graded


graded = grade_task(TASK, main, head_groups, clean, swap, swap_clean)
for name, o in others.items():
    graded += grade_task(name, o["data"], o["groups"], o["clean"])
claims_table([g for g in graded if g.task == TASK])

# %% [markdown]
# ### Every task side by side

# %%
per_task_table(graded)

# %% [markdown]
# **Reading the result.** If the signs hold without the attention weight, the value-output
# matrix turns *any* label token into that label's direction, and the head's choice of label is
# made by where it attends: the subject of chapter 5. The matched comparison asks the sharper
# question behind "near zero elsewhere": at equal attention, is a label position more informative
# about the label than another position? Positions right after a label (the newline that follows
# it) can carry the label too, which the matched pairs would show as a lower share. On Gemma the
# heads of a layer share their value vectors, so two in-context heads of one layer differ only in
# $W_O^h$ and in where they attend.

# %%
save_results(
    "04_value_output_vectors",
    {"model": MODEL, "task": TASK, "other_tasks": OTHER_TASKS,
     "heads": {k: v for k, v in head_groups.items() if k != "random"}, "n_random_sets": N_RANDOM,
     "n_prompts": len(prompts), "n_demo_sets": N_GROUPS,
     "m_by_group": by_group.to_dict(orient="records"),
     "matched_share": float(main["wins"].mean()), "runtime_s": time.time() - start},
    graded,
)
print(f"chapter runtime: {time.time() - start:.0f} s")
