"""Re-rotated keys equal keys computed at the new positions (fp32, 1e-5)."""

from __future__ import annotations

import pytest
import torch

from engine.model.rotary import RotaryEmbedding
from engine.model_config import ModelConfig
from engine.segments.rerotate import Rerotator
from engine.segments.spec import SegmentReuse
from engine.tiny_model import TinyModelSpec
from tests.segments.conftest import make_engine, run, tokens

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 256}


@pytest.mark.parametrize("scaling", [None, LLAMA3], ids=["default", "llama3"])
def test_rerotation_matches_rotation_at_new_positions(tiny_model_factory, scaling):
    path = tiny_model_factory(TinyModelSpec(rope_scaling=scaling, max_position_embeddings=4096))
    cfg = ModelConfig.from_dir(path)
    rotary = RotaryEmbedding(cfg, 4096, torch.device("cpu"), torch.float32)
    rerotate = Rerotator(cfg)
    raw = torch.randn(300, cfg.num_kv_heads, cfg.head_dim, generator=torch.Generator().manual_seed(0))
    for old, new in [(0, 3700), (3700, 5), (1234, 1235), (17, 17)]:
        at_old = rotary(torch.arange(old, old + 300), raw.clone(), raw.clone())[1]
        at_new = rotary(torch.arange(new, new + 300), raw.clone(), raw.clone())[1]
        moved = rerotate(at_old, old, new)
        assert (moved - at_new).abs().max().item() < 1e-5, (old, new)


@pytest.mark.parametrize("scaling", [None, LLAMA3], ids=["default", "llama3"])
def test_layer0_keys_of_a_reused_segment_equal_direct_computation(tiny_model_factory, scaling):
    """The engine keeps a segment computed after a 37-token prefix; the same segment computed in
    full after a 1500-token prefix gives layer 0's keys that the first, re-rotated, matches."""
    path = tiny_model_factory(TinyModelSpec(rope_scaling=scaling, max_position_embeddings=4096))
    engine = make_engine(path, num_blocks=512, max_batched=2048)
    seg, q = tokens(100, 1), tokens(5, 2)
    for prefix in (tokens(37, 3), tokens(1500, 4)):
        n = len(prefix)
        run(engine, prefix + seg + q, SegmentReuse(((n, n + 100),), recompute_ratio=1.0))
    first, second = next(iter(engine.segments.store.entries.values())).anchors
    assert (first.start, second.start) == (37, 1500)
    moved = engine.segments.rerotate(first.kv[0, 0], first.start, second.start)
    assert (moved - second.kv[0, 0]).abs().max().item() < 1e-5
    assert torch.equal(first.kv[0, 1], second.kv[0, 1])  # layer 0's values: no position, no context
    assert (engine.segments.rerotate(first.kv[1, 0], 37, 1500) - second.kv[1, 0]).abs().max() > 1e-3
