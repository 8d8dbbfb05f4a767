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
# # 10. The reproduction table
#
# **Question.** Which of the papers' claims does this book reproduce on its small embedded model,
# which only in part, and which not at all?
#
# **Method.** Every chapter ends by writing its headline numbers and its paper-vs-book claim rows
# to `results/<chapter>.json` (`icl_utils.reporting.save_results`). This chapter runs no model:
# it reads those files back (`load_results`) for every chapter listed before it in `_toc.yml`, and
# gathers the rows into one table: the claim, the paper's figure, the book's figure and the verdict
# that the chapter computed from its own numbers.
#
# A table like this is only honest if every row comes from the current code. So each chapter's
# file is checked before its rows are used:
#
# * **missing**: the chapter has not been run (no JSON file);
# * **stale**: the JSON is older than the chapter's source `chapters/<chapter>.py`, so the numbers
#   may not be what the chapter now computes;
# * **other model**: the chapter ran with a different model than `MODEL` below, and one table
#   should not mix models.
#
# Such a chapter is listed loudly below and left out of the table, and the chapter then fails at
# its last cell, unless `ALLOW_PARTIAL` is set. To fill the table, run the chapters first, e.g.
# `python scripts/run_chapters.py` (which runs this one last).
#
# Graded claims carry the verdict enum of `icl_utils.reporting.Verdict` (reproduced, contradicted,
# inconclusive, not testable, differs) with the estimate, its interval and the smallest effect
# that counts. (A results file written by an older version of a chapter may still hold a
# hand-written verdict; such a row is shown as *not graded*.)

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
MODEL = "gemma3-270m"  # the model every chapter ran with; on Colab, the larger model you ran them with (e.g. "meta-llama/Llama-2-7b-hf")
ALLOW_PARTIAL = False  # True: show the table without missing or stale chapters instead of failing

# %%
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from IPython.display import HTML, Markdown, display

from icl_utils.reporting import RESULTS_DIR, load_results, save_results

sns.set_theme(style="whitegrid", context="notebook")
start = time.time()
CHAPTER = "10_reproduction_table"
ROOT = Path.cwd().parent  # chapters run from the repository's chapters/ folder (papermill and Jupyter both do)
if not (ROOT / "_toc.yml").exists():
    raise FileNotFoundError(f"no _toc.yml in {ROOT}: open this notebook from the repository's chapters/ folder")
sys.path.insert(0, str(ROOT / "scripts"))
from run_chapters import toc_chapters  # noqa: E402  (the same reading of _toc.yml that runs the book)

in_toc = toc_chapters()
earlier = in_toc[: in_toc.index(CHAPTER)] if CHAPTER in in_toc else in_toc
print(f"{len(earlier)} chapters before this one in _toc.yml; results read from {RESULTS_DIR}")

# %% [markdown]
# ## Which chapters have fresh results
#
# For each chapter: its title (the first heading of its source), whether its results are usable,
# when they were written, and the parameters papermill gave it. The parameters are read from the
# executed notebook in `book/chapters/` when that run is the one that wrote the JSON (the file
# was written between the run's start and end); an empty set means the chapter's own defaults.

# %% mystnb={"markdown_format": "myst"}
# (this cell's metadata asks the site builder to read its Markdown output as MyST, so that the
# links to chapters/NN_name.ipynb become links between the book's pages, as they are in Jupyter)
def title_of(name):
    """The chapter's first Markdown heading, e.g. '3. In-context heads'."""
    for line in (ROOT / "chapters" / f"{name}.py").read_text().splitlines():
        if line.startswith("# # "):
            return line[4:].strip()
    return name


def papermill_parameters(name, written):
    """Parameters papermill injected into the run that wrote the results, or None if unknown."""
    executed = ROOT / "book" / "chapters" / f"{name}.ipynb"
    if not executed.exists():
        return None
    meta = json.loads(executed.read_text()).get("metadata", {}).get("papermill", {})
    if not meta.get("start_time") or not meta.get("end_time"):
        return None
    run = [datetime.fromisoformat(meta[k]).timestamp() for k in ("start_time", "end_time")]
    return meta.get("parameters", {}) if run[0] - 1 <= written <= run[1] + 1 else None


def utc(seconds):
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


chapters = []
for name in earlier:
    row = {"name": name, "title": title_of(name), "status": "ok", "why": "", "payload": None}
    source_time = (ROOT / "chapters" / f"{name}.py").stat().st_mtime
    try:
        payload = load_results(name)
    except FileNotFoundError:
        row.update(status="missing", why="no results file: the chapter has not been run")
        chapters.append(row)
        continue
    row["payload"] = payload
    ran_with = payload["results"].get("model")
    if payload["written"] < source_time:
        row.update(status="stale", why=f"results written {utc(payload['written'])}, source changed {utc(source_time)}")
    elif ran_with is not None and ran_with != MODEL:
        row.update(status="other model", why=f"ran with {ran_with}, this table is for {MODEL}")
    chapters.append(row)

fresh = [c for c in chapters if c["status"] == "ok"]
problems = [c for c in chapters if c["status"] != "ok"]
status_rows = []
for c in chapters:
    row = {"chapter": c["title"], "status": f"{c['status']}: {c['why']}" if c["why"] else c["status"]}
    if c["payload"]:
        results, written = c["payload"]["results"], c["payload"]["written"]
        params = papermill_parameters(c["name"], written)
        row.update({
            "model": results.get("model") or results.get("trained_model", "not recorded"),  # ch. 9 trains its own
            "claims": len(c["payload"]["claims"]),
            "runtime (s)": results.get("runtime_s"),
            "written": utc(written),
            "papermill parameters": "not recorded" if params is None
            else ", ".join(f"{k}={v}" for k, v in params.items()) or "chapter defaults",
        })
    status_rows.append(row)
status = pd.DataFrame(status_rows).set_index("chapter")
if "claims" in status:
    status["claims"] = status["claims"].astype("Int64")  # missing chapters leave gaps

links = "\n".join(f"* [{c['title']}]({c['name']}.ipynb) — **{c['status'].upper()}**" + (f" ({c['why']})" if c["why"] else "")
                  for c in chapters)
display(Markdown(links))
if problems:
    display(HTML(
        '<div style="border: 3px solid #c0392b; padding: 0.6em; margin: 0.5em 0; color: #c0392b; font-weight: bold">'
        f"{len(problems)} of {len(chapters)} chapters have no usable results and are left out of the table below: "
        + "; ".join(f"{c['name']} ({c['status']})" for c in problems)
        + (". ALLOW_PARTIAL is set, so this chapter will not fail." if ALLOW_PARTIAL else ". This chapter fails at its last cell.")
        + "</div>"))
status.round(1)

# %% [markdown]
# Chapter 1 chooses the default model and the main task on its selection pool; the chapters after
# it should have run with that choice.

# %%
by_name = {c["name"]: c["payload"]["results"] for c in fresh}
chosen = by_name.get("01_icl_with_unrelated_labels", {})
later_tasks = {name: r.get("task") for name, r in by_name.items() if r.get("task")}
if chosen:
    mismatched = {name: t for name, t in later_tasks.items() if t != chosen.get("main_task")}
    print(f"chapter 1 chose model {chosen.get('chosen_model')} and main task {chosen.get('main_task')}; "
          f"this table is for {MODEL}; later chapters ran on: {later_tasks or 'no recorded task'}")
    if chosen.get("chosen_model") != MODEL or mismatched:
        display(HTML('<div style="border: 3px solid #c0392b; padding: 0.6em; color: #c0392b; font-weight: bold">'
                     f"The book's settings differ from chapter 1's measured choice: model {MODEL} vs "
                     f"{chosen.get('chosen_model')}; tasks {mismatched}. Update the parameters cells.</div>"))

# %% [markdown]
# ## Primary rows: one per paper claim
#
# Each chapter declares, before its numbers, one *primary* row for each claim of a paper it tests
# (on its main task and model); the chapter's primary rows are decided together, with Holm's
# correction for testing several at once. Every other row is *exploratory*: a second task, a second
# model, a control, a reading added later (marked *post hoc*). The primary rows come first, with
# their counts; the exploratory rows follow.
#
# One row per claim, in chapter order. Every row is graded by one function
# (`icl_utils.reporting.grade`): green
# *reproduced*, red *contradicted*, amber *inconclusive* (the row says how small an effect the
# design could detect and how many units would settle it), grey *not testable* (the claim's
# precondition or a design check failed: no room to move, or too weak to detect the smallest
# effect), blue *differs* (a stated structural reason). *Clears* says whether the whole interval
# lies past the smallest effect that counts, so a strong result and a borderline one do not look
# alike; fewer than 8 independent units are always *inconclusive*. A row from a results file
# written by an older version of a chapter, with a hand-written verdict, is marked *not graded*
# (white) and counted apart; rerun that chapter to grade it. The *book* column is the figure the chapter computed when it ran, on the
# model and parameters shown above.

# %%
from icl_utils.reporting import TABLE_COLUMNS, Verdict

GROUPS = [v.value for v in Verdict] + ["not graded"]
COLOURS = {"reproduced": "#d4efdf", "contradicted": "#f5b7b1", "inconclusive": "#fdebd0", "not testable": "#e5e7e9",
           "differs": "#d6eaf8", "not graded": "#ffffff"}


def verdict_group(row):
    """The verdict enum for graded rows; 'not graded' for a hand-written verdict."""
    return row["verdict"] if row.get("graded") and row["verdict"] in COLOURS else "not graded"


rows = []
for c in fresh:
    for claim in c["payload"]["claims"]:
        role = claim.get("role") or "exploratory"  # rows written before roles were declared are exploratory
        rows.append({"chapter": c["title"].split(".")[0], **{k: claim.get(k, "") for k in TABLE_COLUMNS},
                     "role": role + (", post hoc" if claim.get("post hoc") else ""), "group": verdict_group(claim)})
claims = pd.DataFrame(rows, columns=["chapter", *TABLE_COLUMNS, "group"])
claims.loc[claims.group == "not graded", "verdict"] = "not graded: " + claims.loc[claims.group == "not graded", "verdict"].astype(str)
is_primary = claims["role"].str.startswith("primary")


def colour_rows(row):
    return [f"background-color: {COLOURS[row['group']]}; color: black"] * len(row)


def styled(table):
    return (table.fillna("").style.apply(colour_rows, axis=1)
            .format({"estimate": lambda v: f"{v:+.3f}" if isinstance(v, float) else v,
                     "smallest effect": lambda v: f"{v:g}" if isinstance(v, float) else v})
            .hide(axis="index").hide(["group"], axis="columns")
            .set_properties(**{"text-align": "left", "vertical-align": "top", "font-size": "0.85em"})
            .set_properties(subset=["chapter"], **{"text-align": "center"})
            .set_table_styles([{"selector": "th", "props": [("text-align", "left"), ("font-size", "0.85em")]},
                               {"selector": "td", "props": [("border-bottom", "1px solid white"), ("padding", "4px 6px")]}]))


primary_counts = claims[is_primary]["group"].value_counts().reindex(GROUPS, fill_value=0)
print(f"{int(is_primary.sum())} primary rows (one per paper claim) in {len(fresh)} chapters: "
      + ", ".join(f"{n} {g}" for g, n in primary_counts.items() if n))
display(primary_counts[primary_counts > 0].rename("primary rows").to_frame().T)
styled(claims[is_primary])

# %% [markdown]
# ## Exploratory rows
#
# The same claims on other tasks and models, controls, and readings declared after the data were
# seen (*post hoc*): each graded alone at 95%, without a correction for their number, so read them
# as leads rather than findings.

# %%
styled(claims[~is_primary])

# %% [markdown]
# ## Verdicts by chapter

# %%
counts = (claims.groupby(["chapter", "group"], sort=False).size().unstack(fill_value=0)
          .reindex(index=[c["title"].split(".")[0] for c in fresh], columns=[g for g in GROUPS if g in set(claims["group"])], fill_value=0))
runtimes = pd.Series({c["title"].split(".")[0]: c["payload"]["results"].get("runtime_s") for c in fresh}, dtype=float)
fig, (ax, ax_time) = plt.subplots(1, 2, figsize=(10, 0.45 * max(len(counts), 3) + 1.5), gridspec_kw={"width_ratios": [2, 1]})
if len(counts.columns):
    counts.plot.barh(stacked=True, ax=ax, color=[COLOURS[g] for g in counts.columns], edgecolor="0.3")
    ax.legend(loc="lower right", fontsize="small")
ax.invert_yaxis()
ax.set(xlabel="claims", ylabel="chapter", title=f"verdicts per chapter ({MODEL})")
if runtimes.notna().any():
    runtimes.dropna().plot.barh(ax=ax_time, color="0.6")
ax_time.invert_yaxis()
ax_time.set(xlabel="seconds", ylabel="", title="chapter run time")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Summary
#
# This chapter makes no claims of its own: it counts the others'. The numbers below are computed
# from the table above.

# %%
totals = claims["group"].value_counts().reindex(GROUPS, fill_value=0)
summary = {
    "model": MODEL,
    "gathers_claims": True,  # no claims of its own: its rows are the other chapters'
    "chapters": [c["name"] for c in chapters],
    "chapters_with_results": [c["name"] for c in fresh],
    "chapters_left_out": {c["name"]: c["status"] for c in problems},
    "n_claims": int(len(claims)),
    "verdicts": {g: int(n) for g, n in totals.items()},
    "primary_verdicts": {g: int(n) for g, n in primary_counts.items()},
    "verdicts_per_chapter": {ch: {g: int(n) for g, n in row.items()} for ch, row in counts.iterrows()},
    "runtime_s": time.time() - start,
}
print(f"{len(claims)} claims ({int(is_primary.sum())} primary) from {len(fresh)} of {len(chapters)} chapters, all on {MODEL}:")
for group, n in totals.items():
    if n:
        print(f"  {n:3d} {group} ({n / max(len(claims), 1):.0%})")
if problems:
    print(f"left out: {', '.join(c['name'] + ' (' + c['status'] + ')' for c in problems)}")
save_results(CHAPTER, summary, [])
print(f"chapter runtime: {time.time() - start:.1f} s")

# %% [markdown]
# **Reading the table.** The paper column reports 7B-scale models (Llama-7B, GPT-J) on sentence
# datasets; the book column a 270M-parameter model on the book's word and sentence tasks. A
# *contradicted* verdict means the interval rules out the smallest effect the claim needs on this
# model and these prompts: a finding about the small model, not a refutation of the paper. An
# *inconclusive* verdict is a statement about the design: its row gives the smallest effect the
# sample could detect and the number of units that would settle it. Each chapter's verdict section
# says what differs and how to rerun it on a larger model (e.g. on Colab, via the `MODEL`
# parameter).

# %%
if problems and not ALLOW_PARTIAL:
    raise RuntimeError(
        f"{len(problems)} chapters have no usable results: "
        + "; ".join(f"{c['name']}: {c['status']} ({c['why']})" for c in problems)
        + ". Run them (python scripts/run_chapters.py --only NN), or set ALLOW_PARTIAL = True for a partial table."
    )
