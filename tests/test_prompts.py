"""build_prompts / render_prompt / encode_prompts / label_token_ids on an in-process task."""
from __future__ import annotations

from collections import Counter

import pytest

from icl_utils import available_tasks, build_prompt_groups, build_prompts, encode_prompts, label_token_ids, load_task
from icl_utils.prompts import PromptFormat


def _class_of(task, text):
    return task.labels[task.inputs.index(text)]


# seeds ----------------------------------------------------------------------------------------------


def test_same_seed_same_prompts_different_seed_different(task):
    a = build_prompts(task, 8, demos_per_class=2, seed=0)
    b = build_prompts(task, 8, demos_per_class=2, seed=0)
    c = build_prompts(task, 8, demos_per_class=2, seed=1)
    assert [p.text for p in a] == [p.text for p in b]
    assert [p.demos for p in a] == [p.demos for p in b]
    assert [p.text for p in a] != [p.text for p in c]
    assert {p.query for p in a} != {p.query for p in c}  # the query split depends on the seed too


# queries, classes, balance ------------------------------------------------------------------------


@pytest.mark.parametrize("n_prompts", [8, 7, 2])
def test_queries_balanced_and_never_among_demos(task, n_prompts):
    prompts = build_prompts(task, n_prompts, demos_per_class=3, seed=5)
    assert len(prompts) == n_prompts
    counts = Counter(p.gold for p in prompts)
    assert set(counts) == set(task.classes)
    assert max(counts.values()) - min(counts.values()) <= 1
    all_queries = {p.query for p in prompts}
    all_demos = {x for p in prompts for x, _ in p.demos}
    assert not all_queries & all_demos  # queries are held out from every prompt's demonstrations
    for p in prompts:
        assert p.query not in [x for x, _ in p.demos]
        assert _class_of(task, p.query) == p.gold
        assert all(_class_of(task, x) == c for x, c in p.demos)
        assert Counter(c for _, c in p.demos) == {"animal": 3, "vehicle": 3}
        assert len({x for x, _ in p.demos}) == len(p.demos)  # no demonstration twice


def test_queries_cycle_through_distinct_inputs(task):
    prompts = build_prompts(task, 8, demos_per_class=2, seed=0)
    for cls in task.classes:
        queries = [p.query for p in prompts if p.gold == cls]
        assert len(set(queries)) == len(queries) == 4


def test_demonstrations_are_shuffled(task):
    prompts = build_prompts(task, 8, demos_per_class=2, seed=0)
    orders = {tuple(c for _, c in p.demos) for p in prompts}
    assert len(orders) > 1  # not always the same class order


def test_imbalanced_counts_via_dict(task):
    prompts = build_prompts(task, 6, demos_per_class={"animal": 3, "vehicle": 1}, seed=2)
    for p in prompts:
        assert Counter(c for _, c in p.demos) == {"animal": 3, "vehicle": 1}
        assert p.query not in [x for x, _ in p.demos]


def test_explicit_order(task):
    order = ["vehicle", "animal", "animal", "vehicle", "animal"]
    prompts = build_prompts(task, 4, order=order, demos_per_class=1, seed=0)
    for p in prompts:
        assert [c for _, c in p.demos] == order
        assert all(_class_of(task, x) == c for x, c in p.demos)
        assert p.query not in [x for x, _ in p.demos]


def test_order_with_unknown_class_and_too_many_demos_raise(task):
    with pytest.raises(ValueError, match="unknown classes"):
        build_prompts(task, 2, order=["animal", "plant"])
    with pytest.raises(ValueError, match="demonstration pool"):
        build_prompts(task, 2, demos_per_class=20)


# text ----------------------------------------------------------------------------------------------


def test_prompt_text_format_and_label_spans(task):
    (p,) = build_prompts(task, 1, demos_per_class=1, seed=0)
    words = {"animal": "foo", "vehicle": "bar"}  # foo/bar in task.classes order
    assert p.label_words == words
    expected = "".join(f"Input: {x}\nLabel: {words[c]}\n\n" for x, c in p.demos) + f"Input: {p.query}\nLabel:"
    assert p.text == expected
    assert len(p.label_spans) == len(p.demos)
    for (s, e), (_, c) in zip(p.label_spans, p.demos):
        assert p.text[s:e] == words[c]
        assert p.text[s - 7 : s] == "Label: "


def test_meaningful_and_custom_label_words(task):
    (p,) = build_prompts(task, 1, demos_per_class=1, label_words="meaningful")
    assert p.label_words == {"animal": "animal", "vehicle": "vehicle"}
    (q,) = build_prompts(task, 1, demos_per_class=1, label_words=["baz", "x"])
    assert q.label_words == {"animal": "baz", "vehicle": "x"}
    with pytest.raises(ValueError):
        build_prompts(task, 1, label_words=["foo"])


def test_custom_format(task):
    fmt = PromptFormat(input_prefix="Q: ", label_prefix="\nA:", separator="\n")
    (p,) = build_prompts(task, 1, demos_per_class=1, fmt=fmt)
    assert p.text.endswith(f"Q: {p.query}\nA:")
    for (s, e), (_, c) in zip(p.label_spans, p.demos):
        assert p.text[s:e] == p.label_words[c]


# tokenisation ---------------------------------------------------------------------------------------


def test_label_token_ids(tokenizer):
    ids = label_token_ids(tokenizer, ["foo", "bar"])
    assert ids == tokenizer.convert_tokens_to_ids(["foo", "bar"])
    assert ids[0] != ids[1]


def test_encode_prompts_label_and_last_positions(info, prompts):
    tok = info.tokenizer
    batch = encode_prompts(info, prompts)
    word_id = dict(zip(["animal", "vehicle"], label_token_ids(tok, ["foo", "bar"])))
    colon = tok.convert_tokens_to_ids(":")
    n, seq = batch.input_ids.shape
    assert n == len(prompts)
    assert batch.label_position_tensor().shape == (n, 4)
    for b, p in enumerate(prompts):
        ids = tok(p.text)["input_ids"]
        length = len(ids)
        # label positions hold the label word's token, in demonstration order
        assert batch.label_classes[b] == [c for _, c in p.demos]
        got = batch.input_ids[b, batch.label_positions[b]].tolist()
        assert got == [word_id[c] for c in batch.label_classes[b]]
        assert batch.label_positions[b] == sorted(batch.label_positions[b])
        # and no other position does
        row = batch.input_ids[b, :length]
        assert (row.eq(word_id["animal"]) | row.eq(word_id["vehicle"])).sum() == 4
        # the last position is the last real token, the ':' of the query's "Label:"
        last = batch.last_positions[b].item()
        assert last == length - 1
        assert batch.input_ids[b, last] == colon
        # right padding
        assert batch.attention_mask[b].tolist() == [1] * length + [0] * (seq - length)
        assert batch.input_ids[b, :length].tolist() == ids
        assert (batch.input_ids[b, length:] == tok.pad_token_id).all()
    assert batch.gold == [p.gold for p in prompts]
    assert batch.attention_mask.sum(1).min() < seq  # there was padding


def test_encode_prompts_with_uneven_demo_counts_keeps_ragged_label_positions(info, task):
    a = build_prompts(task, 1, demos_per_class=1, seed=0)
    b = build_prompts(task, 1, demos_per_class=2, seed=0)
    batch = encode_prompts(info, a + b)
    assert [len(x) for x in batch.label_positions] == [2, 4]


def test_zero_shot_prompts(info, task):
    prompts = build_prompts(task, 4, demos_per_class=0, seed=0)
    for p in prompts:
        assert p.demos == [] and p.label_spans == []
        assert p.text == f"Input: {p.query}\nLabel:"
    batch = encode_prompts(info, prompts)
    assert batch.label_positions == [[]] * 4
    assert batch.last_positions.tolist() == (batch.attention_mask.sum(1) - 1).tolist()


def test_queries_never_among_demos_even_with_duplicate_inputs(task):
    from icl_utils.tasks import Task

    doubled = Task("doubled", task.inputs * 2, task.labels * 2, task.classes)
    for seed in range(3):
        prompts = build_prompts(doubled, 8, demos_per_class=2, seed=seed)
        for p in prompts:
            assert p.query not in [x for x, _ in p.demos], f"seed {seed}: query {p.query!r} is also a demo"


def test_prompt_groups_share_demonstrations_and_balance_queries(task):
    from icl_utils.prompts import build_prompt_groups

    groups = build_prompt_groups(task, 3, 4, demos_per_class=2, seed=1)
    assert len(groups) == 3 and all(len(g) == 4 for g in groups)
    for group in groups:
        assert len({tuple(p.demos) for p in group}) == 1
        assert [p.gold for p in group] == [task.classes[i % 2] for i in range(4)]
        assert len({p.query for p in group}) == 4
        assert not {p.query for p in group} & {x for x, _ in group[0].demos}
    assert groups[0][0].demos != groups[1][0].demos
    assert build_prompt_groups(task, 3, 4, demos_per_class=2, seed=1)[2][3].text == groups[2][3].text


def test_input_positions_cover_each_input_text(info, task):
    from icl_utils.prompts import input_positions, input_spans

    prompts = build_prompts(task, 8, demos_per_class=2, seed=0)
    batch = encode_prompts(info, prompts)
    found = input_positions(info, batch)
    assert len(found.demos) == len(found.query) == len(prompts)
    for row, p in enumerate(prompts):
        decode = lambda idx: info.tokenizer.decode(batch.input_ids[row, idx].tolist()).strip()  # noqa: E731
        assert len(found.demos[row]) == len(p.demos)
        for (text, _), tokens, label in zip(p.demos, found.demos[row], batch.label_positions[row]):
            assert decode(tokens) == text and tokens == list(range(tokens[0], tokens[-1] + 1))
            assert tokens[-1] < label
        assert decode(found.query[row]) == p.query
        assert found.query[row][-1] < batch.last_positions[row]
        spans, query_span = input_spans(p)
        assert [p.text[s:e] for s, e in spans] == [x for x, _ in p.demos] and p.text[slice(*query_span)] == p.query


def test_input_positions_refuse_a_mismatched_format_or_batch(info, task):
    from icl_utils.prompts import input_positions, input_spans

    prompts = build_prompts(task, 2, demos_per_class=2, seed=0)
    with pytest.raises(ValueError, match="PromptFormat"):
        input_spans(prompts[0], PromptFormat(input_prefix="Q: "))
    batch = encode_prompts(info, prompts)
    batch.input_ids[0, 1] += 1
    with pytest.raises(ValueError, match="not prompt 0"):
        input_positions(info, batch)


def test_prompt_groups_with_distinct_queries(task):
    from icl_utils.prompts import build_prompt_groups

    groups = build_prompt_groups(task, n_groups=3, queries_per_group=2, demos_per_class=2, seed=1, distinct_queries=True)
    queries = [p.query for g in groups for p in g]
    assert len(set(queries)) == len(queries) == 6  # no query repeats across groups
    for g in groups:
        assert len({tuple(p.demos) for p in g}) == 1  # one demonstration set per group
        assert [p.gold for p in g] == task.classes  # balanced within the group
        demo_inputs = {x for x, _ in g[0].demos}
        assert not demo_inputs & set(queries)  # queries never among the demonstrations
    same = build_prompt_groups(task, n_groups=3, queries_per_group=2, demos_per_class=2, seed=1)
    assert len({p.query for g in same for p in g}) == 2  # the default: every group asks the same queries


# ----------------------------------------------------------------------------------------------
# Pools fixed by the data: selection and evaluation queries never meet


def test_pools_are_disjoint_and_fixed_by_the_data(task):
    from icl_utils.prompts import task_pools

    pools = task_pools(task)
    for cls in task.classes:
        sets = [set(pools[name][cls]) for name in ("demonstrations", "selection", "evaluation")]
        assert sum(map(len, sets)) == len(set(task.inputs_of(cls)))
        assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    # the same whatever the order of the task's rows
    shuffled = type(task)(task.name, task.inputs[::-1], task.labels[::-1], task.classes)
    assert task_pools(shuffled) == pools


@pytest.mark.parametrize("name", available_tasks())
def test_no_shipped_task_lets_selection_queries_into_evaluation(name):
    from icl_utils.prompts import task_pools

    real = load_task(name)
    select = build_prompts(real, 64, demos_per_class=4, pool="selection", seed=0)
    for seed in range(3):
        evaluate = build_prompts(real, 64, demos_per_class=4, pool="evaluation", seed=seed)
        assert not {p.query for p in select} & {p.query for p in evaluate}
        groups = build_prompt_groups(real, 2, 8, demos_per_class=4, pool="evaluation", seed=seed, distinct_queries=True)
        assert not {p.query for p in select} & {p.query for g in groups for p in g}
    demos = {x for cls_items in task_pools(real)["demonstrations"].values() for x in cls_items}
    assert not demos & {p.query for p in select}


def test_asking_for_more_distinct_queries_than_the_pool_holds_says_how_many_fit(task):
    with pytest.raises(ValueError, match="Use at most"):
        build_prompt_groups(task, 50, 4, demos_per_class=1, distinct_queries=True)


@pytest.mark.parametrize("bad", [-1, 1.5])
def test_bad_demo_counts_are_refused_early(task, bad):
    with pytest.raises(ValueError, match="whole number"):
        build_prompts(task, 2, demos_per_class=bad)


def test_identical_label_words_are_refused_when_building(task):
    from icl_utils import LabelWordError

    with pytest.raises(LabelWordError, match="repeat"):
        build_prompts(task, 2, demos_per_class=1, label_words=("foo", "foo"))


# bad inputs: refused when the prompts are built, with what to do ----------------------------------


@pytest.mark.parametrize("words,match", [
    ("foo", "one word per class"),  # a single string other than "foo/bar" or "meaningful"
    (("foo",), "one label word per class"),
    (("foo", ""), "empty"),
    ((" foo", "bar"), "bare word"),
])
def test_bad_label_words_are_refused_when_building_and_say_what_to_do(task, words, match):
    for build in (lambda: build_prompts(task, 2, demos_per_class=1, label_words=words),
                  lambda: build_prompt_groups(task, 1, 2, demos_per_class=1, label_words=words)):
        with pytest.raises(ValueError, match=match):
            build()


def test_label_words_that_are_not_strings_are_refused(task):
    with pytest.raises(TypeError, match="strings"):
        build_prompts(task, 2, demos_per_class=1, label_words=(1, 2))


def test_label_word_dict_must_name_every_class(task):
    with pytest.raises(ValueError, match=r"missing \['vehicle'\]"):
        build_prompts(task, 2, demos_per_class=1, label_words={"animal": "foo", "plant": "bar"})
    (p,) = build_prompts(task, 1, demos_per_class=1, label_words={"vehicle": "bar", "animal": "foo"})
    assert p.label_words == {"vehicle": "bar", "animal": "foo"}


def test_more_classes_than_label_words_suggests_keeping_two_classes(task):
    from icl_utils.tasks import Task

    three = Task("three", task.inputs + ["foo", "bar", "baz", "x"], task.labels + ["other"] * 4,
                 task.classes + ["other"])
    with pytest.raises(ValueError, match=r"classes=\[first, second\]"):
        build_prompts(three, 3, demos_per_class=1)
    assert len(build_prompts(three, 3, demos_per_class=1, label_words=("foo", "bar", "baz"))) == 3


@pytest.mark.parametrize("bad", [-1, 2.0, True])
def test_bad_demo_counts_say_what_to_pass(task, bad):
    with pytest.raises(ValueError, match="demos_per_class=8"):
        build_prompt_groups(task, 1, 2, demos_per_class=bad)


def test_demo_count_dict_must_count_every_class(task):
    with pytest.raises(ValueError, match=r"no count for \['vehicle'\]"):
        build_prompts(task, 2, demos_per_class={"animal": 1})
    assert build_prompts(task, 2, demos_per_class={"animal": 1, "vehicle": 0})[0].demos[0][1] == "animal"


def test_too_many_demonstrations_say_what_to_do(task):
    with pytest.raises(ValueError, match="use fewer demonstrations"):
        build_prompts(task, 2, demos_per_class=100)


@pytest.mark.parametrize("pool", ["test", "demonstrations"])
def test_unknown_or_wrong_pool_is_refused(task, pool):
    with pytest.raises(ValueError, match="'selection'"):
        build_prompts(task, 2, demos_per_class=1, pool=pool)


def test_a_task_name_instead_of_a_task_says_load_task(task):
    from icl_utils import calibration_prompts, design_prompts, task_pools

    for call in (lambda: build_prompts("animal_vehicle", 2), lambda: build_prompt_groups("animal_vehicle", 1, 2),
                 lambda: task_pools("animal_vehicle"), lambda: design_prompts("animal_vehicle", 1, 2),
                 lambda: calibration_prompts("animal_vehicle", build_prompts(task, 2, demos_per_class=1))):
        with pytest.raises(TypeError, match=r"iu.load_task\('animal_vehicle'\)"):
            call()


def test_calibration_prompts_of_no_prompts_are_refused(task):
    from icl_utils import calibration_prompts

    with pytest.raises(ValueError, match="at least one prompt"):
        calibration_prompts(task, [])


def test_encode_prompts_refuses_text_a_single_prompt_and_nothing(info, task):
    prompts = build_prompts(task, 2, demos_per_class=1)
    with pytest.raises(TypeError, match=r"wrap a single prompt in a list: \[prompt\]"):
        encode_prompts(info, prompts[0])
    with pytest.raises(TypeError, match="ICLPrompt objects"):
        encode_prompts(info, ["Input: dog\nLabel:"])
    with pytest.raises(ValueError, match="at least one prompt: build them"):
        encode_prompts(info, [])


def test_label_token_ids_wants_a_list_of_words(tokenizer):
    with pytest.raises(TypeError, match=r"\['foo', 'bar'\]"):
        label_token_ids(tokenizer, "foo")
    with pytest.raises(ValueError, match="list of label words"):
        label_token_ids(tokenizer, [])
