"""Decode throughput of the engine against the bandwidth floor and against `transformers`.

    PYTHONPATH=. python benchmarks/decode_step.py --shape llama-3-8b --device cuda --out out/decode

Both run the same random Llama-3-8B-shaped bf16 weights. For each batch size B, B prompts
of --prompt-len random tokens generate --new-tokens tokens each (EOS ignored).
  ours step:    median wall time of an engine.step() in which all B requests decode
  floor:        the bytes a decode step must read (``floor_bytes``: every weight once, the LM head
                in full but only the B looked-up rows of the embedding table, plus the K/V of each
                sequence's context) over the copy rate, and over the read-only rate
                (benchmarks/ceilings.py, both measured at the start of the run)
  ours e2e:     B * new_tokens / wall time of the whole batch (prefill included)
  overlapped:   the same two with EngineConfig.async_scheduling (the host prepares step N+1
                while the device runs step N), on the same weights in the same process
  transformers: generate in the best configuration that runs here (``TransformersPeer``): a static
                KV cache with generate's own torch.compile of the decode forward (CUDA), else the
                static cache eager, else the dynamic cache; the fallback is printed.
                step = (time of generate with N new tokens - time with N/4) / (N - N/4): seconds per
                decode step, prefill excluded; e2e = B * N / time of generate with N (prefill included)
  transformers cb: continuous batching (generate_batch), end to end, if present (--no-hf-cb skips)
Ratios compare like with like: our step against transformers' step, end to end against end to end.
Our engines run every batch size first, then transformers (in --batches order: its first two
sizes compile); the results are rewritten after each, so a run cut short keeps what it finished.
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

from benchmarks.ceilings import Ceilings, describe, measure
from benchmarks.common import machine_info, out_dir, write_json
from benchmarks.hf_peer import PeerTiming, TransformersPeer, hf_continuous, hf_model
from benchmarks.model_shapes import shape_dir
from engine.config import CacheConfig, EngineConfig, SchedulerConfig
from engine.llm_engine import LLMEngine
from engine.model.llama import LlamaForCausalLM
from engine.model.loader import build_empty
from engine.model.weights import load_weights
from engine.model_config import ModelConfig
from engine.sampling_params import SamplingParams


@dataclass(frozen=True)
class Row:
    batch: int
    floor_bytes: int
    floor_s: float  # floor_bytes / copy rate
    read_floor_s: float  # floor_bytes / read-only rate
    ours_step_s: float
    ours_e2e_tok_s: float
    async_step_s: float
    async_e2e_tok_s: float
    hf: PeerTiming | None
    hf_cb_tok_s: float | None

    def ratios(self) -> dict[str, float | None]:
        """Fractions of the floor (step time at the floor / measured) and speed-ups over transformers."""
        hf = self.hf
        return {"floor_fraction": self.floor_s / self.ours_step_s,
                "read_floor_fraction": self.read_floor_s / self.ours_step_s,
                "async_floor_fraction": self.floor_s / self.async_step_s,
                "async_read_floor_fraction": self.read_floor_s / self.async_step_s,
                "step_vs_hf": hf and hf.step_s / self.ours_step_s,
                "async_step_vs_hf": hf and hf.step_s / self.async_step_s,
                "e2e_vs_hf": hf and self.ours_e2e_tok_s / hf.e2e_tok_s,
                "async_e2e_vs_hf": hf and self.async_e2e_tok_s / hf.e2e_tok_s}

    def record(self) -> dict[str, object]:
        return {**dataclasses.asdict(self), **self.ratios()}


def floor_bytes(model: LlamaForCausalLM, batch: int, context: int, kv_element_size: int) -> int:
    """Bytes a decode step of ``batch`` sequences of ``context`` tokens must read: every weight once,
    except the embedding table, of which only the ``batch`` looked-up rows (the LM head is read in
    full, also when it is the tied table), plus each sequence's K and V in every layer."""
    embed = model.model.embed_tokens.weight
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    if model.lm_head is not None:  # untied: the table itself is read only at the looked-up rows
        weights -= embed.numel() * embed.element_size()
    rows = batch * embed.shape[1] * embed.element_size()
    cfg = model.config
    kv = batch * context * cfg.num_layers * 2 * cfg.kv_size * kv_element_size
    return weights + rows + kv


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


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="llama-3-8b", choices=["llama-3-8b", "tiny", "micro"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--no-hf", action="store_true", help="skip transformers (generate and continuous batching)")
    ap.add_argument("--no-hf-cb", action="store_true", help="skip transformers' continuous batching")
    ap.add_argument("--hf-compile", choices=["auto", "on", "off"], default="auto",
                    help="torch.compile transformers' decode forward: auto = on CUDA only (default)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.new_tokens < 2:
        ap.error("--new-tokens must be >= 2 (transformers' step time is a difference of two generate lengths)")
    return args


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    out = out_dir(args.out, "decode_step")
    path = shape_dir(args.shape, Path(tempfile.mkdtemp()))
    info = machine_info(device)
    ceilings = measure(device)
    print(f"{info.device}: {describe(ceilings)}", flush=True)
    hf = hf_model(path, device, dtype)
    max_len = args.prompt_len + args.new_tokens + 16
    engine, overlapped = our_engines(path, hf, device, dtype, max(args.batches), max_len)
    compile = args.hf_compile == "on" or (args.hf_compile == "auto" and device.type == "cuda")
    if not compile and not args.no_hf:
        print(f"note: transformers runs without torch.compile (--hf-compile {args.hf_compile} on {device.type})")
    peer = None if args.no_hf else TransformersPeer(hf, device, compile)
    gen = torch.Generator().manual_seed(0)
    prompts = {b: torch.randint(3, 500, (b, args.prompt_len), generator=gen).tolist() for b in args.batches}
    context = args.prompt_len + args.new_tokens // 2
    rows = []
    for b in args.batches:  # ours first, every batch size: cheap, and kept if transformers' compile runs long
        decode_steps(engine, prompts[b][:1], 4)  # warm-up
        step, e2e = decode_steps(engine, prompts[b], args.new_tokens)
        decode_steps(overlapped, prompts[b][:1], 4)
        async_step, async_e2e = decode_steps(overlapped, prompts[b], args.new_tokens)
        nbytes = floor_bytes(engine.runner.model, b, context, engine.runner.kv_cache.element_size())
        rows.append(Row(b, nbytes, nbytes / ceilings.copy_bps, nbytes / ceilings.read_bps, step, e2e,
                        async_step, async_e2e, None, None))
        print(_line(rows[-1]), flush=True)
        write_results(rows, info, ceilings, out, args)
    for i, b in enumerate([] if args.no_hf else args.batches):  # in the order given: the first compiles
        timing = peer.time(prompts[b], args.new_tokens)
        cb = None if args.no_hf_cb else hf_continuous(hf, prompts[b], args.new_tokens, device)
        rows[i] = dataclasses.replace(rows[i], hf=timing, hf_cb_tok_s=cb)
        print(_line(rows[i]), flush=True)
        write_results(rows, info, ceilings, out, args)
    print_table(rows, info, ceilings, args)
    plot(rows, info, args, out / "decode_step.png")


def _line(r: Row) -> str:
    x = r.ratios()
    hf = "" if r.hf is None else (f"  transformers [{r.hf.config}] step {1e3 * r.hf.step_s:.2f} ms, e2e "
                                  f"{r.hf.e2e_tok_s:.0f} tok/s; ours/transformers: step {x['async_step_vs_hf']:.2f}x,"
                                  f" e2e {x['async_e2e_vs_hf']:.2f}x (overlapped)")
    return (f"B={r.batch:4d} step {1e3 * r.ours_step_s:.2f} ms lockstep / {1e3 * r.async_step_s:.2f} ms overlapped; "
            f"floor {1e3 * r.floor_s:.2f} ms copy / {1e3 * r.read_floor_s:.2f} ms read-only "
            f"(overlapped {100 * x['async_floor_fraction']:.1f}% / {100 * x['async_read_floor_fraction']:.1f}% of it); "
            f"e2e {r.ours_e2e_tok_s:.0f} / {r.async_e2e_tok_s:.0f} tok/s{hf}")


def write_results(rows: list[Row], info, ceilings: Ceilings, out: Path, args) -> None:
    write_json(out / "decode_step.json", {"machine": info, "ceilings": ceilings.record(), "args": vars(args),
                                          "rows": [r.record() for r in rows]})
    write_json(out / "decode_step_calibration.json", {"device": info.device, "measurements": [
        {"op": "decode_step", "model": args.shape, "batch": r.batch,
         "context": args.prompt_len + args.new_tokens // 2, "seconds": r.async_step_s}  # the CUDA default
        for r in rows]})


def print_table(rows: list[Row], info, ceilings: Ceilings, args) -> None:
    from rich.console import Console
    from rich.table import Table

    def pair(a: float | None, b: float | None, fmt: str) -> str:
        return "-" if a is None or b is None else f"{a:{fmt}} / {b:{fmt}}"
    table = Table(title=f"decode step, {args.shape}, {info.device} {info.date}; {describe(ceilings)}; "
                        "pairs are lockstep / overlapped unless named")
    for col in ("batch", "step ms", "floor ms (copy / read-only)", "% of copy floor", "% of read-only floor",
                "e2e tok/s", "transformers config", "transformers step ms", "transformers e2e tok/s",
                "transformers cb e2e tok/s", "step speed-up vs transformers step", "e2e speed-up vs transformers e2e"):
        table.add_column(col, justify="right")
    for r in sorted(rows, key=lambda r: r.batch):
        x, hf = r.ratios(), r.hf
        table.add_row(str(r.batch), pair(1e3 * r.ours_step_s, 1e3 * r.async_step_s, ".2f"),
                      pair(1e3 * r.floor_s, 1e3 * r.read_floor_s, ".2f"),
                      pair(100 * x["floor_fraction"], 100 * x["async_floor_fraction"], ".1f"),
                      pair(100 * x["read_floor_fraction"], 100 * x["async_read_floor_fraction"], ".1f"),
                      pair(r.ours_e2e_tok_s, r.async_e2e_tok_s, ".0f"), hf.config if hf else "-",
                      f"{1e3 * hf.step_s:.2f}" if hf else "-", f"{hf.e2e_tok_s:.0f}" if hf else "-",
                      f"{r.hf_cb_tok_s:.0f}" if r.hf_cb_tok_s else "-",
                      pair(x["step_vs_hf"], x["async_step_vs_hf"], ".2f"),
                      pair(x["e2e_vs_hf"], x["async_e2e_vs_hf"], ".2f"))
    Console(width=250).print(table)


def plot(rows: list[Row], info, args, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = sorted(rows, key=lambda r: r.batch)
    bs = [r.batch for r in rows]

    def line(values: list[float | None], style: str, label: str) -> None:
        if any(v is not None for v in values):
            ax.plot(bs, [float("nan") if v is None else v for v in values], style, label=label)
    line([r.batch / r.read_floor_s for r in rows], "k-", "bandwidth floor (read-only rate)")
    line([r.batch / r.floor_s for r in rows], "k--", "bandwidth floor (copy rate)")
    line([r.batch / r.ours_step_s for r in rows], "o-", "tierserve (decode step)")
    line([r.ours_e2e_tok_s for r in rows], "o:", "tierserve (end to end)")
    line([r.batch / r.async_step_s for r in rows], "D-", "tierserve overlapped (decode step)")
    line([r.async_e2e_tok_s for r in rows], "D:", "tierserve overlapped (end to end)")
    configs = sorted({r.hf.config for r in rows if r.hf})
    line([r.hf and r.batch / r.hf.step_s for r in rows], "s-", f"transformers {', '.join(configs)} (decode step)")
    line([r.hf and r.hf.e2e_tok_s for r in rows], "s:", "transformers (end to end)")
    line([r.hf_cb_tok_s for r in rows], "^:", "transformers continuous batching (end to end)")
    ax.set(xscale="log", yscale="log", xlabel="batch", ylabel="tokens/s",
           title=f"decode, {args.shape}, {info.device}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
