"""Attention offload (Lamina): the link, the offloaded decode step against the local one, pipeline efficiency.

    python -m benchmarks.offload_decode --parts cpu                       # tiny model, gloo, CPU (sanity)
    python -m benchmarks.offload_decode --parts link step --device cuda   # two GPUs: cuda:0 model, cuda:1 attention
    python -m benchmarks.offload_decode --parts plan --results out/attention-offload/results.json

The attention worker runs in a child process (gloo on CPU, NCCL between GPUs); the link forms through a
private redis-server. Parts:

  cpu   end-to-end decode tokens/s of an offloaded engine for m = 1, 2, 3 against the single-process engine
        (tiny model, fp32), and the per-layer overhead: (offloaded step - local step) / layers.
  link  per-layer round trip of one step's up (packed q/k/v) and down (attention output) tensors of B tokens
        (Llama-3-8B shapes: 6144 and 4096 bf16 per token), the attention side answering at once: a decode step
        of 32 layers through the real control message and worker loop with attention replaced by nothing,
        divided by the layers. Goal: <= 40 us at B = 256 over NVLink.
  step  Llama-3-8B decode steps (random weights), B in --batches, context in --contexts, m in --micro-batches:
        the offloaded step T_step (model on cuda:0, attention and KV on cuda:1), its stages T_dense (the model
        side with no attention, m micro-batches), T_attn (the attention side's layers alone), T_link (the link
        part's step); pipeline efficiency E = max(T_dense, T_attn, T_link) / T_step (goal >= 0.85 at m = 2,
        B >= 128); the local step (one GPU, Triton, CUDA graph) where the KV fits beside the weights; decode
        tokens/s of 1 model + 1 attention GPU against 2 colocated engines holding the same KV (B/2 each).
  plan  the simulator's offload model calibrated with the measured curves (simulator/offload.py): predicted
        against measured step times, and tokens per dollar of an offloaded design against the best colocated
        and disaggregated ones at 4K+ contexts under a TBT SLO (plot).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp

from attention_offload.control import Kind, StepControl
from attention_offload.link import Link, LinkEndpoint
from attention_offload.runner import OffloadedRunner
from attention_offload.service import cache_blocks
from attention_offload.tables import TableSender
from attention_offload.worker import AttentionShape, AttentionWorker
from benchmarks.common import machine_info, out_dir, wall_median, write_json
from engine.attention import AttentionMetadata
from engine.batch import HostBatch, ModelInput
from engine.config import CacheConfig
from engine.model.split_forward import forward_split, micro_batch_bounds
from engine.model_config import ModelConfig
from kvstore.config import TransportConfig
from kvstore.keys import RedisKeys

MODEL, ATTENTION = "model-0", "attention-0"
BLOCK = 16


@dataclass(frozen=True)
class Peer:
    redis_url: str
    prefix: str
    shape: AttentionShape
    dtype: torch.dtype
    device: str
    link_device: str
    num_blocks: int | None  # None: what memory holds


def transport() -> TransportConfig:
    return TransportConfig(advertise_host="127.0.0.1", transfer_timeout_s=120.0, rendezvous_timeout_s=60.0)


# -- the attention side (child process) -----------------------------------------------------------
def attention_peer(peer: Peer, commands, replies) -> None:
    """Serve sessions ("serve" or "echo": attention replaced by zeros) and time attention alone ("attn")."""
    import redis
    device = torch.device(peer.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(1)  # two processes' spinning OpenMP pools on shared cores cost 10x per round trip
    cache = CacheConfig(block_size=BLOCK, num_blocks=peer.num_blocks, memory_fraction=0.9)
    worker = AttentionWorker(peer.shape, cache_blocks(peer.shape, cache, peer.dtype, device), BLOCK, peer.dtype, device)
    real_attend = worker.attend
    end = LinkEndpoint(ATTENTION, redis.Redis.from_url(peer.redis_url), RedisKeys(peer.prefix), transport(),
                       peer.link_device)
    replies.put(("ready", worker.num_blocks))
    while (command := commands.get()) is not None:
        if command[0] in ("serve", "echo"):
            zeros = {}

            def echo(layer, meta, qkv):
                n = qkv.shape[0]
                if n not in zeros:
                    zeros[n] = torch.zeros(n, peer.shape.q_size, dtype=peer.dtype, device=device)
                return zeros[n]
            worker.attend = real_attend if command[0] == "serve" else echo
            replies.put(("session", worker.serve(end.connect(MODEL))))
        elif command[0] == "attn":
            replies.put(("attn", attention_seconds(worker, *command[1:])))


def attention_seconds(worker: AttentionWorker, batch: int, context: int, m: int, reps: int) -> float:
    """Seconds of one step's attention on the attention device alone: every layer, every micro-batch."""
    sender, s = TableSender(), worker.shape
    host = decode_batch(batch, context)
    bounds = micro_batch_bounds([1] * batch, m)
    metas = worker.mirror.apply(sender.step(host, bounds))
    sizes = [hi - lo for lo, hi in zip(bounds, bounds[1:])]
    qkv = [torch.randn(n, s.q_size + 2 * s.kv_size, dtype=worker.dtype, device=worker.device) for n in sizes]

    def step() -> None:
        for layer in range(s.num_layers):
            for meta, x in zip(metas, qkv):
                worker.attend(layer, meta, x)
    return wall_median(step, worker.device, reps)


# -- helpers --------------------------------------------------------------------------------------
def decode_batch(batch: int, context: int) -> HostBatch:
    """B sequences decoding their token at position ``context``, each on its own run of blocks."""
    width = context // BLOCK + 1
    rows = [np.arange(i * width, (i + 1) * width, dtype=np.int32) for i in range(batch)]
    return HostBatch([f"s{i}" for i in range(batch)], np.arange(batch + 1, dtype=np.int32),
                     np.full(batch, context + 1, dtype=np.int32), rows)


def decode_input(batch: int, context: int, device: torch.device) -> ModelInput:
    ints = dict(dtype=torch.int32, device=device)
    meta = AttentionMetadata(torch.arange(batch + 1, **ints), torch.full((batch,), context + 1, **ints),
                             torch.zeros(batch, 1, **ints), torch.zeros(batch, dtype=torch.int64, device=device),
                             1, context + 1, True)
    rows = torch.arange(batch, device=device)
    return ModelInput(torch.randint(3, 500, (batch,), device=device), torch.full((batch,), context, device=device),
                      meta, rows, batch, decode_batch(batch, context))


class NoAttention:
    """A split-loop executor that attends nothing (zeros): the model side's dense work alone."""

    def __init__(self, q_size: int, dtype: torch.dtype, device: torch.device):
        self.q_size, self.dtype, self.device, self.rows = q_size, dtype, device, {}

    def start(self, layer, micro_batch, q, k, v) -> None:
        self.rows[micro_batch] = q.shape[0]

    def finish(self, layer, micro_batch) -> torch.Tensor:
        return torch.zeros(self.rows[micro_batch], self.q_size, dtype=self.dtype, device=self.device)


class Session:
    """The attention child and this side's endpoint; ``link(mode)`` opens a session."""

    def __init__(self, peer: Peer):
        import redis
        ctx = mp.get_context("spawn")
        self.commands, self.replies = ctx.Queue(), ctx.Queue()
        self.process = ctx.Process(target=attention_peer, args=(peer, self.commands, self.replies), daemon=True)
        self.process.start()
        _, self.num_blocks = self.replies.get(timeout=600)
        self.end = LinkEndpoint(MODEL, redis.Redis.from_url(peer.redis_url), RedisKeys(peer.prefix), transport(),
                                peer.link_device)
        self.link: Link | None = None

    def open(self, mode: str) -> Link:
        self.commands.put((mode,))
        self.link = self.end.connect(ATTENTION)
        return self.link

    def close_session(self) -> None:
        for _, work in self.link.send_control(StepControl(Kind.STOP, -1)):
            self.link.wait(work, "stopping")
        assert self.replies.get(timeout=120) == ("session", "stopped")

    def attention(self, batch: int, context: int, m: int, reps: int) -> float:
        self.commands.put(("attn", batch, context, m, reps))
        return self.replies.get(timeout=600)[1]

    def close(self) -> None:
        self.commands.put(None)
        self.process.join(timeout=60)
        self.end.close_all()


# -- parts ----------------------------------------------------------------------------------------
def part_cpu(args, redis_url: str) -> list[dict]:
    """End-to-end decode through the engine: local against offloaded (m = 1, 2, 3), tiny model."""
    from attention_offload.runner import offloaded_engine
    from engine.config import EngineConfig, SchedulerConfig
    from engine.llm_engine import LLMEngine
    from engine.sampling_params import SamplingParams
    from engine.tiny_model import make_tiny_model
    torch.set_num_threads(1)
    path = make_tiny_model(Path(tempfile.mkdtemp()))
    cfg = ModelConfig.from_dir(path)
    peer = Peer(redis_url, f"bench-{uuid.uuid4().hex[:8]}", AttentionShape.of(cfg), torch.float32, "cpu", "cpu",
                args.cpu_blocks)
    session = Session(peer)
    config = EngineConfig(model=str(path), detokenize=False, async_scheduling=False,
                          cache=CacheConfig(num_blocks=session.num_blocks),
                          scheduler=SchedulerConfig(max_num_seqs=256, max_num_batched_tokens=8192))
    rows = []
    params = SamplingParams(max_tokens=args.cpu_new_tokens, temperature=0, ignore_eos=True)
    for batch in args.cpu_batches:
        prompts = [list(range(3 + i % 7, 3 + i % 7 + args.cpu_prompt)) for i in range(batch)]
        local = LLMEngine(config)
        base = decode_run(local, prompts, params)
        rows.append({"part": "cpu", "batch": batch, "m": 0, **base})
        print(f"cpu B={batch}: local {base['tokens_per_s']:.0f} tok/s, step {1e3 * base['step_s']:.2f} ms")
        for m in args.micro_batches:
            engine = offloaded_engine(config, session.open("serve"), session.num_blocks, m)
            got = decode_run(engine, prompts, params)
            session.close_session()
            per_layer = (got["step_s"] - base["step_s"]) / cfg.num_layers
            rows.append({"part": "cpu", "batch": batch, "m": m, **got, "overhead_per_layer_s": per_layer})
            print(f"cpu B={batch} m={m}: {got['tokens_per_s']:.0f} tok/s, step {1e3 * got['step_s']:.2f} ms, "
                  f"+{1e6 * per_layer:.0f} us per layer")
    session.close()
    return rows


def decode_run(engine, prompts, params) -> dict:
    for p in prompts:
        engine.add_request(None, p, params)
    steps, start = [], time.perf_counter()
    while engine.has_unfinished():
        t0 = time.perf_counter()
        out = engine.step()
        if len(out) == len(prompts) and engine.scheduler.running and all(
                r.num_computed_tokens > r.num_prompt_tokens for r in engine.scheduler.running):
            steps.append(time.perf_counter() - t0)
    total = time.perf_counter() - start
    return {"tokens_per_s": len(prompts) * params.max_tokens / total, "step_s": statistics.median(steps)}


def gpu_model(args, device: torch.device):
    from benchmarks.model_shapes import shape_dir
    from engine.model.loader import load_model
    path = shape_dir(args.shape, Path(tempfile.mkdtemp()), max_positions=max(args.contexts) + 64)
    cfg = ModelConfig.from_dir(path)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = load_model(str(path), dtype, device, max_positions=max(args.contexts) + 64, load_format="dummy")
    return cfg, model


def part_link(args, session: Session, cfg: ModelConfig, model, device: torch.device) -> list[dict]:
    rows = []
    link = session.open("echo")
    for batch in args.link_batches:
        inp = decode_input(batch, 0, device)
        runner = OffloadedRunner(model, link, session.num_blocks, 1)
        step = wall_median(lambda: runner.execute(inp), device, args.reps)
        embed_dtype = model.model.embed_tokens.weight.dtype
        dense = wall_median(lambda: forward_split(model, inp.input_ids, inp.positions, [0, batch],
                                            NoAttention(cfg.q_size, embed_dtype, device)), device, args.reps)
        raw = raw_round_trips(link, batch, cfg, device, args.reps)
        rows.append({"part": "link", "batch": batch, "per_layer_s": raw / cfg.num_layers,
                     "echo_step_s": step, "dense_s": dense,
                     "up_bytes": batch * (cfg.q_size + 2 * cfg.kv_size) * 2, "down_bytes": batch * cfg.q_size * 2})
        print(f"link B={batch}: {1e6 * raw / cfg.num_layers:.1f} us per layer round trip; echo step "
              f"{1e3 * step:.2f} ms vs dense alone {1e3 * dense:.2f} ms")
    session.close_session()
    return rows


def raw_round_trips(link: Link, batch: int, cfg: ModelConfig, device: torch.device, reps: int) -> float:
    """One step's L round trips of the up and down tensors alone (no model work here): seconds."""
    from attention_offload.link import layer_tag
    sender = TableSender()
    host = decode_batch(batch, 0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    up = torch.randn(batch, cfg.q_size + 2 * cfg.kv_size, dtype=dtype, device=device)
    down = torch.empty(batch, cfg.q_size, dtype=dtype, device=device)

    def step() -> None:
        held = link.send_control(sender.step(host, [0, batch]))
        for layer in range(cfg.num_layers):
            got = link.recv(link.down, down, layer_tag(layer, 0))
            held.append((up, link.send(link.up, up, layer_tag(layer, 0))))  # a gloo send's work must outlive it
            link.wait(got, "round trip")
        for _, work in held:
            link.wait(work, "sending")
    return wall_median(step, device, reps)


def part_step(args, session: Session, cfg: ModelConfig, model, device: torch.device, link_rows: list[dict],
              all_rows: list[dict], save) -> list[dict]:
    rows = []
    per_token = cfg.num_layers * 2 * cfg.kv_size * 2
    link_step = {r["batch"]: r["per_layer_s"] * cfg.num_layers for r in link_rows}
    for context in args.contexts:
        for batch in args.batches:
            need = batch * (context // BLOCK + 1)
            if need > session.num_blocks:
                print(f"step B={batch} C={context}: {need} blocks do not fit the attention GPU's "
                      f"{session.num_blocks}")
                rows.append({"part": "step", "batch": batch, "context": context, "fits": False})
                all_rows.append(rows[-1])
                continue
            inp = decode_input(batch, context, device)
            local = local_step(model, batch, context, device, args.reps)
            for m in args.micro_batches:
                link = session.open("serve")
                runner = OffloadedRunner(model, link, session.num_blocks, m)
                step = wall_median(lambda: runner.execute(inp), device, args.reps)
                session.close_session()
                rows_ = micro_batch_bounds([1] * batch, m)
                embed_dtype = model.model.embed_tokens.weight.dtype
                dense = wall_median(lambda: forward_split(model, inp.input_ids, inp.positions, rows_,
                                                    NoAttention(cfg.q_size, embed_dtype, device)), device, args.reps)
                attn = session.attention(batch, context, m, args.reps)
                t_link = link_step.get(batch)
                slowest = max(dense, attn, t_link or 0.0)
                row = {"part": "step", "batch": batch, "context": context, "m": m, "fits": True, "step_s": step,
                       "dense_s": dense, "attention_s": attn, "link_s": t_link, "efficiency": slowest / step,
                       "local_step_s": local, "kv_bytes": batch * (context + 1) * per_token}
                rows.append(row)
                all_rows.append(row)
                save()
                print(f"step B={batch} C={context} m={m}: {1e3 * step:.2f} ms (dense {1e3 * dense:.2f}, attention "
                      f"{1e3 * attn:.2f}, link {1e3 * (t_link or 0):.2f}) E={row['efficiency']:.2f}; local "
                      + (f"{1e3 * local:.2f} ms" if local else "does not fit"))
    return rows


def local_step(model, batch: int, context: int, device: torch.device, reps: int) -> float | None:
    """The local decode step (Triton attention, CUDA graph) with the KV beside the weights; None if it does
    not fit."""
    from benchmarks.common import graph_seconds
    from engine.attention import get_backend
    from engine.model.llama import ForwardContext
    cfg = model.config
    width = context // BLOCK + 1
    try:
        kv = torch.zeros(cfg.num_layers, 2, batch * width, BLOCK, cfg.num_kv_heads, cfg.head_dim,
                         dtype=model.model.embed_tokens.weight.dtype, device=device)
    except torch.OutOfMemoryError:
        return None
    ints = dict(dtype=torch.int32, device=device)
    tables = torch.arange(batch * width, **ints).view(batch, width)
    slots = (tables[:, -1].long() * BLOCK + context % BLOCK)
    meta = AttentionMetadata(torch.arange(batch + 1, **ints), torch.full((batch,), context + 1, **ints), tables,
                             slots, 1, context + 1, True)
    ctx = ForwardContext(kv, meta, get_backend("triton" if device.type == "cuda" else "torch"))
    ids = torch.randint(3, 500, (batch,), device=device)
    pos = torch.full((batch,), context, device=device)
    try:
        with torch.inference_mode():
            return graph_seconds(lambda: model(ids, pos, ctx), device)
    except torch.OutOfMemoryError:  # the KV fit, the step's activations did not
        return None
    finally:
        kv = ctx = meta = None
        if device.type == "cuda":
            torch.cuda.empty_cache()


def throughput_rows(step_rows: list[dict]) -> list[dict]:
    """Decode tokens/s of 1 model + 1 attention GPU (best m) against 2 colocated engines holding the same KV
    (B/2 sequences each at the same context): derived from the measured steps."""
    out = []
    by = {(r["batch"], r["context"]): r for r in step_rows if r.get("fits") and r["m"] == 1}
    for (batch, context), _ in sorted(by.items()):
        best = min((x for x in step_rows if x.get("fits") and x["batch"] == batch and x["context"] == context),
                   key=lambda x: x["step_s"])
        half = by.get((batch // 2, context))
        colocated = 2 * (batch // 2) / half["local_step_s"] if half and half["local_step_s"] else None
        out.append({"part": "throughput", "batch": batch, "context": context, "m": best["m"],
                    "offload_tokens_per_s": batch / best["step_s"], "colocated_tokens_per_s": colocated})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", nargs="+", default=["cpu"], choices=["cpu", "link", "step", "plan"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shape", default="llama-3-8b")
    ap.add_argument("--batches", type=int, nargs="+", default=[32, 64, 128, 256, 512])
    ap.add_argument("--link-batches", type=int, nargs="+", default=[64, 128, 256, 512])
    ap.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--micro-batches", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--cpu-batches", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--cpu-prompt", type=int, default=64)
    ap.add_argument("--cpu-new-tokens", type=int, default=32)
    ap.add_argument("--cpu-blocks", type=int, default=512)
    ap.add_argument("--results", default=None, help="plan: a results.json of the step part")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out = out_dir(args.out, "attention-offload")
    rows: list[dict] = []
    info = machine_info(torch.device("cuda:0" if args.device == "cuda" else "cpu"))

    def save() -> None:  # after every part and step row: a run cut short by its timeout keeps what it measured
        write_json(out / ("results.json" if "plan" not in args.parts else "plan.json"),
                   {"machine": dataclasses.asdict(info), "load_average": os.getloadavg(), "args": vars(args),
                    "rows": rows})
    if "plan" in args.parts:
        from benchmarks.offload_decode_plan import plan_rows
        rows += plan_rows(args.results or str(out / "results.json"), out)
    else:
        from kvstore.redis_server import RedisServer
        with RedisServer() as redis_url:
            if "cpu" in args.parts:
                rows += part_cpu(args, redis_url)
                save()
            if {"link", "step"} & set(args.parts):
                part_gpu(args, redis_url, rows, save)
    save()
    print(f"wrote {out}")


def part_gpu(args, redis_url: str, rows: list[dict], save) -> None:
    """The link and step parts: model on cuda:0, attention on cuda:1 (NCCL); with --device cpu both on the
    CPU over gloo (a smoke run of the same code, --shape tiny)."""
    cuda = args.device == "cuda"
    device = torch.device("cuda:0" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    cfg, model = gpu_model(args, device)
    dtype = model.model.embed_tokens.weight.dtype
    peer = Peer(redis_url, f"bench-{uuid.uuid4().hex[:8]}", AttentionShape.of(cfg), dtype,
                "cuda:1" if cuda else "cpu", "cuda" if cuda else "cpu", None if cuda else args.cpu_blocks)
    session = Session(peer)
    try:
        link_rows = part_link(args, session, cfg, model, device)
        rows += link_rows
        save()
        if "step" in args.parts:
            step_rows = part_step(args, session, cfg, model, device, link_rows, rows, save)
            rows += throughput_rows(step_rows)
            save()
    finally:
        session.close()


if __name__ == "__main__":
    main()
