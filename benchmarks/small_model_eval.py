"""Measures of a small trained model: held-out LM loss, recall exact-match (teacher-forced on the
training model; greedy through our engine on the saved checkpoint), greedy agreement with
transformers, and the loss-curve plot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.multi_agent_task import Example, evaluate_recall
from benchmarks.small_llama import SmallLlama


def autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def lm_loss(model: SmallLlama, stream: torch.Tensor, seq_len: int, batch_size: int,
            max_tokens: int) -> float:
    """Mean next-token cross-entropy over consecutive windows of ``stream`` (up to max_tokens)."""
    n = min(len(stream) - 1, max_tokens) // seq_len
    if n == 0:
        raise ValueError(f"a stream of {len(stream)} tokens has no window of {seq_len + 1}")
    device = next(model.parameters()).device
    windows = stream[: n * seq_len + 1].to(device)
    total = 0.0
    for start in range(0, n, batch_size):
        rows = torch.arange(start, min(start + batch_size, n), device=device)
        idx = rows[:, None] * seq_len + torch.arange(seq_len + 1, device=device)
        batch = windows[idx].long()
        with autocast(device):
            logits = model(batch[:, :-1])
        total += F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten(), reduction="sum").item()
    return total / (n * seq_len)


@torch.no_grad()
def teacher_forced_recall(model: SmallLlama, tokenizer, items: Sequence[Example], batch_size: int = 64) -> float:
    """Share of examples whose every answer token (and the newline after it) is the argmax given
    the true tokens before it: greedy decoding then writes the answer exactly (a lower bound of
    greedy exact-match, which also accepts another tokenization of the same text)."""
    device = next(model.parameters()).device
    prompts = [e.ids for e in tokenizer.encode_batch_fast([e.prompt for e in items])]
    answers = [e.ids for e in tokenizer.encode_batch_fast([e.completion for e in items],
                                                          add_special_tokens=False)]
    hits = 0
    for start in range(0, len(items), batch_size):
        rows = [p + a for p, a in zip(prompts[start:start + batch_size], answers[start:start + batch_size])]
        width = max(map(len, rows))
        batch = torch.tensor([r + [0] * (width - len(r)) for r in rows], device=device)
        with autocast(device):
            preds = model(batch).argmax(-1)
        for i, (p, a) in enumerate(zip(prompts[start:start + batch_size], answers[start:start + batch_size])):
            hits += bool((preds[i, len(p) - 1:len(p) + len(a) - 1] == batch[i, len(p):len(p) + len(a)]).all())
    return hits / len(items)


def engine_recall(path: Path, items: Sequence[Example], device: str, max_tokens: int = 16) -> float:
    """Greedy exact-match through our engine on the saved checkpoint (its own dtype on CUDA;
    float32 on the CPU, where bf16 matmuls are slow; the bf16 weights are exact in float32)."""
    engine = make_engine(path, device, dtype=None if device.startswith("cuda") else "float32")
    from engine.sampling_params import SamplingParams
    params = SamplingParams(max_tokens=max_tokens, temperature=0)
    return evaluate_recall(items, lambda prompts: [r.text for r in engine.generate(prompts, params)])


def transformers_agreement(path: Path, prompts: Sequence[list[int]], device: str, new_tokens: int = 16) -> dict:
    """Greedy tokens (EOS ignored) of our engine and of transformers, both float32 without TF32:
    how many prompts get identical tokens. Needs transformers."""
    import transformers

    from engine.sampling_params import SamplingParams
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    ours = make_engine(path, device, dtype="float32").generate(
        list(prompts), SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True))
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
    same = 0
    for p, r in zip(prompts, ours):
        ids = torch.tensor([p], device=device)
        with torch.no_grad():
            ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                              do_sample=False, eos_token_id=None, pad_token_id=0)[0, len(p):].tolist()
        same += ref == r.token_ids
    return {"prompts": len(prompts), "identical": same, "new_tokens": new_tokens, "device": device,
            "transformers": transformers.__version__}


def make_engine(path: Path, device: str, dtype: str | None):
    from engine.config import CacheConfig, EngineConfig, SchedulerConfig
    from engine.llm_engine import LLMEngine
    return LLMEngine(EngineConfig(
        model=str(path), dtype=dtype, device=device, cache=CacheConfig(num_blocks=2048),
        scheduler=SchedulerConfig(max_num_seqs=64, max_num_batched_tokens=8192)))


def plot(history: dict, path: Path) -> bool:
    """Train and held-out loss, and teacher-forced recall, against tokens seen; False without
    matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    evals = [t / 1e6 for t in history["eval_tokens"]]
    ax.plot([t / 1e6 for t in history["train_tokens"]], history["train_loss"], lw=1, alpha=0.6,
            label="training batches (files and task)")
    ax.plot(evals, history["train_eval_loss"], "s-", ms=3, label="training files")
    ax.plot(evals, history["heldout_loss"], "o-", ms=3, label="held-out files")
    ax.set(xlabel="tokens seen (M)", ylabel="cross-entropy (nats/token)", title="LM loss")
    ax.set_ylim(0, min(12.0, max(history["heldout_loss"] + history["train_loss"][-1:]) + 0.5))
    ax.legend()
    ax2.plot(evals, history["recall_tf"], "o-", ms=3)
    ax2.set(xlabel="tokens seen (M)", ylabel="exact-match", title="held-out recall (teacher-forced)", ylim=(0, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
