"""The KV codec (kvstore/kv_codec.py): its speed, the bytes it saves, the host tier with it, and its
cost in model quality.

  PYTHONPATH=. python -m benchmarks.kv_codec --out out/kv-codec                       # all parts
  PYTHONPATH=. python -m benchmarks.kv_codec --parts quality --checkpoint CKPT --heldout text.txt

codec: encode and decode of a 4K-token request's blocks (Llama-3-8B KV: 32 layers, 8 KV heads,
dim 128, bf16; random non-contiguous block ids) on the CPU (torch) and on CUDA (Triton kernel alone,
the whole call, and torch on the GPU for comparison); payload bytes against raw.
host: HostTier.put/get of the same request through a real redis-server, exact against kivi4 and
kivi2, the cache on --device (the goal: 4K tokens put and get each >= 2.5x faster than exact's
478 / 969 ms on 2xH200, 2026-11-23).
quality: on --checkpoint (a model directory our engine loads), held-out loss and identical greedy
continuations with the prefix KV through each codec (benchmarks/kv_codec_quality.py), its last
--residual-tokens kept exact as the host tier does; with --dtype float32 also the floor: the share
of continuations unchanged when the prefix is only rounded to bf16 / fp16.
Writes kv_codec.json to --out.
"""

from __future__ import annotations

import argparse
import statistics
import uuid
from pathlib import Path

import torch

from benchmarks.common import machine_info, median_seconds, out_dir, wall_median, wall_seconds, write_json
from kvstore.config import KVStoreConfig
from kvstore.host_tier import residual_blocks
from kvstore.kv_codec import CodecFormat, decode, encode
from kvstore.layout import KVLayout

LLAMA3_8B = KVLayout(num_layers=32, block_size=16, num_kv_heads=8, head_dim=128, dtype="bfloat16")
CODECS = ("kivi4", "kivi2")
PARTS = ("codec", "host", "quality")


def _cache(blocks: int, tokens: int, device: torch.device, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A cache of ``blocks`` random blocks (outlier key channels, like real keys) and ``tokens``
    worth of random distinct block ids."""
    g = torch.Generator().manual_seed(seed)
    lay = LLAMA3_8B
    kv = torch.empty(lay.num_layers, 2, blocks, lay.block_size, lay.num_kv_heads, lay.head_dim,
                     dtype=lay.torch_dtype, device=device)
    for layer in range(lay.num_layers):  # a layer at a time: no fp32 copy of the whole cache
        x = torch.randn(kv.shape[1:], generator=g)
        x[0] = x[0] * 2 + 8 * torch.randn(lay.head_dim, generator=g)
        kv[layer] = x.to(lay.torch_dtype)
    ids = torch.randperm(blocks, generator=g)[:tokens // lay.block_size].to(device)
    return kv, ids


def bench_codec(device: torch.device, tokens: int, iters: int) -> list[dict]:
    kv, ids = _cache(tokens // LLAMA3_8B.block_size + 64, tokens, device, seed=1)
    rows = []
    for codec in CODECS:
        fmt = CodecFormat.of(LLAMA3_8B, codec)
        payloads, _ = encode(kv, ids, fmt)
        impls = ["triton", "torch"] if device.type == "cuda" else ["torch"]
        same = torch.equal(payloads, encode(kv, ids, fmt, impl="torch")[0]) if device.type == "cuda" else None
        for impl in impls:
            def encoded(impl=impl):
                return encode(kv, ids, fmt, impl=impl)

            def decoded(impl=impl):
                return decode(kv, ids, payloads, fmt, impl=impl)
            row = dict(codec=codec, device=device.type, impl=impl, tokens=tokens, same_bytes_as_torch=same,
                       ratio=LLAMA3_8B.bytes_per_block / fmt.payload_bytes,
                       encode_ms=1e3 * wall_median(encoded, device, iters, warmup=1),
                       decode_ms=1e3 * wall_median(decoded, device, iters, warmup=1))
            if impl == "triton":
                from kvstore import kv_codec_triton as kt
                row["encode_kernel_ms"] = 1e3 * median_seconds(lambda: kt.encode_blocks(kv, ids, fmt), device)
                row["decode_kernel_ms"] = 1e3 * median_seconds(lambda: kt.decode_blocks(kv, ids, payloads, fmt),
                                                               device)
            rows.append(row)
            print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    return rows


def bench_host(device: torch.device, tokens: int, iters: int, redis_url: str) -> list[dict]:
    from engine.block_hash import hash_blocks
    from kvstore.block_key import block_keys
    from kvstore.store import KVStore
    kv, ids = _cache(tokens // LLAMA3_8B.block_size + 64, tokens, device, seed=2)
    target = torch.zeros_like(kv)
    rows = []
    for codec in ("exact", *CODECS):
        store = KVStore.connect(KVStoreConfig(redis_url, key_prefix=f"bench-{uuid.uuid4().hex[:8]}",
                                              host_tier_bytes=64 << 30, host_tier_codec=codec))
        puts, gets = [], []
        try:
            for i in range(iters + 1):
                keys = block_keys(hash_blocks(list(range(tokens)), 16, salt=f"{i}".encode()), "bench", LLAMA3_8B)
                puts.append(wall_seconds(lambda: store.host.put(keys, kv, ids.tolist()), device))
                gets.append(wall_seconds(lambda: store.host.get(keys, target, ids.tolist()), device))
                stored = store.host.used_bytes()
                store.wipe()
        finally:
            store.wipe()
            store.close()
        row = dict(codec=codec, device=device.type, tokens=tokens, stored_bytes=stored,
                   returned_what_was_stored=_check_host(codec, kv, ids, target),
                   put_ms=1e3 * statistics.median(puts[1:]), get_ms=1e3 * statistics.median(gets[1:]))
        rows.append(row)
        print(" ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    exact = rows[0]
    for row in rows[1:]:
        row["put_speedup"], row["get_speedup"] = exact["put_ms"] / row["put_ms"], exact["get_ms"] / row["get_ms"]
    return rows


def _check_host(codec: str, kv: torch.Tensor, ids: torch.Tensor, target: torch.Tensor) -> bool | None:
    """Whether get returned the stored blocks (exact) or the codec's own round trip of them (None
    for a codec on the CPU: that round trip takes as long as the whole measurement)."""
    want = kv
    if codec != "exact":
        if kv.device.type != "cuda":
            return None
        fmt = CodecFormat.of(LLAMA3_8B, codec)
        want = torch.zeros_like(kv)
        decode(want, ids, encode(kv, ids, fmt)[0], fmt)
    return torch.equal(target[:, :, ids].view(torch.int16), want[:, :, ids].view(torch.int16))


def bench_quality(args: argparse.Namespace, device: torch.device) -> list[dict]:
    from dataclasses import asdict

    from benchmarks.kv_codec_quality import heldout_text, identical_share, measure
    from engine.config import CacheConfig, EngineConfig
    from engine.llm_engine import LLMEngine
    blocks = 4 * args.windows * -(-(args.prefix + args.scored + args.max_tokens + 16) // 16)
    engine = LLMEngine(EngineConfig(model=str(args.checkpoint), device=device.type, dtype=args.dtype,
                                    cache=CacheConfig(num_blocks=blocks, enable_prefix_caching=True)))
    tokens = engine.tokenizer.encode(heldout_text(args.heldout, args.checkpoint))
    rows = []
    for codec in CODECS:
        for residual in args.residual_tokens:
            row = asdict(measure(engine, tokens, codec, args.prefix, args.scored, args.windows, args.max_tokens,
                                 residual))
            rows.append(row)
            print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    if engine.runner.kv_cache.dtype == torch.float32:
        for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
            share = identical_share(engine, tokens, dtype, args.prefix, args.scored, args.windows, args.max_tokens)
            rows.append({"codec": f"round-to-{name}", "identical_share": share})
            print(f"codec=round-to-{name} identical_share={share:.4f}", flush=True)
    return rows


def bytes_ratio(layout: KVLayout, codec: str, tokens: int, residual: int) -> float:
    """Raw bytes over stored bytes for one ``tokens``-long put through the host tier's ``codec`` with
    its last ``residual`` tokens (whole blocks) exact."""
    fmt = CodecFormat.of(layout, codec)
    blocks = tokens // layout.block_size
    exact = min(blocks, residual_blocks(residual, layout.block_size)) if fmt else blocks
    stored = exact * layout.bytes_per_block + (blocks - exact) * (fmt.payload_bytes if fmt else 0)
    return blocks * layout.bytes_per_block / stored


def plot_quality(rows: list[dict], tokens: int, path: Path) -> None:
    """Identical greedy continuations against bytes saved on a ``tokens``-token Llama-3-8B put, one
    line per codec through its residual windows; the rounding floors as horizontal lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for codec in CODECS:
        mine = sorted((r for r in rows if r["codec"] == codec), key=lambda r: r["residual"])
        xs = [bytes_ratio(LLAMA3_8B, codec, tokens, r["residual"]) for r in mine]
        ax.plot(xs, [100 * r["identical_share"] for r in mine], "o-", label=codec)
        for x, r in zip(xs, mine):
            ax.annotate(f"{r['residual']}", (x, 100 * r["identical_share"]), textcoords="offset points",
                        xytext=(4, -12), fontsize=8)
    for r, style in zip((r for r in rows if r["codec"].startswith("round-to-")), (":", "-.")):
        ax.axhline(100 * r["identical_share"], linestyle=style, color="gray", label=f"prefix {r['codec']} (floor)")
    ax.axhline(95, color="red", linewidth=0.8, label="goal 95%")
    ax.axvline(3, color="red", linewidth=0.8, linestyle="--", label="goal >= 3x fewer bytes")
    ax.set_xlabel(f"fewer bytes than raw, {tokens}-token Llama-3-8B put (label: exact residual tokens)")
    ax.set_ylabel("identical 128-token greedy continuations (%)")
    ax.set_ylim(0, 102)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title("KV codec: identical continuations vs bytes saved", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tokens", type=int, default=4096, help="request size for the codec and host parts")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--cpu-iters", type=int, default=2, help="the torch codec on the CPU is slow")
    p.add_argument("--redis-url", default=None, help="default: start a private redis-server")
    p.add_argument("--checkpoint", type=Path, help="model directory for the quality part")
    p.add_argument("--heldout", help="held-out text file, or 'stdlib' (the held-out files of "
                   "benchmarks/train_small_model.py's corpus); default CHECKPOINT/heldout.txt, else stdlib")
    p.add_argument("--prefix", type=int, default=512, help="prefix tokens put through the codec (whole blocks)")
    p.add_argument("--scored", type=int, default=128, help="tokens after the prefix scored for the loss")
    p.add_argument("--windows", type=int, default=64, help="held-out windows (and greedy prompts)")
    p.add_argument("--max-tokens", type=int, default=128, help="greedy continuation length")
    p.add_argument("--residual-tokens", type=int, nargs="+", default=[KVStoreConfig.host_tier_codec_residual_tokens],
                   help="quality part: prefix tokens kept exact at its end, as the host tier's residual window "
                   "(default: KVStoreConfig's); several values measure each")
    p.add_argument("--dtype", default=None, help="quality part: the model's dtype (default: the checkpoint's); "
                   "float32 has no bf16 logit ties, where any perturbation flips a greedy token")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    device = torch.device(args.device)
    result: dict = {"machine": machine_info(device)}
    try:
        import hiredis  # noqa: F401  (redis-py parses replies in C with it)
        result["hiredis"] = True
    except ImportError:
        result["hiredis"] = False
    if "codec" in args.parts:
        result["codec"] = bench_codec(torch.device("cpu"), args.tokens, args.cpu_iters)
        if device.type == "cuda":
            result["codec"] += bench_codec(device, args.tokens, args.iters)
    if "host" in args.parts:
        from kvstore.redis_server import RedisServer
        iters = args.iters if device.type == "cuda" else args.cpu_iters
        if args.redis_url:
            result["host"] = bench_host(device, args.tokens, iters, args.redis_url)
        else:
            with RedisServer() as url:
                result["host"] = bench_host(device, args.tokens, iters, url)
    if "quality" in args.parts:
        if args.checkpoint is None:
            p.error("the quality part needs --checkpoint (e.g. from benchmarks/train_small_model.py)")
        result["quality"] = bench_quality(args, device)
    out = out_dir(args.out, "kv-codec")
    write_json(out / "kv_codec.json", result)
    if "quality" in result:
        plot_quality(result["quality"], args.tokens, out / "kv_codec_quality.png")


if __name__ == "__main__":
    main()
