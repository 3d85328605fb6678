"""The dashboard's charts, drawn on the server by pygal (a maintained SVG charting library): inline SVG in
the page, no JavaScript, nothing fetched from elsewhere.

pygal was chosen over a JavaScript library (uPlot, Chart.js) because the dashboard is server-rendered
and works without scripts; pygal writes SVG with its styles inline, and with `js=[]` it links no script
from its CDN. Its one inline `<script>` (a config object for the tooltips script it no longer loads) is
removed, so the page stays script-free. Each chart's root `<svg>` carries the `chart` class.

`line_chart` and `bar_chart` keep the shape the pages use: series of (x, y) over Unix seconds with
dashed threshold lines, and labelled bars.
"""

from __future__ import annotations

import re
import time
from typing import Any

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563")
WIDTH, HEIGHT = 640, 260
SCRIPT = re.compile(r"<script\b[^>]*>.*?</script>", re.S)


def _config(title: str, **extra: Any) -> dict[str, Any]:
    return {
        "title": title,
        "width": WIDTH,
        "height": HEIGHT,
        "js": [],  # no tooltip script from pygal's CDN
        "disable_xml_declaration": True,  # inline in the page
        "classes": ["pygal-chart", "chart"],
        "no_data_text": "no data yet",
        "legend_at_bottom": True,
        "legend_at_bottom_columns": 3,
        "truncate_legend": 40,
        "show_y_guides": True,
        "explicit_size": True,
        **extra,
    }


def _style():  # type: ignore[no-untyped-def]
    from pygal.style import Style

    return Style(
        background="white",
        plot_background="white",
        foreground="#111827",
        foreground_strong="#111827",
        foreground_subtle="#9ca3af",
        colors=PALETTE,
        font_family="system-ui, sans-serif",
        title_font_size=13,
        legend_font_size=10,
        label_font_size=10,
        major_label_font_size=10,
    )


def _render(chart) -> str:  # type: ignore[no-untyped-def]
    return SCRIPT.sub("", chart.render(is_unicode=True))


def line_chart(
    title: str,
    series: dict[str, list[tuple[float, float]]],
    *,
    y_label: str = "",
    thresholds: dict[str, float] | None = None,
    time_axis: bool = True,
) -> str:
    """Lines over x (Unix seconds when `time_axis`), one per series, and a dashed line for each threshold."""
    import pygal

    thresholds = thresholds or {}
    formatter = (lambda x: time.strftime("%H:%M:%S", time.gmtime(x))) if time_axis else (lambda x: f"{x:.3g}")
    chart = pygal.XY(
        **_config(title, y_title=y_label or None, x_value_formatter=formatter, x_label_rotation=0),
        style=_style(),
        value_formatter=lambda y: f"{y:.3g}",
        dots_size=2,
    )
    points = [p for values in series.values() for p in values]
    if not points:
        return _render(chart)
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    for name, values in series.items():
        chart.add(name, sorted(values))
    for name, value in thresholds.items():
        chart.add(
            f"{name} threshold",
            [(x0, value), (x1, value)],
            stroke_style={"width": 1.5, "dasharray": "6,4"},
            show_dots=False,
        )
    return _render(chart)


def bar_chart(title: str, bars: list[tuple[str, float]], *, unit: str = "") -> str:
    """Horizontal bars, one per label, with their values printed."""
    import pygal

    chart = pygal.HorizontalBar(
        **_config(title, height=max(140, 60 + 26 * len(bars)), show_legend=False, print_values=True),
        style=_style(),
        value_formatter=lambda y: f"{y:.3g}{unit}",
    )
    if bars:
        chart.x_labels = [label for label, _ in bars]
        chart.add(title, [value for _, value in bars])
    return _render(chart)
