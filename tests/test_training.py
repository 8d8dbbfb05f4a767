"""icl_utils.training: the word-level tokenizer, the training mixture, checkpoints in a cache
folder, and the chapter's per-checkpoint measurements, on a tiny model trained for a few steps."""
from __future__ import annotations

import random

import pytest
import torch

from icl_utils import function_vectors as fv
from icl_utils import induction as ind
from icl_utils import training as tr

TINY = dict(n_layers=2, n_heads=2, d_model=16, d_ff=32, seq_len=48, batch_size=6, steps=12, lr=1e-2, warmup=2,
            checkpoints=(0, 6, 12), pairs_per_task=12, max_text_words=50, name="test")


@pytest.fixture(scope="module")
def tasks():
    return tr.training_tasks(None, pairs_per_task=12)


@pytest.fixture(scope="module")
def tokenizer(tasks):
    return tr.build_tokenizer({**tasks, **tr.held_out_tasks()}, tr.corpus_text(), max_text_words=50)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    config = tr.TrainConfig(**TINY)
    return config, root, tr.ensure_trained(config, [0], root=root, progress=False)


def test_every_task_word_is_one_token_and_prompts_read_as_the_book_builds_them(tasks, tokenizer):
    for name, pairs in {**tasks, **tr.held_out_tasks()}.items():
        for x, y in pairs:
            assert len(tokenizer(x, add_special_tokens=False)["input_ids"]) == 1 or " " in x, (name, x)
            assert tokenizer.convert_ids_to_tokens(fv.answer_ids(tokenizer, [fv.FVPrompt("", x, y)]).tolist()) == [y.split()[0]]
    prompt = fv.build_fv_prompts(tasks["successor"], 1, 3, fmt=fv.ARROW)[0]
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(prompt.text)["input_ids"])
    assert tokens[0] == "<bos>" and tokens[-2:] == [prompt.query, "->"] and tokens.count("\n") == 3
    assert "<unk>" not in tokens
    assert ind.start_tokens(tokenizer) == [tokenizer.bos_token_id]
    seqs = ind.repeated_random_tokens(tokenizer, 2, 10)
    assert seqs.shape == (2, 21) and torch.equal(seqs[:, 1:11], seqs[:, 11:])


def test_the_mixture_draws_each_kind(tasks, tokenizer):
    mixture = tr.Mixture(tokenizer, tasks, tr.corpus_text(), seq_len=40, repeat_span=(4, 8))
    batch = mixture.batch(random.Random(0), ["text", "repeats", "tasks"])
    assert batch.shape == (3, 40) and (batch[:, 0] == tokenizer.bos_token_id).all()
    repeats = batch[1, 1:].tolist()
    n = next(k for k in range(4, 9) if repeats[:k] == repeats[k : 2 * k])  # the first span, then its copy
    assert len(set(repeats[:n])) == n
    words = tokenizer.convert_ids_to_tokens(mixture.task(random.Random(1), "double"))
    assert words[1] == "->" and words[3] == "\n" and int(words[2]) == 2 * int(words[0])
    config = tr.TrainConfig(**TINY)
    kinds = tr.kinds_for(config, random.Random(0))
    assert sorted(kinds) == sorted(["text"] + ["repeats"] * 2 + ["tasks"] * 3)  # 0.2 / 0.4 / 0.4 of six rows


def test_train_config_refuses_bad_settings_and_names_its_folder_by_every_field():
    with pytest.raises(ValueError, match="end at steps"):
        tr.TrainConfig(steps=10, checkpoints=(0, 5))
    with pytest.raises(ValueError, match="multiple of n_heads"):
        tr.TrainConfig(d_model=10, n_heads=4)
    with pytest.raises(ValueError, match="sum to 1"):
        tr.TrainConfig(mixture=(("text", 0.5), ("tasks", 0.2)))
    assert tr.TrainConfig(**TINY).key() != tr.TrainConfig(**{**TINY, "lr": 2e-2}).key()
    assert tr.TrainConfig(**TINY).key() == tr.TrainConfig(**TINY).key()


def test_training_saves_checkpoints_in_the_cache_and_loads_them_instead_of_retraining(trained):
    config, root, runs = trained
    log, how = runs[0]
    assert how == "trained" and tr.is_trained(config, 0, root)
    assert set(log.loss) == {"text", "repeats", "tasks"} and len(log.steps) == config.steps
    tasks_loss = log.loss["tasks"]
    assert sum(tasks_loss[-3:]) < sum(tasks_loss[:3])  # it learns something
    assert tr.ensure_trained(config, [0], root=root, progress=False)[0][1] == "loaded"
    first, last = tr.load_checkpoint(config, 0, 0, root), tr.load_checkpoint(config, 0, 12, root)
    assert (last.n_layers, last.n_heads, last.d_head) == (2, 2, 8)
    assert not torch.equal(first.out_projs[0].weight, last.out_projs[0].weight)
    with pytest.raises(FileNotFoundError, match="train it first"):
        tr.load_checkpoint(config, 0, 7, root)


def test_checkpoint_scores_measure_every_head_and_task(trained):
    config, root, _ = trained
    tasks, held_out, mixture = tr.training_setup(config, 0, root)
    tasks = {name: tasks[name] for name in ("successor", "capitalise")}
    info = tr.load_checkpoint(config, 0, 12, root)
    seqs = ind.repeated_random_tokens(info.tokenizer, 2, 8)
    scores = tr.checkpoint_scores(info, tasks, 12, fv.ARROW, n_demos=3, n_mean=2, n_patch=2, n_eval=2,
                                  induction_seqs=seqs, held_out=held_out, mixture=mixture, n_loss_seqs=2)
    assert scores.induction.shape == scores.fv.shape == (2, 2)
    assert scores.fv_per_prompt.shape == (4, 2, 2)  # two patched prompts for each of two tasks
    assert set(scores.accuracy) == set(scores.zero_shot) == {"successor", "capitalise", "copy"}
    assert set(scores.losses) == {"text", "repeats", "repeats (copies)", "tasks"}
    assert all(0 <= a <= 1 for a in scores.accuracy.values())
