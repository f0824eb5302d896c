"""Tiny server-side charts: numbers in, SVG geometry out (no script, nothing to escape)."""
from __future__ import annotations


def line_chart(values: list[float], labels: list[str], width: int = 640, height: int = 160, pad: int = 28) -> dict | None:
    """Points for an SVG polyline plus axis labels; None when there is nothing to draw."""
    if not values:
        return None
    top = max(values) or 1
    step = (width - 2 * pad) / max(len(values) - 1, 1)
    points = [(pad + i * step, height - pad - (value / top) * (height - 2 * pad)) for i, value in enumerate(values)]
    return {
        "width": width,
        "height": height,
        "pad": pad,
        "points": " ".join(f"{x:.1f},{y:.1f}" for x, y in points),
        "dots": [{"x": round(x, 1), "y": round(y, 1), "label": label, "value": value} for (x, y), label, value in zip(points, labels, values)],
        "max": top,
        "first": labels[0],
        "last": labels[-1],
    }


def bars(values: list[float]) -> list[float]:
    """Heights in percent of the largest value."""
    top = max(values, default=0) or 1
    return [100.0 * value / top for value in values]
