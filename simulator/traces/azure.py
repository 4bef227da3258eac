"""The Azure LLM inference trace (2023 and 2024 releases): TIMESTAMP,ContextTokens,GeneratedTokens.

TIMESTAMP is ``2023-11-16 18:15:46.6805900`` (any number of fractional digits). A row with 0
generated tokens is simulated as 1: the prefill returns the first token.
"""

from __future__ import annotations

import csv
from datetime import datetime
from pathlib import Path

from simulator.errors import SimInputError
from simulator.files import existing
from simulator.traces.trace import Trace, make_trace

COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


def parse_timestamp(text: str) -> float:
    """Seconds since the epoch; fractions beyond microseconds are dropped."""
    whole, _, frac = text.strip().partition(".")
    stamp = datetime.fromisoformat(whole)
    return stamp.timestamp() + (int(frac[:6].ljust(6, "0")) / 1e6 if frac else 0.0)


def load_azure_csv(path: str | Path) -> Trace:
    path = existing(path, "trace")
    times, prompts, outputs = [], [], []
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise SimInputError(f"{path}:1: header lacks {', '.join(missing)} (expected {','.join(COLUMNS)})")
        cols = [header.index(c) for c in COLUMNS]
        for row in reader:
            if not row or all(not cell.strip() for cell in row):
                continue
            t, p, o = _row(row, cols, f"{path}:{reader.line_num}")
            times.append(t)
            prompts.append(p)
            outputs.append(max(1, o))
    if not times:
        raise SimInputError(f"{path}: no rows after the header")
    return make_trace(path.name, times, prompts, outputs)


def _row(row: list[str], cols: list[int], where: str) -> tuple[float, int, int]:
    if len(row) <= max(cols):
        raise SimInputError(f"{where}: expected {max(cols) + 1} columns, got {len(row)}: {','.join(row)!r}")
    try:
        t = parse_timestamp(row[cols[0]])
    except ValueError:
        raise SimInputError(f"{where}: TIMESTAMP {row[cols[0]]!r} is not a date and time") from None
    try:
        prompt, output = int(row[cols[1]]), int(row[cols[2]])
    except ValueError:
        raise SimInputError(f"{where}: ContextTokens and GeneratedTokens must be integers, "
                            f"got {row[cols[1]]!r}, {row[cols[2]]!r}") from None
    if prompt < 1 or output < 0:
        raise SimInputError(f"{where}: ContextTokens must be >= 1 and GeneratedTokens >= 0, got {prompt}, {output}")
    return t, prompt, output
