"""Terminal tables (rich) and JSON for simulation results and validation tables."""

from __future__ import annotations

import io
import json
from dataclasses import fields
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table as RichTable

from simulator.metrics import SimResult
from simulator.validation import Table

COLUMNS = (("design", "design"), ("$/h", "cost_per_hour"), ("req/s", "throughput_rps"),
           ("goodput", "goodput_rps"), ("TTFT p99", "ttft_p99"), ("TBT p99", "tbt_p99"),
           ("TPOT p99", "tpot_p99"), ("$/Mtok", "usd_per_mtok"), ("tok/J", "tokens_per_joule"),
           ("util", "utilization"))
NAMES = {key: name for name, key in COLUMNS}
WRAPPING = ("design", "utilization")
NARROW_DROPS = ("tokens_per_joule", "tpot_p99", "goodput_rps", "utilization")  # in this order, as width needs


def _share(x: float) -> str:
    """A share in percent, one decimal below 10% (a lightly loaded pool's KV use is not "0%")."""
    return f"{x:.0%}" if x >= 0.095 else f"{x:.1%}"


def _cell(r: SimResult, key: str) -> str:
    if key in r.percentiles:
        return f"{r.percentiles[key] * 1e3:.1f} ms" if r.percentiles[key] < 1 else f"{r.percentiles[key]:.2f} s"
    value = getattr(r, key)
    if key == "utilization":  # busy share; a decode or colocated pool's is its KV memory in use ("kv"), as it
        # is busy whenever a sequence runs
        kv = r.kv_utilization
        return " ".join(f"{k[:4]}=kv {_share(kv[k])}" if k in kv else f"{k[:4]}={v:.0%}" for k, v in value.items())
    if isinstance(value, dict):
        return " ".join(f"{k[:4]}={v:.0%}" for k, v in value.items())
    return value if isinstance(value, str) else f"{value:.3g}"


def results_table(results: list[SimResult], title: str, marks: list[str] | None = None,
                  width: int | None = None) -> RichTable:
    """Every column, or within ``width`` terminal columns as many as fit with nothing cut:
    designs and utilizations wrap at spaces; tok/J, TPOT, goodput, util are left out in that
    order as needed, and the caption names them."""
    keys = [key for _, key in COLUMNS]
    rows = [([marks[i]] if marks is not None else []) + [_cell(r, key) for key in keys]
            for i, r in enumerate(results)]
    dropped: list[str] = []
    for key in (None, *NARROW_DROPS):
        if key is not None:
            keys.remove(key)
            dropped.append(NAMES[key])
        table = _results_table(keys, rows, marks is not None)
        if width is None or _fits(table, width):
            break
    table.title, table.title_justify = title, "left"
    if dropped:
        table.caption, table.caption_justify = f"left out to fit {width} columns: {', '.join(dropped)}", "left"
    return table


def _results_table(keys: list[str], rows: list[list[str]], marked: bool) -> RichTable:
    """The columns ``keys`` of ``rows`` (all of COLUMNS, after a mark when ``marked``)."""
    table = RichTable(box=box.SIMPLE_HEAD)
    if marked:
        table.add_column("", no_wrap=True)
    offset = int(marked)
    index = {key: offset + i for i, (_, key) in enumerate(COLUMNS)}
    for key in keys:
        wraps = key in WRAPPING  # at spaces, never inside a word
        longest_word = max(len(word) for row in rows for word in row[index[key]].split() or [""])
        table.add_column(NAMES[key], justify="left" if wraps else "right", no_wrap=not wraps,
                         min_width=longest_word if wraps else None)
    for row in rows:
        table.add_row(*row[:offset], *(row[index[key]] for key in keys))
    return table


def _fits(table: RichTable, width: int) -> bool:
    """Whether ``table`` renders within ``width`` columns showing every header and cell whole
    (wrapping columns: every word whole)."""
    console = Console(width=width, file=io.StringIO(), color_system=None)
    console.print(table)
    text = console.file.getvalue()
    for column in table.columns:
        cells = [str(column.header), *map(str, column.cells)]
        words = [w for cell in cells for w in cell.split()] if not column.no_wrap else cells
        if any(w and w not in text for w in words):
            return False
    return "…" not in text


def validation_table(t: Table) -> RichTable:
    status = "[green]PASS[/green]" if t.passed else "[red]FAIL[/red]"
    table = RichTable(title=f"{status} {t.title}", title_justify="left", caption=t.note or None,
                      caption_justify="left")
    for c in t.columns:
        table.add_column(c)
    for row in t.rows:
        table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row))
    return table


BAND_KEYS = ("ttft_p50", "ttft_p99", "tbt_p50", "tbt_p99", "tpot_p99", "throughput_rps", "goodput_rps")


def _value(key: str, v: float) -> str:
    if key.endswith("_rps"):
        return f"{v:.3g}"
    return f"{v * 1e3:.1f} ms" if v < 1 else f"{v:.2f} s"


def band_table(b, slo=None) -> RichTable:
    """A design's metrics at the slowdown prior's p10 / p50 / p90 (uncertainty.Band)."""
    table = RichTable(box=box.SIMPLE_HEAD, title=f"uncertainty band: {b.prior.source}", title_justify="left")
    table.add_column("metric")
    for q, s in zip(("p10", "p50", "p90"), b.slowdowns):
        table.add_column(f"{q} (x{s:.2f})", justify="right")
    for key in BAND_KEYS:
        table.add_row(key, *(_value(key, v) for v in b.metric(key)))
    if b.p_slo is not None:
        limit = "any in range" if b.slo_limit == float("inf") else \
            "none in range" if b.slo_limit is None else f"x{b.slo_limit:.2f}"
        table.caption = f"P(SLO {slo.text() if slo else ''} met) = {b.p_slo:.0%} (largest slowdown meeting it: {limit})"
        table.caption_justify = "left"
    return table


def band_dict(b) -> dict:
    return {"prior": b.prior.source, "slowdowns": list(b.slowdowns), "p_slo": b.p_slo,
            "slo_limit": b.slo_limit if b.slo_limit != float("inf") else "inf",
            **{key: list(b.metric(key)) for key in BAND_KEYS}}


def print_tables(console: Console, tables: list) -> None:
    for t in tables:
        console.print(t)
        console.print()


def result_dict(r: SimResult) -> dict:
    return {f.name: getattr(r, f.name) for f in fields(r) if f.name != "samples"}


def write_json(path: str | Path, payload: object) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=float))
    return path
