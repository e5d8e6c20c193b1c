"""Small line charts drawn on the server as SVG: no JavaScript, nothing to fetch. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

__all__ = ["line_chart"]

_COLORS = ("#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#bf3989")


def _nice(value: float) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:.1f}M"
    if value >= 1_000:
        return f"{value / 1_000:.1f}k"
    return f"{value:.0f}" if value >= 10 or value == 0 else f"{value:.1f}"


def line_chart(
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    title: str,
    unit: str,
    now_s: float,
    span_s: float = 3600.0,
    width: int = 560,
    height: int = 180,
    chart_id: str = "",
) -> str:
    """One SVG: each series a polyline over the last ``span_s`` seconds (x: time, y: value),
    with its legend, the axis' maximum and the time span. ``series`` maps a label to
    (unix time, value) points."""
    left, right, top, bottom = 48, 12, 24, 24
    plot_w, plot_h = width - left - right, height - top - bottom
    start = now_s - span_s
    values = [v for points in series.values() for t, v in points if t >= start]
    top_value = max(values, default=0.0) or 1.0
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="{escape(chart_id)}" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}">',
        f'<text x="{left}" y="15" class="chart-title">{escape(title)} ({escape(unit)})</text>',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" class="plot"/>',
        f'<text x="{left - 6}" y="{top + 10}" text-anchor="end" class="axis">{_nice(top_value)}</text>',
        f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end" class="axis">0</text>',
        f'<text x="{left}" y="{height - 6}" class="axis">-{span_s / 60:.0f} min</text>',
        f'<text x="{left + plot_w}" y="{height - 6}" text-anchor="end" class="axis">now</text>',
    ]
    if not values:
        parts.append(
            f'<text x="{left + plot_w / 2}" y="{top + plot_h / 2}" text-anchor="middle" '
            'class="axis">no samples yet</text>'
        )
    for n, (label, points) in enumerate(series.items()):
        color = _COLORS[n % len(_COLORS)]
        shown = [(t, v) for t, v in points if t >= start]
        coords = " ".join(
            f"{left + plot_w * (t - start) / span_s:.1f},{top + plot_h * (1 - v / top_value):.1f}"
            for t, v in shown
        )
        if len(shown) == 1:
            x, y = coords.split(",")
            parts.append(f'<circle cx="{x}" cy="{y}" r="2.5" fill="{color}"/>')
        elif shown:
            parts.append(
                f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="1.6" '
                f'class="series" data-label="{escape(label)}"/>'
            )
        parts.append(
            f'<text x="{left + 8 + 250 * (n % 2)}" y="{top + 14 + 13 * (n // 2)}" '
            f'fill="{color}" class="legend">'
            f"{escape(label)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)
