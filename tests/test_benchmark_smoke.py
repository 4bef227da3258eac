"""The benchmarks that wait for a GPU session still run end to end on CPU (tiny shapes), so
device time is not spent discovering a broken script. Nothing here is timed or compared."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.ceilings import TRITON_CONFIGS

ROOT = Path(__file__).resolve().parents[1]


def run(module_args: list[str], out: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, *module_args, "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_shared_prefix_step_runs_on_cpu(tmp_path):
    run(["-m", "benchmarks.shared_prefix_step", "--shape", "micro", "--batch", "4", "--prefixes", "32", "64",
         "--question-tokens", "8", "--warmup-steps", "1", "--steps", "2"], tmp_path)
    rows = json.loads((tmp_path / "shared_prefix_step.json").read_text())["rows"]
    assert {(r["prefix"], r["shared_path"]) for r in rows} == {(32, True), (32, False), (64, True), (64, False)}
    assert all(r["step_kinds"].get("shared") for r in rows if r["shared_path"])
    assert (tmp_path / "shared_prefix_step.png").exists()


@pytest.mark.ray
@pytest.mark.redis
def test_prefix_serving_runs_on_cpu(tmp_path):
    run(["benchmarks/prefix_serving.py", "--shape", "micro", "--users", "8", "--requests-per-user", "2",
         "--rate", "100", "--system-tokens", "32", "--groups", "4", "--fewshot-tokens", "32",
         "--question-tokens", "8", "--output-tokens", "4", "--blocks-per-replica", "64", "--engine-baseline"],
        tmp_path)
    rows = json.loads((tmp_path / "prefix_serving.json").read_text())["rows"]
    assert [r["policy"] for r in rows] == ["prefix-aware", "round-robin", "one engine"]
    assert all(r["requests"] == 16 and r["step_profiles"] for r in rows)


def test_step_inputs_runs_on_cpu(tmp_path):
    run(["-m", "benchmarks.step_inputs", "--batch", "4", "--prefix", "64", "--question-tokens", "8", "--steps", "3"],
        tmp_path)
    rows = json.loads((tmp_path / "step_inputs.json").read_text())["rows"]
    assert [r["case"] for r in rows] == ["no plan", "plan every step", "plan, PlanCache"]
    assert (tmp_path / "step_inputs.png").exists()


def test_decode_step_runs_on_cpu(tmp_path):
    """Both engines, the ceilings and transformers' static-cache generate (no compile on CPU)."""
    run(["benchmarks/decode_step.py", "--shape", "micro", "--device", "cpu", "--batches", "1", "2",
         "--prompt-len", "8", "--new-tokens", "4", "--no-hf-cb"], tmp_path)
    result = json.loads((tmp_path / "decode_step.json").read_text())
    assert result["ceilings"]["read_bytes_per_s"] > 0 and result["ceilings"]["copy_bytes_per_s"] > 0
    rows = result["rows"]
    assert [r["batch"] for r in rows] == [1, 2]
    # micro: 1 layer, hidden 32, intermediate 64, 2 heads of 16 dims (1 KV head), vocab 512, untied, fp32;
    # an 8-token prompt plus half of 4 new tokens = 10 tokens of context
    weights = 4 * (32 * (32 + 2 * 16) + 32 * 32 + 3 * 32 * 64 + 2 * 32 + 32 + 512 * 32)
    assert [r["floor_bytes"] for r in rows] == [weights + b * 32 * 4 + b * 10 * 2 * 16 * 4 for b in (1, 2)]
    for r in rows:
        assert r["hf"]["config"] == "static cache, eager" and r["hf"]["step_s"] > 0
        assert r["async_step_vs_hf"] == pytest.approx(r["hf"]["step_s"] / r["async_step_s"])
        assert r["e2e_vs_hf"] == pytest.approx(r["ours_e2e_tok_s"] / r["hf"]["e2e_tok_s"])
        assert r["read_floor_s"] == pytest.approx(r["floor_bytes"] / result["ceilings"]["read_bytes_per_s"])
    assert (tmp_path / "decode_step.png").exists()


def test_read_ceiling_triton_sum_under_the_interpreter(tmp_path):
    """The read-only ceiling's Triton reduction (checked against torch.sum inside) and the CLI."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-m", "benchmarks.ceilings", "--device", "cpu", "--sizes-mib", "0.25",
                           "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "ceilings.json").read_text())
    methods = [r["method"] for r in result["readings"]]
    assert methods[:2] == ["copy", "torch.sum"]
    assert sum(m.startswith("triton sum") for m in methods) == len(TRITON_CONFIGS)


def test_transformers_peer_falls_back_when_compile_fails(capsys):
    from benchmarks.hf_peer import TransformersPeer

    class Model:  # generate that fails when compiled, as an inductor error would
        def generate(self, ids, max_new_tokens, disable_compile, **kwargs):
            if not disable_compile:
                raise RuntimeError("inductor: no compiler")
            return torch.zeros(ids.shape[0], ids.shape[1] + max_new_tokens, dtype=torch.long)

    peer = TransformersPeer(Model(), torch.device("cpu"), compile=True, repeats=1)
    first = peer.time([[5, 6, 7]] * 2, 8)
    assert first.config == "static cache, eager" and first.e2e_tok_s > 0
    assert "static cache + torch.compile failed" in capsys.readouterr().out
    assert peer.time([[5, 6, 7]], 8).config == "static cache, eager"  # not retried
    assert "failed" not in capsys.readouterr().out


def test_decode_floor_reads_embedding_rows_not_the_table():
    """Llama-3-8B: 8.03e9 parameters, of which the 128256 x 4096 embedding table is read only at
    the looked-up rows; the untied LM head in full. A tied model reads its table once, as the head."""
    from benchmarks.decode_step import floor_bytes
    from benchmarks.model_shapes import LLAMA3_8B
    from engine.model.llama import LlamaForCausalLM
    from engine.model_config import ModelConfig
    model = LlamaForCausalLM(ModelConfig.from_dict(LLAMA3_8B), torch.bfloat16, "meta")
    assert floor_bytes(model, 1, 0, 2) == 2 * (8_030_261_248 - 128256 * 4096) + 2 * 4096
    assert floor_bytes(model, 64, 100, 2) == floor_bytes(model, 1, 0, 2) + 63 * 2 * 4096 + 64 * 100 * 32 * 2 * 1024 * 2
    tied = LlamaForCausalLM(ModelConfig.from_dict({**LLAMA3_8B, "tie_word_embeddings": True}), torch.bfloat16, "meta")
    assert floor_bytes(tied, 1, 0, 2) == floor_bytes(model, 1, 0, 2)


def test_attention_tables_report_the_read_only_ceiling(tmp_path):
    """The attention benchmark's report (its kernels need CUDA): fractions of both ceilings."""
    from benchmarks.attention import Case, plot, print_tables
    from benchmarks.ceilings import Ceilings
    ceilings = Ceilings(copy_bps=3.0e12, read_bps=3.3e12, read_method="torch.sum, 4096 MiB", readings=())
    case = Case(16, 4096, nbytes=300_000_000, seconds=1e-4, variants={"fused": 1.1e-4}, sdpa_seconds=0.95e-4)
    row = case.record(ceilings)
    assert row["copy_fraction"] == pytest.approx(1.0) and row["read_fraction"] == pytest.approx(3.0 / 3.3)
    skipped = Case(256, 32768, nbytes=1 << 40, skipped="too big")
    assert skipped.record(ceilings)["read_fraction"] is None
    print_tables([case, skipped], [], [], ceilings, {})
    plot([case, skipped], ceilings, tmp_path / "attention.png")
    assert (tmp_path / "attention.png").exists()
