"""Mooncake-style JSONL traces: one request per line,
``{"timestamp": ms, "input_length": n, "output_length": m, "hash_ids": [...]}``; each hash id
names a block of ``block_tokens`` prompt tokens (512 in Mooncake's release)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from simulator.errors import SimInputError
from simulator.files import existing
from simulator.traces.trace import Trace, make_trace


def load_mooncake_jsonl(path: str | Path, block_tokens: int = 512) -> Trace:
    path = existing(path, "trace")
    times, prompts, outputs, hashes = [], [], [], []
    with path.open() as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            t, p, o, h = _record(line, f"{path}:{lineno}", block_tokens)
            times.append(t)
            prompts.append(p)
            outputs.append(o)
            hashes.append(h)
    if not times:
        raise SimInputError(f"{path}: no requests")
    return make_trace(path.name, times, prompts, outputs, hashes, block_tokens)


def _record(line: str, where: str, block_tokens: int) -> tuple[float, int, int, tuple[int, ...]]:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise SimInputError(f"{where}: not valid JSON ({e.msg})") from None
    if not isinstance(rec, dict):
        raise SimInputError(f"{where}: expected a JSON object")
    for key in ("timestamp", "input_length", "output_length"):
        value = rec.get(key)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise SimInputError(f"{where}: {key} must be a number, got {value!r}")
    prompt, output = rec["input_length"], rec["output_length"]
    if prompt != int(prompt) or output != int(output) or prompt < 1 or output < 1:
        raise SimInputError(f"{where}: input_length and output_length must be integers >= 1")
    hash_ids = rec.get("hash_ids", [])
    if not isinstance(hash_ids, list) or not all(isinstance(h, int) and not isinstance(h, bool) for h in hash_ids):
        raise SimInputError(f"{where}: hash_ids must be a list of integers")
    if len(hash_ids) > math.ceil(prompt / block_tokens):
        raise SimInputError(f"{where}: {len(hash_ids)} hash_ids for {prompt} tokens "
                            f"(at most {math.ceil(prompt / block_tokens)} blocks of {block_tokens})")
    return rec["timestamp"] / 1000.0, int(prompt), int(output), tuple(hash_ids)
