"""PNG plots: latency CDFs of simulated designs, and the cost-throughput Pareto frontier."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402

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
    """Each family's points and the frontier; the legend sits below the axes, clear of the points,
    and each frontier point's label takes the first of a fixed list of places beside it that
    overlaps no earlier label, no point and stays inside the axes (the least overlap if none does)."""
    return _save(pareto_figure(points, title), path, layout=False)


def pareto_figure(points: list[ParetoPoint], title: str = ""):
    fig, ax = plt.subplots(figsize=(8, 5.6))
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
    ax.set_xlabel("cluster cost ($/hour)")
    ax.set_ylabel("throughput within SLO (requests/s)")
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.12, y=0.12)  # room for the outermost points' labels
    ax.set_title(title or "cost vs throughput")
    handles, labels = ax.get_legend_handles_labels()
    columns = 1 if max(map(len, labels), default=0) > 45 else 2
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=columns, frameon=False)
    rows = -(-len(handles) // columns)
    fig.tight_layout(rect=(0, 0.03 + 0.032 * rows, 1, 1))
    _place_labels(ax, front, [(p.cost_per_hour, p.throughput_rps) for p in points])
    return fig


# Offsets (points) of a label's corner from its point, tried in order: right above, right below, left
# above, left below, then further above and below on the right and the left.
_LABEL_PLACES = [(4, 3, "left", "bottom"), (4, -3, "left", "top"), (-4, 3, "right", "bottom"),
                 (-4, -3, "right", "top")] + [
    (dx, dy * k, ha, "bottom" if dy > 0 else "top") for k in (3, 5, 7, 9) for dy in (3, -3)
    for dx, ha in ((4, "left"), (-4, "right"))]


def _place_labels(ax, front: list[ParetoPoint], markers: list[tuple[float, float]]) -> None:
    """Annotate ``front``'s points in order, each at the first place (``_LABEL_PLACES``) clear of the
    labels placed before, every marker and the axes' edges; where none is, the least overlapping."""
    fig = ax.figure
    fig.canvas.draw()  # the axes' final limits and place: pixel positions below are final
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    dots = [Bbox.from_bounds(x - 3, y - 3, 6, 6) for x, y in ax.transData.transform(markers)] if markers else []
    placed: list[Bbox] = []
    for p in front:
        text = ax.annotate(p.label, (p.cost_per_hour, p.throughput_rps), fontsize=6, textcoords="offset points",
                           xytext=_LABEL_PLACES[0][:2], ha="left", va="bottom")
        best = None
        for i, (dx, dy, ha, va) in enumerate(_LABEL_PLACES):
            text.set_position((dx, dy))
            text.set_ha(ha)
            text.set_va(va)
            box = text.get_window_extent(renderer)
            outside = max(0.0, frame.x0 - box.x0) + max(0.0, box.x1 - frame.x1) + \
                max(0.0, frame.y0 - box.y0) + max(0.0, box.y1 - frame.y1)
            clash = sum(_overlap(box, b) for b in placed + dots) + outside * box.height
            if best is None or clash < best[0]:
                best = (clash, i, box)
            if clash == 0:
                break
        assert best is not None
        dx, dy, ha, va = _LABEL_PLACES[best[1]]
        text.set_position((dx, dy))
        text.set_ha(ha)
        text.set_va(va)
        placed.append(best[2])


def _overlap(a: Bbox, b: Bbox) -> float:
    """Area (pixels) two boxes share."""
    return max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0)) * max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))


def _save(fig, path: str | Path, layout: bool = True) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if layout:
        fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
