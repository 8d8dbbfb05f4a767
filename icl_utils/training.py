"""Train a small transformer on CPU and keep its checkpoints: how induction and FV heads form (chapter 9).

Yin & Steinhardt follow heads over Pythia's training checkpoints. Offline there are none, so the
book trains its own small model, a `transformers` GPTNeoX (Pythia's family) built from a config,
on a mixture in which both mechanisms pay off:

* natural text (data/text/);
* repeated random spans `r_1..r_k r_1..r_k`: copying the continuation of an earlier copy
  (induction) predicts every token of the second span;
* in-context task sequences `x1 -> y1 \\n x2 -> y2 \\n ...`, one task per sequence, drawn from many
  word-pair tasks (the book's data/fv_tasks/ plus families made here). Several tasks share their
  inputs (a number n -> n+1, n-1, 2n, ...; a word -> its first letter, last letter, length, ...), so
  the answer to a query depends on which task the demonstrations show: a latent task encoding
  (what FV heads carry) pays off. Pairs are drawn with replacement, so a query sometimes repeats an
  earlier demonstration, where induction pays off too.

A word-level tokenizer (a few thousand words, saved with each checkpoint) keeps the softmax small.
Checkpoints go to `models.cache_root() / "trained" / <name>-<config hash> / seed<N> / step<M>`
(never into git) and load through the ordinary path, `models.load_model(path)`.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .induction import TEXT_DIR
from .models import ModelInfo, cache_root, load_model
from .tasks import available_pair_tasks, load_pair_task

SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>"]
# one token per word, per run of punctuation, and per newline (the separator of demonstrations)
WORD_PATTERN = r"\n|[A-Za-zÀ-ÿ0-9']+|[^\sA-Za-zÀ-ÿ0-9']+"
SEPARATOR = " -> "  # fv.ARROW's: "x -> y\n"


# ----------------------------------------------------------------------------------------------
# Tasks: the book's word pairs plus new families with shared inputs


def _plain_words() -> list:
    """Lowercase single words of the book's capitalise task: inputs shared by the word families."""
    return [x for x, _ in load_pair_task("capitalise") if x.isalpha() and x.islower()]


NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]


def synthetic_tasks() -> dict:
    """New word-pair tasks, made here. Numbers 0-99 are single tokens; the number tasks share their
    inputs, and so do the word tasks (the capitalise inputs), so a query alone does not say which
    answer is wanted."""
    words = _plain_words()
    return {
        "successor": [(str(n), str(n + 1)) for n in range(99)],
        "predecessor": [(str(n), str(n - 1)) for n in range(1, 100)],
        "double": [(str(n), str(2 * n)) for n in range(50)],
        "add_ten": [(str(n), str(n + 10)) for n in range(90)],
        "last_digit": [(str(n), str(n % 10)) for n in range(10, 100)],
        "first_letter": [(w, w[0]) for w in words],
        "last_letter": [(w, w[-1]) for w in words],
        "length": [(w, NUMBER_WORDS[len(w)]) for w in words if len(w) < len(NUMBER_WORDS)],
    }


def held_out_tasks() -> dict:
    """Tasks never in the training mixture: copying (x -> x) needs no fact the model could have
    memorised, only the rule shown by the demonstrations."""
    return {"copy": [(w, w) for w in _plain_words()]}


def training_tasks(book_tasks=None, pairs_per_task: int | None = None) -> dict:
    """name -> [(x, y), ...]: the book's word-pair tasks (all of data/fv_tasks/ by default) and the
    synthetic families; each cut to its first `pairs_per_task` pairs (fewer facts to memorise), the
    word families to the inputs they share with capitalise, so that most inputs belong to several tasks."""
    names = available_pair_tasks() if book_tasks is None else list(book_tasks)
    tasks = {**{name: load_pair_task(name) for name in names}, **synthetic_tasks()}
    return {name: pairs[:pairs_per_task] for name, pairs in tasks.items()}


# ----------------------------------------------------------------------------------------------
# Tokenizer


def corpus_text() -> str:
    """Every .txt of data/text/, joined by blank lines (the natural-text part of the mixture)."""
    return "\n\n".join(p.read_text(encoding="utf-8").strip() for p in sorted(TEXT_DIR.glob("*.txt")))


def build_tokenizer(tasks: dict, text: str, max_text_words: int = 2500):
    """A word-level tokenizer (PreTrainedTokenizerFast): every word of every task, the numbers 0-199,
    the letters, the format tokens and the `max_text_words` most frequent words of `text`; anything
    else is <unk>. It puts <bos> before every text, as Gemma's does (induction.start_tokens)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    split = re.compile(WORD_PATTERN)
    words = Counter(split.findall(text))
    vocab = list(SPECIAL_TOKENS)
    seen = set(vocab)

    def add(token):
        if token not in seen:
            seen.add(token)
            vocab.append(token)

    for token in ["\n", "->", "Q", "A", ":", ".", ","]:
        add(token)
    for n in range(200):
        add(str(n))
    for letter in "abcdefghijklmnopqrstuvwxyz":
        add(letter)
    for pairs in tasks.values():
        for x, y in pairs:
            for token in split.findall(f"{x} {y}"):
                add(token)
    for token, _ in words.most_common(max_text_words):
        add(token)
    model = models.WordLevel({t: i for i, t in enumerate(vocab)}, unk_token="<unk>")
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r"[^\S\n]+"), behavior="removed"),
                                                 pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="isolated")])
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>")
    return fast


def _ids(tokenizer, text: str) -> list:
    """Token ids of text with no <bos>; spaces are dropped by the pre-tokenizer."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [i for i in ids if i is not None]


# ----------------------------------------------------------------------------------------------
# The training mixture


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a trained model; its hash names the checkpoint folder."""

    # Two layers are all an induction circuit needs (a previous-token head feeding a matching head);
    # a small model takes ~15 steps/s on two CPU cores, so several hundred steps fit in a minute.
    n_layers: int = 2
    n_heads: int = 4
    d_model: int = 64
    d_ff: int = 256
    seq_len: int = 64
    batch_size: int = 32
    steps: int = 800
    lr: float = 2e-3
    warmup: int = 40
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.98)
    checkpoints: tuple = (0, 50, 100, 200, 400, 600, 800)
    mixture: tuple = (("text", 0.1), ("repeats", 0.4), ("tasks", 0.5))  # share of sequences of each kind
    book_tasks: tuple | None = None  # None: every task in data/fv_tasks/
    repeat_span: tuple = (4, 16)  # lengths of the random spans that repeat: short ones put the copy near, so it is found sooner
    repeat_pool: int | None = None  # draw the random spans from this many fixed tokens (None: every word token)
    rotary_pct: float = 1.0  # Pythia rotates a quarter of each head; all of it lets positional heads form sooner
    tie_embeddings: bool = False  # untied: inputs and answers embed separately (tying did not speed induction in trials)
    pairs_per_task: int | None = 24  # fewer facts to memorise in a few minutes
    max_text_words: int = 300
    name: str = "tiny-neox"

    def __post_init__(self):
        if self.checkpoints[-1] != self.steps or sorted(set(self.checkpoints)) != list(self.checkpoints):
            raise ValueError(f"checkpoints must be increasing and end at steps={self.steps}: {self.checkpoints}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not a multiple of n_heads={self.n_heads}")
        if abs(sum(share for _, share in self.mixture) - 1) > 1e-6:
            raise ValueError(f"the mixture's shares must sum to 1: {self.mixture}")

    def key(self) -> str:
        """<name>-<hash of every field>: a changed setting never reads another setting's checkpoints."""
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True, default=list).encode()).hexdigest()[:10]
        return f"{self.name}-{digest}"


class Mixture:
    """Draws training sequences (seq_len tokens, <bos> first) of the three kinds."""

    def __init__(self, tokenizer, tasks: dict, text: str, seq_len: int, repeat_span: tuple = (4, 16),
                 repeat_pool: int | None = None):
        self.tokenizer, self.seq_len, self.repeat_span = tokenizer, seq_len, tuple(repeat_span)
        self.bos = tokenizer.bos_token_id
        self.text_ids = _ids(tokenizer, text)
        if len(self.text_ids) < 2 * seq_len:
            raise ValueError(f"the text has {len(self.text_ids)} tokens, too few for sequences of {seq_len}")
        self.task_names = list(tasks)
        self.pair_ids = {name: [(_ids(tokenizer, x), _ids(tokenizer, y)) for x, y in pairs] for name, pairs in tasks.items()}
        self.arrow, self.newline = _ids(tokenizer, "->"), _ids(tokenizer, "\n")
        self.random_pool = repeat_pool_ids(tokenizer, repeat_pool)

    def text(self, rng: random.Random) -> list:
        start = rng.randrange(len(self.text_ids) - self.seq_len)
        return self.text_ids[start : start + self.seq_len - 1]

    def repeats(self, rng: random.Random) -> list:
        """Random spans, each followed by its copy, until the sequence is full."""
        out = []
        while len(out) < self.seq_len - 1:
            span = rng.sample(self.random_pool, rng.randint(*self.repeat_span))
            out += span + span
        return out[: self.seq_len - 1]

    def task(self, rng: random.Random, name: str | None = None) -> list:
        """One task's pairs `x -> y \\n`, drawn with replacement, until the sequence is full."""
        pairs = self.pair_ids[name or rng.choice(self.task_names)]
        out = []
        while len(out) < self.seq_len - 1:
            x, y = rng.choice(pairs)
            out += x + self.arrow + y + self.newline
        return out[: self.seq_len - 1]

    def batch(self, rng: random.Random, kinds: list) -> torch.Tensor:
        """(len(kinds), seq_len): one sequence of each kind named ("text", "repeats", "tasks")."""
        draw = {"text": self.text, "repeats": self.repeats, "tasks": self.task}
        return torch.tensor([[self.bos] + draw[kind](rng) for kind in kinds])


def repeat_pool_ids(tokenizer, size: int | None = None) -> list:
    """The tokens random spans are drawn from: every ordinary word token (induction.word_token_ids),
    or a fixed subset of `size` of them (the same for every seed), which makes copying pay off sooner."""
    from .induction import word_token_ids

    pool = word_token_ids(tokenizer).tolist()
    if size is not None:
        pool = sorted(random.Random(0).sample(pool, size))
    return pool


def kinds_for(config: TrainConfig, rng: random.Random) -> list:
    """The kind of each sequence of one batch, in the mixture's shares (rounded, the rest tasks)."""
    counts = {kind: round(share * config.batch_size) for kind, share in config.mixture}
    kinds = [kind for kind, n in counts.items() for _ in range(n)][: config.batch_size]
    kinds += [config.mixture[-1][0]] * (config.batch_size - len(kinds))
    rng.shuffle(kinds)
    return kinds


def model_config(config: TrainConfig, vocab_size: int, tokenizer):
    """A GPTNeoX config (Pythia's family: rotary on a quarter of each head, parallel attention and MLP)."""
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(
        vocab_size=vocab_size, hidden_size=config.d_model, num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads, intermediate_size=config.d_ff, max_position_embeddings=config.seq_len,
        rotary_pct=config.rotary_pct, use_parallel_residual=True, attention_dropout=0.0, hidden_dropout=0.0,
        tie_word_embeddings=config.tie_embeddings, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


# ----------------------------------------------------------------------------------------------
# Training with checkpoints in the cache


def run_dir(config: TrainConfig, seed: int, root: Path | None = None) -> Path:
    return Path(root or cache_root()) / "trained" / config.key() / f"seed{seed}"


def checkpoint_dir(config: TrainConfig, seed: int, step: int, root: Path | None = None) -> Path:
    return run_dir(config, seed, root) / f"step{step}"


def is_trained(config: TrainConfig, seed: int, root: Path | None = None) -> bool:
    """Whether every checkpoint of this run and its log are in the cache."""
    folder = run_dir(config, seed, root)
    return (folder / "log.json").exists() and all(
        (checkpoint_dir(config, seed, s, root) / "config.json").exists() for s in config.checkpoints)


@dataclass
class TrainingLog:
    seed: int
    seconds: float
    tokens_per_second: float
    steps: list = field(default_factory=list)  # step of each logged loss
    loss: dict = field(default_factory=dict)  # kind -> training loss at each logged step (mean over the kind's rows)


def train(config: TrainConfig, seed: int, root: Path | None = None, progress: bool = True) -> TrainingLog:
    """Train one seed from scratch, saving model + tokenizer at every step in config.checkpoints and
    the per-kind training loss in log.json. Returns the log."""
    from transformers import GPTNeoXForCausalLM

    tasks = training_tasks(config.book_tasks, config.pairs_per_task)
    text = corpus_text()
    tokenizer = build_tokenizer({**tasks, **held_out_tasks()}, text, config.max_text_words)
    mixture = Mixture(tokenizer, tasks, text, config.seq_len, config.repeat_span, config.repeat_pool)
    torch.manual_seed(seed)
    model = GPTNeoXForCausalLM(model_config(config, len(tokenizer), tokenizer))
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimiser = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, betas=tuple(config.betas))
    schedule = lambda step: min(1.0, (step + 1) / config.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / config.steps)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, schedule)
    rng = random.Random(seed)
    log = TrainingLog(seed, 0.0, 0.0, loss={kind: [] for kind, _ in config.mixture})
    folder = run_dir(config, seed, root)
    folder.mkdir(parents=True, exist_ok=True)

    def save(step):
        target = checkpoint_dir(config, seed, step, root)
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)

    start = time.time()
    for step in tqdm(range(config.steps + 1), desc=f"training seed {seed}", disable=not progress, leave=False):
        if step in config.checkpoints:
            save(step)
        if step == config.steps:
            break
        kinds = kinds_for(config, rng)
        batch = mixture.batch(rng, kinds)
        logits = model(input_ids=batch).logits[:, :-1]
        losses = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="none")
        per_row = losses.view(len(batch), -1).mean(1)
        per_row.mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        scheduler.step()
        optimiser.zero_grad(set_to_none=True)
        log.steps.append(step)
        for kind in log.loss:
            rows = [i for i, k in enumerate(kinds) if k == kind]
            log.loss[kind].append(per_row[rows].mean().item() if rows else float("nan"))
    log.seconds = time.time() - start
    log.tokens_per_second = config.steps * config.batch_size * config.seq_len / max(log.seconds, 1e-9)
    (folder / "log.json").write_text(json.dumps(asdict(log)))
    return log


def ensure_trained(config: TrainConfig, seeds, root: Path | None = None, progress: bool = True) -> dict:
    """seed -> (TrainingLog, "trained" | "loaded"): trains the seeds whose checkpoints are missing."""
    out = {}
    for seed in seeds:
        if is_trained(config, seed, root):
            out[seed] = (TrainingLog(**json.loads((run_dir(config, seed, root) / "log.json").read_text())), "loaded")
        else:
            out[seed] = (train(config, seed, root, progress), "trained")
    return out


def load_checkpoint(config: TrainConfig, seed: int, step: int, root: Path | None = None, device: str | None = None) -> ModelInfo:
    """A saved checkpoint as a ModelInfo, through load_model's ordinary path for a local folder
    (architecture discovery, recording attention): every analysis of the book runs on it."""
    folder = checkpoint_dir(config, seed, step, root)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"no checkpoint in {folder}: train it first (training.ensure_trained)")
    info = load_model(str(folder), device=device, dtype=torch.float32)
    info.name = f"{config.name} seed {seed} step {step}"
    return info


# ----------------------------------------------------------------------------------------------
# What the chapter measures at every checkpoint


@torch.no_grad()
def mixture_losses(info: ModelInfo, mixture: Mixture, n_per_kind: int, seed: int = 10_000) -> dict:
    """kind -> mean next-token loss on `n_per_kind` fresh sequences of that kind (a fixed draw:
    the same sequences at every checkpoint). For repeated spans, "repeats (copies)" is the loss on
    the tokens whose span has been seen before, the ones induction can predict."""
    out = {}
    for kind in ("text", "repeats", "tasks"):
        rng = random.Random(seed)
        batch = mixture.batch(rng, [kind] * n_per_kind).to(info.device)
        logits = info.model(input_ids=batch).logits[:, :-1].float()
        losses = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="none").view(len(batch), -1)
        out[kind] = losses.mean().item()
        if kind == "repeats":  # a token seen earlier in its sequence is a copy (no token repeats within a span)
            seen = torch.zeros_like(batch[:, 1:], dtype=torch.bool)
            for t in range(1, batch.shape[1]):
                seen[:, t - 1] = (batch[:, 1:t] == batch[:, t : t + 1]).any(1)
            out["repeats (copies)"] = losses[seen.cpu()].mean().item()
    return out


@dataclass
class CheckpointScores:
    """Everything measured on one checkpoint. Heads are (n_layers, n_heads) tensors."""

    step: int
    induction: torch.Tensor  # diagonal induction score of every head
    fv: torch.Tensor  # FV score of every head: mean over the patched prompts of all tasks
    fv_per_prompt: torch.Tensor  # (n_prompts, n_layers, n_heads)
    accuracy: dict  # task -> accuracy on its evaluation prompts
    zero_shot: dict  # task -> accuracy on the same queries with no demonstrations
    losses: dict = field(default_factory=dict)


def checkpoint_scores(info: ModelInfo, tasks: dict, step: int, fmt, n_demos: int, n_mean: int, n_patch: int, n_eval: int,
                      induction_seqs: torch.Tensor, held_out: dict | None = None, mixture: Mixture | None = None,
                      n_loss_seqs: int = 8, seed: int = 0) -> CheckpointScores:
    """The book's measurements on one checkpoint (functions of induction and function_vectors):

    * induction score of every head on `induction_seqs` (induction.repeated_random_tokens);
    * per task, its pairs split by hash (function_vectors.pair_pools): on the scoring pool, the
      mean head outputs over `n_mean` clean prompts, and FV scores by attribution patching on
      `n_patch` other prompts with shuffled labels; on the evaluation pool, accuracy of `n_eval`
      prompts and of the same queries zero-shot. `held_out` tasks (never trained on) get accuracy only.
    * the loss on each kind of the training mixture (when `mixture` is given)."""
    from . import function_vectors as fv
    from .induction import induction_measures

    induction = induction_measures(info, induction_seqs)["diagonal"]
    fv_rows, accuracy, zero_shot = [], {}, {}
    for name, pairs in {**tasks, **(held_out or {})}.items():
        pools = fv.pair_pools(pairs)
        evaluation = fv.build_fv_prompts(pools["evaluation"], n_eval, n_demos, seed=seed + 1, fmt=fmt, task=name)
        accuracy[name] = fv.run_fv_prompts(info, evaluation).correct.float().mean().item()
        zero_shot[name] = fv.run_fv_prompts(info, fv.zero_shot_prompts(evaluation, fmt)).correct.float().mean().item()
        if name not in tasks:
            continue
        clean = fv.build_fv_prompts(pools["scoring"], n_mean + n_patch, n_demos, seed=seed, fmt=fmt, task=name)
        shuffled = fv.build_fv_prompts(pools["scoring"], n_mean + n_patch, n_demos, seed=seed, fmt=fmt, task=name,
                                       shuffle_labels=True)[n_mean:]
        means = fv.run_fv_prompts(info, clean[:n_mean]).head_out.mean(0)
        fv_rows.append(fv.fv_scores_attribution(info, shuffled, means))
    per_prompt = torch.cat(fv_rows)
    losses = mixture_losses(info, mixture, n_loss_seqs) if mixture is not None else {}
    return CheckpointScores(step, induction, per_prompt.mean(0), per_prompt, accuracy, zero_shot, losses)


def training_setup(config: TrainConfig, seed: int, root: Path | None = None):
    """(tasks, held-out tasks, Mixture) of a trained run, built with the tokenizer of its checkpoints."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint_dir(config, seed, config.checkpoints[-1], root)))
    tasks = training_tasks(config.book_tasks, config.pairs_per_task)
    return tasks, held_out_tasks(), Mixture(tokenizer, tasks, corpus_text(), config.seq_len, config.repeat_span,
                                            config.repeat_pool)
