"""Charts as inline SVG, drawn on the server: no JavaScript, no CDN, readable without a browser plugin."""

from __future__ import annotations

import math
import time
from html import escape

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563")
WIDTH, HEIGHT = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 28, 36


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    exponent = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * exponent:
            return step * exponent
    return 10 * exponent


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def line_chart(
    title: str,
    series: dict[str, list[tuple[float, float]]],
    *,
    y_label: str = "",
    thresholds: dict[str, float] | None = None,
    time_axis: bool = True,
) -> str:
    """Lines over x (unix seconds when `time_axis`), one per series, and dashed threshold lines."""
    points = [p for values in series.values() for p in values]
    thresholds = thresholds or {}
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}"><title>{escape(title)}</title>',
        f'<text x="{LEFT}" y="18" font-size="13" font-weight="bold">{escape(title)}</text>',
    ]
    if not points:
        out.append(
            f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" fill="#6b7280">no data yet</text></svg>'
        )
        return "".join(out)
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    if x1 == x0:
        x1 = x0 + 1
    y_low = min(0.0, min(p[1] for p in points), *thresholds.values())
    y_high = _nice_max(max([p[1] for p in points] + list(thresholds.values()) + [0.0]))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def sx(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * plot_w

    def sy(y: float) -> float:
        return TOP + plot_h - (y - y_low) / (y_high - y_low or 1) * plot_h

    out.append(
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#d1d5db"/>'
    )
    for i in range(5):
        value = y_low + (y_high - y_low) * i / 4
        y = sy(value)
        out.append(f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#f3f4f6"/>')
        out.append(
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{_fmt(value)}</text>'
        )
    for x, anchor in ((x0, "start"), (x1, "end")):
        label = time.strftime("%H:%M:%S", time.gmtime(x)) if time_axis else _fmt(x)
        out.append(
            f'<text x="{sx(x):.1f}" y="{HEIGHT - 18}" font-size="10" text-anchor="{anchor}">{label}</text>'
        )
    if y_label:
        out.append(
            f'<text x="12" y="{TOP + plot_h / 2}" font-size="10" transform="rotate(-90 12 {TOP + plot_h / 2})" '
            f'text-anchor="middle">{escape(y_label)}</text>'
        )
    legend_x = LEFT
    for index, (name, values) in enumerate(series.items()):
        color = PALETTE[index % len(PALETTE)]
        if values:
            path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in sorted(values))
            out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{path}"/>')
            for x, y in values[-60:]:
                out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2" fill="{color}"/>')
        out.append(f'<rect x="{legend_x}" y="{HEIGHT - 12}" width="10" height="10" fill="{color}"/>')
        out.append(f'<text x="{legend_x + 14}" y="{HEIGHT - 3}" font-size="10">{escape(name)}</text>')
        legend_x += 18 + 7 * len(name)
        if name in thresholds:
            y = sy(thresholds[name])
            out.append(
                f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="{color}" '
                f'stroke-dasharray="6 4"><title>{escape(name)} threshold {_fmt(thresholds[name])}</title></line>'
            )
    out.append("</svg>")
    return "".join(out)


def bar_chart(title: str, bars: list[tuple[str, float]], *, unit: str = "") -> str:
    """Horizontal bars with their values written at the end."""
    row_h = 22
    height = TOP + row_h * max(1, len(bars)) + 12
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" viewBox="0 0 {WIDTH} {height}" '
        f'width="{WIDTH}" height="{height}"><title>{escape(title)}</title>',
        f'<text x="8" y="18" font-size="13" font-weight="bold">{escape(title)}</text>',
    ]
    if not bars:
        out.append(f'<text x="8" y="{TOP + 14}" fill="#6b7280">no data yet</text></svg>')
        return "".join(out)
    label_w = 160
    top = _nice_max(max(v for _, v in bars))
    for index, (label, value) in enumerate(bars):
        y = TOP + index * row_h
        width = (WIDTH - label_w - 80) * (value / top if top else 0)
        color = PALETTE[index % len(PALETTE)]
        out.append(
            f'<text x="{label_w - 6}" y="{y + 14}" font-size="11" text-anchor="end">{escape(label)}</text>'
        )
        out.append(
            f'<rect x="{label_w}" y="{y + 3}" width="{max(width, 1):.1f}" height="{row_h - 6}" fill="{color}"/>'
        )
        out.append(
            f'<text x="{label_w + width + 6:.1f}" y="{y + 14}" font-size="11">{_fmt(value)}{escape(unit)}</text>'
        )
    out.append("</svg>")
    return "".join(out)
