"""PNG plots: latency CDFs of simulated designs, and the cost-throughput Pareto frontier."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from simulator.metrics import SimResult  # noqa: E402


@dataclass(frozen=True)
class ParetoPoint:
    label: str
    cost_per_hour: float
    throughput_rps: float
    family: str = ""  # points of one family share a colour and a line


def _grid(values: list[np.ndarray]) -> np.ndarray:
    joined = np.concatenate([v[v > 0] for v in values] or [np.array([1e-3])])
    lo, hi = max(joined.min(), 1e-5), max(joined.max(), 2e-5)
    return np.geomspace(lo * 0.9, hi * 1.1, 200)


def plot_latency_cdfs(results: list[SimResult], path: str | Path, title: str = "", chosen: int | None = None) -> Path:
    """TTFT (per request) and TBT (per token) CDFs, one line per design; ``chosen`` (an index into
    ``results``) is drawn last, thick and labelled, so no other design's line hides it. The legend
    sits below both axes, clear of the curves."""
    fig, (ax_ttft, ax_tbt) = plt.subplots(1, 2, figsize=(11, 4.6))
    runs = [(i, r) for i, r in enumerate(results) if r.samples is not None and len(r.samples.ttft)]
    runs.sort(key=lambda item: item[0] == chosen)  # the chosen one last (stable otherwise)
    tbt_grid = _grid([np.concatenate([r.samples.tbt.first, r.samples.tbt.first_gaps]) for _, r in runs])
    for i, r in runs:
        style = dict(lw=2.6, color="black", zorder=3, label=f"{r.design} (chosen)") if i == chosen else \
            dict(lw=1.3, alpha=0.8, color=f"C{i % 10}", zorder=2, label=r.design)
        ttft = np.sort(r.samples.ttft)
        ax_ttft.plot(ttft, np.arange(1, len(ttft) + 1) / len(ttft), **style)
        ax_tbt.plot(tbt_grid, r.samples.tbt.cdf(tbt_grid), **style)
    for ax, name in ((ax_ttft, "time to first token (s)"), (ax_tbt, "time between tokens (s)")):
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(name)
        ax.set_ylabel("CDF")
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = ax_ttft.get_legend_handles_labels()
    fig.suptitle(title or "simulated latency CDFs")
    if handles:
        fig.legend(handles[::-1], labels[::-1], fontsize=7, loc="lower center", ncol=min(3, len(handles)),
                   frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.035 * ((len(handles) - 1) // 3), 1, 1))
    return _save(fig, path, layout=False)


def pareto_frontier(points: list[ParetoPoint]) -> list[ParetoPoint]:
    """Points no other point beats on both lower cost and higher throughput, by cost."""
    frontier: list[ParetoPoint] = []
    for p in sorted(points, key=lambda p: (p.cost_per_hour, -p.throughput_rps)):
        if not frontier or p.throughput_rps > frontier[-1].throughput_rps:
            frontier.append(p)
    return frontier


def plot_pareto(points: list[ParetoPoint], path: str | Path, title: str = "") -> Path:
    fig, ax = plt.subplots(figsize=(8, 5.2))
    families: dict[str, list[ParetoPoint]] = {}
    for p in points:
        families.setdefault(p.family, []).append(p)
    for name, members in families.items():
        members.sort(key=lambda p: p.cost_per_hour)
        ax.plot([p.cost_per_hour for p in members], [p.throughput_rps for p in members], "o-", ms=4, alpha=0.6,
                lw=1, label=name or "designs")
    front = pareto_frontier(points)
    ax.step([p.cost_per_hour for p in front], [p.throughput_rps for p in front], where="post", color="C3",
            label="Pareto frontier")
    for p in front:
        ax.annotate(p.label, (p.cost_per_hour, p.throughput_rps), fontsize=6, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xlabel("cluster cost ($/hour)")
    ax.set_ylabel("throughput within SLO (requests/s)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6, loc="upper left")
    ax.set_title(title or "cost vs throughput")
    return _save(fig, path)


def _save(fig, path: str | Path, layout: bool = True) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if layout:
        fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
