"""The training side of benchmarks/train_small_model.py: presets, data (corpus and task token
streams, random windows), the AdamW loop with its step plan and progress lines, evaluation."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from benchmarks import multi_agent_task as task
from benchmarks.small_llama import SmallLlama
from benchmarks.small_model_eval import autocast, lm_loss, teacher_forced_recall
from benchmarks.stdlib_corpus import read_corpus, source_roots, take_chars
from engine.tiny_model import SPECIAL_TOKENS, TinyModelSpec, train_tokenizer

HELDOUT_TASK_SEED = 0  # the held-out recall set is the same whatever the training seed


@dataclass(frozen=True)
class Preset:
    """A model's shape and how it is trained: ``task_fraction`` of the rows come from the recall
    task; ``packages`` add installed packages' sources to the standard library's; ``max_chars``
    caps the training files (and held-out ones at 3% of it); evaluations every ``eval_every`` steps
    over ``eval_tokens`` tokens of each split and 256 held-out recall examples."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    seq_len: int = 1024
    batch_size: int = 64
    lr: float = 1.5e-3
    warmup: int = 100
    task_fraction: float = 0.5
    task_examples: int = 100_000
    task: task.TaskConfig = field(default_factory=task.TaskConfig)
    packages: tuple[str, ...] = ()
    max_chars: int | None = None
    tokenizer_chars: int = 8_000_000
    eval_every: int = 250  # 0: no evaluations while training
    eval_tokens: int = 500_000
    log_every: int = 50
    recall_examples: int = 500
    parity_prompts: int = 8

    def spec(self) -> TinyModelSpec:
        return TinyModelSpec(vocab_size=self.vocab_size, hidden_size=self.hidden_size,
                             intermediate_size=self.intermediate_size, num_layers=self.num_layers,
                             num_heads=self.num_heads, num_kv_heads=self.num_kv_heads, tie_word_embeddings=True,
                             dtype="bfloat16", weight_std=0.02)


@dataclass
class Data:
    tokenizer: object
    train: torch.Tensor       # corpus token stream: each file as BOS ... EOS
    task: torch.Tensor        # recall-task stream: each example as BOS ... EOS
    task_starts: torch.Tensor  # where each example starts in ``task`` (its BOS), on the CPU
    heldout: torch.Tensor     # held-out files' stream
    recall: list[task.Example]
    describe: dict


def encode_stream(tokenizer, texts: list[str], chunk: int = 1024) -> torch.Tensor:
    """The texts' tokens, each text as BOS ... EOS, in one int32 stream (encoded ``chunk`` texts at
    a time: the encodings of 130M characters at once would take gigabytes)."""
    eos = tokenizer.token_to_id(SPECIAL_TOKENS[1])
    return torch.cat([torch.tensor(e.ids + [eos], dtype=torch.int32) for i in range(0, len(texts), chunk)
                      for e in tokenizer.encode_batch_fast(texts[i:i + chunk])])


def prepare_data(p: Preset, seed: int) -> Data:
    corpus = read_corpus(source_roots(p.packages), max_chars=p.max_chars)
    examples = [task.training_text(i, "train", seed, p.task) for i in range(p.task_examples)]
    sample = [f.text for f in take_chars(list(corpus.train), p.tokenizer_chars)]
    tokenizer = train_tokenizer(p.vocab_size, sample + examples[:2000])
    task_stream = encode_stream(tokenizer, examples)
    data = Data(tokenizer, encode_stream(tokenizer, [f.text for f in corpus.train]), task_stream,
                (task_stream == tokenizer.token_to_id(SPECIAL_TOKENS[0])).nonzero().flatten(),
                encode_stream(tokenizer, [f.text for f in corpus.heldout]),
                task.examples(p.recall_examples, "heldout", HELDOUT_TASK_SEED, p.task), {})
    words = task.KEYS + task.ADJECTIVES + task.ANIMALS
    split_words = [w for w in words if len(tokenizer.encode(" " + w, add_special_tokens=False).ids) > 1]
    data.describe = {**corpus.describe(), "packages": list(p.packages), "train_tokens": len(data.train),
                     "heldout_tokens": len(data.heldout), "task_examples": p.task_examples,
                     "task_tokens": len(data.task), "recall_examples": len(data.recall),
                     "task_words_of_several_tokens": len(split_words)}  # 0 with 8192 entries: one-token lookups
    return data


def sample_batch(gen: torch.Generator, data: Data, p: Preset, device: torch.device) -> torch.Tensor:
    """[B, T+1] windows, each row from the task stream with probability task_fraction, starting
    at a random example's start (so its questions have their segment in the window), else from
    the text stream at a random offset. Drawn on the CPU: the same on every device."""
    from_task = torch.rand(p.batch_size, generator=gen) < p.task_fraction
    u = torch.rand(p.batch_size, generator=gen, dtype=torch.float64)
    usable = int(torch.searchsorted(data.task_starts, len(data.task) - p.seq_len - 1))  # those a window fits after
    text_starts = (u * (len(data.train) - p.seq_len - 1)).long()
    starts = torch.where(from_task, data.task_starts[(u * usable).long()], text_starts)
    if device.type == "cuda":  # copies that need not wait for the steps queued before them
        starts, from_task = starts.pin_memory(), from_task.pin_memory()
    starts = starts.to(device, non_blocking=True)[:, None] + torch.arange(p.seq_len + 1, device=device)
    rows = torch.where(from_task.to(device, non_blocking=True)[:, None],
                       data.task[starts.clamp(max=len(data.task) - 1)],
                       data.train[starts.clamp(max=len(data.train) - 1)])
    return rows.long()


def batch_loss(model: SmallLlama, batch: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of [B, T+1] token rows."""
    logits = model(batch[:, :-1])
    return F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())


def lr_at(step: int, total: int | None, p: Preset, floor: float = 0.1) -> float:
    if step < p.warmup:
        return p.lr * (step + 1) / p.warmup
    if total is None:
        raise RuntimeError("the step count must be known when warm-up ends")
    progress = min(1.0, (step - p.warmup) / max(1, total - p.warmup))
    return p.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def evaluate(model: SmallLlama, data: Data, p: Preset) -> dict:
    model.eval()
    out = {"heldout_loss": lm_loss(model, data.heldout, p.seq_len, p.batch_size, p.eval_tokens),
           "train_loss": lm_loss(model, data.train, p.seq_len, p.batch_size, p.eval_tokens),
           "recall_tf": teacher_forced_recall(model, data.tokenizer, data.recall[:256])}
    model.train()
    return out


class StepPlan:
    """The step count: ``steps``, or (0) as many as fit in ``minutes``, from the time of the
    warm-up steps calib[0]..calib[1] (compilation done, the cosine not begun) plus evaluations."""

    def __init__(self, steps: int, minutes: float, p: Preset):
        if not steps and p.warmup < 4:
            raise SystemExit("--steps 0 needs a warm-up of at least 4 steps to time")
        self.total, self.budget, self.eval_every = steps or None, minutes * 60, p.eval_every
        first = min(5, p.warmup // 4)
        self.calib, self.marks, self.eval_s = (first, max(first + 1, p.warmup // 2)), {}, 0.0
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def done(self, step: int) -> bool:
        return self.total is not None and step >= self.total

    def stepped(self, step: int, loss: torch.Tensor) -> None:
        if self.total is not None or step not in self.calib:
            return
        loss.item()  # wait for the device
        self.marks[step] = time.perf_counter()
        if step == self.calib[1]:
            per_step = (self.marks[step] - self.marks[self.calib[0]]) / (self.calib[1] - self.calib[0])
            per_step += self.eval_s / self.eval_every if self.eval_every else 0.0
            self.total = step + max(1, int((self.budget - self.elapsed() - self.eval_s) / per_step))
            print(f"timed {per_step * 1e3:.1f} ms/step (evaluations included): {self.total} steps", flush=True)


def train(model: SmallLlama, data: Data, p: Preset, args, device: torch.device) -> dict:
    """AdamW (weight decay on matrices), warm-up then cosine to 10%, gradients clipped at 1."""
    decay = [q for q in model.parameters() if q.dim() >= 2]
    rest = [q for q in model.parameters() if q.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=p.lr, betas=(0.9, 0.95), fused=device.type == "cuda")
    loss_fn = torch.compile(batch_loss) if args.compile else batch_loss
    gen = torch.Generator().manual_seed(args.seed)
    plan, log = StepPlan(args.steps, args.minutes, p), Progress(p, device)
    step, stopped_by_time = 0, False
    while not plan.done(step):
        if p.eval_every and step % p.eval_every == 0:
            t = time.perf_counter()
            log.evaluated(evaluate(model, data, p), step)
            plan.eval_s = time.perf_counter() - t
        if plan.elapsed() > plan.budget:
            stopped_by_time = True
            break
        batch = sample_batch(gen, data, p, device)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, plan.total, p)
        try:
            loss = _backward(loss_fn, model, batch, device)
        except Exception as e:  # noqa: BLE001 - a compiler failure must not cost the whole run
            if loss_fn is batch_loss:
                raise
            print(f"torch.compile failed ({type(e).__name__}: {str(e)[:300]}); training eagerly", flush=True)
            opt.zero_grad(set_to_none=True)
            loss_fn = batch_loss
            loss = _backward(loss_fn, model, batch, device)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        plan.stepped(step, loss)
        log.stepped(step, loss, plan, lr_at(step - 1, plan.total, p))
    seconds = plan.elapsed()
    if p.eval_every:
        log.evaluated(evaluate(model, data, p), step)
    tokens = step * p.batch_size * p.seq_len
    return {"steps": step, "steps_planned": plan.total, "stopped_by_time": stopped_by_time,
            "train_seconds": seconds, "tokens_seen": tokens, "tokens_per_second": tokens / seconds,
            "history": log.history}


class Progress:
    """A line every log_every steps (mean loss, learning rate, tokens/s, time) and the curves."""

    def __init__(self, p: Preset, device: torch.device):
        self.p, self.tokens_per_step = p, p.batch_size * p.seq_len
        self.loss_sum, self.last = torch.zeros((), device=device), (time.perf_counter(), 0)
        self.history = {"train_tokens": [], "train_loss": [], "eval_tokens": [], "heldout_loss": [],
                        "train_eval_loss": [], "recall_tf": []}

    def stepped(self, step: int, loss: torch.Tensor, plan: StepPlan, lr: float) -> None:
        self.loss_sum += loss.detach()
        if step % self.p.log_every:
            return
        now, (then, before) = time.perf_counter(), self.last
        avg = self.loss_sum.item() / (step - before)
        tok_s = (step - before) * self.tokens_per_step / (now - then)
        print(f"step {step}/{plan.total or '?'} loss {avg:.3f} lr {lr:.2e} {tok_s / 1e3:.0f}K tok/s "
              f"{plan.elapsed():.1f} s", flush=True)
        self.history["train_tokens"].append(step * self.tokens_per_step)
        self.history["train_loss"].append(avg)
        self.loss_sum.zero_()
        self.last = (now, step)

    def evaluated(self, ev: dict, step: int) -> None:
        h, tokens = self.history, step * self.tokens_per_step
        if h["eval_tokens"] and h["eval_tokens"][-1] == tokens:
            return
        for key, value in (("eval_tokens", tokens), ("heldout_loss", ev["heldout_loss"]),
                           ("train_eval_loss", ev["train_loss"]), ("recall_tf", ev["recall_tf"])):
            h[key].append(value)
        print(f"eval at step {step}: held-out loss {ev['heldout_loss']:.3f}, train-file loss "
              f"{ev['train_loss']:.3f}, recall (teacher-forced) {ev['recall_tf']:.3f}", flush=True)


def _backward(loss_fn, model: SmallLlama, batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    with autocast(device):
        loss = loss_fn(model, batch)
    loss.backward()
    return loss
