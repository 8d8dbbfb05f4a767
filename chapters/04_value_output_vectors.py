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
# **Method.** We find the in-context heads as in chapter 3 (`icl_utils.heads.find_in_context_heads`,
# on prompts separate from the ones analysed here), record one traced forward pass per batch, and
# split each chosen head's write at the last position by source position
# (`icl_utils.attribution.head_position_contributions`; the terms sum exactly to the head's
# output). $M_p$ reads $vo_p$ through the final norm with its scale frozen at the prompt's real final
# residual, as the attribution of chapter 2 does (`icl_utils.vocab.label_log_odds`): so $M_p$ is
# linear in $vo_p$, a position the head barely attends to counts little, and the terms add up over
# positions to the head's direct effect on the foo-bar log-odds. (The real norm applied to $vo_p$
# alone would be scale-free and would hide the attention weight; we use it only to list the
# tokens a vector promotes.) We compute $M_p$ twice: with the attention weight $\alpha_{T,p}$ (what the head actually moves) and
# without it ($W_O W_V \mathrm{LN}(x_p)$: is the label feature *there* whether or not the head
# attends?). Control: random heads outside the top of the ranking.

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
DEMOS_PER_CLASS = 8
N_RANK_PROMPTS = 16  # prompts used to find the in-context heads (seed SEED)
N_PROMPTS = 32  # prompts analysed here (seed SEED + 1)
N_TOP_HEADS = 4  # in-context heads studied (top by S)
N_PER_LABEL = 2  # foo heads and bar heads (disjoint)
N_CONTROL_HEADS = 4  # random heads outside the top quarter of the ranking
TOP_K_TOKENS = 8
SEED = 0
BATCH_SIZE = 8

# %%
import random
import time

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch
from tqdm.auto import tqdm

import icl_utils as iu
from icl_utils.attribution import head_position_contributions
from icl_utils.evaluation import batches
from icl_utils.heads import find_in_context_heads, top_heads
from icl_utils.reporting import Claim, claims_table, save_results
from icl_utils.vocab import label_log_odds, top_tokens

sns.set_theme(style="whitegrid", context="notebook")
start = time.time()
info = iu.load_model(MODEL)
task = iu.load_task(TASK)
ranking = find_in_context_heads(info, task, N_RANK_PROMPTS, DEMOS_PER_CLASS, seed=SEED, batch_size=BATCH_SIZE)
foo_word, bar_word = ranking.words
word_ids = iu.label_token_ids(info.tokenizer, [foo_word, bar_word])

n_ranked = info.n_total_heads // 4
rng = random.Random(SEED)
outside_top = [lh for lh in info.all_heads
               if lh not in top_heads(ranking.importance, n_ranked)]
head_groups = {
    "in-context (top S)": ranking.top(N_TOP_HEADS),
    f"{foo_word} heads": ranking.label_heads(foo_word, N_PER_LABEL),
    f"{bar_word} heads": ranking.label_heads(bar_word, N_PER_LABEL),
    "control (random, low S)": rng.sample(outside_top, N_CONTROL_HEADS),
}
for name, heads in head_groups.items():
    print(f"{name:>24}: {heads}")

# %% [markdown]
# ## One prompt, one head
#
# The top in-context head on one prompt: its attention from the last position, and $M_p$ of its
# value-output vector at every position.

# %%
prompts = iu.build_prompts(task, N_PROMPTS, demos_per_class=DEMOS_PER_CLASS, seed=SEED + 1)
ranking.check_held_out(prompts)  # evaluation pool: no query that ranked the heads
record = ("resid", "attn", "qkv", "attn_out")


def trace_batch(chunk):
    batch = iu.encode_prompts(info, chunk)
    trace = iu.run_with_trace(info, batch, record=record)
    return batch, trace


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
# ## $M_p$ by head group and position type, over all prompts
#
# Positions: the label tokens of demonstrations labelled foo, of those labelled bar, and all other
# positions (the first token, which many heads use as an attention sink, is counted apart).

# %%
rows = []
for chunk in tqdm(list(batches(prompts, BATCH_SIZE)), desc="value-output vectors"):
    batch, trace = trace_batch(chunk)
    layers = sorted({l for heads in head_groups.values() for l, _ in heads})
    for l in layers:
        weighted = head_position_contributions(info, trace, l)  # (batch, heads, seq, d_model)
        unweighted = head_position_contributions(info, trace, l, weighted=False)
        final = trace.final_resid[:, 0][:, None, None]  # frozen final-norm scale, per prompt
        m_w = label_log_odds(info, weighted, word_ids, frozen_at=final)
        m_u = label_log_odds(info, unweighted, word_ids, frozen_at=final)
        for group, heads in head_groups.items():
            for h in [h for hl, h in heads if hl == l]:
                for i in range(len(chunk)):
                    label_of = dict(zip(batch.label_positions[i], batch.label_classes[i]))
                    for p in range(int(batch.attention_mask[i].sum())):
                        kind = (f"{foo_word} positions" if label_of.get(p) == task.classes[0] else
                                f"{bar_word} positions" if p in label_of else "first token" if p == 0 else "other positions")
                        rows.append({"group": group, "head": f"{l}.{h}", "position": kind,
                                     "M (with attention)": m_w[i, h, p].item(), "M (no attention weight)": m_u[i, h, p].item()})
per_position = pd.DataFrame(rows)
position_order = [f"{foo_word} positions", f"{bar_word} positions", "other positions", "first token"]
table = (per_position.groupby(["group", "position"], sort=False)[["M (with attention)", "M (no attention weight)"]]
         .mean().unstack("position").reindex(columns=position_order, level=1).reindex(list(head_groups)))
table.T.round(3)  # rows: (measure, position type); columns: head groups

# %%
fig, axes = plt.subplots(1, 2, figsize=(13, 3.8), sharey=False)
for ax, column in zip(axes, ["M (with attention)", "M (no attention weight)"]):
    sns.barplot(data=per_position[per_position.position != "first token"], x="group", y=column, hue="position",
                hue_order=position_order[:3], ax=ax, errorbar=("ci", 95), palette=["C3", "C0", "0.6"])
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xlabel("")
    ax.tick_params(axis="x", labelsize=8)
    ax.set_title(column, fontsize=10)
axes[1].get_legend().remove()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## What the vectors say in words
#
# Mean value-output vector (without the attention weight) of the top head at each position type,
# read through the final norm (applied to the vector alone) and the unembedding. The paper reports foo-like tokens at foo
# positions and bar-like tokens at bar positions.

# %%
batch, trace = trace_batch(prompts[:BATCH_SIZE])
layer, head = head_groups["in-context (top S)"][0]
unweighted = head_position_contributions(info, trace, layer, weighted=False)[:, head]  # (batch, seq, d)
by_kind = {kind: [] for kind in position_order[:3]}
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
# studied above, two of the control heads included). The prompt is shown with the head's attention
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
    for lh in heads[:2] if group.startswith("control") else heads:
        roles.setdefault(lh, group.split(" ")[0])
explorer_prompts = [next(p for p in prompts if p.gold == c) for c in task.classes]
views = head_views(info, explorer_prompts, list(roles))
explorer(views, head_names=roles)

# %%
plot_views(views, prompt_index=0)
plt.show()

# %% [markdown]
# ## Verdict

# %%
def mean_m(group, position, column="M (with attention)"):
    part = per_position[(per_position.group == group) & (per_position.position == position)][column]
    return part.mean(), part.std() / max(len(part), 1) ** 0.5


top = "in-context (top S)"
foo_pos, bar_pos = f"{foo_word} positions", f"{bar_word} positions"
m_foo, se_foo = mean_m(top, foo_pos)
m_bar, se_bar = mean_m(top, bar_pos)
m_other, _ = mean_m(top, "other positions")
u_foo, use_foo = mean_m(top, foo_pos, "M (no attention weight)")
u_bar, use_bar = mean_m(top, bar_pos, "M (no attention weight)")
c_foo, _ = mean_m("control (random, low S)", foo_pos)
c_bar, _ = mean_m("control (random, low S)", bar_pos)
f_foo, _ = mean_m(f"{foo_word} heads", foo_pos)
b_bar, _ = mean_m(f"{bar_word} heads", bar_pos)
print(f"top in-context heads, with attention: M = {m_foo:+.2f} ± {se_foo:.2f} at {foo_word} positions, "
      f"{m_bar:+.2f} ± {se_bar:.2f} at {bar_word} positions, {m_other:+.3f} elsewhere (mean over positions)")
print(f"without the attention weight: {u_foo:+.2f} ± {use_foo:.2f} at {foo_word} positions, {u_bar:+.2f} ± {use_bar:.2f} at {bar_word} positions")
print(f"control heads, with attention: {c_foo:+.3f} at {foo_word} positions, {c_bar:+.3f} at {bar_word} positions")

signs_hold = m_foo > 2 * se_foo and m_bar < -2 * se_bar
label_dominates = min(abs(m_foo), abs(m_bar)) > 5 * abs(m_other)
beyond_control = min(abs(m_foo), abs(m_bar)) > 3 * max(abs(c_foo), abs(c_bar))
feature_without_attention = u_foo > 2 * use_foo and u_bar < -2 * use_bar
claims = [
    Claim(
        claim="In in-context heads, vo_p at a label position carries that label: M_p > 0 at foo positions, < 0 at bar positions",
        paper="Llama-7B / GPT-J: foo heads positive at foo positions, bar heads negative at bar positions",
        book=f"{MODEL}, top {N_TOP_HEADS} heads: {m_foo:+.2f} at {foo_word}, {m_bar:+.2f} at {bar_word} positions "
             f"(control heads {c_foo:+.2f} / {c_bar:+.2f}); {foo_word} heads at {foo_word} positions {f_foo:+.2f}, "
             f"{bar_word} heads at {bar_word} positions {b_bar:+.2f}",
        verdict="reproduced" if signs_hold and beyond_control else "partly reproduced" if signs_hold else "not reproduced",
    ),
    Claim(
        claim="The value-output vectors are near zero away from label positions",
        paper="qualitative: label positions dominate",
        book=f"|M| at other positions {abs(m_other):.3f} vs {min(abs(m_foo), abs(m_bar)):.2f} at label positions",
        verdict="reproduced" if label_dominates else "not reproduced",
    ),
    Claim(
        claim="The label feature is extracted by W_O W_V itself, whatever the attention",
        paper="implied by the two-tower hypothesis (value-output extracts, query-key selects)",
        book=f"without alpha: {u_foo:+.2f} at {foo_word}, {u_bar:+.2f} at {bar_word} positions",
        verdict="reproduced" if feature_without_attention else "not reproduced",
    ),
]
claims_table(claims)

# %% [markdown]
# **Reading the result.** If the signs hold without the attention weight, the value-output
# matrix turns *any* label token into that label's direction, and the head's choice of label is
# made by where it attends: the subject of chapter 5. Positions other than labels matter only if
# the head attends to them; the first token often collects attention (a "sink") yet writes little.

# %%
save_results(
    "04_value_output_vectors",
    {"model": MODEL, "task": TASK, "heads": {k: v for k, v in head_groups.items()},
     "m_foo_positions": m_foo, "m_bar_positions": m_bar, "m_other_positions": m_other,
     "m_foo_unweighted": u_foo, "m_bar_unweighted": u_bar, "runtime_s": time.time() - start},
    claims,
)
print(f"chapter runtime: {time.time() - start:.0f} s")
