"""Small server-side SVG charts for the admin overview: no JavaScript, no CDN."""

from __future__ import annotations

from collections.abc import Sequence

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

PALETTE = ["#417690", "#79aec8", "#e8a33d", "#ba2121", "#5b9a68", "#8e6bb8", "#c06c84", "#6c757d"]


def bars_svg(
    items: Sequence[tuple[str, float]],
    *,
    width: int = 520,
    bar_height: int = 18,
    value_format: str = "{:,.0f}",
    colours: Sequence[str] | None = None,
) -> SafeString:
    """Horizontal bars, one per (label, value), longest value spanning the chart; one colour, or one per bar."""
    if not items:
        return mark_safe('<p class="chart-empty">No data yet.</p>')
    label_width, value_width = 150, 70
    span = width - label_width - value_width
    top = max(value for _, value in items) or 1
    rows = []
    for i, (label, value) in enumerate(items):
        y = i * (bar_height + 6)
        length = max(1.0, span * value / top) if value else 0
        rows.append(
            f'<text x="{label_width - 6}" y="{y + bar_height - 4}" text-anchor="end">{escape(str(label))[:24]}</text>'
            f'<rect x="{label_width}" y="{y}" width="{length:.1f}" height="{bar_height}" fill="{colours[i] if colours else PALETTE[0]}"><title>{escape(str(label))}: {value_format.format(value)}</title></rect>'
            f'<text x="{label_width + length + 6:.1f}" y="{y + bar_height - 4}">{value_format.format(value)}</text>'
        )
    height = len(items) * (bar_height + 6)
    return mark_safe(
        f'<svg class="chart" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'font-size="12" font-family="sans-serif">{"".join(rows)}</svg>'
    )


def stacked_columns_svg(
    columns: Sequence[tuple[str, dict[str, int]]], *, series: Sequence[str], width: int = 720, height: int = 220
) -> SafeString:
    """One column per day, stacked by series (e.g. status), with a legend."""
    if not columns:
        return mark_safe('<p class="chart-empty">No data yet.</p>')
    left, bottom, legend = 40, 36, 22
    plot_height = height - bottom - legend
    step = (width - left) / len(columns)
    top = max(sum(values.values()) for _, values in columns) or 1
    parts = [
        f'<text x="{left - 6}" y="{legend + 10}" text-anchor="end">{top:,}</text>',
        f'<text x="{left - 6}" y="{legend + plot_height}" text-anchor="end">0</text>',
    ]
    for i, (label, values) in enumerate(columns):
        x = left + i * step
        y: float = legend + plot_height
        for j, name in enumerate(series):
            value = values.get(name, 0)
            if not value:
                continue
            h = plot_height * value / top
            y -= h
            parts.append(
                f'<rect x="{x + 1:.1f}" y="{y:.1f}" width="{max(1.0, step - 2):.1f}" height="{h:.1f}" '
                f'fill="{PALETTE[j % len(PALETTE)]}"><title>{escape(label)} {escape(name)}: {value:,}</title></rect>'
            )
        if len(columns) <= 16 or i % max(1, len(columns) // 8) == 0:
            parts.append(
                f'<text x="{x + step / 2:.1f}" y="{height - 8}" text-anchor="middle">{escape(label[5:])}</text>'
            )
    for j, name in enumerate(series):
        x = left + j * 110
        parts.append(
            f'<rect x="{x}" y="2" width="12" height="12" fill="{PALETTE[j % len(PALETTE)]}"></rect>'
            f'<text x="{x + 16}" y="12">{escape(name)}</text>'
        )
    return mark_safe(
        f'<svg class="chart" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'font-size="11" font-family="sans-serif">{"".join(parts)}</svg>'
    )


def reliability_svg(
    points: Sequence[tuple[float, int, float | None]], *, width: int = 300, height: int = 220
) -> SafeString:
    """A reliability diagram: per confidence bin (its middle, answers, share right), a column as high
    as the share right, against the diagonal a calibrated model follows."""
    if not any(n for _, n, _ in points):
        return mark_safe('<p class="chart-empty">No reviewed answers yet.</p>')
    left, bottom, top = 34, 30, 8
    plot_w, plot_h = width - left - 8, height - bottom - top
    step = plot_w / len(points)
    parts = [
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top}" stroke="{PALETTE[7]}" '
        'stroke-dasharray="4 3"><title>calibrated</title></line>',
        f'<text x="{left - 4}" y="{top + 8}" text-anchor="end">1</text>',
        f'<text x="{left - 4}" y="{top + plot_h}" text-anchor="end">0</text>',
        f'<text x="{left + plot_w / 2}" y="{height - 4}" text-anchor="middle">top score</text>',
    ]
    for i, (middle, n, right) in enumerate(points):
        x = left + i * step
        if n and right is not None:
            h = plot_h * right
            parts.append(
                f'<rect x="{x + 1:.1f}" y="{top + plot_h - h:.1f}" width="{max(1.0, step - 2):.1f}" height="{h:.1f}" '
                f'fill="{PALETTE[0]}"><title>score ≈ {middle:.2f}: {right:.0%} right of {n:,}</title></rect>'
            )
        if i % 2 == 0:
            parts.append(f'<text x="{x:.1f}" y="{top + plot_h + 14}" text-anchor="middle">{middle - 0.05:.1f}</text>')
    return mark_safe(
        f'<svg class="chart reliability" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'font-size="11" font-family="sans-serif">{"".join(parts)}</svg>'
    )


def paired_bars_svg(
    items: Sequence[tuple[str, float, float | None]], *, names: tuple[str, str], width: int = 520, bar_height: int = 8
) -> SafeString:
    """Two horizontal bars per label (e.g. recent traffic and training data), shares from 0 to 1."""
    if not items:
        return mark_safe('<p class="chart-empty">No data yet.</p>')
    label_width, value_width, legend = 150, 60, 18
    span = width - label_width - value_width
    top = max(max(a, b or 0.0) for _, a, b in items) or 1
    parts = []
    for j, name in enumerate(names):
        parts.append(
            f'<rect x="{label_width + j * 140}" y="2" width="12" height="10" fill="{PALETTE[j]}"></rect>'
            f'<text x="{label_width + j * 140 + 16}" y="11">{escape(name)}</text>'
        )
    for i, (label, a, b) in enumerate(items):
        y = legend + i * (2 * bar_height + 8)
        parts.append(
            f'<text x="{label_width - 6}" y="{y + 2 * bar_height - 2}" text-anchor="end">{escape(label)[:24]}</text>'
        )
        for j, value in enumerate((a, b)):
            if value is None:
                continue
            length = span * value / top
            parts.append(
                f'<rect x="{label_width}" y="{y + j * bar_height}" width="{max(1.0, length):.1f}" height="{bar_height}" '
                f'fill="{PALETTE[j]}"><title>{escape(label)} ({escape(names[j])}): {value:.1%}</title></rect>'
            )
        parts.append(f'<text x="{label_width + span + 4}" y="{y + 2 * bar_height - 2}">{a:.1%}</text>')
    height = legend + len(items) * (2 * bar_height + 8)
    return mark_safe(
        f'<svg class="chart paired" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'font-size="11" font-family="sans-serif">{"".join(parts)}</svg>'
    )
