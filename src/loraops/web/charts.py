"""Server-rendered SVG line charts: no JavaScript, no charting library to ship, works offline."""

from __future__ import annotations

from html import escape

PALETTE = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed"]


def line_chart_svg(series: dict[str, list[tuple[float, float]]], title: str, width: int = 560,
                   height: int = 220, x_label: str = "", y_label: str = "") -> str:
    """series: {name: [(x, y), ...]} -> an <svg> with one polyline (and dots) per series.
    Empty input gives a chart that says so, never an error."""
    pad_l, pad_r, pad_t, pad_b = 52, 12, 28, 36
    points = [p for pts in series.values() for p in pts]
    out = [f'<svg class="chart" role="img" aria-label="{escape(title)}" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
           f'<text x="{pad_l}" y="18" font-size="13" font-weight="600">{escape(title)}</text>']
    if not points:
        out.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" fill="#888">no data yet</text></svg>')
        return "".join(out)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1
    y0, y1 = y0 - 0.05 * (y1 - y0), y1 + 0.05 * (y1 - y0)

    def sx(x):
        return pad_l + (x - x0) / (x1 - x0) * (width - pad_l - pad_r)

    def sy(y):
        return height - pad_b - (y - y0) / (y1 - y0) * (height - pad_t - pad_b)

    out.append(f'<line x1="{pad_l}" y1="{height - pad_b}" x2="{width - pad_r}" y2="{height - pad_b}" stroke="#999"/>')
    out.append(f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{height - pad_b}" stroke="#999"/>')
    for frac in (0, 0.5, 1):
        y = y0 + frac * (y1 - y0)
        out.append(f'<text x="{pad_l - 4}" y="{sy(y) + 4:.1f}" font-size="10" text-anchor="end">{y:.3g}</text>')
    for x in (x0, x1):
        out.append(f'<text x="{sx(x):.1f}" y="{height - pad_b + 14}" font-size="10" text-anchor="middle">{x:.4g}</text>')
    if x_label:
        out.append(f'<text x="{(width + pad_l) / 2}" y="{height - 4}" font-size="10" text-anchor="middle">'
                   f'{escape(x_label)}</text>')
    if y_label:
        out.append(f'<text x="12" y="{(height) / 2}" font-size="10" transform="rotate(-90 12 {height / 2})" '
                   f'text-anchor="middle">{escape(y_label)}</text>')
    for i, (name, pts) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in sorted(pts))
        out.append(f'<polyline class="series" data-series="{escape(name)}" fill="none" stroke="{color}" '
                   f'stroke-width="2" points="{coords}"/>')
        out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{color}"/>' for x, y in pts if len(pts) < 40]
        out.append(f'<text x="{width - pad_r - 4}" y="{pad_t + 4 + 13 * i}" font-size="11" text-anchor="end" '
                   f'fill="{color}">{escape(name)}</text>')
    out.append("</svg>")
    return "".join(out)
