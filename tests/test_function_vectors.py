"""FV prompts, per-row patching/additions, last-token runs from a cache, exact and attribution FV
scores: each checked against a plain full forward pass with the existing ablate_heads."""
from __future__ import annotations

import json

import pytest
import torch

from icl_utils import function_vectors as fv
from icl_utils import tracing
from icl_utils.errors import TaskFormatError
from icl_utils.prompts import PromptFormat
from icl_utils.tasks import available_pair_tasks, load_pair_task
from icl_utils.tracing import ablate_heads, head_writes, run_with_trace

from conftest import ANIMALS, VEHICLES

FMT = PromptFormat("Input: ", "\nLabel:", "\n\n")  # words the tiny tokenizer knows
PAIRS = list(zip(ANIMALS, VEHICLES))  # "dog" -> "car", ... 12 pairs


def _prompts(n=3, shuffle=False, seed=0):
    return fv.build_fv_prompts(PAIRS, n, n_demos=3, seed=seed, fmt=FMT, shuffle_labels=shuffle, task="toy")


def _full_last_logits(info, prompts):
    """Logits at each prompt's last token from one full, padded forward pass."""
    ids, mask, last = fv.encode_texts(info, [p.text for p in prompts])
    with torch.no_grad():
        hidden = info.decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    return info.logits_from_final_hidden(hidden[torch.arange(len(prompts)), last]).float(), last


def _means(info, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(info.n_layers, info.n_heads, info.d_head, generator=gen)


# prompts -----------------------------------------------------------------------------------------


def test_prompts_and_shuffled_labels():
    clean, corrupted = _prompts(4), _prompts(4, shuffle=True)
    assert clean[0].text.startswith("Input: ") and clean[0].text.endswith(f"Input: {clean[0].query}\nLabel:")
    mapping = dict(PAIRS)
    for c, k in zip(clean, corrupted):
        assert c.query == k.query and c.answer == k.answer == mapping[c.query]
        demos_c = [d.removeprefix("Input: ").split("\nLabel: ") for d in c.text.split("\n\n")[:-1]]
        demos_k = [d.removeprefix("Input: ").split("\nLabel: ") for d in k.text.split("\n\n")[:-1]]
        assert all(mapping[x] == y for x, y in demos_c)  # clean demonstrations are right
        assert [x for x, _ in demos_c] == [x for x, _ in demos_k]  # same inputs, same order
        assert sorted(y for _, y in demos_c) == sorted(y for _, y in demos_k)  # same outputs...
        assert all(mapping[x] != y for x, y in demos_k)  # ...none in its own place
        assert c.query not in [x for x, _ in demos_c]
    assert [p.text for p in fv.zero_shot_prompts(clean, FMT)] == [f"Input: {p.query}\nLabel:" for p in clean]


def test_bad_requests_and_task_files(tmp_path):
    with pytest.raises(ValueError, match="distinct queries"):
        fv.build_fv_prompts(PAIRS, 13, n_demos=3)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"input": "a", "label": "b"}) + "\n")
    with pytest.raises(TaskFormatError, match="'input' and 'output'"):
        load_pair_task(str(bad))
    with pytest.raises(TaskFormatError, match="Shipped tasks"):
        load_pair_task("no_such_task")


def test_pair_pools_are_disjoint_fixed_by_the_data_and_refuse_tiny_tasks():
    pools = fv.pair_pools(PAIRS, evaluation_share=0.4)
    assert len(pools["evaluation"]) == round(0.4 * len(PAIRS))
    assert sorted(pools["scoring"] + pools["evaluation"]) == sorted(PAIRS)
    assert fv.pair_pools(list(reversed(PAIRS))) == pools  # the order of the file does not matter
    with pytest.raises(ValueError, match="too few"):
        fv.pair_pools(PAIRS[:3])
    with pytest.raises(ValueError, match="between 0 and 1"):
        fv.pair_pools(PAIRS, evaluation_share=1.0)


def test_shipped_tasks_are_well_formed():
    names = available_pair_tasks()
    assert len(names) >= 5
    for name in names:
        pairs = load_pair_task(name)
        inputs = [x for x, _ in pairs]
        assert len(pairs) >= 84 and len(set(inputs)) == len(inputs), name


# last token from a cache -------------------------------------------------------------------------


def test_last_token_logits_equal_a_full_forward(info):
    prompts = _prompts(3)
    full, _ = _full_last_logits(info, prompts)  # padded batch; the gemma fixture's window is 4 tokens
    for i, p in enumerate(prompts):
        ids = torch.tensor(info.tokenizer(p.text)["input_ids"])
        cache = fv.prefix_cache(info, ids)
        rows = fv.last_token_logits(info, ids, 3, cache)
        torch.testing.assert_close(fv.last_token_logits(info, ids, 1, cache)[0], full[i], atol=1e-4, rtol=1e-4)  # reusable
        torch.testing.assert_close(rows, full[i].expand(3, -1), atol=1e-4, rtol=1e-4)


def test_set_heads_per_row_equals_ablate_heads_row_by_row(info):
    prompts, means = _prompts(1), _means(info)
    ids = torch.tensor(info.tokenizer(prompts[0].text)["input_ids"])
    rows = [[], [(0, 1)], [(1, 3), (0, 0)], [(1, 0)]]
    cache = fv.prefix_cache(info, ids)
    with tracing.set_heads(info, rows, values=means):
        patched = fv.last_token_logits(info, ids, len(rows), cache)
    last = torch.tensor([len(ids) - 1])
    as_dict = {(l, h): means[l, h] for l in range(info.n_layers) for h in range(info.n_heads)}
    for r, heads in enumerate(rows):
        with ablate_heads(info, heads, positions=last, mode="mean", means=as_dict):
            expected, _ = _full_last_logits(info, prompts)
        torch.testing.assert_close(patched[r], expected[0], atol=1e-4, rtol=1e-4)
    assert (patched[1] - patched[0]).abs().max() > 1e-3  # the patch did something


def test_patched_answers_packs_rows_as_positions_with_the_same_result(info):
    """patched_answers packs its rows side by side in one sequence (set_heads per_position): the same
    probabilities as one batch row per setting (set_heads per row) over a repeated cache."""
    prompts, means = _prompts(2), _means(info)
    rows = [[], [(0, 1)], [(1, 3), (0, 0)], [(1, 0)]]
    probs, correct = fv.patched_answers(info, prompts, rows, means, max_rows=3)  # rows split over two packs
    twice, _ = fv.patched_answers(info, prompts, rows + [[(0, 0), (1, 3)]], means)  # a set listed twice, in another order
    torch.testing.assert_close(twice[:, 4], probs[:, 2], atol=1e-5, rtol=1e-4)
    answers = fv.answer_ids(info.tokenizer, prompts)
    for i, p in enumerate(prompts):
        ids = torch.tensor(info.tokenizer(p.text)["input_ids"])
        cache = fv.prefix_cache(info, ids)
        with tracing.set_heads(info, rows, values=means):
            logits = fv.last_token_logits(info, ids, len(rows), cache)
        torch.testing.assert_close(probs[i], torch.softmax(logits, -1)[:, answers[i]], atol=1e-5, rtol=1e-4)
        assert torch.equal(correct[i], logits.argmax(-1) == answers[i])
    ids = torch.tensor(info.tokenizer(prompts[0].text)["input_ids"])
    cache = fv.prefix_cache(info, ids)
    with pytest.raises(ValueError, match="positions"):  # 4 settings, but a pass of one new token
        with tracing.set_heads(info, rows, values=means, per_position=True):
            fv.last_token_logits(info, ids, 1, cache)


def test_set_heads_per_row_checks_rows_and_heads(info):
    with pytest.raises(ValueError, match="out of range"):
        with tracing.set_heads(info, [[(info.n_layers, 0)]], values=_means(info)):
            pass
    ids = torch.tensor(info.tokenizer(_prompts(1)[0].text)["input_ids"])
    cache = fv.prefix_cache(info, ids)
    with pytest.raises(ValueError, match="rows of heads"):
        with tracing.set_heads(info, [[(0, 0)]] * 2, values=_means(info)):
            fv.last_token_logits(info, ids, 3, cache)
    assert all(not m._forward_pre_hooks for m in info.out_projs)  # hooks removed after the error


# FV scores ---------------------------------------------------------------------------------------


def test_exact_fv_scores_by_hand(info):
    corrupted, means = _prompts(2, shuffle=True), _means(info)
    scores = fv.fv_scores_exact(info, corrupted, means, max_rows=5)  # rows split over several batches
    assert scores.shape == (2, info.n_layers, info.n_heads)
    answers = fv.answer_ids(info.tokenizer, corrupted)
    base, last = _full_last_logits(info, corrupted)
    p0 = torch.softmax(base, -1)[torch.arange(2), answers]
    for layer, head in [(0, 2), (1, 1)]:
        with ablate_heads(info, [(layer, head)], positions=last, mode="mean", means={(layer, head): means[layer, head]}):
            patched, _ = _full_last_logits(info, corrupted)
        expected = torch.softmax(patched, -1)[torch.arange(2), answers] - p0
        torch.testing.assert_close(scores[:, layer, head], expected, atol=1e-5, rtol=1e-4)


def test_attribution_is_the_first_order_term_of_exact_patching(info):
    """Patch the head with corrupted + eps * (mean - corrupted): the change / eps -> attribution."""
    corrupted = _prompts(2, shuffle=True)
    run = fv.run_fv_prompts(info, corrupted)
    means = _means(info, seed=1) * 0.1
    attribution = fv.fv_scores_attribution(info, corrupted, means, batch_size=2)
    eps = 1e-3
    answers = fv.answer_ids(info.tokenizer, corrupted)
    base, last = _full_last_logits(info, corrupted)
    p0 = torch.softmax(base.double(), -1)[torch.arange(2), answers]
    for layer, head in [(0, 3), (1, 2)]:
        for b in range(2):
            own = run.head_out[b, layer, head]
            nudged = {(layer, head): own + eps * (means[layer, head] - own)}
            with ablate_heads(info, [(layer, head)], positions=last, mode="mean", means=nudged):
                patched, _ = _full_last_logits(info, corrupted)
            slope = (torch.softmax(patched.double(), -1)[b, answers[b]] - p0[b]) / eps
            assert abs(slope.item() - attribution[b, layer, head].item()) < 0.05 * abs(slope.item()) + 1e-4


def test_clean_run_means_and_accuracy(info):
    prompts = _prompts(3)
    run = fv.run_fv_prompts(info, prompts, batch_size=2)
    ids, mask, last = fv.encode_texts(info, [p.text for p in prompts])
    trace = run_with_trace(info, ids, mask, last, record=("head_out", "logits"))
    torch.testing.assert_close(run.head_out[:, 1], trace.head_out[1][:, 0].float())
    answers = fv.answer_ids(info.tokenizer, prompts)
    assert run.correct.tolist() == (trace.logits[:, 0].argmax(-1) == answers).tolist()


# the function vector -----------------------------------------------------------------------------


def test_function_vector_is_what_the_heads_write(info):
    prompts = _prompts(2)
    ids, mask, last = fv.encode_texts(info, [p.text for p in prompts])
    trace = run_with_trace(info, ids, mask, last, record=("head_out",))
    values = torch.stack([trace.head_out[l][0, 0] for l in range(info.n_layers)]).float()  # prompt 0's outputs
    norm = info.attn_out_norms[1]
    # all heads of a layer: exactly what the layer's attention adds to the residual stream (bias aside)
    whole = info.out_proj_weight(1).detach() @ values[1].flatten()
    expected = whole if norm is None else norm(whole)
    got = fv.function_vector(info, values, [(1, h) for h in range(info.n_heads)])
    torch.testing.assert_close(got, expected.float(), atol=1e-4, rtol=1e-4)
    # some heads of several layers: the heads' writes (through the linearised norm, if any) add up
    heads = [(0, 1), (1, 3), (1, 0)]
    parts = sum(fv.function_vector(info, values, [h]) for h in heads)
    torch.testing.assert_close(fv.function_vector(info, values, heads), parts, atol=1e-5, rtol=1e-5)
    if norm is None:
        by_hand = sum(head_writes(info, trace, l)[0, 0, h] for l, h in heads)
        torch.testing.assert_close(fv.function_vector(info, values, heads), by_hand.float(), atol=1e-5, rtol=1e-5)


def test_add_to_residual_adds_to_the_residual_stream(info):
    prompts = _prompts(2)
    ids, mask, last = fv.encode_texts(info, [p.text for p in prompts])
    vector = torch.randn(info.d_model, generator=torch.Generator().manual_seed(3))
    clean = run_with_trace(info, ids, mask, last, record=("resid",))
    with tracing.add_to_residual(info, [None, (1, vector)], positions=last):
        added = run_with_trace(info, ids, mask, last, record=("resid",))
    torch.testing.assert_close(added.resid[1][0], clean.resid[1][0])  # row 0: nothing added
    torch.testing.assert_close(added.resid[1][1, 0], clean.resid[1][1, 0] + vector, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(added.resid[0], clean.resid[0])  # below the layer: unchanged
    probs, correct = fv.answers_with_additions(info, prompts[:1], [None, (0, vector), (1, vector)])
    assert probs.shape == correct.shape == (1, 3) and probs[0, 1] != probs[0, 0]


def test_patching_results_carry_no_autograd_graph(info):
    """Chapters hand these to numpy and seaborn: nothing may require grad."""
    prompts = fv.build_fv_prompts(PAIRS, 2, n_demos=3, seed=0, fmt=FMT)
    probs, correct = fv.patched_answers(info, prompts, [[], [(0, 0)]], _means(info))
    assert not probs.requires_grad
    assert not fv.fv_scores_exact(info, prompts, _means(info)).requires_grad
    assert not fv.last_token_logits(info, torch.tensor(info.tokenizer(prompts[0].text)["input_ids"]), 2,
                                    fv.prefix_cache(info, torch.tensor(info.tokenizer(prompts[0].text)["input_ids"]))).requires_grad
