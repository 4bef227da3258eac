"""Link bandwidth from nccl-tests output (all_reduce_perf, sendrecv_perf, ...): the busbw table.

Rows look like ``size count type redop root time algbw busbw #wrong time algbw busbw #wrong``
(out-of-place, then in-place); older builds lack redop/root. Columns are found from the header.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from simulator.errors import SimInputError
from simulator.files import existing
from simulator.links import Link


@dataclass(frozen=True)
class NcclRow:
    size_bytes: int
    time_us: float
    busbw_gbs: float


def parse_nccl_tests(text: str, source: str = "nccl-tests output") -> list[NcclRow]:
    """The out-of-place rows of the table; errors name the line."""
    columns: list[str] | None = None
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if line.lstrip().startswith("#"):
            if columns is None and "size" in words and "busbw" in words:
                columns = [w for w in words if w != "#"]
            continue
        if not words or columns is None or not words[0].isdigit():
            continue
        rows.append(_row(words, columns, f"{source}:{lineno}"))
    if columns is None:
        raise SimInputError(f"{source}: no nccl-tests header (a '#' line naming size ... busbw)")
    if not rows:
        raise SimInputError(f"{source}: the nccl-tests table has no rows")
    return rows


def _row(words: list[str], columns: list[str], where: str) -> NcclRow:
    try:
        size = int(words[columns.index("size")])
        time_us = float(words[columns.index("time")])
        busbw = float(words[columns.index("busbw")])
    except (ValueError, IndexError):
        raise SimInputError(f"{where}: not a row of size, time and busbw numbers: {' '.join(words)!r}") from None
    if time_us <= 0 or busbw < 0:
        raise SimInputError(f"{where}: time must be > 0 and busbw >= 0")
    return NcclRow(size, time_us, busbw)


def link_from_nccl_tests(path: str | Path) -> Link:
    """Bandwidth: the best bus bandwidth; latency: the time of the smallest message."""
    path = existing(path, "nccl-tests output")
    rows = parse_nccl_tests(path.read_text(), str(path))
    best = max(r.busbw_gbs for r in rows)
    if best <= 0:
        raise SimInputError(f"{path}: every busbw is 0")
    return Link(best * 1e9, min(rows, key=lambda r: r.size_bytes).time_us * 1e-6)
