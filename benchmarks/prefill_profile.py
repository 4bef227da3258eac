"""Whole-model prefill time of the engine, written as a simulator profile.

    PYTHONPATH=. python -m benchmarks.prefill_profile --shape llama-3-8b --out out/prefill-profile

One prompt of N random tokens (no cached prefix) per measurement, on random
Llama-3-8B-shaped bf16 weights (load_format "dummy"): the median wall time of the engine
step that prefills it and samples its first token (lockstep scheduling, so the step ends
with the token on the host), for N in --tokens (at most the engine's per-step token budget,
so one step = one chunk). Beside each time, the engine's own step profile of those steps
(engine/step_profile.py: ms per step in schedule / prepare / forward / wait / finish): a
``forward`` (the host queueing kernels) close to the whole step, with little ``wait``, is a
host-bound step (launch overhead), not a GPU-bound one. Writes prefill_profile.json and prefill_calibration.json, whose
``{"op": "prefill", "tokens": N, "context": 0, "seconds": t}`` points ``tierserve simulate /
plan --profile`` reads (docs/simulator.md) instead of the prefill roofline.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from rich.progress import track

from benchmarks.common import machine_info, out_dir, write_json
from benchmarks.model_shapes import shape_dir
from engine.config import CacheConfig, EngineConfig, SchedulerConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from engine.step_profile import PHASES


def _mixed(totals: dict[str, dict[str, float]]) -> dict[str, float]:
    """Prefill steps' totals, eager ("mixed") and replayed as graph rows ("mixed graph") together."""
    kinds = [totals.get("mixed", {}), totals.get("mixed graph", {})]
    return {key: sum(k.get(key, 0.0) for k in kinds) for key in set().union(*kinds)}


def prefill_seconds(engine: LLMEngine, tokens: int, repeats: int, device: torch.device, vocab: int
                    ) -> tuple[float, dict[str, float]]:
    """Median wall time of the step that prefills one ``tokens``-long prompt (fresh ids each time,
    so nothing is served from the prefix cache), and the timed steps' mean ms per phase."""
    gen = torch.Generator().manual_seed(tokens)
    times = []
    for i in range(repeats + 1):  # the first is a warm-up
        if i == 1:
            before = _mixed(engine.profile.totals())
        prompt = torch.randint(3, min(30000, vocab), (tokens,), generator=gen).tolist()
        engine.add_request(None, prompt, SamplingParams(max_tokens=1, temperature=0))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        while engine.has_unfinished():
            engine.step()
        times.append(time.perf_counter() - start)
    after = _mixed(engine.profile.totals())
    steps = max(1, after.get("steps", 0) - before.get("steps", 0))
    phases = {ph: 1e3 * (after.get(ph, 0.0) - before.get(ph, 0.0)) / steps for ph in PHASES}
    return statistics.median(times[1:]), phases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="llama-3-8b", choices=["llama-3-8b", "tiny"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tokens", type=int, nargs="+", default=[128, 256, 512, 1024, 2048])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-graphs", action="store_true", help="eager steps (EngineConfig.cuda_graphs off): "
                    "the baseline of the prefill graphs (engine/prefill_graphs.py)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    out = out_dir(args.out, "prefill-profile")
    path = shape_dir(args.shape, Path(tempfile.mkdtemp()))
    budget = max(args.tokens)
    config = EngineConfig(model=str(path), dtype="bfloat16" if device.type == "cuda" else "float32",
                          device=str(device), load_format="dummy", detokenize=False, async_scheduling=False,
                          cuda_graphs=not args.no_graphs,
                          cache=CacheConfig(num_blocks=budget // 16 + 64),
                          scheduler=SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=budget,
                                                    max_model_len=budget + 16))
    engine = LLMEngine(config)
    info = machine_info(device)
    vocab = engine.model_config.vocab_size
    rows = []
    for n in track(args.tokens, description="prefill"):
        seconds, phases = prefill_seconds(engine, n, args.repeats, device, vocab)
        rows.append({"tokens": n, "seconds": seconds, "step_ms_by_phase": phases})
    for r in rows:
        phases = " ".join(f"{ph} {ms:.2f}" for ph, ms in r["step_ms_by_phase"].items())
        print(f"{r['tokens']:6d} tokens  {1e3 * r['seconds']:8.2f} ms  {r['tokens'] / r['seconds']:9.0f} tok/s"
              f"  (per step, ms: {phases})")
    write_json(out / "prefill_profile.json", {"machine": info, "args": vars(args), "rows": rows})
    write_json(out / "prefill_calibration.json", {"device": info.device, "model": args.shape, "measurements": [
        {"op": "prefill", "tokens": r["tokens"], "context": 0, "seconds": r["seconds"]} for r in rows]})


if __name__ == "__main__":
    main()
