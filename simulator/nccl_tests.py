"""Link bandwidth from nccl-tests output (sendrecv_perf, all_reduce_perf, ...): the busbw table.

Text: rows ``size count type redop root time algbw busbw #wrong time algbw busbw #wrong``
(out-of-place, then in-place); older builds lack redop/root, so columns are found from the header.
A log may hold several runs (the chart's nccl-tests Job runs one per test, docs/deploy.md): each
starts at ``# Collective test starting: NAME`` (older builds: at ``# nThread``).
JSON: the file ``-J out.json`` writes: ``results[].out_of_place.{time, bus_bw}``, the program in
``args[0]``.

A KV link is point-to-point: sendrecv_perf measures it. An all-reduce's bus bandwidth is a
collective's over every rank, so a link read from one comes with a warning.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from simulator.errors import SimInputError
from simulator.files import existing
from simulator.links import Link

POINT_TO_POINT = ("sendrecv_perf",)
_PROGRAM = re.compile(r"(sendrecv|all_reduce|all_gather|alltoall|broadcast|reduce_scatter|reduce|gather|scatter|"
                      r"hypercube)_perf")


@dataclass(frozen=True)
class NcclRow:
    size_bytes: int
    time_us: float
    busbw_gbs: float


@dataclass(frozen=True)
class NcclRun:
    """One program's table; test is its name (sendrecv_perf, ...), None where the output does not say."""

    test: str | None
    rows: tuple[NcclRow, ...]


def parse_nccl_runs(text: str, source: str = "nccl-tests output") -> list[NcclRun]:
    """Every run in a log (text) or the one in a -J file (JSON); errors name the line or result."""
    if text.lstrip().startswith("{"):
        return [_json_run(text, source)]
    runs: list[tuple[str | None, list[str] | None, list[NcclRow]]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if line.lstrip().startswith("#"):
            starting = re.match(r"#\s*Collective test starting:\s*(\S+)", line.strip())
            if starting or (words[1:2] == ["nThread"] and (not runs or runs[-1][2])):
                runs.append((starting.group(1) if starting else None, None, []))
            elif "size" in words and "busbw" in words:
                if not runs or runs[-1][1] is not None:  # a table without a run's first line
                    runs.append((None, None, []))
                runs[-1] = (runs[-1][0], [w for w in words if w != "#"], runs[-1][2])
            continue
        if words and words[0].isdigit() and runs and runs[-1][1] is not None:
            runs[-1][2].append(_row(words, runs[-1][1], f"{source}:{lineno}"))
    if not any(columns for _, columns, _ in runs):
        raise SimInputError(f"{source}: no nccl-tests header (a '#' line naming size ... busbw)")
    if not any(rows for _, _, rows in runs):
        raise SimInputError(f"{source}: the nccl-tests table has no rows")
    return [NcclRun(test, tuple(rows)) for test, _, rows in runs if rows]


def parse_nccl_tests(text: str, source: str = "nccl-tests output") -> list[NcclRow]:
    """The out-of-place rows of output that holds one run."""
    runs = parse_nccl_runs(text, source)
    if len(runs) > 1:
        raise SimInputError(f"{source}: holds {len(runs)} nccl-tests runs ({', '.join(map(str, _names(runs)))}); "
                            "read it with link_from_nccl_tests or give one run")
    return list(runs[0].rows)


def _row(words: list[str], columns: list[str], where: str) -> NcclRow:
    try:
        size = int(words[columns.index("size")])
        time_us = float(words[columns.index("time")])
        busbw = float(words[columns.index("busbw")])
    except (ValueError, IndexError):
        raise SimInputError(f"{where}: not a row of size, time and busbw numbers: {' '.join(words)!r}") from None
    return _checked(NcclRow(size, time_us, busbw), where)


def _checked(row: NcclRow, where: str) -> NcclRow:
    if row.time_us <= 0 or row.busbw_gbs < 0:
        raise SimInputError(f"{where}: time must be > 0 and busbw >= 0")
    return row


def _json_run(text: str, source: str) -> NcclRun:
    try:
        data = json.loads(text)
        args, results = data.get("args") or [], data["results"]
    except (ValueError, KeyError, AttributeError):
        raise SimInputError(f"{source}: not nccl-tests JSON output (an object with 'results')") from None
    rows = []
    for i, result in enumerate(results):
        where = f"{source}: results[{i}]"
        timing = (result.get("out_of_place") or result.get("in_place")) if isinstance(result, dict) else None
        try:
            time_us = timing["time"] if "time" in timing else timing["cpu_time"]
            rows.append(_checked(NcclRow(int(result["size"]), float(time_us), float(timing["bus_bw"])), where))
        except (TypeError, KeyError, ValueError):
            raise SimInputError(f"{where}: no size, time and bus_bw") from None
    if not rows:
        raise SimInputError(f"{source}: the nccl-tests results are empty")
    program = Path(str(args[0])).name if args else ""
    return NcclRun(program or None, tuple(rows))


def _names(runs: list[NcclRun]) -> list[str | None]:
    return [r.test for r in runs]


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def link_from_nccl_tests(path: str | Path, warn: Callable[[str], None] = _warn) -> Link:
    """Bandwidth: the best bus bandwidth; latency: the time of the smallest message. From a log
    of several runs, the point-to-point one; a collective's result is used with a warning."""
    path = existing(path, "nccl-tests output")
    runs = parse_nccl_runs(path.read_text(), str(path))
    named = [NcclRun(r.test or _program_in(path.name, len(runs)), r.rows) for r in runs]
    p2p = [r for r in named if r.test in POINT_TO_POINT]
    if len(p2p) > 1 or (not p2p and len(named) > 1):
        raise SimInputError(f"{path}: holds {len(named)} nccl-tests runs ({', '.join(map(str, _names(named)))}); "
                            "give one point-to-point (sendrecv_perf) run")
    run = (p2p or named)[0]
    if run.test not in POINT_TO_POINT:
        warn(f"{path}: a KV link is point-to-point, but this is {run.test or 'an unnamed nccl-tests run'}'s "
             "bus bandwidth (a collective's over every rank); sendrecv_perf between the two tiers measures the link")
    best = max(r.busbw_gbs for r in run.rows)
    if best <= 0:
        raise SimInputError(f"{path}: every busbw is 0")
    return Link(best * 1e9, min(run.rows, key=lambda r: r.size_bytes).time_us * 1e-6)


def _program_in(filename: str, runs: int) -> str | None:
    """A lone run's program from its file's name (sendrecv_perf_h100_l40s.txt), as older logs do not say."""
    found = _PROGRAM.search(filename)
    return found.group(0) if found and runs == 1 else None


@dataclass(frozen=True)
class AllReduce:
    """A tier's tensor-parallel all-reduce as all_reduce_perf measured it inside one node."""

    latency_s: float      # the smallest message's time
    busbw_bytes_s: float  # the best bus bandwidth
    ranks: int            # devices in the run ('#  Rank N' lines)


def allreduce_from_nccl_tests(path: str | Path) -> AllReduce | None:
    """The all_reduce_perf run of a text log, or None when the file holds another program's run."""
    path = existing(path, "nccl-tests output")
    text = path.read_text()
    runs = [NcclRun(r.test or _program_in(path.name, 1), r.rows) for r in parse_nccl_runs(text, str(path))]
    runs = [r for r in runs if r.test == "all_reduce_perf"]
    if not runs:
        return None
    ranks = len(re.findall(r"^#\s+Rank\s+\d+", text, re.MULTILINE))
    if ranks < 2:
        raise SimInputError(f"{path}: an all_reduce_perf log must list its ranks ('#  Rank N' lines), found {ranks}")
    rows = runs[0].rows
    return AllReduce(min(rows, key=lambda r: r.size_bytes).time_us * 1e-6, max(r.busbw_gbs for r in rows) * 1e9, ranks)
