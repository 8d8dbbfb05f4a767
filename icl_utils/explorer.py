"""A head explorer: pick a prompt and a head; see where it looks and what it carries from there.

`head_views` computes, from one traced forward pass, for every (prompt, head) pair:
  * the head's attention from the last position over the prompt's tokens,
  * its value-output vectors vo_p = alpha_{T,p} W_O^h v_p, read as the label log-odds
    M_p = log p(foo | vo_p) - log p(bar | vo_p) (final norm frozen at the prompt's real final
    residual, as in chapter 4), with and without the attention weight, and the tokens that the
    mean unweighted vo_p at each label's positions promotes,
  * the head's importance S(l, h) on that prompt (log-probability increase of the gold label word).

`explorer` lays the precomputed views out as two rows of tabs (prompt, then head). Each view is
plain HTML, so switching tabs is done by the browser alone: the widget works live in Jupyter and
Colab and also from the widget state saved in the executed notebook (the static site).
`plot_views` draws the same numbers as one static figure, for readers without JavaScript.
"""
from __future__ import annotations

import html
from dataclasses import dataclass

import torch

from .attribution import head_contributions, head_position_contributions, log_prob_increase
from .prompts import encode_prompts, label_token_ids
from .tracing import run_with_trace
from .vocab import label_log_odds, project
from .models import ModelInfo

LABEL_COLOURS = ("#c0392b", "#1f5fa8")  # first and second class (foo, bar), as in the chapters' figures


@dataclass
class HeadView:
    """One head on one prompt. Lists are per token of the prompt (no padding) unless noted."""

    prompt_index: int
    layer: int
    head: int
    tokens: list  # the prompt's tokens as text
    attention: list  # attention from the last position to each token
    m_weighted: list  # M_p of alpha_p W_O v_p (what the head moves from p)
    m_unweighted: list  # M_p of W_O v_p (what it would move if it attended only to p)
    label_positions: dict  # token index -> class index (0 = foo, 1 = bar) of each demonstration's label
    words: tuple  # the label words, in class order
    gold: int  # class index of the query's label
    importance: float  # S(l, h) for the gold label word on this prompt
    promoted: dict  # label word -> tokens promoted by the mean unweighted vo_p at that word's positions

    @property
    def name(self) -> str:
        return f"{self.layer}.{self.head}"


@torch.no_grad()
def head_views(info: ModelInfo, prompts: list, heads: list, top_k: int = 6) -> list:
    """HeadViews for every prompt x head (prompt-major order), from one traced pass of `prompts`."""
    if not prompts or not heads:
        raise ValueError("head_views needs at least one prompt and one (layer, head)")
    classes = list(prompts[0].label_words)
    words = tuple(prompts[0].label_words[c] for c in classes)
    word_ids = label_token_ids(info.tokenizer, words)
    batch = encode_prompts(info, prompts)
    layers = sorted({l for l, _ in heads})
    trace = run_with_trace(info, batch, layers=layers,
                           record=("resid", "head_out", "attn_out", "attn", "qkv"))
    gold = torch.tensor([classes.index(g) for g in batch.gold])
    final = trace.final_resid[:, 0]  # where the final norm's scale is frozen, per prompt
    writes = {l: head_contributions(info, trace, l)[:, 0] for l in layers}  # (batch, heads, d_model)
    importance = log_prob_increase(  # S(l, h) of the chosen heads only: (batch, n_heads_chosen)
        info, torch.stack([trace.resid[l][:, 0] for l, _ in heads], 1),
        torch.stack([writes[l][:, h] for l, h in heads], 1), final, torch.tensor(word_ids)[gold])
    m, vo = {}, {}
    for layer in layers:
        weighted = head_position_contributions(info, trace, layer)  # (batch, heads, seq, d_model)
        unweighted = head_position_contributions(info, trace, layer, weighted=False)
        m[layer] = (label_log_odds(info, weighted, word_ids, frozen_at=final[:, None, None]),
                    label_log_odds(info, unweighted, word_ids, frozen_at=final[:, None, None]))
        vo[layer] = unweighted
    views, means = [], []  # means: mean unweighted vo at each label word's positions, read out together below
    for i in range(len(prompts)):
        length = int(batch.attention_mask[i].sum())
        tokens = [info.tokenizer.decode([t]) for t in batch.input_ids[i, :length].tolist()]
        labels = {p: classes.index(c) for p, c in zip(batch.label_positions[i], batch.label_classes[i])}
        for j, (layer, head) in enumerate(heads):
            promoted = {}
            for c, word in enumerate(words):
                where = [p for p, k in labels.items() if k == c]
                if where:
                    promoted[word] = len(means)
                    means.append(vo[layer][i, head, where].mean(0))
            views.append(HeadView(
                prompt_index=i, layer=layer, head=head, tokens=tokens,
                attention=trace.attn[layer][i, head, 0, :length].float().tolist(),
                m_weighted=m[layer][0][i, head, :length].tolist(),
                m_unweighted=m[layer][1][i, head, :length].tolist(),
                label_positions=labels, words=words, gold=int(gold[i]),
                importance=importance[i, j].item(), promoted=promoted,
            ))
    top = project(info, torch.stack(means)).topk(top_k, dim=-1).indices.tolist() if means else []  # one vocabulary pass
    for view in views:
        view.promoted = {w: [info.tokenizer.decode([t]) for t in top[k]] for w, k in view.promoted.items()}
    return views


def _shown(token: str) -> str:
    return html.escape(token.replace("\n", "\u23ce"))


def view_html(view: HeadView) -> str:
    """One view as HTML: a header, the prompt with attention as background, and a table of the label positions."""
    att = view.attention
    scale = max(att[1:], default=0.0) or 1.0  # the first token (often an attention sink) would wash out the rest
    spans = []
    for p, token in enumerate(view.tokens):
        strength = min(att[p] / scale, 1.0)
        style = f"background:rgba(255,140,0,{strength:.2f})"
        if p in view.label_positions:
            style += f";border-bottom:3px solid {LABEL_COLOURS[view.label_positions[p]]};font-weight:bold"
        title = f"position {p}: attention {att[p]:.3f}, M {view.m_weighted[p]:+.3f}"
        spans.append(f'<span style="{style}" title="{title}">{_shown(token)}</span>' + ("<br>" if "\n" in token else ""))
    foo, bar = view.words
    rows = "".join(
        f"<tr><td>{p}</td><td style='color:{LABEL_COLOURS[c]}'>{_shown(view.tokens[p])}</td><td>{att[p]:.3f}</td>"
        f"<td>{view.m_weighted[p]:+.3f}</td><td>{view.m_unweighted[p]:+.2f}</td></tr>"
        for p, c in sorted(view.label_positions.items())
    )
    promoted = "; ".join(f"at <b>{html.escape(w)}</b> positions: " + html.escape(" ".join(repr(t) for t in toks))
                         for w, toks in view.promoted.items())
    return (
        f"<div style='font-size:13px'>"
        f"<p><b>head {view.name}</b> on prompt {view.prompt_index + 1} (gold label <b>{html.escape(view.words[view.gold])}</b>): "
        f"importance S = {view.importance:+.3f} (log-probability increase of the gold label word at the last position); "
        f"attention on the first token {att[0]:.3f}, on {foo} labels {sum(att[p] for p, c in view.label_positions.items() if c == 0):.3f}, "
        f"on {bar} labels {sum(att[p] for p, c in view.label_positions.items() if c == 1):.3f}.</p>"
        f"<div style='font-family:monospace;line-height:1.9;max-height:260px;overflow-y:auto;border:1px solid #ddd;padding:4px'>"
        f"{''.join(spans)}</div>"
        f"<p style='font-size:11px'>orange: attention from the last position (darkest = largest after the first token); "
        f"underlined: label positions (<span style='color:{LABEL_COLOURS[0]}'>{foo}</span>, "
        f"<span style='color:{LABEL_COLOURS[1]}'>{bar}</span>); hover a token for its numbers.</p>"
        f"<table style='font-size:12px'><tr><th>position</th><th>label</th><th>attention &alpha;</th>"
        f"<th>M<sub>p</sub> with &alpha;</th><th>M<sub>p</sub> without &alpha;</th></tr>{rows}</table>"
        f"<p style='font-size:12px'>M<sub>p</sub> = log p({foo} | vo<sub>p</sub>) &minus; log p({bar} | vo<sub>p</sub>). "
        f"Tokens promoted by the mean vo<sub>p</sub> (without &alpha;) {promoted}.</p></div>"
    )


def explorer(views: list, head_names: dict | None = None):
    """Two rows of tabs: prompt, then head; each tab shows one precomputed view (ipywidgets 7 or 8).

    head_names: optional {(layer, head): short role} added to the head tabs' titles.
    """
    import ipywidgets as widgets

    head_names = head_names or {}
    prompt_tabs = []
    prompts = sorted({v.prompt_index for v in views})
    for i in prompts:
        mine = [v for v in views if v.prompt_index == i]
        tab = widgets.Tab(children=[widgets.HTML(view_html(v)) for v in mine])
        for j, v in enumerate(mine):
            role = head_names.get((v.layer, v.head))
            tab.set_title(j, f"{v.name} {role}" if role else v.name)
        prompt_tabs.append(tab)
    outer = widgets.Tab(children=prompt_tabs)
    for j, i in enumerate(prompts):
        v = next(v for v in views if v.prompt_index == i)
        outer.set_title(j, f"prompt {i + 1} (gold {v.words[v.gold]})")
    return outer


def plot_views(views: list, prompt_index: int = 0):
    """Static figure for one prompt: attention from the last position (heads x positions), and M_p
    with the attention weight at the label positions (heads x label positions). Returns the figure."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    mine = [v for v in views if v.prompt_index == prompt_index]
    if not mine:
        raise ValueError(f"no views for prompt_index={prompt_index}; have {sorted({v.prompt_index for v in views})}")
    first = mine[0]
    labels = sorted(first.label_positions)
    n = len(first.tokens)
    fig, axes = plt.subplots(2, 1, figsize=(min(16, 3 + 0.11 * n), 1.6 + 0.75 * len(mine)),
                             gridspec_kw={"hspace": 1.0})
    attention = torch.tensor([v.attention for v in mine])
    sns.heatmap(attention.numpy(), ax=axes[0], cmap="Oranges", vmin=0, vmax=attention[:, 1:].max().item(),
                yticklabels=[v.name for v in mine], xticklabels=False, cbar_kws={"label": "attention", "shrink": 0.8})
    axes[0].set_title(f"prompt {prompt_index + 1}: attention from the last position (colours capped at the largest "
                      f"value after the first token)", fontsize=9)
    m = torch.tensor([[v.m_weighted[p] for p in labels] for v in mine])
    limit = m.abs().max().item() or 1.0
    sns.heatmap(m.numpy(), ax=axes[1], cmap="RdBu_r", center=0, vmin=-limit, vmax=limit, annot=len(labels) <= 24,
                fmt=".2f", annot_kws={"fontsize": 6}, yticklabels=[v.name for v in mine], cbar_kws={"label": "M_p", "shrink": 0.8})
    for ax, ticks in [(axes[0], [p + 0.5 for p in labels]), (axes[1], [i + 0.5 for i in range(len(labels))])]:
        ax.set_xticks(ticks, labels=[f"{p}:{first.tokens[p].strip()}" for p in labels], rotation=90, fontsize=7)
        for tick, p in zip(ax.get_xticklabels(), labels):  # label positions, in their label's colour
            tick.set_color(LABEL_COLOURS[first.label_positions[p]])
    axes[0].set_xlabel("token position (ticks: the label positions)", fontsize=8)
    foo, bar = first.words
    axes[1].set_title(f"M_p = log p({foo} | vo_p) - log p({bar} | vo_p) at the label positions, with the attention weight",
                      fontsize=9)
    for ax in axes:
        ax.set_ylabel("head")
    return fig
