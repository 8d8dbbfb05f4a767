"""Attention knock-out (icl_utils.knockout) on the three tiny random models."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import icl_utils
from icl_utils import tracing
from icl_utils.evaluation import last_position_hidden
from icl_utils.knockout import (
    blocking_mask,
    knock_out,
    label_demo_pairs,
    last_position_runs,
    last_query_pairs,
    random_pairs,
    shared_prefix_runs,
)
from icl_utils.prompts import input_positions
from icl_utils.tasks import Task
from icl_utils.tracing import run_with_trace

from conftest import ANIMALS, EXTRA_WORDS, VEHICLES, all_positions


def _no_pairs(batch):
    return [[] for _ in range(len(batch.prompts))]


@pytest.fixture
def inputs(info, batch):
    return input_positions(info, batch)


# masks and pairs ------------------------------------------------------------------------------------


def test_blocking_mask_marks_exactly_the_pairs(batch):
    pairs = [[(5, [1, 3])] if row == 0 else [] for row in range(len(batch.prompts))]
    mask = blocking_mask(batch, pairs)
    assert mask.shape == (len(batch.prompts), batch.input_ids.shape[1], batch.input_ids.shape[1])
    assert mask.sum() == 2 and mask[0, 5, 1] and mask[0, 5, 3]


def test_blocking_mask_refuses_bad_pairs(batch):
    length = int(batch.attention_mask[0].sum())
    with pytest.raises(ValueError, match="pairs has"):
        blocking_mask(batch, [[]])
    with pytest.raises(ValueError, match="cannot block"):
        blocking_mask(batch, [[(length, [1])]] + _no_pairs(batch)[1:])
    with pytest.raises(ValueError, match="from itself"):
        blocking_mask(batch, [[(4, [4])]] + _no_pairs(batch)[1:])


def test_condition_pairs_point_at_the_inputs(batch, inputs):
    labels = label_demo_pairs(batch, inputs)
    last = last_query_pairs(batch, inputs)
    for row in range(len(batch.prompts)):
        assert [q for q, _ in labels[row]] == batch.label_positions[row]
        for (q, keys), demo in zip(labels[row], inputs.demos[row]):
            assert keys == demo and max(keys) < q
        assert last[row] == [(int(batch.last_positions[row]), inputs.query[row])]


def test_random_pairs_match_sizes_and_avoid_the_blocked_keys(batch, inputs):
    pairs = label_demo_pairs(batch, inputs)
    control = random_pairs(pairs, seed=3)
    assert control == random_pairs(pairs, seed=3)
    for row_pairs, row_control in zip(pairs, control):
        for (q, keys), (q2, keys2) in zip(row_pairs, row_control):
            assert q2 == q and len(keys2) == len(keys) == len(set(keys2))
            assert not set(keys2) & set(keys) and all(0 < k < q for k in keys2)
    with pytest.raises(ValueError, match="other earlier positions in all"):
        random_pairs([[(2, [1])]])


def _long_input_task() -> Task:
    """Inputs of 12 words: the first demonstration's text is longer than what precedes its label."""
    fillers = EXTRA_WORDS[8:]  # big red old the a
    animals = [" ".join([a] + [fillers[(i + j) % len(fillers)] for j in range(11)]) for i, a in enumerate(ANIMALS)]
    vehicles = [" ".join([v] + [fillers[(i + j) % len(fillers)] for j in range(11)]) for i, v in enumerate(VEHICLES)]
    return Task("long_inputs", inputs=animals + vehicles, labels=["animal"] * 12 + ["vehicle"] * 12,
                classes=["animal", "vehicle"])


@pytest.mark.parametrize("whole", [False, True])
def test_random_pairs_carry_a_shortfall_to_later_positions(whole, bundles):
    info = dataclasses.replace(bundles["llama"].info, max_positions=None)  # tokens only: no model runs them
    prompts = icl_utils.build_prompts(_long_input_task(), 4, demos_per_class=2, seed=0)
    batch = icl_utils.encode_prompts(info, prompts)
    pairs = label_demo_pairs(batch, input_positions(info, batch), whole=whole)
    first_q, first_keys = pairs[0][0]
    assert len(set(range(1, first_q)) - set(first_keys)) < len(first_keys)  # the old rule raised here
    control = random_pairs(pairs, seed=1)
    for row, (row_pairs, row_control) in enumerate(zip(pairs, control)):
        assert [q for q, _ in row_control] == [q for q, _ in row_pairs]
        assert sum(len(k) for _, k in row_control) == sum(len(k) for _, k in row_pairs)
        for (q, keys), (_, drawn) in zip(row_pairs, row_control):
            assert len(drawn) == len(set(drawn)) and not set(drawn) & set(keys) and all(0 < k < q for k in drawn)
        assert len(row_control[0][1]) < len(row_pairs[0][1])  # the first label took what it could ...
        assert any(len(c) > len(k) for (_, k), (_, c) in zip(row_pairs[1:], row_control[1:]))  # later ones the rest
    assert (blocking_mask(batch, control).sum((1, 2)) == blocking_mask(batch, pairs).sum((1, 2))).all()


def test_random_pairs_fall_back_on_earlier_positions():
    (row,) = random_pairs([[(10, [9]), (3, [1, 2])]], seed=0)  # position 3 has no other earlier position
    assert row[0][0] == 10 and len(row[0][1]) == 3 and 9 not in row[0][1] and row[1] == (3, [])


# the knock-out itself --------------------------------------------------------------------------------


def test_knocked_out_weights_are_zero_and_rows_sum_to_one(info, batch, inputs):
    pairs = label_demo_pairs(batch, inputs)
    blocked = blocking_mask(batch, pairs)
    positions = all_positions(batch)
    clean = run_with_trace(info, batch.input_ids, batch.attention_mask, positions, record=("attn", "logits"))
    with knock_out(info, [0], blocked):
        edited = run_with_trace(info, batch.input_ids, batch.attention_mask, positions, record=("attn", "logits"))
    attn = edited.attn[0]  # (batch, heads, seq, seq)
    assert attn.masked_select(blocked[:, None].expand_as(attn)).abs().max() == 0
    assert clean.attn[0].masked_select(blocked[:, None].expand_as(attn)).max() > 0.01  # there was something to block
    mask = batch.attention_mask.bool()
    torch.testing.assert_close(attn.sum(-1)[mask[:, None].expand(-1, info.n_heads, -1)],
                               torch.ones(int(mask.sum()) * info.n_heads), atol=1e-5, rtol=0)
    # unblocked rows untouched; renormalised rows keep the clean ratios among the keys left
    touched = blocked.any(-1)[:, None].expand(-1, info.n_heads, -1)
    torch.testing.assert_close(attn[~touched], clean.attn[0][~touched], atol=0, rtol=0)
    kept = clean.attn[0].masked_fill(blocked[:, None], 0)
    torch.testing.assert_close(attn[touched], (kept / kept.sum(-1, keepdim=True))[touched], atol=1e-6, rtol=0)
    # layer 1 was not knocked out, but it reads changed inputs, and the output changes
    assert not torch.allclose(edited.logits[mask], clean.logits[mask], atol=1e-4)


def test_knock_out_matches_minus_infinity_logits(info, batch, inputs):
    """Zero-and-renormalise equals a -inf score before the softmax."""
    blocked = blocking_mask(batch, last_query_pairs(batch, inputs))
    with knock_out(info, [1], blocked):
        ours = last_position_hidden(info, batch)

    def minus_inf(layer, weights, query, key):
        if layer != 1:
            return None
        return torch.softmax(weights.log().masked_fill(blocked[:, None], -torch.inf), dim=-1)

    with tracing.edit_attention(info, minus_inf):
        reference = last_position_hidden(info, batch)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


def test_nothing_blocked_gives_the_clean_run(info, batch):
    clean = last_position_hidden(info, batch)
    with knock_out(info, range(info.n_layers), blocking_mask(batch, _no_pairs(batch))):
        same = last_position_hidden(info, batch)
    # the clean run takes the fused attention kernel, a knock-out the eager path: equal to rounding
    torch.testing.assert_close(same, clean, atol=1e-5, rtol=1e-5)


def test_knock_out_checks_its_input(info, batch, inputs):
    blocked = blocking_mask(batch, label_demo_pairs(batch, inputs))
    with pytest.raises(ValueError, match="out of range"):
        with knock_out(info, [info.n_layers], blocked):
            pass
    with pytest.raises(ValueError, match="seq, seq"):
        with knock_out(info, [0], blocked[0]):
            pass
    with pytest.raises(ValueError, match="built for"):
        with knock_out(info, [0], blocked[:2]):
            last_position_hidden(info, batch)
    assert not tracing.interventions(info).editors  # removed after the exception
    everything = torch.zeros_like(blocked)
    everything[:, 3, :3] = True  # position 3 may read only itself ...
    everything[:, 3, 3] = False
    with knock_out(info, [0], everything):
        last_position_hidden(info, batch)  # ... which is allowed


def test_editor_removed_after_an_exception(info, batch, inputs):
    blocked = blocking_mask(batch, label_demo_pairs(batch, inputs))
    with pytest.raises(RuntimeError, match="boom"):
        with knock_out(info, [0], blocked):
            assert len(tracing.interventions(info).editors) == 1
            raise RuntimeError("boom")
    assert not tracing.interventions(info).editors
    clean = last_position_hidden(info, batch)
    torch.testing.assert_close(last_position_hidden(info, batch), clean, atol=0, rtol=0)


# the cached last-position runs --------------------------------------------------------------------


def test_last_position_runs_equal_full_runs(info, batch, inputs):
    last = blocking_mask(batch, last_query_pairs(batch, inputs))
    control = blocking_mask(batch, random_pairs(last_query_pairs(batch, inputs), seed=1))
    settings = [((), None), ([0], last), (range(info.n_layers), last), ([1], control)]
    fast = last_position_runs(info, batch, settings)
    assert fast.shape == (len(settings), len(batch.prompts), info.d_model)
    for (layers, blocked), got in zip(settings, fast):
        with knock_out(info, layers, blocking_mask(batch, _no_pairs(batch)) if blocked is None else blocked):
            expected = last_position_hidden(info, batch)
        torch.testing.assert_close(got, expected.float(), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(fast[0], fast[2], atol=1e-3)  # the knock-out does something
    assert not tracing.interventions(info).editors


def test_last_position_runs_refuse_other_rows(info, batch, inputs):
    blocked = blocking_mask(batch, label_demo_pairs(batch, inputs))
    with pytest.raises(ValueError, match="last position only"):
        last_position_runs(info, batch, [([0], blocked)])
    with pytest.raises(ValueError, match="out of range"):
        last_position_runs(info, batch, [([-1], None)])


def test_whole_text_pairs_cover_each_demonstration(batch, inputs):
    labels = label_demo_pairs(batch, inputs, whole=True)
    last = last_query_pairs(batch, inputs, whole=True)
    for row in range(len(batch.prompts)):
        positions = batch.label_positions[row]
        for j, ((q, keys), demo) in enumerate(zip(labels[row], inputs.demos[row])):
            assert q == positions[j] and set(demo) <= set(keys)
            assert keys == list(range(positions[j - 1] + 1 if j else 1, q))
        (q, keys), = last[row]
        assert q == int(batch.last_positions[row]) and set(inputs.query[row]) <= set(keys)
        assert keys[0] == positions[-1] + 1 and keys[-1] == q - 1


# the cached runs over shared demonstrations ----------------------------------------------------------


@pytest.fixture
def group_batch(info, task):
    """One demonstration set with six queries (their lengths differ: some inputs are two words)."""
    (group,) = icl_utils.build_prompt_groups(task, 1, 6, demos_per_class=2, seed=0)
    group = group[:5] + [icl_utils.prompts.render_prompt(group[0].demos, "big car", "vehicle", group[0].label_words)]
    batch = icl_utils.encode_prompts(info, group)
    assert batch.attention_mask.sum(1).unique().numel() > 1
    return batch


def _full_runs(info, batch, settings):
    out = []
    for layers, blocked in settings:
        with knock_out(info, layers, blocking_mask(batch, _no_pairs(batch)) if blocked is None else blocked):
            out.append(last_position_hidden(info, batch).float())
    return torch.stack(out)


def test_shared_prefix_runs_equal_full_runs(info, group_batch):
    batch = group_batch
    ip = input_positions(info, batch)
    n = len(batch.prompts)
    one = lambda pairs: blocking_mask(batch, [pairs[0]] * n)  # noqa: E731  (the demonstrations are shared)
    demo, whole = label_demo_pairs(batch, ip), label_demo_pairs(batch, ip, whole=True)
    settings = [((), None), ([0], one(demo)), (range(info.n_layers), one(whole)),
                ([1], one(random_pairs(demo[:1], seed=2))), ([0, 1], one(random_pairs(whole[:1], seed=3)))]
    fast = shared_prefix_runs(info, batch, settings, settings_per_pass=2)  # several passes
    assert fast.shape == (len(settings), n, info.d_model)
    full = _full_runs(info, batch, settings)
    torch.testing.assert_close(fast, full, atol=1e-4, rtol=1e-4)
    # settings from layer 0 only: nothing to take from a clean run, none recorded
    torch.testing.assert_close(shared_prefix_runs(info, batch, [settings[1], settings[2]]), full[1:3], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(fast[0], fast[2], atol=1e-3)  # the knock-out does something
    assert not tracing.interventions(info).editors


def test_shared_prefix_runs_refuse_what_they_cannot_replay(info, group_batch, batch):
    ip = input_positions(info, group_batch)
    n = len(group_batch.prompts)
    last = blocking_mask(group_batch, last_query_pairs(group_batch, ip))
    with pytest.raises(ValueError, match="shared demonstrations"):
        shared_prefix_runs(info, group_batch, [([0], last)])
    pairs = label_demo_pairs(group_batch, ip)
    differing = blocking_mask(group_batch, [pairs[0]] + [random_pairs(pairs[:1], seed=1)[0]] * (n - 1))
    with pytest.raises(ValueError, match="differs between prompts"):
        shared_prefix_runs(info, group_batch, [([0], differing)])
    with pytest.raises(ValueError, match="must have shape"):
        shared_prefix_runs(info, group_batch, [([0], last[:2])])
    with pytest.raises(ValueError, match="out of range"):
        shared_prefix_runs(info, group_batch, [([info.n_layers], None)])


def test_last_position_runs_share_the_demonstrations(info, group_batch):
    """The shared demonstrations run once, each prompt's own tokens once: still exact."""
    batch = group_batch
    pairs = last_query_pairs(batch, input_positions(info, batch), whole=True)
    settings = [((), None), ([0], blocking_mask(batch, pairs)), ([1], blocking_mask(batch, random_pairs(pairs, seed=4)))]
    full = _full_runs(info, batch, settings)
    torch.testing.assert_close(last_position_runs(info, batch, settings), full, atol=1e-4, rtol=1e-4)
    # one prompt per pass, the shared tokens' cache copied for each
    torch.testing.assert_close(last_position_runs(info, batch, settings, pack_tokens=1), full, atol=1e-4, rtol=1e-4)


def test_last_position_runs_without_a_shared_token(info, batch, inputs):
    other = dataclasses.replace(batch, input_ids=batch.input_ids.clone())
    other.input_ids[0, 0] = (other.input_ids[0, 0] + 5) % info.vocab_size  # the first prompt starts differently
    pairs = last_query_pairs(other, inputs)
    settings = [((), None), ([1], blocking_mask(other, pairs))]
    torch.testing.assert_close(last_position_runs(info, other, settings), _full_runs(info, other, settings),
                               atol=1e-4, rtol=1e-4)


def test_shared_prefix_runs_take_the_layers_below_a_knock_out_from_one_clean_pass(info, group_batch):
    batch = group_batch
    n = len(batch.prompts)
    demo = label_demo_pairs(batch, input_positions(info, batch))
    settings = [([1], blocking_mask(batch, [demo[0]] * n)), ([1], blocking_mask(batch, random_pairs(demo[:1], seed=2) * n))]
    calls = []
    handle = info.attentions[0].register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        fast = shared_prefix_runs(info, batch, settings)
    finally:
        handle.remove()
    assert len(calls) == 2  # layer 0 ran for the clean demonstrations and the clean queries only
    torch.testing.assert_close(fast, _full_runs(info, batch, settings), atol=1e-4, rtol=1e-4)
