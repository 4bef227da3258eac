"""What the KV codec costs in model quality, on a checkpoint (benchmarks/kv_codec.py --checkpoint).

Two measurements, each exact against a codec on the same engine, so only the prefix KV differs:

* held-out loss: windows of held-out text, ``prefix`` tokens computed into the cache, the
  prefix's full blocks put through the codec (encode + decode in place) but the blocks holding
  its last ``residual`` tokens (the host tier's residual window: they stay exact), then the next
  ``scored`` tokens computed on top and scored (mean next-token cross-entropy);
* greedy continuations: prompts of ``prefix`` + 8 tokens computed once (cached), generated
  again from the cached prefix (exact), the cached prefix blocks put through the codec, and
  generated again: the share of ``max_tokens``-token continuations that are identical.

The floor: ``identical_share`` rounds the cached prefix to bf16 (or fp16) instead, in an fp32
engine: the share of continuations that survive a perturbation every bf16 deployment makes.

Why a continuation differs: at its first differing token, the exact run's margin (top-1 minus
top-2 logit, from one exact forward over prompt + exact continuation) says whether the codec
flipped a near-tie or a clear choice; ``near_ties`` counts the exact continuations that pass
through any token whose margin is below ``NEAR_TIE`` (candidates for a flip by any small error).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.attention.metadata import AttentionMetadata
from engine.block_hash import hash_blocks
from engine.llm_engine import LLMEngine
from engine.model.llama import ForwardContext
from engine.sampling_params import SamplingParams
from kvstore.host_tier import residual_blocks
from kvstore.kv_codec import CodecFormat, decode, encode
from kvstore.layout import KVLayout

PROMPT_TAIL = 8  # prompt tokens after the prefix: computed, not cached
NEAR_TIE = 0.1  # logits: a top-2 gap this small is flipped by errors far below the codec's


@dataclass(frozen=True)
class QualityResult:
    codec: str
    residual: int               # prefix tokens kept exact at its end (whole blocks)
    windows: int
    loss_exact: float
    loss_codec: float
    loss_change: float          # (codec - exact) / exact
    prompts: int
    identical: int              # continuations identical to the exact run's
    identical_share: float
    mean_agreeing_tokens: float  # leading tokens equal to the exact run's, mean
    cached_tokens: int           # prefix tokens each codec run took from the cache (min over prompts)
    divergence_margins: list[float]  # exact run's top-1 minus top-2 logit where each differing one first differs
    near_ties: int               # exact continuations with a token whose margin < NEAR_TIE


def heldout_text(spec: str | None, checkpoint: Path) -> str:
    """A text file; 'stdlib': the held-out files of benchmarks/train_small_model.py's corpus split
    (benchmarks/stdlib_corpus.py, default split); None: CHECKPOINT/heldout.txt, else 'stdlib'."""
    if spec is None:
        spec = str(checkpoint / "heldout.txt") if (checkpoint / "heldout.txt").exists() else "stdlib"
    if spec != "stdlib":
        return Path(spec).read_text()
    from benchmarks.stdlib_corpus import read_corpus, source_roots
    return "\n".join(f.text for f in read_corpus(source_roots()).heldout)


def windows(tokens: list[int], length: int, count: int) -> list[list[int]]:
    found = [tokens[i:i + length] for i in range(0, len(tokens) - length + 1, length)][:count]
    if not found:
        raise ValueError(f"held-out text has {len(tokens)} tokens, fewer than one window of {length}")
    return found


def round_trip(kv: torch.Tensor, sequences: list[list[int]], fmt: CodecFormat, residual: int) -> None:
    """Replace each sequence's blocks with what the codec gives back, as the host tier stores a put of
    them: the blocks holding the last ``residual`` tokens, and blocks the codec cannot hold, stay."""
    keep_exact = residual_blocks(residual, fmt.layout.block_size)
    ids = torch.tensor([i for seq in sequences for i in seq[:len(seq) - keep_exact]], dtype=torch.long,
                       device=kv.device)
    if not ids.numel():
        return
    payloads, raw = encode(kv, ids, fmt)
    keep = ~raw.to(kv.device)
    decode(kv, ids[keep], payloads[keep], fmt)


def _forward(engine: LLMEngine, rows: list[tuple[list[int], int, list[int]]]) -> torch.Tensor:
    """Run each row's tokens at positions start.. of its sequence (blocks ``ids``); writes their KV,
    returns fp32 logits for every token, rows concatenated."""
    runner, bs, device = engine.runner, engine.kv.block_size, engine.runner.device
    starts, seq_lens, slots, tokens, positions = [0], [], [], [], []
    for toks, start, ids in rows:
        tokens += toks
        positions += range(start, start + len(toks))
        slots += [ids[p // bs] * bs + p % bs for p in range(start, start + len(toks))]
        starts.append(starts[-1] + len(toks))
        seq_lens.append(start + len(toks))
    width = max(len(ids) for _, _, ids in rows)
    tables = [ids + [0] * (width - len(ids)) for _, _, ids in rows]
    ints = dict(dtype=torch.int32, device=device)
    meta = AttentionMetadata(torch.tensor(starts, **ints), torch.tensor(seq_lens, **ints),
                             torch.tensor(tables, **ints), torch.tensor(slots, dtype=torch.int64, device=device),
                             max(len(t) for t, _, _ in rows), max(seq_lens), decode_only=False)
    longs = dict(dtype=torch.int64, device=device)
    hidden = runner.model(torch.tensor(tokens, **longs), torch.tensor(positions, **longs),
                          ForwardContext(runner.kv_cache, meta, runner.backend))
    return runner.model.compute_logits(hidden)


@torch.inference_mode()
def heldout_loss(engine: LLMEngine, batch: list[list[int]], prefix: int, fmt: CodecFormat | None,
                 residual: int = 0) -> float:
    """Summed next-token loss over each window's tokens after ``prefix`` (which went through the codec)."""
    bs = engine.kv.block_size
    blocks = [engine.kv.pool.allocate(-(-len(w) // bs)) for w in batch]
    try:
        _forward(engine, [(w[:prefix], 0, ids) for w, ids in zip(batch, blocks)])
        if fmt is not None:
            round_trip(engine.runner.kv_cache, [ids[:prefix // bs] for ids in blocks], fmt, residual)
        logits = _forward(engine, [(w[prefix:-1], prefix, ids) for w, ids in zip(batch, blocks)])
        targets = torch.tensor([t for w in batch for t in w[prefix + 1:]], device=logits.device)
        return torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item()
    finally:
        for ids in blocks:
            engine.kv.pool.free(ids)


Change = Callable[[torch.Tensor, list[list[int]]], None]  # (cache, each prompt's cached prefix blocks)


def greedy_runs(engine: LLMEngine, prompts: list[list[int]], max_tokens: int,
                change: Change) -> tuple[list[list[int]], list[list[int]], int]:
    """(exact continuations, continuations after ``change(cache, each prompt's cached prefix blocks)``,
    fewest prefix tokens a changed run took from the cache)."""
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    engine.kv.pool.reset_cache()
    engine.generate(prompts, params)  # computes and caches the prefixes
    exact = engine.generate(prompts, params)
    bs = engine.kv.block_size
    cached: list[list[int]] = []
    for p in prompts:
        found = [engine.kv.pool.lookup(h) for h in hash_blocks(p[:-PROMPT_TAIL], bs)]
        if None in found:
            raise RuntimeError("a prefix block was evicted between runs: give the engine more blocks")
        cached.append([i for i in found if i is not None])
    change(engine.runner.kv_cache, cached)
    changed = engine.generate(prompts, params)
    return [r.token_ids for r in exact], [r.token_ids for r in changed], min(r.num_cached_tokens for r in changed)


def rounding(dtype: torch.dtype) -> Change:
    """A change for ``greedy_runs``: the prefix blocks rounded to ``dtype`` and back (the floor any
    lossy storage is judged against: an fp32 cache rounded to bf16 is what a bf16 engine holds)."""
    def change(kv: torch.Tensor, sequences: list[list[int]]) -> None:
        ids = torch.tensor([i for seq in sequences for i in seq], dtype=torch.long, device=kv.device)
        kv.index_copy_(2, ids, kv.index_select(2, ids).to(dtype).to(kv.dtype))
    return change


def identical_share(engine: LLMEngine, tokens: list[int], dtype: torch.dtype, prefix: int, scored: int, count: int,
                    max_tokens: int) -> float:
    """Share of ``measure``'s greedy continuations (same prompts) unchanged when the cached prefix is
    rounded to ``dtype``."""
    prompts = [w[:prefix + PROMPT_TAIL] for w in windows(tokens, prefix + scored + 1, count)]
    a, b, _ = greedy_runs(engine, prompts, max_tokens, rounding(dtype))
    return sum(u == v for u, v in zip(a, b)) / len(prompts)


@torch.inference_mode()
def margins(engine: LLMEngine, prompts: list[list[int]], continuations: list[list[int]]) -> list[list[float]]:
    """Per continuation token, top-1 minus top-2 logit of an exact forward over prompt + continuation
    (the margin the greedy choice of that token had)."""
    bs, out = engine.kv.block_size, []
    for p, c in zip(prompts, continuations):
        ids = engine.kv.pool.allocate(-(-(len(p) + len(c)) // bs))
        try:
            logits = _forward(engine, [(p + c[:-1], 0, ids)])[len(p) - 1:]
        finally:
            engine.kv.pool.free(ids)
        top = logits.float().topk(2, -1).values
        out.append((top[:, 0] - top[:, 1]).tolist())
    return out


def measure(engine: LLMEngine, tokens: list[int], codec: str, prefix: int, scored: int, count: int,
            max_tokens: int, residual: int, batch: int = 8) -> QualityResult:
    fmt = CodecFormat.of(KVLayout.of_cache(engine.runner.kv_cache), codec)
    if fmt is None:
        raise ValueError(f"codec {codec!r} does not compress this model's KV layout")
    held = windows(tokens, prefix + scored + 1, count)
    parts = [held[i:i + batch] for i in range(0, len(held), batch)]
    exact = sum(heldout_loss(engine, part, prefix, None) for part in parts)
    coded = sum(heldout_loss(engine, part, prefix, fmt, residual) for part in parts)
    n = len(held) * scored
    prompts = [w[:prefix + PROMPT_TAIL] for w in held]
    a, b, cached = greedy_runs(engine, prompts, max_tokens, lambda kv, seqs: round_trip(kv, seqs, fmt, residual))
    same = [next((i for i, (x, y) in enumerate(zip(u, v)) if x != y), len(u)) for u, v in zip(a, b)]
    identical = sum(u == v for u, v in zip(a, b))
    gaps = margins(engine, prompts, a)
    at_divergence = [round(g[i], 4) for g, i, u in zip(gaps, same, a) if i < len(u)]
    near = sum(min(g) < NEAR_TIE for g in gaps)
    return QualityResult(codec, residual, len(held), exact / n, coded / n, (coded - exact) / exact, len(prompts),
                         identical, identical / len(prompts), sum(same) / len(same), cached, at_divergence, near)
