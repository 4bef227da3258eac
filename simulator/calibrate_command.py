"""`tierserve calibrate`: measure this machine's engine and write the profile simulate / plan read.

Runs, on the user's own device (GPU or CPU) and checkpoint: prefill steps of one prompt of N tokens,
whole-batch decode steps of B sequences, with ``--mixed-batches`` mixed steps (a prompt of N tokens
prefilled beside B decoding sequences, one step: what a colocated engine runs when a request
arrives), the KV handoff between two devices of this kind (kvstore/handoff_probe.py: ``KVHandoff``
between two processes paired through Redis, over NCCL between GPU0 and GPU1, or over gloo between
two CPU processes; a private redis-server unless ``--redis-url``; ``links`` entries gpu0 -> gpu1,
the (device, device) link simulate and plan time handoffs with) and, on CUDA, the free memory
before the model loads. With one GPU there is no pair to time: the catalog's link stays in use,
and the profile says so. The profile records the model it was measured
on (checkpoint and shape: simulate and plan refuse it for a model of another shape, profiles.py).
``--load-format dummy`` times a config-only checkpoint directory (random weights of its shape:
benchmarks/model_shapes.py). Torch and the engine are imported here only, never when simulate or
plan start.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

from simulator.errors import SimInputError


def add_calibrate(sub: argparse._SubParsersAction, func) -> None:
    cal = sub.add_parser("calibrate", help="measure prefill, decode steps and KV copies here; write a profile")
    cal.add_argument("--model", required=True, help="checkpoint directory (e.g. tierserve make-tiny-model /tmp/tiny)")
    cal.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    cal.add_argument("--hardware", default=None, help="catalog name of this device (default: the driver's name; "
                     "CPU-DDR5 on cpu)")
    cal.add_argument("--tokens", type=int, nargs="+", default=[128, 512, 2048], help="prefill prompt lengths")
    cal.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32], help="decode batch sizes")
    cal.add_argument("--context", type=int, default=256, help="decode prompt length per sequence")
    cal.add_argument("--mixed-batches", type=int, nargs="*", default=[],
                     help="decode batch sizes of mixed steps (none by default)")
    cal.add_argument("--mixed-tokens", type=int, nargs="+", default=[128, 512, 1024, 1792],
                     help="prompt lengths prefilled in a mixed step")
    cal.add_argument("--load-format", default="safetensors", choices=["safetensors", "dummy"],
                     help="dummy: random weights of the checkpoint's shape (config.json only)")
    cal.add_argument("--handoff-tokens", type=int, nargs="*", default=[256, 4096],
                     help="prompt lengths whose KV handoff is timed between two devices (none: skip it)")
    cal.add_argument("--allreduce-tokens", type=int, nargs="*", default=[1, 64, 2048],
                     help="tokens of hidden state all-reduced between the two devices, as tensor parallelism "
                          "does per layer (none: skip it)")
    cal.add_argument("--redis-url", default=None,
                     help="Redis the handoff's two processes pair through (default: a private redis-server)")
    cal.add_argument("--repeats", type=int, default=3)
    cal.add_argument("--out", type=Path, default=Path("calibration.json"))
    cal.set_defaults(func=func)


HANDOFF_ITERS, HANDOFF_WARMUP = 9, 2  # handoffs (and all-reduces) timed per size, after warm-ups


def _host_seconds(engine) -> float:
    """The engine's host seconds so far in schedule, prepare and forward (launching), all step kinds."""
    return sum(k.get("schedule", 0.0) + k.get("prepare", 0.0) + k.get("forward", 0.0)
               for k in engine.profile.totals().values())


def _times(run, repeats: int, sync) -> list[float]:
    """Wall seconds of ``repeats`` runs after a warm-up."""
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        sync()
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
    return times[1:]


def _median_seconds(run, repeats: int, sync) -> float:
    return statistics.median(_times(run, repeats, sync))


def calibrate(args: argparse.Namespace) -> dict:
    import torch

    if not Path(args.model, "config.json").is_file():
        raise SimInputError(f"--model {args.model}: no config.json there (a checkpoint directory)")
    _check_args(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SimInputError("--device cuda: no CUDA device here (torch.cuda.is_available() is false); use --device cpu")
    pair = args.handoff_tokens or args.allreduce_tokens
    if pair and args.redis_url is None and shutil.which("redis-server") is None:
        raise SimInputError("the two devices' processes pair through Redis and redis-server is not on PATH: "
                            "install it, pass --redis-url, or skip the pair with --handoff-tokens "
                            "--allreduce-tokens (no values)")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    memory = None
    if cuda:
        free, total = torch.cuda.mem_get_info(device)
        memory = {"total_bytes": total, "free_bytes": free}
    measurements, cfg, layout = _engine_points(args, device)
    if cuda:
        torch.cuda.empty_cache()  # the engine is gone: its memory goes to the handoff's caches
    links, allreduce, handoff_note = _pair_links(args, layout, cfg.hidden_size, device)
    hardware = args.hardware or (torch.cuda.get_device_name(device) if cuda else "CPU-DDR5")
    profile = {"device": hardware, "tp": 1, "source": f"tierserve calibrate on {device} ({args.model})",
               "model": _model_entry(cfg, args.model, layout.dtype), "measurements": measurements, "links": links}
    if allreduce:
        profile["allreduce"] = allreduce
    if handoff_note:
        profile["handoff"] = handoff_note
    if memory:
        profile["memory"] = memory
    return profile


def _check_args(args: argparse.Namespace) -> None:
    """Refuse what calibrate cannot run, naming the option."""
    if args.device not in (None, "cuda", "cpu"):
        raise SimInputError(f"--device must be cuda or cpu, got {args.device!r}")
    for option in ("tokens", "batches", "mixed_batches", "mixed_tokens", "handoff_tokens", "allreduce_tokens"):
        bad = [n for n in getattr(args, option) or [] if n < 1]
        if bad:
            raise SimInputError(f"--{option.replace('_', '-')} must be positive, got {bad}")
    if not args.tokens or not args.batches:
        raise SimInputError("--tokens and --batches need at least one value each")
    if args.context < 1 or args.repeats < 1:
        raise SimInputError(f"--context and --repeats must be >= 1, got {args.context} and {args.repeats}")


def _engine_points(args: argparse.Namespace, device) -> tuple[list[dict], object, object]:
    """The engine's prefill, decode and mixed steps on ``device``; its model config; its KV layout."""
    import torch

    from engine.config import CacheConfig, EngineConfig, SchedulerConfig
    from engine.llm_engine import LLMEngine
    from engine.model_config import ModelConfig
    from engine.sampling_params import SamplingParams
    from kvstore.layout import KVLayout

    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    mixed_batches, mixed_tokens = args.mixed_batches or [], args.mixed_tokens if args.mixed_batches else []
    mixed_steps = len(mixed_tokens) * (args.repeats + 1) + 2
    limit = ModelConfig.from_dir(args.model).max_context
    decode_len = args.context + max(args.repeats, mixed_steps) + 8
    if decode_len > limit:
        raise SimInputError(f"--context {args.context}: its decode steps reach {decode_len} tokens, and the model at "
                            f"{args.model} holds at most {limit}: ask for a shorter context")
    prompts = _fitted(args.tokens, limit, "--tokens")  # a prompt and its one sampled token fit the model
    mixed_tokens = _fitted(mixed_tokens, limit, "--mixed-tokens")
    max_len = min(max(*prompts, *mixed_tokens, decode_len) + 16, limit)
    budget = max(max(prompts), max(args.batches), max(mixed_batches, default=0) + max(mixed_tokens, default=0))
    seqs = max(max(args.batches), max(mixed_batches, default=0) + 1)
    blocks = seqs * (max_len // 16 + 2) + budget // 16 + 64
    engine = LLMEngine(EngineConfig(
        model=str(args.model), dtype="bfloat16" if cuda else "float32", device=str(device), detokenize=False,
        load_format=args.load_format, async_scheduling=False, cache=CacheConfig(num_blocks=blocks),
        scheduler=SchedulerConfig(max_num_seqs=seqs, max_num_batched_tokens=budget,
                                  max_model_len=max_len)))
    vocab = engine.model_config.vocab_size
    gen = torch.Generator().manual_seed(0)

    def prompt(n: int) -> list[int]:
        return torch.randint(3, max(4, min(30000, vocab)), (n,), generator=gen).tolist()

    def drain() -> None:
        while engine.has_unfinished():
            engine.step()

    measurements = []
    for n in prompts:
        hosts: list[float] = []

        def prefill(n: int = n, hosts: list[float] = hosts) -> None:
            engine.add_request(None, prompt(n), SamplingParams(max_tokens=1, temperature=0))
            before = _host_seconds(engine)
            drain()
            hosts.append(_host_seconds(engine) - before)
        seconds = _median_seconds(prefill, args.repeats, sync)
        measurements.append({"op": "prefill", "tokens": n, "context": 0, "seconds": seconds,
                             "host_seconds": statistics.median(hosts[1:])})
    for b in args.batches:
        steps = args.repeats + 2
        params = SamplingParams(max_tokens=steps + 1, temperature=0, ignore_eos=True)
        for _ in range(b):
            engine.add_request(None, prompt(args.context), params)
        engine.step()  # the prefill (one step: the budget holds the batch's prompts in turn)
        while any(len(r.output_token_ids) == 0 for r in engine.requests.values()):
            engine.step()
        times: list[float] = []
        while engine.has_unfinished() and len(times) < steps:
            sync()
            start = time.perf_counter()
            engine.step()
            sync()
            times.append(time.perf_counter() - start)
        drain()
        measurements.append({"op": "decode_step", "batch": b, "context": args.context + 1 + len(times) // 2,
                             "seconds": statistics.median(times)})
    for b in mixed_batches:
        measurements += _mixed_steps(engine, b, mixed_tokens, args, prompt, sync, mixed_steps)
        drain()
    cfg = engine.model_config
    return measurements, cfg, KVLayout(cfg.num_layers, engine.config.cache.block_size, cfg.num_kv_heads,
                                       cfg.head_dim, "bfloat16" if cuda else "float32")


def _fitted(lengths: list[int], limit: int, option: str) -> list[int]:
    """Prompt lengths the model holds with one sampled token: longer ones become ``limit - 1`` (said)."""
    out = sorted({min(n, limit - 1) for n in lengths})
    if max(lengths, default=0) > limit - 1:
        print(f"{option}: lengths over {limit - 1} run at {limit - 1} (the model holds {limit} tokens)")
    return out


def _pair_links(args: argparse.Namespace, layout, hidden: int, device) -> tuple[list[dict], dict | None, str | None]:
    """Two devices of this kind (GPU0 and GPU1, or two CPU processes): the KV handoff timed between
    them as ``links`` entries (gpu0 -> gpu1 or cpu0 -> cpu1), their all-reduce (the profile's
    ``allreduce``), and a note when there is no pair here (why, and what the simulator uses instead)."""
    import torch

    from kvstore.handoff_probe import time_pair
    from simulator.links import fit_link

    tokens, reduced = tuple(args.handoff_tokens), tuple(args.allreduce_tokens)
    if not tokens and not reduced:
        return [], None, "not measured (--handoff-tokens and --allreduce-tokens none): the catalog's link stays"
    if device.type == "cuda" and torch.cuda.device_count() < 2:
        return [], None, ("not measured: one GPU here and a pair needs two (NCCL); simulate and plan use the "
                          "catalog's link and all-reduce for this device kind")
    pair = "cuda" if device.type == "cuda" else "cpu"
    server = None
    url = args.redis_url
    if url is None:
        from kvstore.redis_server import RedisServer
        server = RedisServer(supervise=False)
        url = server.start()
    width = layout.torch_dtype.itemsize * hidden  # bytes of one token's hidden state
    try:
        times = time_pair(layout, pair, tokens, url, tuple(n * width for n in reduced), HANDOFF_ITERS, HANDOFF_WARMUP)
    finally:
        if server is not None:
            server.stop()
    bad = [t.tokens for t in times if t.exact is False]
    if bad:
        raise RuntimeError(f"the KV handoff moved wrong bytes at {bad} tokens: not timing a broken transfer")
    handoffs = [t for t in times if t.method == "KVHandoff"]
    if handoffs:
        try:  # what simulate and plan will fit: refuse points they would refuse, here
            fit_link([(t.nbytes, t.fastest) for t in handoffs])
        except SimInputError as exc:
            raise SimInputError(f"{exc}: the handoffs timed are too small to tell bandwidth from latency here; "
                                "time larger ones (--handoff-tokens)") from exc
    end = "gpu" if pair == "cuda" else "cpu"
    # the fastest of HANDOFF_ITERS: other work on the machine only adds time to a transfer
    links = [{"src": f"{end}0", "dst": f"{end}1", "bytes": t.nbytes, "seconds": t.fastest, "tokens": t.tokens,
              "median_seconds": t.seconds, "method": t.method} for t in handoffs]
    points = [{"tokens": n, "bytes": t.nbytes, "seconds": t.fastest, "median_seconds": t.seconds}
              for n, t in zip(reduced, (t for t in times if t.method == "all-reduce"))]
    return links, {"ranks": 2, "points": points} if points else None, None

def _model_entry(cfg, checkpoint: Path | str, dtype: str) -> dict:
    """The measured model's identity (profiles.py: simulate and plan refuse the profile for a model of
    another shape): its checkpoint, named as simulate names a checkpoint directory, and its shape."""
    from simulator.profiles import SHAPE

    return {"name": Path(checkpoint).name, "path": str(checkpoint), **{k: getattr(cfg, k) for k in SHAPE},
            "dtype": dtype}


def _mixed_steps(engine, batch: int, tokens: list[int], args: argparse.Namespace, prompt, sync,
                 steps: int) -> list[dict]:
    """With ``batch`` sequences decoding (prompts of ``args.context``), each prompt length in
    ``tokens`` arrives ``repeats + 1`` times (the first a warm-up) and is prefilled in one step beside
    the batch's decode tokens: the median of those steps, as ``mixed_step`` points."""
    from engine.sampling_params import SamplingParams

    params = SamplingParams(max_tokens=steps + 2, temperature=0, ignore_eos=True)
    running = [engine.add_request(None, prompt(args.context), params) for _ in range(batch)]
    while any(len(r.output_token_ids) == 0 for r in engine.requests.values()):
        engine.step()
    out = []
    for n in tokens:
        times, hosts, contexts = [], [], []
        for _ in range(args.repeats + 1):
            engine.add_request(None, prompt(n), SamplingParams(max_tokens=1, temperature=0))
            contexts.append(statistics.fmean(args.context + len(engine.requests[r].output_token_ids)
                                             for r in running if r in engine.requests))
            sync()
            before = _host_seconds(engine)
            start = time.perf_counter()
            engine.step()
            sync()
            times.append(time.perf_counter() - start)
            hosts.append(_host_seconds(engine) - before)
        out.append({"op": "mixed_step", "batch": batch, "tokens": n, "context": round(statistics.fmean(contexts)),
                    "seconds": statistics.median(times[1:]), "host_seconds": statistics.median(hosts[1:])})
    return out


def calibrate_command(args: argparse.Namespace) -> int:
    profile = calibrate(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(profile, indent=2))
    for m in profile["measurements"]:
        size = (f"{m['tokens']} tokens" if m["op"] == "prefill" else f"batch {m['batch']}" if m["op"] == "decode_step"
                else f"{m['tokens']} + {m['batch']}")
        print(f"{m['op']:12s} {size:12s} {1e3 * m['seconds']:9.2f} ms")
    for link in profile["links"]:
        print(f"kv handoff   {link['tokens']:5d} tokens {link['bytes'] / 1e6:8.1f} MB {1e3 * link['seconds']:9.3f} ms "
              f"({link['src']} -> {link['dst']})")
    for point in profile.get("allreduce", {}).get("points", []):
        print(f"all-reduce   {point['tokens']:5d} tokens {point['bytes'] / 1e6:8.3f} MB "
              f"{1e3 * point['seconds']:9.3f} ms (2 devices)")
    if "handoff" in profile:
        print(f"kv handoff   {profile['handoff']}")
    print(f"wrote {args.out} (tierserve simulate/plan --profile {args.out}:{profile['device']})")
    return 0
