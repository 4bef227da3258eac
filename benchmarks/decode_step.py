"""Decode throughput of the engine against the bandwidth floor and against `transformers`.

    PYTHONPATH=. python benchmarks/decode_step.py --shape llama-3-8b --device cuda --out out/decode

Both run the same random Llama-3-8B-shaped bf16 weights. For each batch size B, B prompts
of --prompt-len random tokens generate --new-tokens tokens each (EOS ignored).
  ours step:    median wall time of an engine.step() in which all B requests decode
  floor:        (weight bytes + KV bytes read in that step) / device copy bandwidth
  ours e2e:     B * new_tokens / wall time of engine.generate (prefill included)
  overlapped:   the same two with EngineConfig.async_scheduling (the host prepares step N+1
                while the device runs step N), on the same weights in the same process
  hf static:    the same through transformers' generate (one static batch)
  hf cb:        the same through transformers' continuous batching (generate_batch), if present
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.common import copy_bandwidth, machine_info, out_dir, write_json
from benchmarks.model_shapes import shape_dir
from engine.config import CacheConfig, EngineConfig, SchedulerConfig
from engine.llm_engine import LLMEngine
from engine.model.loader import build_empty
from engine.model.weights import load_weights
from engine.model_config import ModelConfig
from engine.sampling_params import SamplingParams


@dataclass
class Row:
    batch: int
    ours_step_s: float
    floor_s: float
    ours_tok_s: float
    ours_e2e_tok_s: float
    async_step_s: float
    async_e2e_tok_s: float
    hf_static_tok_s: float | None
    hf_cb_tok_s: float | None

    @property
    def floor_fraction(self) -> float:
        return self.floor_s / self.ours_step_s

    @property
    def async_floor_fraction(self) -> float:
        return self.floor_s / self.async_step_s


def hf_model(path: Path, device: torch.device, dtype: torch.dtype):
    import transformers
    cfg = transformers.AutoConfig.from_pretrained(path)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model.eval()


def our_engines(path: Path, hf, device: torch.device, dtype: torch.dtype, max_batch: int, max_len: int
                ) -> tuple[LLMEngine, LLMEngine]:
    """Lockstep and overlapped engines over one copy of ``hf``'s weights (each with its own cache)."""
    cfg = ModelConfig.from_dir(path)
    model = build_empty(cfg, dtype, device, max_len)
    load_weights(model, iter(hf.state_dict().items()), cfg.tie_word_embeddings)
    blocks = max_batch * (max_len // 16 + 1) + 64
    config = EngineConfig(model=str(path), dtype=str(dtype).removeprefix("torch."), device=str(device),
                          detokenize=False, cache=CacheConfig(num_blocks=blocks), async_scheduling=False,
                          scheduler=SchedulerConfig(max_num_seqs=max_batch, max_num_batched_tokens=8192,
                                                    max_model_len=max_len))
    return (LLMEngine(config, model=model),
            LLMEngine(dataclasses.replace(config, async_scheduling=True), model=model))


def decode_steps(engine: LLMEngine, prompts: list[list[int]], new_tokens: int) -> tuple[float, float]:
    """(median seconds of a full-batch decode step, end-to-end tokens/s)."""
    params = SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True)
    for p in prompts:
        engine.add_request(None, p, params)
    times, start = [], time.perf_counter()
    while engine.has_unfinished():
        t0 = time.perf_counter()
        out = engine.step()
        if len(out) == len(prompts) and all(len(engine.requests.get(o.request_id).output_token_ids) > 1
                                            for o in out if not o.finished):
            times.append(time.perf_counter() - t0)
    total = time.perf_counter() - start
    return statistics.median(times), len(prompts) * new_tokens / total


def hf_static(hf, prompts: list[list[int]], new_tokens: int, device: torch.device) -> float:
    ids = torch.tensor(prompts, device=device)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=2,
                  attention_mask=torch.ones_like(ids))
    hf.generate(ids[:, :8], **{**kwargs, "max_new_tokens": 4, "min_new_tokens": 4,
                               "attention_mask": torch.ones_like(ids[:, :8])})
    _sync(device)
    start = time.perf_counter()
    hf.generate(ids, **kwargs)
    _sync(device)
    return len(prompts) * new_tokens / (time.perf_counter() - start)


def hf_continuous(hf, prompts: list[list[int]], new_tokens: int, device: torch.device) -> float | None:
    if not hasattr(hf, "generate_batch"):
        return None
    from transformers import GenerationConfig
    gen = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                           eos_token_id=-1, pad_token_id=2)
    try:
        hf.generate_batch(inputs=[p[:8] for p in prompts[:2]], generation_config=gen)
        _sync(device)
        start = time.perf_counter()
        hf.generate_batch(inputs=prompts, generation_config=gen)
        _sync(device)
    except Exception as e:  # noqa: BLE001 — an API that changed between versions is reported, not fatal
        print(f"transformers generate_batch failed: {e!r}")
        return None
    return len(prompts) * new_tokens / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def floor_seconds(engine: LLMEngine, batch: int, context: int, bandwidth: float) -> float:
    model = engine.runner.model
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    cfg = model.config
    kv = batch * context * cfg.num_layers * 2 * cfg.kv_size * engine.runner.kv_cache.element_size()
    return (weights + kv) / bandwidth


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="llama-3-8b", choices=["llama-3-8b", "tiny"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--no-hf", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    out = out_dir(args.out, "decode_step")
    path = shape_dir(args.shape, Path(tempfile.mkdtemp()))
    info = machine_info(device)
    bandwidth = copy_bandwidth(device) if device.type == "cuda" else 20e9
    hf = hf_model(path, device, dtype)
    max_len = args.prompt_len + args.new_tokens + 16
    engine, overlapped = our_engines(path, hf, device, dtype, max(args.batches), max_len)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for b in args.batches:
        prompts = torch.randint(3, 500, (b, args.prompt_len), generator=gen).tolist()
        decode_steps(engine, prompts[:1], 4)  # warm-up
        step, e2e = decode_steps(engine, prompts, args.new_tokens)
        decode_steps(overlapped, prompts[:1], 4)
        async_step, async_e2e = decode_steps(overlapped, prompts, args.new_tokens)
        floor = floor_seconds(engine, b, args.prompt_len + args.new_tokens // 2, bandwidth)
        static = None if args.no_hf else hf_static(hf, prompts, args.new_tokens, device)
        cb = None if args.no_hf else hf_continuous(hf, prompts, args.new_tokens, device)
        rows.append(Row(b, step, floor, b / step, e2e, async_step, async_e2e, static, cb))
        print(_line(rows[-1]), flush=True)
    report(rows, info, bandwidth, out, args)


def _line(r: Row) -> str:
    fmt = lambda v: "-" if v is None else f"{v:9.0f}"  # noqa: E731
    return (f"B={r.batch:4d} step {1e3 * r.ours_step_s:7.2f} ms  floor {1e3 * r.floor_s:7.2f} ms "
            f"({100 * r.floor_fraction:5.1f}% of floor)  ours {r.ours_tok_s:9.0f} tok/s  e2e {r.ours_e2e_tok_s:9.0f}"
            f"  overlapped step {1e3 * r.async_step_s:7.2f} ms ({100 * r.async_floor_fraction:5.1f}%)"
            f" e2e {r.async_e2e_tok_s:9.0f}  hf static {fmt(r.hf_static_tok_s)}  hf cb {fmt(r.hf_cb_tok_s)}")


def report(rows: list[Row], info, bandwidth: float, out: Path, args) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    print(f"\n{info.device} {info.date}: copy bandwidth {bandwidth / 1e9:.0f} GB/s; shape {args.shape}")
    for r in rows:
        print(_line(r))
    write_json(out / "decode_step.json", {"machine": info, "bandwidth": bandwidth, "args": vars(args),
                                          "rows": [dict(vars(r), floor_fraction=r.floor_fraction,
                                                                async_floor_fraction=r.async_floor_fraction)
                                                           for r in rows]})
    write_json(out / "decode_step_calibration.json", {"device": info.device, "measurements": [
        {"op": "decode_step", "model": args.shape, "batch": r.batch,
         "context": args.prompt_len + args.new_tokens // 2, "seconds": r.async_step_s}  # the CUDA default
        for r in rows]})
    fig, ax = plt.subplots(figsize=(7, 4.5))
    bs = [r.batch for r in rows]
    ax.plot(bs, [r.batch / r.floor_s for r in rows], "k--", label="bandwidth floor")
    ax.plot(bs, [r.ours_tok_s for r in rows], "o-", label="tierserve (decode step)")
    ax.plot(bs, [r.ours_e2e_tok_s for r in rows], "o:", label="tierserve (end to end)")
    ax.plot(bs, [r.batch / r.async_step_s for r in rows], "D-", label="tierserve overlapped (decode step)")
    ax.plot(bs, [r.async_e2e_tok_s for r in rows], "D:", label="tierserve overlapped (end to end)")
    if any(r.hf_static_tok_s for r in rows):
        ax.plot(bs, [r.hf_static_tok_s or float("nan") for r in rows], "s-", label="transformers generate")
    if any(r.hf_cb_tok_s for r in rows):
        ax.plot(bs, [r.hf_cb_tok_s or float("nan") for r in rows], "^-", label="transformers continuous batching")
    ax.set(xscale="log", yscale="log", xlabel="batch", ylabel="tokens/s",
           title=f"decode, {args.shape} bf16, {info.device}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "decode_step.png", dpi=120)


if __name__ == "__main__":
    main()
