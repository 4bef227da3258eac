"""Pick a trace reader from the spec: ``synthetic:...``, a .csv (Azure) or a .jsonl (Mooncake)."""

from __future__ import annotations

from pathlib import Path

from simulator.errors import SimInputError
from simulator.traces.azure import load_azure_csv
from simulator.traces.mooncake import load_mooncake_jsonl
from simulator.traces.synthetic import parse_synthetic, synthetic_trace
from simulator.traces.trace import Trace


def load_trace(spec: str) -> Trace:
    if spec.startswith("synthetic"):
        return synthetic_trace(parse_synthetic(spec))
    suffix = Path(spec).suffix.lower()
    if suffix == ".csv":
        return load_azure_csv(spec)
    if suffix in (".jsonl", ".json"):
        return load_mooncake_jsonl(spec)
    raise SimInputError(f"trace {spec!r}: give a .csv (Azure), a .jsonl (Mooncake) or synthetic:key=value,...")
