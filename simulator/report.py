"""Terminal tables (rich) and JSON for simulation results and validation tables."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

from rich.console import Console
from rich.table import Table as RichTable

from simulator.metrics import SimResult
from simulator.validation import Table

COLUMNS = (("design", "design"), ("$/h", "cost_per_hour"), ("req/s", "throughput_rps"),
           ("goodput", "goodput_rps"), ("TTFT p99", "ttft_p99"), ("TBT p99", "tbt_p99"),
           ("TPOT p99", "tpot_p99"), ("$/Mtok", "usd_per_mtok"), ("tok/J", "tokens_per_joule"),
           ("util", "utilization"))


def _cell(r: SimResult, key: str) -> str:
    if key in r.percentiles:
        return f"{r.percentiles[key] * 1e3:.1f} ms" if r.percentiles[key] < 1 else f"{r.percentiles[key]:.2f} s"
    value = getattr(r, key)
    if isinstance(value, dict):
        return " ".join(f"{k[:4]}={v:.0%}" for k, v in value.items())
    return value if isinstance(value, str) else f"{value:.3g}"


def results_table(results: list[SimResult], title: str, marks: list[str] | None = None) -> RichTable:
    table = RichTable(title=title, title_justify="left")
    if marks is not None:
        table.add_column("")
    for name, _ in COLUMNS:
        table.add_column(name, justify="left" if name == "design" else "right")
    for i, r in enumerate(results):
        cells = [_cell(r, key) for _, key in COLUMNS]
        table.add_row(*([marks[i]] if marks is not None else []), *cells)
    return table


def validation_table(t: Table) -> RichTable:
    status = "[green]PASS[/green]" if t.passed else "[red]FAIL[/red]"
    table = RichTable(title=f"{status} {t.title}", title_justify="left", caption=t.note or None,
                      caption_justify="left")
    for c in t.columns:
        table.add_column(c)
    for row in t.rows:
        table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row))
    return table


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
