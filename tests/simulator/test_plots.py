"""The Pareto plot: legend outside the axes, frontier labels clear of each other."""

from __future__ import annotations

import matplotlib.pyplot as plt

from simulator.plots import ParetoPoint, pareto_figure, pareto_frontier, plot_pareto


def crowded() -> list[ParetoPoint]:
    """Three families whose frontier points lie close together (labels at one fixed offset overlap)."""
    points = []
    for name, cost, rate in (("colocated 1xH100", 2.99, 5.0), ("colocated 1xH200", 3.2, 5.3),
                             ("1xH100 -> 1xL40S", 3.4, 5.6)):
        for k in (1, 2, 4):
            points.append(ParetoPoint(name.replace("1x", f"{k}x", 1), cost * k, rate * k, f"{name} (x1, x2, x4)"))
    return points


def test_pareto_labels_do_not_overlap_and_the_legend_is_outside(tmp_path) -> None:
    points = crowded()
    fig = pareto_figure(points, "crowded")
    try:
        ax = fig.axes[0]
        renderer = fig.canvas.get_renderer()
        labels = [t for t in ax.texts if t.get_text()]
        assert sorted(t.get_text() for t in labels) == sorted(p.label for p in pareto_frontier(points))
        boxes = [t.get_window_extent(renderer) for t in labels]
        assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
        frame = ax.get_window_extent(renderer)
        assert all(frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1 for b in boxes)
        assert ax.get_legend() is None and len(fig.legends) == 1
        assert fig.legends[0].get_window_extent(renderer).y1 < frame.y0  # below the axes, off the points
    finally:
        plt.close(fig)
    assert plot_pareto(points, tmp_path / "pareto.png").stat().st_size > 0
