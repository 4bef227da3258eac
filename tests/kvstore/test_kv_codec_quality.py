"""The codec quality benchmark's measurements (benchmarks/kv_codec_quality.py) on the tiny model:
the split forward scores what one forward over the whole window scores, and the codec runs take
their prefix from the cache."""

from __future__ import annotations

import torch

from benchmarks.kv_codec_quality import PROMPT_TAIL, _forward, greedy_runs, heldout_loss, measure, round_trip
from engine.block_hash import hash_blocks
from kvstore.kv_codec import CodecFormat
from kvstore.layout import KVLayout
from tests.engine.conftest import make_engine

WINDOWS = [[(7 * i + 13 * w) % 500 + 3 for i in range(64 + 16 + 1)] for w in range(3)]


def test_split_forward_scores_the_same_as_one_forward(tiny_model) -> None:
    engine = make_engine(tiny_model, prefix_caching=True, num_blocks=64)
    split = heldout_loss(engine, WINDOWS, 64, None)
    ids = [engine.kv.pool.allocate(6) for _ in WINDOWS]
    with torch.inference_mode():
        logits = _forward(engine, [(w[:-1], 0, b) for w, b in zip(WINDOWS, ids)]).view(3, 80, -1)[:, 64:]
    targets = torch.tensor([w[65:] for w in WINDOWS])
    whole = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.flatten(), reduction="sum")
    assert abs(split - whole.item()) < 1e-4 * whole.item()
    fmt = CodecFormat.of(KVLayout.of_cache(engine.runner.kv_cache), "kivi2")
    assert abs(heldout_loss(engine, WINDOWS, 64, fmt) - split) > 1e-3, "the codec changed the prefix"
    assert engine.kv.num_free_blocks == 64 - 18  # the loss runs gave their blocks back


def test_greedy_codec_runs_use_the_cached_prefix(tiny_model) -> None:
    engine = make_engine(tiny_model, prefix_caching=True, num_blocks=128)
    prompts = [w[:64 + PROMPT_TAIL] for w in WINDOWS]
    fmt = CodecFormat.of(KVLayout.of_cache(engine.runner.kv_cache), "kivi4")
    kv = engine.runner.kv_cache
    exact, coded, cached = greedy_runs(engine, prompts, 8, lambda kv, seqs: round_trip(kv, seqs, fmt, 0))
    assert cached == 64
    assert len(exact) == len(coded) == 3 and all(len(c) == 8 for c in exact + coded)
    sequences = [[engine.kv.pool.lookup(h) for h in hash_blocks(p[:64], 16)] for p in prompts]
    prefix_blocks = [i for seq in sequences for i in seq]
    again = kv.clone()
    round_trip(again, sequences, fmt, 0)  # decoding decoded blocks changes little: they are on the grid
    assert (again[:, :, prefix_blocks] - kv[:, :, prefix_blocks]).abs().max() < 1e-3
    result = measure(engine, [t for w in WINDOWS for t in w], "kivi4", 64, 16, 3, 8, residual=0)
    assert (result.windows, result.prompts, result.cached_tokens, result.residual) == (3, 3, 64, 0)


def test_the_residual_window_leaves_each_sequences_last_blocks_exact(tiny_model) -> None:
    """As the host tier stores a put: a residual of 17 tokens keeps each sequence's last two
    blocks (of 16 tokens) as they were; the others go through the codec. Failing setting: a
    residual counted over all sequences together would leave the first sequence's tail coded."""
    engine = make_engine(tiny_model, prefix_caching=True, num_blocks=64)
    kv = engine.runner.kv_cache
    kv.copy_(torch.randn_like(kv))
    fmt = CodecFormat.of(KVLayout.of_cache(kv), "kivi2")
    sequences = [[3, 9, 4, 12], [20, 7, 30]]
    before = kv.clone()
    round_trip(kv, sequences, fmt, 17)
    for i in (4, 12, 7, 30):
        assert torch.equal(kv[:, :, i], before[:, :, i]), i
    for i in (3, 9, 20):
        assert not torch.equal(kv[:, :, i], before[:, :, i]), i
    untouched = [i for i in range(64) if i not in (3, 9, 20)]
    assert torch.equal(kv[:, :, untouched], before[:, :, untouched])
