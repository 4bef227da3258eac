"""The committed trained checkpoint (tests/data/trained-small/: checkpoint files, metrics.json and
heldout.txt from benchmarks/train_small_model.py's `ci` preset, trained on an H200; docs/trained_model.md):
small (12.4 MiB, bf16),
described by its metrics.json; loads in our engine and in transformers with identical greedy tokens;
recalls held-out examples of the multi-agent task; and the 4-bit KV codec keeps its held-out loss
within 1% (what random weights cannot show)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks import multi_agent_task as task
from engine.sampling_params import SamplingParams
from engine.tokenizer import Tokenizer
from tests.engine.conftest import make_engine

TRAINED = Path(__file__).parent / "data" / "trained-small"
pytestmark = pytest.mark.skipif(not (TRAINED / "model.safetensors").exists(),
                                reason="no trained checkpoint committed yet (docs/trained_model.md)")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: the model is small, and two threads spin-wait on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def metrics() -> dict:
    return json.loads((TRAINED / "metrics.json").read_text())


def test_checkpoint_is_small_bf16_gqa_and_described(metrics) -> None:
    config = json.loads((TRAINED / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16"
    assert config["num_key_value_heads"] < config["num_attention_heads"]
    assert (TRAINED / "model.safetensors").stat().st_size < 16 << 20  # the issue: well under 25 MB
    assert metrics["parameters"] == metrics["model"]["vocab_size"] * config["hidden_size"] + _body(config)
    assert metrics["transformers_greedy"]["identical"] == metrics["transformers_greedy"]["prompts"]
    for key in ("heldout_lm_loss", "recall_exact_match", "steps", "wall_seconds", "git_commit", "date"):
        assert key in metrics, key


def test_engine_and_transformers_give_identical_greedy_tokens() -> None:
    from tests.hf_checkpoints import HFCheckpoint
    tokenizer = Tokenizer(TRAINED)
    prompts = [tokenizer.encode(e.prompt) for e in task.examples(3, "heldout")]
    prompts.append(tokenizer.encode("def main(argv=None):\n    parser = argparse."))
    reference = HFCheckpoint(TRAINED, eos_token_id=tokenizer.eos_token_id)
    results = make_engine(TRAINED, dtype="float32").generate(
        prompts, SamplingParams(max_tokens=16, temperature=0, ignore_eos=True))
    for prompt, ours in zip(prompts, results):
        assert ours.token_ids == reference.greedy(prompt, 16, stop_on_eos=False)


def test_engine_recalls_held_out_examples(metrics) -> None:
    """Greedy exact-match on 48 held-out examples (chance: ~0), near what metrics.json measured on 500."""
    items = task.examples(48, "heldout")
    engine = make_engine(TRAINED, dtype="float32")
    completions = [r.text for r in engine.generate([e.prompt for e in items],
                                                    SamplingParams(max_tokens=8, temperature=0))]
    assert task.recall_exact_match(items, completions) >= metrics["recall_exact_match"] - 0.15


def test_kivi4_prefix_keeps_held_out_loss_within_one_percent() -> None:
    from benchmarks.kv_codec_quality import heldout_loss, windows
    from kvstore.kv_codec import CodecFormat
    from kvstore.layout import KVLayout
    engine = make_engine(TRAINED, prefix_caching=True, num_blocks=8 * 24)  # the checkpoint's dtype: bf16 KV
    tokens = engine.tokenizer.encode((TRAINED / "heldout.txt").read_text())
    batch = windows(tokens, 256 + 64 + 1, 8)
    fmt = CodecFormat.of(KVLayout.of_cache(engine.runner.kv_cache), "kivi4")
    exact, coded = heldout_loss(engine, batch, 256, None), heldout_loss(engine, batch, 256, fmt)
    assert exact != coded and abs(coded - exact) < 0.01 * exact


def _body(config: dict) -> int:
    """Parameters besides the (tied) embedding: per layer attention, MLP and two norms; the final norm."""
    h, f, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    head_dim = h // config["num_attention_heads"]
    kv = config["num_key_value_heads"] * head_dim
    return layers * (2 * h * h + 2 * h * kv + 3 * h * f + 2 * h) + h
