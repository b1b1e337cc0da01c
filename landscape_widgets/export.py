"""Offline HTML pages (placeholder renderer until the widget front end lands: inline SVG, no scripts)."""
from __future__ import annotations

import html
import os

import numpy as np


def _color(v):
    # viridis-like ramp from dark blue to yellow
    stops = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)]
    v = min(max(v, 0.0), 1.0) * (len(stops) - 1)
    i = min(int(v), len(stops) - 2)
    t = v - i
    c = [round(a + (b - a) * t) for a, b in zip(stops[i], stops[i + 1])]
    return f"rgb({c[0]},{c[1]},{c[2]})"


def _surface_svg(surface, size=420):
    z = np.log10(np.clip(surface.losses, 1e-12, None))
    finite = np.isfinite(z)
    lo, hi = (float(z[finite].min()), float(z[finite].max())) if finite.any() else (0.0, 1.0)
    nx, ny = z.shape
    cw, ch = size / nx, size / ny
    cells = []
    for i in range(nx):
        for j in range(ny):
            fill = _color((z[i, j] - lo) / (hi - lo or 1.0)) if finite[i, j] else "none"
            cells.append(f'<rect x="{i * cw:.2f}" y="{size - (j + 1) * ch:.2f}" width="{cw + 0.05:.2f}" '
                         f'height="{ch + 0.05:.2f}" fill="{fill}"/>')
    return f'<svg width="{size}" height="{size}" role="img">{"".join(cells)}</svg>'


def _curve_svg(curve, w=420, h=300):
    a, l = curve.alphas, curve.losses
    finite = np.isfinite(l)
    lo, hi = float(l[finite].min()), float(l[finite].max())
    pts = " ".join(f"{(x - a[0]) / (a[-1] - a[0]) * w:.1f},{h - (y - lo) / (hi - lo or 1) * h:.1f}"
                   for x, y, f in zip(a, l, finite) if f)
    return (f'<svg width="{w}" height="{h}" role="img"><polyline fill="none" stroke="#1f77b4" '
            f'stroke-width="2" points="{pts}"/></svg>')


def write_demo_page(path, *, curve, surface, info):
    esc = html.escape
    body = (f"<h1>landscape_widgets demo</h1><p>{esc(str(info))}</p>"
            f"<h2>Interpolation init &rarr; trained</h2>{_curve_svg(curve)}"
            f"<h2>Filter-normalized random plane (log10 loss)</h2>{_surface_svg(surface)}")
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>landscape demo</title></head><body>{body}</body></html>"
    path = os.fspath(path)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(page)
    return path
