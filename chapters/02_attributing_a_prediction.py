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
# # 2. Attributing a prediction to layers, heads, positions and neurons
#
# **Question.** When the model predicts a word, which of its parts wrote that prediction into the
# residual stream: which layers, which attention heads, which source positions those heads read,
# and which of its tens of thousands of feed-forward (FFN) neurons? And can one forward pass tell
# us, or must we re-run the model once per component? {cite:t}`yu2024neuron` propose an answer that
# the rest of the book relies on: score each component by how much it raises the
# **log-probability** of the predicted word, and they argue this beats scoring by probability or by
# raw logit, by the norm of the component or by the size of its activation. We first take two
# predictions apart in full (one in-context prompt, one factual prompt), then test the paper's
# claims causally on **over a hundred factual prompts and the in-context evaluation pool**.
#
# **Method.** A transformer's residual stream is a sum: every attention head, every MLP block and,
# inside an MLP, every neuron $k$ (its activation $m_k$ times its output row $\mathrm{fc2}_k$, a
# "subvalue") adds a vector $v$ to it. Let $h$ be the residual stream just before the component
# writes. The **log-probability increase** of $v$ for the target word $w$ is
#
# $$\mathrm{Imp}(v) = \log p(w \mid h + v) - \log p(w \mid h), \qquad p(\cdot \mid x) = \mathrm{softmax}\big(E_u\, \mathrm{ln_f}(x)\big),$$
#
# evaluated at the last position. Every $h$ and $v$ comes from **one traced forward pass**: no
# component is re-run. The final norm $\mathrm{ln_f}$ divides by the root-mean-square of its
# input; as in the authors' code we **freeze that scale at the real final residual**, so
# $\mathrm{ln_f}$ becomes linear and a component's contribution does not depend on how large $h$
# happens to be at its layer. (Gemma also normalises each attention and MLP output before adding
# it; those norms are frozen the same way at their real inputs, so a layer's heads and neurons add
# up exactly to what the layer wrote.) We show below what this choice changes.
#
# We compare three scores of the same vectors:
#
# * **log-probability increase** (above);
# * **probability increase** $p(w \mid h + v) - p(w \mid h)$: the same softmax, read as
#   probabilities. For a fixed $h$ it is $p(w \mid h)\,(e^{\mathrm{Imp}} - 1)$, a monotone function of
#   Imp, so the two rankings differ only *across* layers: probability increase favours components
#   that write where $p(w \mid h)$ is already large;
# * **direct logit attribution** (DLA): what $v$ adds to the target's logit through the frozen norm,
#   with no softmax at all.
#
# Scoring one vector exactly needs a product with the whole unembedding (a vocabulary of 262k
# words for the default model), and a model has tens of thousands of neurons: the neuron section
# prints what scoring them all exactly would cost. We therefore **screen** all neurons with the first-order estimate $\nabla_h \log p(w \mid h) \cdot v$ (one
# gradient per layer), score the best candidates and a random sample exactly, and check the screen
# against the exact scores on that random sample.
#
# **Causal check.** A score is only useful if the components it ranks high matter. For each
# prompt and ranking we zero its top-$k$ heads or neurons at the last position and measure the
# target's **mean reciprocal rank** (MRR, the paper's measure: 1 when the target is the top word)
# and probability, against random sets of the same size.

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
FACTS = "../data/facts/factual_recall.jsonl"  # factual prompts with one-word answers (CC0, written for the book)
N_FACTS = None  # None: every prompt of FACTS; those the model answers right at top 1 are attributed
ICL_TASK = "animal_vehicle"  # in-context prompts: foo/bar labels, as in chapter 1, from the evaluation pool
ICL_GROUPS = 12  # demonstration sets (the resampled unit of the in-context prompts)
ICL_QUERIES_PER_GROUP = 4
DEMOS_PER_CLASS = 8
N_POSITION_HEADS = 3  # close-up: heads per prompt whose every source position is scored exactly
N_NEURON_EXACT = 200  # close-up: neurons scored exactly per ranking, chosen by the first-order screen
N_NEURON_SAMPLE = 500  # close-up: random neurons scored exactly, to check the screen
N_EXACT = 16  # many prompts: neurons scored exactly per prompt and screen (log-prob and prob increase)
NEURON_KS = [10, 30, 100, 300]  # neurons zeroed, log-probability ranking (the paper: 10 and 300)
OTHER_KS = [10, 300]  # neurons zeroed, the other four rankings and random sets
HEAD_SHARE = 0.05  # heads zeroed: this share of the model's heads
N_RANDOM = 20  # random sets per prompt and size, drawn afresh for each prompt (thousands of sets in all)
N_EXACT_HEADS = 8  # heads scored exactly per prompt and screen
N_QUERY = 10  # query neurons zeroed per value neuron
N_ADDITIVE = 20  # additivity: subsets drawn from each prompt's top neurons by DLA ...
N_SUBSETS = 8  # ... this many subsets ...
SUBSET_SIZE = 5  # ... of this size
N_CHECK_PROMPTS = 8  # prompts on which the screen is checked against exact scores of random neurons
N_CHECK_NEURONS = 100
BATCH = 16
SEED = 0

# %%
import random
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from IPython.display import display
from tqdm.auto import tqdm

import icl_utils as iu
from icl_utils import attribution as A
from icl_utils.evaluation import next_token_logits
from icl_utils.heads import top_heads
from icl_utils.prompts import pad_right
from icl_utils.reporting import (ClaimSpec, claims_table, declared_claims_table, grade, moves_at_all, per_task_table,
                                 room_to_move, save_results)
from icl_utils.stats import cluster_jackknife, mean_interval, paired_difference, pearson, spearman

sns.set_theme(style="whitegrid", context="notebook")
torch.set_grad_enabled(False)  # nothing is trained; the screen takes its one gradient inside log_prob_gradient


start = time.time()
info = iu.load_model(MODEL)
tok = info.tokenizer
rng = random.Random(SEED)
torch.manual_seed(SEED)
HEAD_K = max(1, round(HEAD_SHARE * info.n_total_heads))  # heads zeroed per set
K_SMALL, K_LARGE = min(OTHER_KS), max(OTHER_KS)  # the paper's 10 and 300
if not {K_SMALL, K_LARGE} <= set(NEURON_KS):
    raise ValueError(f"NEURON_KS {NEURON_KS} must include OTHER_KS's smallest and largest sizes ({K_SMALL}, {K_LARGE})")
info

# %% [markdown]
# ## The prompts: facts and in-context prompts the model gets right
#
# Attribution explains a prediction, so we attribute predictions that are right. **Facts**: the
# book's factual-recall set (`data/facts/`, one-word answers in ten categories) is run once; a
# prompt is kept when its expected answer is one token and the model's **top-1** next token (over
# the whole vocabulary). **In-context prompts**: the evaluation pool of the word task, foo/bar
# labels, built in demonstration sets as in chapters 1 and 3; a prompt is kept when its gold label
# word is the model's top-1 next token. The target word $w$ is then the model's own prediction.

# %%
def word(token_id: int) -> str:
    return repr(tok.decode([int(token_id)]))


facts = pd.read_json(FACTS, lines=True)
facts = facts if N_FACTS is None else facts.head(N_FACTS)
fact_ids = [tok(text)["input_ids"] for text in facts.prompt]
answer_ids = [tok(answer, add_special_tokens=False)["input_ids"] for answer in facts.answer]
fact_logits = next_token_logits(info, fact_ids)
facts["one token"] = [len(a) == 1 for a in answer_ids]
facts["rank"] = [int((z > z[a[0]]).sum()) + 1 if len(a) == 1 else None for z, a in zip(fact_logits, answer_ids)]
facts["right"] = facts["rank"] == 1
display(facts.groupby("category", sort=False).agg(prompts=("prompt", "size"), one_token=("one token", "sum"),
                                                  top1=("right", "sum"), top5=("rank", lambda r: int((r <= 5).sum())))
        .rename(columns={"one_token": "one-token answer", "top1": "right at top 1", "top5": "in top 5"}))
kept_facts = facts[facts.right].reset_index(drop=True)
print(f"{len(kept_facts)} of {len(facts)} factual prompts answered right at top 1 (in the top 5: {int((facts['rank'] <= 5).sum())})")

task = iu.load_task(ICL_TASK)
icl_prompts, icl_calibration = iu.design_prompts(task, ICL_GROUPS, ICL_QUERIES_PER_GROUP, DEMOS_PER_CLASS, pool="evaluation", seed=SEED)
icl_scores = iu.score_calibrated(info, icl_prompts, icl_calibration, share_prefix=True, progress=False)
LEARNS = "the clean model learns the task: calibrated accuracy's interval (evaluation pool) lies above 0.5"
learns = mean_interval(icl_scores.correct("prior").float().numpy(), icl_scores.demo_set)
print(f"in-context prompts: calibrated accuracy {learns} (raw {icl_scores.accuracy():.2f}): "
      f"the precondition {'holds' if learns.low > 0.5 else 'fails'}")
icl_batch = iu.encode_prompts(info, icl_prompts)
icl_ids = [icl_batch.input_ids[i, : n + 1].tolist() for i, n in enumerate(icl_batch.last_positions.tolist())]
label_ids = dict(zip(iu.FOO_BAR, iu.label_token_ids(tok, iu.FOO_BAR)))
icl_gold = [label_ids[p.label_words[p.gold]] for p in icl_prompts]
icl_logits = next_token_logits(info, icl_ids)
icl_right = [int(z.argmax()) == g for z, g in zip(icl_logits, icl_gold)]
kept_icl = [i for i, ok in enumerate(icl_right) if ok]
gold_words = pd.Series([icl_prompts[i].label_words[icl_prompts[i].gold] for i in kept_icl]).value_counts().to_dict()
print(f"{len(kept_icl)} of {len(icl_prompts)} in-context prompts have their gold label word as the top-1 token "
      f"(gold words among them: {gold_words})")

# the close-up below takes the first right prompt of each kind
icl_index = kept_icl[0] if kept_icl else None
if icl_index is None or kept_facts.empty:
    raise RuntimeError(f"{MODEL} gets no {'in-context' if icl_index is None else 'factual'} prompt right at top 1: "
                       "raise ICL_GROUPS or DEMOS_PER_CLASS, or add facts the model knows to FACTS.")
PROMPTS = ["ICL", "fact"]
prompt_ids = [icl_ids[icl_index], tok(kept_facts.prompt[0])["input_ids"]]
targets = torch.tensor([icl_gold[icl_index], tok(kept_facts.answer[0], add_special_tokens=False)["input_ids"][0]])
icl_prompt = icl_prompts[icl_index]
print(f"close-up ICL prompt: query {icl_prompt.query!r}, gold {icl_prompt.gold} -> "
      f"{icl_prompt.label_words[icl_prompt.gold]!r}, {len(prompt_ids[0])} tokens; target {word(targets[0])}")
print(f"close-up fact prompt: {kept_facts.prompt[0]!r}, {len(prompt_ids[1])} tokens; target {word(targets[1])}")

# %% [markdown]
# ## One traced forward pass
#
# Both prompts go through the model together, right-padded, and the trace keeps what every layer,
# head and neuron wrote at each prompt's last position, plus the attention patterns and values at
# every position (for the head-position split). Every score below is computed from this trace.

# %%
ids, mask, last = pad_right(tok, prompt_ids)
trace = iu.run_with_trace(
    info, ids, mask, last,
    record=("resid", "head_out", "attn_out", "attn", "qkv", "logits", "mlp_act", "mlp_out"),
)
L, H = info.n_layers, info.n_heads
final = trace.final_resid[:, 0]  # (2, d): the real final residual, where ln_f's scale is frozen
clean_logp = torch.log_softmax(trace.logits[:, 0], -1)[torch.arange(2), targets]
for i, name in enumerate(PROMPTS):
    print(f"{name}: p({word(targets[i])}) = {clean_logp[i].exp():.3f}")
check = A.target_log_probs(info, final[:, None], final, targets[:, None])[:, 0, 0]
print(f"log p(w | x^L) through the frozen ln_f equals the model's own: max difference {(check - clean_logp).abs().max():.1e}")

# %% [markdown]
# ## Layers and heads, all in one pass over the vocabulary
#
# Each attention block is scored against the residual stream entering its layer, $x^{l-1}$; each
# MLP block against $x^{l-1}$ plus that layer's attention output (what the MLP really adds to);
# each head against $x^{l-1}$, its vector being its slice of the output projection applied to its
# output (through Gemma's post-attention norm, frozen). All blocks and heads of both prompts share
# one pass over the unembedding: on a CPU, reading a large unembedding costs more than the
# arithmetic, so the components are batched, not scored layer by layer.

# %%
attn_bases = trace.stack("resid", 0)[:, :L]  # (2, L, d): x^{l-1}
mlp_bases = A.mlp_bases(info, trace)  # (2, L, d): x^{l-1} + attention output of layer l
attn_blocks = torch.stack([A.attention_block_output(info, trace, l)[:, 0] for l in range(L)], 1)
mlp_blocks = torch.stack([A.mlp_block_output(info, trace, l)[:, 0] for l in range(L)], 1)
head_vectors = torch.cat([A.head_contributions(info, trace, l)[:, 0] for l in range(L)], 1)  # (2, L*H, d)

components = pd.DataFrame(
    [{"kind": "attention block", "layer": l, "component": f"attn {l}"} for l in range(L)]
    + [{"kind": "MLP block", "layer": l, "component": f"mlp {l}"} for l in range(L)]
    + [{"kind": "head", "layer": l, "component": f"{l}.{h}"} for l in range(L) for h in range(H)]
)
bases = torch.cat([attn_bases, mlp_bases], 1)  # (2, 2L, d)
base_index = torch.cat([torch.arange(L), L + torch.arange(L), torch.arange(L).repeat_interleave(H)])
vectors = torch.cat([attn_blocks, mlp_blocks, head_vectors], 1)  # (2, 2L + L*H, d)
t0 = time.time()
scores = A.attribution_scores(info, bases, vectors, final, targets, base_index=base_index)
real_norm = A.renormalised_log_prob_increase(info, bases, vectors, targets, base_index=base_index)
print(f"{vectors.shape[1]} components x 2 prompts scored three ways, and once with the real ln_f: {time.time() - t0:.1f} s")
scored = pd.concat([
    components.assign(prompt=name, **{"log-prob increase": scores["log_prob"][i].numpy(),
                                      "prob increase": scores["prob"][i].numpy(), "DLA": scores["logit"][i].numpy(),
                                      "real ln_f": real_norm[i].numpy()})
    for i, name in enumerate(PROMPTS)
], ignore_index=True)
head_scores = {key: values[:, 2 * L :].reshape(2, L, H) for key, values in scores.items()}  # (2, L, H) each

# %%
blocks = scored[scored.kind != "head"]
fig, axes = plt.subplots(1, 2, figsize=(13, 3.6), sharey=True)
for ax, (i, name) in zip(axes, enumerate(PROMPTS)):
    sns.barplot(data=blocks[blocks.prompt == name], x="layer", y="log-prob increase", hue="kind", ax=ax,
                palette=["C0", "C1"])
    ax.axhline(0, color="black", lw=0.8)
    ax.set_title(f"{name} prompt: target {word(targets[i])}")
    ax.tick_params(axis="x", labelsize=8)
    ax.legend(fontsize=8)
fig.suptitle(f"{MODEL}: log-probability increase of each layer's attention and MLP block", y=1.02)
plt.tight_layout()
plt.show()
for name in PROMPTS:
    part = blocks[blocks.prompt == name].nlargest(3, "log-prob increase")
    print(f"{name}: largest blocks " + ", ".join(f"{r['component']} ({r['log-prob increase']:+.2f})" for _, r in part.iterrows()))

# %%
fig, axes = plt.subplots(1, 2, figsize=(8, 0.3 * L + 1.6))
for ax, (i, name) in zip(axes, enumerate(PROMPTS)):
    values = head_scores["log_prob"][i].numpy()
    sns.heatmap(values, ax=ax, cmap="RdBu_r", center=0, annot=True, fmt=".1f", annot_kws={"fontsize": 6},
                cbar_kws={"shrink": 0.6})
    ax.set_title(f"{name}: target {word(targets[i])}", fontsize=10)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
fig.suptitle("log-probability increase of every head", y=1.0)
plt.tight_layout()
plt.show()
for i, name in enumerate(PROMPTS):
    print(f"{name}: top heads " + ", ".join(
        f"{l}.{h} ({head_scores['log_prob'][i, l, h]:+.2f})" for l, h in top_heads(head_scores["log_prob"][i], 5)))

# %% [markdown]
# ### Exercise: the log-probability increase
#
# Implement $\mathrm{Imp}(v) = \log p(w \mid h + v) - \log p(w \mid h)$ for several components at
# once. You are given `to_logits(x)`, which maps residual vectors `x` (batch, ..., d_model) to
# next-token logits the way this chapter does (final norm frozen at each prompt's real final
# residual, then the unembedding: `icl_utils.exercises.frozen_logits`). What is left is the part
# that makes this score differ from the logit: the softmax over the *whole* vocabulary, read at the
# target word, with and without $v$. The check compares your function with
# `icl_utils.attribution.log_prob_increase` on the heads of the layer that holds the top head, for
# both prompts. (The solution is in the next cell: on the web page, click to show it.)

# %%
from icl_utils.exercises import check_log_prob_increase


def my_log_prob_increase(to_logits, base, vectors, targets):
    """base: (batch, d_model) the residual h; vectors: (batch, n, d_model) the components v;
    targets: (batch,) the target word ids w. Returns (batch, n)."""
    raise NotImplementedError  # your code


ex_layer = top_heads(head_scores["log_prob"][0], 1)[0][0]
ex_inputs = (attn_bases[:, ex_layer], head_vectors[:, ex_layer * H : (ex_layer + 1) * H], final, targets)
check_log_prob_increase(my_log_prob_increase, info, *ex_inputs)

# %% tags=["hide-input"]
# Solution
def solution_log_prob_increase(to_logits, base, vectors, targets):
    rows = torch.arange(len(targets))
    with_v = torch.log_softmax(to_logits(base[:, None] + vectors), -1)[rows, :, targets]  # (batch, n)
    without = torch.log_softmax(to_logits(base), -1)[rows, targets]  # (batch,)
    return with_v - without[:, None]


assert check_log_prob_increase(solution_log_prob_increase, info, *ex_inputs)

# %% [markdown]
# ## What freezing the final norm changes
#
# Without the linearisation, $p(w \mid h)$ applies the real final norm to $h$ itself. The same
# components, scored that way:

# %%
linear = {}
for name in PROMPTS:
    part = scored[scored.prompt == name]
    deep = part[part.layer >= L // 2]
    linear[name] = {
        "spearman": spearman(part["log-prob increase"], part["real ln_f"]),
        "spearman_deep": spearman(deep["log-prob increase"], deep["real ln_f"]),
        "top5_overlap": len(set(part.nlargest(5, "log-prob increase").component) & set(part.nlargest(5, "real ln_f").component)),
        "top_real": part.nlargest(1, "real ln_f").iloc[0],
    }
fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
for ax, name in zip(axes, PROMPTS):
    part = scored[scored.prompt == name]
    sns.scatterplot(data=part, x="log-prob increase", y="real ln_f", hue="layer", style="kind", palette="viridis",
                    ax=ax, s=30)
    ax.set_yscale("symlog", linthresh=1)
    ax.set_xlabel("log-prob increase, ln_f frozen at the final residual")
    ax.set_ylabel("... with the real ln_f (symlog)")
    ax.set_title(f"{name}: Spearman {linear[name]['spearman']:.2f} (layers >= {L // 2}: {linear[name]['spearman_deep']:.2f})",
                 fontsize=10)
    ax.legend(fontsize=6, ncol=2)
plt.tight_layout()
plt.show()

x0 = attn_bases[:, 0]  # the embeddings: the residual stream entering layer 0
z0 = torch.log_softmax(info.logits_from_residual(x0).float(), -1)
rms = lambda x: x.pow(2).mean(-1).sqrt()  # noqa: E731
for i, name in enumerate(PROMPTS):
    top = linear[name]["top_real"]
    print(f"{name}: with the real ln_f the top component is {top['component']} ({top['real ln_f']:+.0f} nats; frozen: "
          f"{top['log-prob increase']:+.2f}); top-5 overlap with the frozen ranking {linear[name]['top5_overlap']}/5.")
    print(f"   The embedding alone, normalised, predicts {word(z0[i].argmax())} (p = {z0[i].max().exp():.2f}) and gives the "
          f"target log p = {z0[i, targets[i]]:.0f}; its RMS is {rms(x0[i]):.1f} against {rms(final[i]):.1f} at the end.")

# %% [markdown]
# The real norm rescales $h$ by its own size, whatever that size is. Early in the model the
# residual stream is little more than the token embedding; normalised and unembedded, it can
# predict the input token itself with near certainty (the lines above show what it predicts here,
# and how far below zero that puts $\log p(w \mid h)$), and then almost anything added to it looks
# like a large gain. Freezing the scale at the final residual measures every component on the
# scale at which the prediction is actually made, and makes the scores additive and cheap. Deep in
# the model, where $h$ is already close to the final residual, the two versions can be compared
# more fairly (the Spearman correlation in brackets above). We keep the authors' linearisation.

# %% [markdown]
# ## Head and source position
#
# At the last position $T$, head $h$ writes $\sum_p \alpha_{T,p} W_O^h v_p$: a sum over the
# positions it reads. Each term is a vector in the residual stream, scored like any other. We score
# every head-position pair to first order (the gradient of $\log p(w \mid x)$ at the head's layer,
# dotted with the term, as for the neuron screen below) and, for the top heads of each prompt,
# every pair exactly.

# %%
position_terms = {l: A.head_position_contributions(info, trace, l) for l in range(L)}  # (2, H, seq, d)
split_error = max((position_terms[l].sum(2) - head_vectors[:, l * H : (l + 1) * H]).abs().max().item()
                  for l in range(L))
print(f"per-position terms sum to each head's vector: max difference {split_error:.1e}")
attn_grads = A.log_prob_gradient(info, attn_bases, final, targets)  # (2, L, d)
first_order = torch.stack([torch.einsum("bhpd,bd->bhp", position_terms[l], attn_grads[:, l]) for l in range(L)], 1)

position_exact = {}  # (prompt, layer, head) -> (n_tokens,) exact log-prob increase per source position
for i, name in enumerate(PROMPTS):
    n_tok = len(prompt_ids[i])
    heads = top_heads(head_scores["log_prob"][i], N_POSITION_HEADS)
    terms = torch.cat([position_terms[l][i : i + 1, h, :n_tok] for l, h in heads], 1)  # (1, heads * n_tok, d)
    index = torch.tensor([l for l, _ in heads]).repeat_interleave(n_tok)
    exact = A.attribution_scores(info, attn_bases[i : i + 1], terms, final[i : i + 1], targets[i : i + 1],
                                 base_index=index)["log_prob"][0]
    for j, (l, h) in enumerate(heads):
        position_exact[(name, l, h)] = exact[j * n_tok : (j + 1) * n_tok]
pairs = np.array([(e, first_order[PROMPTS.index(n), l, h, p].item())
                  for (n, l, h), ex in position_exact.items() for p, e in enumerate(ex.tolist())])
pair_pearson = pearson(pairs[:, 0], pairs[:, 1])
n_pairs = sum(L * H * len(x) for x in prompt_ids)
print(f"{n_pairs:,} head-position pairs scored to first order; on the {len(pairs)} pairs of the top heads, "
      f"first-order vs exact Pearson {pair_pearson:.3f}")

# %%
def token_labels(i: int) -> list:
    return [tok.decode([t]).replace("\n", "\\n") for t in prompt_ids[i]]


label_positions = icl_batch.label_positions[icl_index]
label_words_at = {p: icl_prompt.label_words[c] for p, c in zip(label_positions, icl_batch.label_classes[icl_index])}
fig, axes = plt.subplots(len(position_exact), 1, figsize=(14, 1.9 * len(position_exact)), gridspec_kw={"hspace": 1.2})
for ax, ((name, l, h), exact) in zip(axes, position_exact.items()):
    i = PROMPTS.index(name)
    labels = token_labels(i)
    colors = ["C3" if label_words_at.get(p) == iu.FOO_BAR[0] else "C0" if p in label_words_at else "C7"
              for p in range(len(labels))] if name == "ICL" else ["C7"] * len(labels)
    ax.bar(range(len(labels)), exact.numpy(), color=colors)
    ax.axhline(0, color="black", lw=0.6)
    ax.grid(axis="x", visible=False)
    ax.set_xlim(-0.5, len(labels) - 0.5)
    ticks = range(len(labels)) if name != "ICL" else sorted(set(label_words_at) | set(exact.topk(3).indices.tolist())
                                                             | {len(labels) - 1})
    ax.set_xticks(list(ticks), [f"{labels[p]}" for p in ticks], rotation=90, fontsize=7)
    ax.set_title(f"{name}: head {l}.{h} (whole head {head_scores['log_prob'][i, l, h]:+.2f})"
                 + ("; red/blue: foo/bar label positions" if name == "ICL" else ""), fontsize=9)
    ax.set_ylabel("log-prob inc.", fontsize=8)
fig.suptitle("exact log-probability increase of each source position's share of the top heads", y=0.93)
plt.show()

target_word = tok.decode([int(targets[0])]).strip()
same = [p for p, w in label_words_at.items() if w == target_word]  # label positions holding the target word
other = [p for p, w in label_words_at.items() if w != target_word]
icl_heads = [(ex.clamp(min=0), ex.clamp(min=0).sum()) for (name, _, _), ex in position_exact.items() if name == "ICL"]
label_share = float(np.mean([(pos[label_positions].sum() / total).item() for pos, total in icl_heads]))
same_share = float(np.mean([(pos[same].sum() / total).item() for pos, total in icl_heads]))
other_share = float(np.mean([(pos[other].sum() / total).item() for pos, total in icl_heads]))
display(pd.DataFrame([
    {"prompt": name, "head": f"{l}.{h}", "head score": head_scores["log_prob"][PROMPTS.index(name), l, h].item(),
     "top source positions": ", ".join(f"{p} {token_labels(PROMPTS.index(name))[p]!r} ({ex[p]:+.2f})"
                                       for p in ex.topk(3).indices.tolist())}
    for (name, l, h), ex in position_exact.items()
]).round(2))
print(f"ICL prompt, top {N_POSITION_HEADS} heads: {label_share:.0%} of their positive per-position score sits on the "
      f"{len(label_positions)} label positions, which are {len(label_positions) / len(prompt_ids[0]):.0%} of the positions: "
      f"{same_share:.0%} on the {len(same)} positions labelled {target_word!r}, {other_share:.0%} on the {len(other)} others.")

# %% [markdown]
# ## Neurons: a first-order screen, then exact scores
#
# Every neuron's subvalue $m_k\,\mathrm{fc2}_k$ (through Gemma's post-MLP norm, frozen) is screened
# by its dot product with the gradient of $\log p(w \mid x)$ at its MLP's base. We then score
# exactly the screen's top candidates, for log-probability increase and for probability increase
# (whose screen is $p(w \mid h)(e^{\text{screen}} - 1)$), plus a random sample of neurons that
# tells us how good the screen is. DLA is exact for every neuron: one dot product each.

# %%
t0 = time.time()
d_ff, n_total = info.d_ff, L * info.d_ff
screen = A.neuron_screen(info, trace, targets)  # (2, L, d_ff)
base_logp = A.target_log_probs(info, mlp_bases, final, targets[:, None])[..., 0]  # (2, L): log p(w | h), each MLP's base
screen_prob = base_logp.exp()[..., None] * torch.expm1(screen)
dla = torch.stack([A.direct_logit_attribution(info, A.neuron_contributions(info, trace, l)[:, 0], final, targets)
                   for l in range(L)], 1)  # (2, L, d_ff)
screen_seconds = time.time() - t0

sample = torch.randperm(n_total, generator=torch.Generator().manual_seed(SEED))[:N_NEURON_SAMPLE]
exact = {key: torch.full((2, n_total), float("nan")) for key in ("log_prob", "prob")}  # flat index l * d_ff + k
candidates, n_scored = [], 0
t0 = time.time()
for i, name in enumerate(tqdm(PROMPTS, desc="exact neuron scores")):
    chosen = torch.cat([screen[i].flatten().topk(N_NEURON_EXACT).indices,
                        screen_prob[i].flatten().topk(N_NEURON_EXACT).indices]).unique()
    candidates.append(chosen)
    todo = torch.cat([chosen, sample]).unique()  # sorted, so grouped by layer
    n_scored += len(todo)
    subvalues = torch.cat([A.neuron_contributions(info, trace, l, todo[todo // d_ff == l] % d_ff)[i : i + 1, 0]
                           for l in range(L)], 1)  # (1, n, d)
    result = A.attribution_scores(info, mlp_bases[i : i + 1], subvalues, final[i : i + 1], targets[i : i + 1],
                                  base_index=todo // d_ff)
    for key in exact:
        exact[key][i, todo] = result[key][0]
exact_seconds = time.time() - t0
print(f"screen and DLA of all {n_total:,} neurons: {screen_seconds:.1f} s; exact scores of "
      f"{' and '.join(str(len(c)) for c in candidates)} candidates plus {N_NEURON_SAMPLE} random neurons: {exact_seconds:.1f} s")
print(f"(scoring all {n_total:,} neurons exactly would take {2 * n_total * info.d_model * info.vocab_size / 1e12:.0f} "
      f"TFLOP per prompt, about {n_total * exact_seconds / n_scored / 60:.0f} minutes at the speed just measured)")

# %% [markdown]
# How good is the screen? On the random sample (an unbiased draw of all neurons) we compare its
# ranking with the exact one; on the candidates, its values; and we count sample neurons that the
# screen left out although their exact score would have put them among the top $k$ (with $k$ the
# smallest set size zeroed below). The screen's own top $k$ is compared with the exact top $k$.

# %%
k_small = min(NEURON_KS)
screen_check = []
for i, name in enumerate(PROMPTS):
    s, e = screen[i].flatten()[sample], exact["log_prob"][i, sample]
    bar = exact["log_prob"][i, candidates[i]].topk(k_small).values.min()  # lowest score of the exact top k
    screened_in = set(candidates[i].tolist())
    missed = sum(1 for n in sample.tolist() if exact["log_prob"][i, n] >= bar and n not in screened_in)
    screen_check.append({
        "prompt": name,
        "Spearman, random sample": spearman(s, e),
        "Pearson, random sample": pearson(s, e),
        "Pearson, candidates": pearson(screen[i].flatten()[candidates[i]], exact["log_prob"][i, candidates[i]]),
        f"sample neurons above the exact top-{k_small} bar, not screened in": missed,
        f"screen top-{k_small} shared with exact top-{k_small}": len(
            set(screen[i].flatten().topk(k_small).indices.tolist())
            & set(exact["log_prob"][i].nan_to_num(float("-inf")).topk(k_small).indices.tolist())),
    })
screen_check = pd.DataFrame(screen_check)
display(screen_check.round(3))

fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
for ax, (i, name) in zip(axes, enumerate(PROMPTS)):
    ax.scatter(screen[i].flatten()[sample], exact["log_prob"][i, sample], s=6, alpha=0.5, label=f"{N_NEURON_SAMPLE} random neurons")
    ax.scatter(screen[i].flatten()[candidates[i]], exact["log_prob"][i, candidates[i]], s=6, alpha=0.5, color="C3",
               label="screened candidates")
    lim = [np.nanmin(exact["log_prob"][i].numpy()), np.nanmax(exact["log_prob"][i].numpy())]
    ax.plot(lim, lim, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("first-order screen")
    ax.set_ylabel("exact log-prob increase")
    ax.set_title(f"{name}: target {word(targets[i])}", fontsize=10)
    ax.legend(fontsize=7)
plt.tight_layout()
plt.show()

# %% [markdown]
# The ten neurons with the largest exact log-probability increase, and what each subvalue
# promotes: the words whose logits it raises most (through the frozen final norm).

# %%
def neuron_table(i: int, n: int = 10) -> pd.DataFrame:
    top = exact["log_prob"][i].nan_to_num(float("-inf")).topk(n).indices
    subs = torch.cat([A.neuron_contributions(info, trace, int(f) // d_ff, torch.tensor([int(f) % d_ff]))[i : i + 1, 0]
                      for f in top], 1)  # (1, n, d)
    promoted = A.vocab_logits(info, subs, final[i : i + 1])[0].topk(6).indices  # (n, 6)
    return pd.DataFrame([
        {"neuron": f"L{int(f) // d_ff}.N{int(f) % d_ff}", "activation": trace.mlp_act[int(f) // d_ff][i, 0, int(f) % d_ff].item(),
         "log-prob inc.": exact["log_prob"][i, f].item(), "prob inc.": exact["prob"][i, f].item(),
         "DLA": dla[i].flatten()[f].item(), "promotes": " ".join(word(t) for t in words)}
        for f, words in zip(top, promoted)
    ])


for i, name in enumerate(PROMPTS):
    print(f"{name} prompt, target {word(targets[i])}:")
    display(neuron_table(i).round(3))

# %% [markdown]
# ## Three rankings of the same components
#
# For heads all three scores are exact for every head; for neurons we compare them on the random
# sample, where all three are exact. Probability increase is log-probability increase re-weighted
# by the layer's $p(w \mid h)$, so the two agree within a layer and part ways across layers.

# %%
def head_rankings(i: int) -> dict:
    return {"log-prob increase": head_scores["log_prob"][i], "prob increase": head_scores["prob"][i],
            "DLA": head_scores["logit"][i]}


def neuron_rankings(i: int) -> dict:
    """Flat (L * d_ff) scores; neurons not scored exactly are NaN and never chosen."""
    return {"log-prob increase": exact["log_prob"][i], "prob increase": exact["prob"][i], "DLA": dla[i].flatten()}


def top_neurons(values: torch.Tensor, k: int) -> list:
    return values.nan_to_num(float("-inf")).topk(k).indices.tolist()


agreement_rows = []
for i, name in enumerate(PROMPTS):
    units = {"heads (all)": {k: v.flatten() for k, v in head_rankings(i).items()},
             "neurons (random sample)": {k: v[sample] for k, v in neuron_rankings(i).items()}}
    for unit, v in units.items():
        for other in ("prob increase", "DLA"):
            agreement_rows.append({"prompt": name, "components": unit, "vs log-prob increase": other,
                                   "Spearman": spearman(v["log-prob increase"], v[other])})
display(pd.DataFrame(agreement_rows).pivot_table(index=["prompt", "components"], columns="vs log-prob increase",
                                                 values="Spearman").round(3))

where_rows = []
for i, name in enumerate(PROMPTS):
    for ranking in ("log-prob increase", "prob increase", "DLA"):
        top_n = top_neurons(neuron_rankings(i)[ranking], k_small)
        where_rows.append({
            "prompt": name, "ranking": ranking,
            f"top-{k_small} neurons: mean layer": np.mean([f // d_ff for f in top_n]),
            f"top-{k_small} neurons shared with log-prob": len(set(top_n) & set(top_neurons(exact["log_prob"][i], k_small))),
            f"top-{HEAD_K} heads": ", ".join(f"{l}.{h}" for l, h in top_heads(head_rankings(i)[ranking], HEAD_K)),
        })
display(pd.DataFrame(where_rows).round(1))

# %% [markdown]
# ## Many prompts: the claims, declared before any number
#
# The close-up shows what the scores look like; whether they pick the components that matter is a
# question about many prompts. Each claim below is graded separately on the factual prompts and on
# the in-context prompts. Every prompt gets its own rankings (the paper's protocol: a prediction's
# own top neurons are zeroed in that prediction), so nothing that chooses is graded elsewhere.
# Every prompt draws its own random sets (so over a hundred prompts the controls are hundreds of
# different sets), and each claim compares a prompt's chosen set with the mean of its random sets,
# so leaving a prompt out of the interval leaves its random sets out too. Every interval is a
# Student-t interval on the units (G - 1 degrees of freedom, delete-one-unit jackknife standard
# error); the unit is the prompt for facts and the demonstration set for in-context prompts.
#
# Each paper claim has one **primary** row, on the factual prompts (the paper's data): 1. the
# top-10 neurons against random ones, 2. the top-300 removing most of the MRR, 3. query neurons
# driving their value neuron's activation (the paper's mechanism; the effect on the target is the
# consequence its case studies show), 4. additivity, 5. heads. The primary rows' verdicts are
# Holm-corrected together; every other row, and every row on the in-context prompts, is
# exploratory. The rows graded on probability ("1p.") were added after an earlier run showed the
# in-context MRR at its ceiling, so they are marked **post hoc**.

# %%
PAPER_MRR = "top-10 neurons zeroed: GPT2-large MRR 0.361 -> 0.201 (p 7.1% -> 3.4%), Llama-7B 0.551 -> 0.312 (21.5% -> 9.2%)"
PRECONDITION = {"facts": "at least 100 factual prompts answered right at top 1", "ICL": LEARNS}
KINDS = {"facts": "facts", "ICL": f"ICL ({ICL_TASK})"}
UNIT = {"facts": "prompt", "ICL": "demonstration set"}
RANKING_NOTE = ("log-prob and prob increase exact for each screen's top {n} neurons, then in screen order; "
                "DLA, norm, activation exact for every neuron").format(n=N_EXACT)


def specs_for(kind: str) -> dict:
    unit, pre = UNIT[kind], PRECONDITION[kind]
    specs = {
        "1. top neurons vs random": ClaimSpec(
            claim=f"Zeroing the top-{K_SMALL} FFN neurons by log-probability increase lowers the target's MRR; random ones do not",
            paper=PAPER_MRR + "; random sets barely change it", metric=f"MRR, top-{K_SMALL} log-prob neurons zeroed minus random {K_SMALL} zeroed",
            direction="decrease", smallest_effect=0.05, smallest_effect_reason="a third of the paper's smallest drop (0.16)",
            control=f"{N_RANDOM} random sets of {K_SMALL} neurons per prompt", unit=unit, precondition=pre, primary=True),
    }
    for other in ("prob increase", "DLA", "norm", "activation"):
        specs[f"1. log-prob vs {other}"] = ClaimSpec(
            claim=f"Log-probability increase picks neurons that matter more than {other} does",
            paper="log-prob increase lowers MRR and probability most among the rankings compared (GPT2-large, Llama-7B)",
            metric=f"MRR, top-{K_SMALL} log-prob neurons zeroed minus top-{K_SMALL} {other} neurons zeroed", direction="decrease",
            smallest_effect=0.02, smallest_effect_reason="two points of MRR: a smaller gap would not change which ranking to use",
            control=f"the top-{K_SMALL} by {other}, same prompts", unit=unit, precondition=pre)
    specs["1p. top neurons vs random"] = ClaimSpec(
        claim=f"... and the target's probability (the paper's second measure): top-{K_SMALL} log-prob neurons vs random",
        paper=PAPER_MRR, metric=f"target probability, top-{K_SMALL} log-prob neurons zeroed minus random {K_SMALL} zeroed",
        direction="decrease", smallest_effect=0.02, smallest_effect_reason="two points of probability (the paper's drop: 3.7 points)",
        control=f"{N_RANDOM} random sets of {K_SMALL} neurons per prompt", unit=unit, precondition=pre, post_hoc=True)
    for other in ("prob increase", "DLA", "norm", "activation"):
        specs[f"1p. log-prob vs {other}"] = ClaimSpec(
            claim=f"... by probability: log-probability increase vs {other}",
            paper="log-prob increase lowers MRR and probability most among the rankings compared (GPT2-large, Llama-7B)",
            metric=f"target probability, top-{K_SMALL} log-prob neurons zeroed minus top-{K_SMALL} {other} neurons zeroed",
            direction="decrease", smallest_effect=0.02, smallest_effect_reason="two points of probability",
            control=f"the top-{K_SMALL} by {other}, same prompts", unit=unit, precondition=pre, post_hoc=True)
    specs["2. top neurons remove most"] = ClaimSpec(
        claim=f"Zeroing the top-{K_LARGE} neurons removes most of the MRR", paper="top 300: about 96% of the MRR removed (GPT2-large, Llama-7B)",
        metric=f"share of the clean MRR removed by zeroing the top-{K_LARGE} log-prob neurons", direction="increase",
        smallest_effect=0.5, smallest_effect_reason="'most': more than half", control="the clean MRR (nothing removed)",
        unit=unit, precondition=pre, primary=True)
    specs["2. random neurons do little"] = ClaimSpec(
        claim=f"Random {K_LARGE} neurons do little", paper="random neuron sets barely change the MRR",
        metric=f"clean MRR minus MRR with {K_LARGE} random neurons zeroed", direction="equivalent", smallest_effect=0.05,
        smallest_effect_reason="within five points of MRR: 'little' beside a 96% drop", control=f"{N_RANDOM} random sets of {K_LARGE} per prompt",
        unit=unit, precondition=pre)
    specs["3. query neurons: activation"] = ClaimSpec(
        claim="Top query neurons (inner product with a value neuron's key) drive that value neuron",
        paper="query neurons found by their inner product with the value neuron's key activate it",
        metric=f"value neuron's activation change (share of its clean size, in its helpful direction): top-{N_QUERY} query neurons "
               f"zeroed minus random {N_QUERY} lower-layer neurons", direction="decrease", smallest_effect=0.1,
        smallest_effect_reason="a tenth of the neuron's activation", control=f"{N_RANDOM} random sets of {N_QUERY} lower-layer neurons per prompt",
        unit=unit, precondition=pre, primary=True)
    specs["3. query neurons: target"] = ClaimSpec(
        claim="Zeroing the top query neurons lowers the target's probability more than random ones",
        paper="zeroing query neurons lowers the prediction (their case studies)",
        metric=f"target log-probability change (nats): top-{N_QUERY} query neurons zeroed minus random {N_QUERY} lower-layer neurons",
        direction="decrease", smallest_effect=0.1, smallest_effect_reason="a tenth of a nat, about a 10% drop in probability",
        control=f"{N_RANDOM} random sets of {N_QUERY} lower-layer neurons per prompt", unit=unit, precondition=pre)
    specs["4. log-prob is more additive"] = ClaimSpec(
        claim="Log-probability increase is closer to additive over components than probability increase",
        paper="why the paper scores by log-probability: it adds up over components, probability does not",
        metric=(f"additivity error of probability minus that of log-probability (|joint - sum of singles| / (|joint| + |sum|), "
                f"{N_SUBSETS} subsets of {SUBSET_SIZE} of each prompt's top-{N_ADDITIVE} DLA neurons removed from the final residual)"),
        direction="increase", smallest_effect=0.05, smallest_effect_reason="five points on a 0-1 error scale",
        control="the same subsets scored by probability", unit=unit, precondition=pre, primary=True)
    specs["5. heads"] = ClaimSpec(
        claim="The same score ranks attention heads by how much they matter",
        paper="head log-prob increase locates the heads that matter (Llama-7B, GPT-J)",
        metric=f"MRR, top-{HEAD_K} heads by log-prob increase zeroed ({HEAD_SHARE:.0%} of heads) minus random {HEAD_K} heads zeroed",
        direction="decrease", smallest_effect=0.05, smallest_effect_reason="as for neurons",
        control=f"{N_RANDOM} random head sets of {HEAD_K} per prompt", unit=unit, precondition=pre, primary=True)
    return specs


SPECS = specs_for("facts")
display(declared_claims_table(SPECS))
print(f"Rankings of the neurons: {RANKING_NOTE}. In-context prompts: the same claims, over demonstration sets, all exploratory.")

# %% [markdown]
# ## Scoring and zeroing, prompt by prompt
#
# Prompts run in batches of `BATCH` through one traced pass each. From the trace: every head's
# four rankings (`attribution.score_heads`), every neuron's five (`attribution.score_neurons`):
# exact log-probability and probability increases for the best candidates of a first-order
# screen, exact DLA, norm and activation for all. Then a **value
# neuron** per prompt (its best neuron by log-probability increase, in layer 2 or above) whose
# **query neurons** are the lower-layer neurons with the largest key·subvalue
# (`attribution.neuron_keys`, `attribution.query_scores`). Then each prompt's whole set of
# ablations (each ranking's top sets, the random sets, the query neurons and their controls:
# about a hundred) replays the prompt's last token once per ablation over its cached keys and
# values, the copies packed side by side after the prefix; the whole batch of prompts takes one such
# step (`attribution.zeroing_sweeps_hidden`), which also reads each row's value-neuron activation.
# The target's log-probability and rank in every row, with the additivity test's and the screen
# check's rows, then come from one pass over the unembedding (`attribution.unembedded_log_probs`).

# %%
n_total = L * d_ff
all_heads = [(l, h) for l in range(L) for h in range(H)]


def neurons_by_layer(flat) -> dict:
    out = {}
    for f in map(int, flat):
        out.setdefault(f // d_ff, []).append(f % d_ff)
    return out


def settings_for(neurons: A.ComponentScores, heads: A.ComponentScores, row: int, query_support: torch.Tensor,
                 value_layer: int, draw_rng: random.Random) -> list:
    """(components, ranking, k, draw, heads, neurons) for every ablation of one prompt; the first is the clean row."""
    scores = neurons
    out = [("none", "clean", 0, 0, [], [])]
    for ranking in A.NEURON_RANKINGS:
        order = scores.order(ranking, row)
        for k in NEURON_KS if ranking == "log-prob increase" else OTHER_KS:
            out.append(("neurons", ranking, k, 0, [], order[:k].tolist()))
    out += [("neurons", "random", k, d, [], draw_rng.sample(range(n_total), k)) for k in OTHER_KS for d in range(N_RANDOM)]
    for ranking in A.HEAD_RANKINGS:
        out.append(("heads", ranking, HEAD_K, 0, [divmod(int(i), H) for i in heads.order(ranking, row)[:HEAD_K]], []))
    out += [("heads", "random", HEAD_K, d, draw_rng.sample(all_heads, HEAD_K), []) for d in range(N_RANDOM)]
    out.append(("query", "query score", N_QUERY, 0, [], query_support[row].nan_to_num(float("-inf")).topk(N_QUERY).indices.tolist()))
    lower = range(value_layer * d_ff)  # neurons below the value neuron's layer
    out += [("query", "random", N_QUERY, d, [], draw_rng.sample(lower, N_QUERY)) for d in range(N_RANDOM)]
    return out


def removed_from_final(subvalues: torch.Tensor, subsets: list) -> torch.Tensor:
    """What the additivity test removes from the final residual: each subvalue alone, then each subset together."""
    return torch.cat([subvalues, torch.stack([subvalues[list(s)].sum(0) for s in subsets])])


def additivity_errors(logp: torch.Tensor, n_single: int, subsets: list) -> dict:
    """From log p(w) at the final residual (logp[0]) and with each removal of removed_from_final (ln_f frozen
    there): the additivity error of the log-probability and of the probability lost."""
    logp = logp.double()
    errors = {}
    for measure, f in {"log-prob": lambda x: x, "prob": torch.exp}.items():
        lost = f(logp[0]) - f(logp[1:])
        single, joint = lost[:n_single], lost[n_single:]
        total = torch.stack([single[list(s)].sum() for s in subsets])
        errors[measure] = ((joint - total).abs() / (joint.abs() + total.abs()).clamp_min(1e-12)).mean().item()
    return errors


def run_kind(kind: str, id_lists: list, target_ids: list, units: list) -> tuple:
    rows, extra = [], []
    check_rows = set(random.Random(SEED).sample(range(len(id_lists)), min(N_CHECK_PROMPTS, len(id_lists))))
    for begin in tqdm(range(0, len(id_lists), BATCH), desc=f"{kind} prompts"):
        chunk, tgt = id_lists[begin : begin + BATCH], torch.tensor(target_ids[begin : begin + BATCH])
        ids, mask, last = pad_right(tok, chunk)
        trace = iu.run_with_trace(info, ids, mask, last, record=("resid", "head_out", "attn_out", "mlp_in", "mlp_act", "mlp_out"))
        final = trace.final_resid[:, 0]
        head_scores_ = A.score_heads(info, trace, tgt, n_exact=N_EXACT_HEADS)
        scores = A.score_neurons(info, trace, tgt, n_exact=N_EXACT)
        if L < 3:
            raise ValueError(f"{MODEL} has {L} layers: query neurons need a value neuron in layer 2 or above")
        value = torch.stack([next(f for f in scores.order("log-prob increase", r) if f // d_ff >= 2)
                             for r in range(len(chunk))])  # each prompt's best neuron in layer 2 or above
        value_layer, value_neuron = value // d_ff, value % d_ff
        keys, value_act = A.neuron_keys(info, trace, value_layer, value_neuron)
        support = A.query_scores(info, trace, keys, value_layer) * value_act.sign()[:, None]
        settings = [settings_for(scores, head_scores_, r, support, int(value_layer[r]), random.Random(f"{SEED}-{kind}-{begin + r}"))
                    for r in range(len(chunk))]
        # every prompt's sweep in one packed pass; its rows, the additivity removals and the screen checks
        # are then unembedded together (many rows per product)
        hidden, watched = A.zeroing_sweeps_hidden(info, chunk, [[s[4] for s in st] for st in settings],
                                                  [[neurons_by_layer(s[5]) for s in st] for st in settings],
                                                  watches=list(zip(value_layer.tolist(), value_neuron.tolist())))
        readout_rows, readout_targets = [hidden], [tgt.repeat_interleave(torch.tensor([len(st) for st in settings]))]
        subsets_, checks = [], {}
        for r in range(len(chunk)):
            prompt = begin + r
            top_dla = scores.dla[r].topk(N_ADDITIVE).indices
            subvalues = torch.cat([A.neuron_contributions(info, trace, int(f) // d_ff, torch.tensor([int(f) % d_ff]))[r, 0]
                                   for f in top_dla])
            draw_rng = np.random.default_rng([SEED, prompt])
            subsets_.append([draw_rng.choice(N_ADDITIVE, SUBSET_SIZE, replace=False) for _ in range(N_SUBSETS)])
            points = torch.cat([final[r][None], final[r][None] - removed_from_final(subvalues, subsets_[-1])])
            readout_rows.append(A.final_norm_inputs(info, points[None], final[r : r + 1])[0])
            readout_targets.append(tgt[r].repeat(len(points)))
            if prompt in check_rows:  # the screen against exact scores, on random neurons
                sample = torch.randperm(n_total, generator=torch.Generator().manual_seed(SEED + prompt))[:N_CHECK_NEURONS]
                layers_ = sample // d_ff
                order_ = layers_.argsort()
                sample, layers_ = sample[order_], layers_[order_]
                subs = torch.cat([A.neuron_contributions(info, trace, int(l), sample[layers_ == l] % d_ff)[r : r + 1, 0]
                                  for l in layers_.unique()], 1)
                bases_ = A.mlp_bases(info, trace)[r : r + 1]
                points = torch.cat([bases_[:, layers_] + subs, bases_], 1)  # each neuron on its base, then the bases
                readout_rows.append(A.final_norm_inputs(info, points, final[r : r + 1])[0])
                readout_targets.append(tgt[r].repeat(points.shape[1]))
                checks[r] = (sample, layers_)
        log_p_all, rank_all = A.unembedded_log_probs(info, torch.cat(readout_rows), torch.cat(readout_targets), rank=True)
        at = 0
        for r in range(len(chunk)):  # the sweeps' rows come first, prompt by prompt
            prompt = begin + r
            helpful = value_act[r].sign()  # the direction in which the value neuron helps
            for j, (unit, ranking, k, draw, _, _) in enumerate(settings[r]):
                rows.append({"kind": kind, "prompt": prompt, "unit": units[prompt], "components": unit, "ranking": ranking,
                             "k": k, "draw": draw, "p": log_p_all[at + j].exp().item(), "log p": log_p_all[at + j].item(),
                             "rr": 1 / rank_all[at + j].item(), "value act": (helpful * watched[at + j]).item()})
            at += len(settings[r])
        for r in range(len(chunk)):
            prompt = begin + r
            n_points = 1 + N_ADDITIVE + N_SUBSETS
            record = {"kind": kind, "prompt": prompt, "unit": units[prompt], "value layer": int(value_layer[r]),
                      "value act": abs(value_act[r].item()),
                      "top10 layers": [int(f) // d_ff for f in scores.order("log-prob increase", r)[:10]],
                      **{f"additivity error, {m}": e
                         for m, e in additivity_errors(log_p_all[at : at + n_points], N_ADDITIVE, subsets_[r]).items()}}
            at += n_points
            if r in checks:
                sample, layers_ = checks[r]
                exact_ = log_p_all[at : at + len(sample)] - log_p_all[at + len(sample) : at + len(sample) + L][layers_]
                record["screen vs exact (Spearman)"] = spearman(scores.screen[r, sample], exact_)
                at += len(sample) + L
            extra.append(record)
    return pd.DataFrame(rows), pd.DataFrame(extra)


t0 = time.time()
fact_targets = [tok(a, add_special_tokens=False)["input_ids"][0] for a in kept_facts.answer]
fact_rows, fact_extra = run_kind("facts", [tok(p)["input_ids"] for p in kept_facts.prompt], fact_targets,
                                 list(range(len(kept_facts))))
icl_rows, icl_extra = run_kind("ICL", [icl_ids[i] for i in kept_icl], [icl_gold[i] for i in kept_icl],
                               [icl_scores.demo_set[i] for i in kept_icl]) if kept_icl else (pd.DataFrame(), pd.DataFrame())
rows = pd.concat([fact_rows, icl_rows], ignore_index=True)
extra = pd.concat([fact_extra, icl_extra], ignore_index=True)
many_seconds = time.time() - t0
n_ablations = len(rows)
print(f"{len(kept_facts)} factual and {len(kept_icl)} in-context prompts: {n_ablations:,} ablated one-token steps "
      f"({n_ablations // max(1, len(extra))} per prompt) in {many_seconds:.0f} s")
check = extra["screen vs exact (Spearman)"].dropna()
print(f"first-order screen vs exact log-prob increase on {N_CHECK_NEURONS} random neurons of {len(check)} prompts: "
      f"Spearman {check.mean():.3f} (range {check.min():.3f} to {check.max():.3f})")

# %% [markdown]
# ## Zeroing the top neurons: MRR and probability
#
# Each line is the mean over prompts after zeroing the top $k$ neurons of a ranking at the last
# position; random is the mean of each prompt's own random sets (shaded: seaborn's 95% band over
# prompts, a picture only; the verdicts below use t intervals over the units). The black line is
# the clean model.

# %%
curves = (rows[rows.components.isin(["neurons", "none"])]
          .groupby(["kind", "ranking", "k", "prompt"], sort=False)[["rr", "p"]].mean().reset_index())  # random: mean over sets
fig, axes = plt.subplots(2, 2, figsize=(12, 7.5), sharex=True)
palette = {"log-prob increase": "C3", "prob increase": "C1", "DLA": "C2", "norm": "C4", "activation": "C5", "random": "C7"}
for col, kind in enumerate(KINDS):
    part = curves[curves.kind == kind]
    if part.empty:
        continue
    for row_, (metric, label) in enumerate([("rr", "MRR of the target"), ("p", "probability of the target")]):
        ax = axes[row_, col]
        sns.lineplot(data=part[part.ranking != "clean"], x="k", y=metric, hue="ranking", palette=palette, marker="o",
                     errorbar=("ci", 95), ax=ax, legend=row_ == 0 and col == 0)
        ax.axhline(part[part.ranking == "clean"][metric].mean(), color="black", lw=1, label="clean")
        ax.set_xscale("log")
        ax.set_xticks(NEURON_KS, labels=[str(k) for k in NEURON_KS])
        ax.xaxis.set_minor_locator(plt.NullLocator())
        ax.set_ylabel(label)
        ax.set_xlabel("neurons zeroed at the last position")
        ax.set_title(f"{KINDS[kind]}: {part.prompt.nunique()} prompts", fontsize=10)
fig.suptitle(f"{MODEL}: zeroing each ranking's top-k neurons (paper: {PAPER_MRR})", y=1.0, fontsize=9)
plt.tight_layout()
plt.show()

mrr_table = (curves[curves.ranking != "clean"].pivot_table(index=["kind", "ranking"], columns="k", values="rr")
             .rename(columns=lambda k: f"MRR, top {k}"))
mrr_table.insert(0, "MRR, clean", curves[curves.ranking == "clean"].groupby("kind").rr.mean()
                 .reindex(mrr_table.index.get_level_values(0)).values)
display(mrr_table.round(3))

# %% [markdown]
# Where do the top neurons sit? The layers of each prompt's ten best neurons by log-probability
# increase, for facts and for in-context prompts:

# %%
layer_counts = (extra.explode("top10 layers").astype({"top10 layers": int})
                .groupby("kind")["top10 layers"].value_counts(normalize=True).rename("share").reset_index())
fig, ax = plt.subplots(figsize=(10, 3.2))
sns.barplot(data=layer_counts, x="top10 layers", y="share", hue="kind", ax=ax, order=range(L))
ax.set_xlabel("layer")
ax.set_ylabel("share of top-10 neurons")
ax.set_title(f"{MODEL}: layers of each prompt's top-10 neurons by log-probability increase", fontsize=10)
plt.show()
for kind in extra.kind.unique():
    layers_ = np.concatenate(extra[extra.kind == kind]["top10 layers"].values)
    print(f"{KINDS[kind]}: mean layer {layers_.mean():.1f} of {L}; share in the top half {np.mean(layers_ >= L // 2):.0%}")

# %% [markdown]
# ## Log-probability vs probability: which adds up?
#
# Remove a few neurons' writes together from the final residual, and compare what that costs with
# the sum of what removing each alone costs. For the log-probability the logits move linearly and
# only the normaliser bends; the probability adds an exponential on top.

# %%
add = extra.melt(id_vars=["kind", "prompt"], value_vars=["additivity error, log-prob", "additivity error, prob"],
                 var_name="measure", value_name="error")
fig, ax = plt.subplots(figsize=(6, 3.2))
sns.boxplot(data=add, x="kind", y="error", hue="measure", ax=ax)
ax.set_ylabel("|joint - sum of singles| / (|joint| + |sum|)")
ax.set_title("additivity error per prompt (lower: more additive)", fontsize=10)
plt.show()

# %% [markdown]
# ## Verdicts
#
# Each estimate comes with a 95% Student-t interval over prompts (facts) or demonstration sets
# (in-context prompts); `grade` applies the declared rule. First the checks: a row on MRR is
# testable only if the MRR moves at all in the arms it compares (every attributed prompt starts at
# MRR 1, and a target that no ablation moves off rank 1 leaves MRR at 1 on every prompt in every
# arm: such a row is *not testable*, not evidence against the paper), and a fall of MRR or
# probability needs room above its floor.

# %%
def per_prompt(kind: str, components: str, ranking: str, k: int, column: str = "rr") -> pd.Series:
    part = rows[(rows.kind == kind) & (rows.components == components) & (rows.ranking == ranking) & (rows.k == k)]
    return part.groupby("prompt")[column].mean()


def random_matrix(kind: str, components: str, k: int, column: str = "rr") -> np.ndarray:
    part = rows[(rows.kind == kind) & (rows.components == components) & (rows.ranking == "random") & (rows.k == k)]
    return part.pivot(index="prompt", columns="draw", values=column).values  # (prompts, draws)


def clean(kind: str, column: str = "rr") -> pd.Series:
    return per_prompt(kind, "none", "clean", 0, column)


graded, results = [], {}
for kind, label in KINDS.items():
    if kind == "ICL" and not kept_icl:
        continue
    specs = specs_for(kind)
    units = extra[extra.kind == kind].set_index("prompt").unit.sort_index().values
    ok = len(kept_facts) >= 100 if kind == "facts" else learns.low > 0.5
    kw = {"unit": UNIT[kind]}
    top10 = per_prompt(kind, "neurons", "log-prob increase", K_SMALL)
    estimates = {"1. top neurons vs random": paired_difference(top10.values, random_matrix(kind, "neurons", K_SMALL).mean(1),
                                                                units, **kw)}
    for other in ("prob increase", "DLA", "norm", "activation"):
        estimates[f"1. log-prob vs {other}"] = paired_difference(top10.values, per_prompt(kind, "neurons", other, K_SMALL).values,
                                                                units, **kw)
    p_top = per_prompt(kind, "neurons", "log-prob increase", K_SMALL, "p")
    estimates["1p. top neurons vs random"] = paired_difference(p_top.values, random_matrix(kind, "neurons", K_SMALL, "p").mean(1),
                                                               units, **kw)
    for other in ("prob increase", "DLA", "norm", "activation"):
        estimates[f"1p. log-prob vs {other}"] = paired_difference(p_top.values, per_prompt(kind, "neurons", other, K_SMALL, "p").values,
                                                                 units, **kw)
    rr_clean, rr_300 = clean(kind).values, per_prompt(kind, "neurons", "log-prob increase", K_LARGE).values
    estimates["2. top neurons remove most"] = cluster_jackknife(lambda r: 1 - rr_300[r].mean() / rr_clean[r].mean(), units, **kw)
    estimates["2. random neurons do little"] = paired_difference(rr_clean, random_matrix(kind, "neurons", K_LARGE).mean(1),
                                                                 units, **kw)
    act_clean = clean(kind, "value act").values
    act_change = lambda values: (values - act_clean[:, None]) / np.abs(act_clean)[:, None]  # noqa: E731
    estimates["3. query neurons: activation"] = paired_difference(
        act_change(per_prompt(kind, "query", "query score", N_QUERY, "value act").values[:, None])[:, 0],
        act_change(random_matrix(kind, "query", N_QUERY, "value act")).mean(1), units, **kw)
    estimates["3. query neurons: target"] = paired_difference(
        per_prompt(kind, "query", "query score", N_QUERY, "log p").values,
        random_matrix(kind, "query", N_QUERY, "log p").mean(1), units, **kw)
    errors = extra[extra.kind == kind].sort_values("prompt")
    estimates["4. log-prob is more additive"] = paired_difference(errors["additivity error, prob"].values,
                                                                  errors["additivity error, log-prob"].values, units, **kw)
    estimates["5. heads"] = paired_difference(per_prompt(kind, "heads", "log-prob increase", HEAD_K).values,
                                              random_matrix(kind, "heads", HEAD_K).mean(1), units, **kw)
    mrr = {r: per_prompt(kind, "neurons", r, K_SMALL).mean() for r in A.NEURON_RANKINGS}
    books = {
        "1. top neurons vs random": f"MRR {rr_clean.mean():.3f} -> {mrr['log-prob increase']:.3f} (top {K_SMALL} by log-prob), "
                                       f"{random_matrix(kind, 'neurons', K_SMALL).mean():.3f} (random {K_SMALL}); p {clean(kind, 'p').mean():.1%} -> "
                                       f"{per_prompt(kind, 'neurons', 'log-prob increase', K_SMALL, 'p').mean():.1%}",
        **{f"1. log-prob vs {o}": f"MRR after top {K_SMALL}: log-prob {mrr['log-prob increase']:.3f}, {o} {mrr[o]:.3f}"
           for o in ("prob increase", "DLA", "norm", "activation")},
        "1p. top neurons vs random": f"p {clean(kind, 'p').mean():.1%} -> {p_top.mean():.1%} (top {K_SMALL} by log-prob), "
                                     f"{random_matrix(kind, 'neurons', K_SMALL, 'p').mean():.1%} (random {K_SMALL})",
        **{f"1p. log-prob vs {o}": f"p after top {K_SMALL}: log-prob {p_top.mean():.1%}, {o} "
                                   f"{per_prompt(kind, 'neurons', o, K_SMALL, 'p').mean():.1%}"
           for o in ("prob increase", "DLA", "norm", "activation")},
        "2. top neurons remove most": f"MRR {rr_clean.mean():.3f} -> {rr_300.mean():.3f} (top {K_LARGE})",
        "2. random neurons do little": f"MRR {rr_clean.mean():.3f} -> {random_matrix(kind, 'neurons', K_LARGE).mean():.3f} (random {K_LARGE})",
        "3. query neurons: activation": "value neurons in layers " + f"{errors['value layer'].min()}-{errors['value layer'].max()}",
        "3. query neurons: target": f"log p {clean(kind, 'log p').mean():.2f} -> "
                                    f"{per_prompt(kind, 'query', 'query score', N_QUERY, 'log p').mean():.2f} (top query), "
                                    f"{random_matrix(kind, 'query', N_QUERY, 'log p').mean():.2f} (random)",
        "4. log-prob is more additive": f"error: log-prob {errors['additivity error, log-prob'].mean():.3f}, "
                                        f"prob {errors['additivity error, prob'].mean():.3f}",
        "5. heads": f"MRR {rr_clean.mean():.3f} -> {per_prompt(kind, 'heads', 'log-prob increase', HEAD_K).mean():.3f} (top {HEAD_K} heads), "
                    f"{random_matrix(kind, 'heads', HEAD_K).mean():.3f} (random)",
    }
    # the checks, per row, from the per-prompt values of the arms that row compares
    rr_arms = {"clean": rr_clean, f"top {K_SMALL} by log-prob": top10.values,
               f"random {K_SMALL}": random_matrix(kind, "neurons", K_SMALL)}
    arms = {"1. top neurons vs random": rr_arms,
            **{f"1. log-prob vs {o}": {"clean": rr_clean, f"top {K_SMALL} by log-prob": top10.values,
                                       f"top {K_SMALL} by {o}": per_prompt(kind, "neurons", o, K_SMALL).values}
               for o in ("prob increase", "DLA", "norm", "activation")},
            "2. top neurons remove most": {"clean": rr_clean, f"top {K_LARGE} by log-prob": rr_300},
            "2. random neurons do little": {"clean": rr_clean, f"random {K_LARGE}": random_matrix(kind, "neurons", K_LARGE)},
            "5. heads": {"clean": rr_clean, f"top {HEAD_K} heads": per_prompt(kind, "heads", "log-prob increase", HEAD_K).values,
                         f"random {HEAD_K} heads": random_matrix(kind, "heads", HEAD_K)}}
    p_clean = clean(kind, "p").mean()
    checks = {}
    for name, spec in specs.items():
        if name in arms:  # MRR: a measure stuck at one value on every prompt in every arm cannot move
            checks[name] = [moves_at_all(arms[name], f"MRR ({KINDS[kind]})")]
            if spec.direction == "decrease":  # a fall of MRR needs room above its floor, 0
                checks[name].append(room_to_move(rr_clean.mean(), 0, spec.smallest_effect, f"MRR ({KINDS[kind]})"))
        elif name.startswith("1p."):  # a fall of the target's probability needs room above 0
            checks[name] = [room_to_move(p_clean, 0, spec.smallest_effect, f"probability ({KINDS[kind]})")]
    print(f"{KINDS[kind]}: checks before the verdicts")
    for name, cs in checks.items():
        for c in cs:
            print(f"  {name}: {c}")
    for name, spec in specs.items():
        graded.append(grade(spec, estimates[name], f"{MODEL}, {len(units)} prompts: {books[name]}", precondition_met=ok,
                            checks=checks.get(name, []), task=label, exploratory=kind != "facts"))
    results[kind] = {"n_prompts": len(units), "n_units": len(set(units)), "mrr_clean": rr_clean.mean(),
                     "mrr_after_top_small": mrr, "mrr_after_top_large": rr_300.mean(), "k_small": K_SMALL, "k_large": K_LARGE,
                     "estimates": {n: {"estimate": e.estimate, "low": e.low, "high": e.high} for n, e in estimates.items()}}
display(per_task_table(graded))
claims_table(graded)

# %% [markdown]
# **Reading the result.** The paper's numbers are averages over facts on models 3 to 25 times
# larger than the default model, and its prompts are not filtered to ones the model gets right
# (its clean MRR is 0.36 on GPT2-large; here every attributed prompt starts at MRR 1, so MRR can
# only fall). The in-context prompts are those whose gold label word is the model's top-1 token;
# with the default model's prior for one label word (chapter 1) they are mostly prompts of one
# class, predicted with high probability. Zeroing ten neurons rarely moves such a target off rank
# 1; where no arm of a row moves it on any prompt, the check above makes that MRR row not testable
# rather than contradicted. The rows graded on probability ("1p.", post hoc) still separate the
# rankings, and the heads row shows where those
# predictions are carried: chapter 3's in-context heads. One reason the log-probability score can
# lose there: it measures a neuron at its own layer's residual stream, and where the target is
# already likely at that point a neuron can add little log-probability however much it writes, so
# the score favours layers where the target is still unlikely, while DLA reads every write at the
# end of the model. Where a verdict differs between facts and in-context
# prompts, the table puts them side by side. The additivity claim is tested one way (removing
# neurons' writes from the final residual, where the final norm is frozen); other
# decompositions could behave differently.

# %%
save_results(
    "02_attributing_a_prediction",
    {
        "model": MODEL, "icl_task": ICL_TASK, "n_facts": len(facts), "n_facts_right": len(kept_facts),
        "n_icl_prompts": len(icl_prompts), "n_icl_right": len(kept_icl), "icl_calibrated_accuracy": learns.estimate,
        "close_up": {"icl_query": icl_prompt.query, "icl_target": tok.decode([int(targets[0])]),
                     "fact_prompt": kept_facts.prompt[0], "fact_target": tok.decode([int(targets[1])]),
                     "p_clean": clean_logp.exp().tolist(),
                     "top_heads": {name: top_heads(head_scores["log_prob"][i], HEAD_K) for i, name in enumerate(PROMPTS)},
                     "frozen_vs_real_ln_f": {name: {k: v for k, v in a.items() if k != "top_real"} for name, a in linear.items()},
                     "screen_check": screen_check.to_dict("records"),
                     "head_position_first_order_pearson": pair_pearson, "label_share_of_top_heads": label_share},
        "many": results,
        "screen_vs_exact_spearman": check.mean() if len(check) else None,
        "ablated_steps": n_ablations, "many_prompts_s": many_seconds,
        "runtime_s": time.time() - start,
    },
    graded,
)
print(f"chapter runtime: {time.time() - start:.0f} s")
