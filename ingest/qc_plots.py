"""The reports' plots, drawn as inline SVG: the validation report's QC histograms and
scatter, and the reannotation report's map of cells by category and its confusion heatmap.

Each plot is one ``<svg>`` element written as text: bars, points, axes, ticks and labels,
no external resource and no plotting library (rendering four plots takes milliseconds, where
matplotlib took about a second of import and layout). The numbers stay readable in the
page: every histogram bar carries a ``<title>`` (its range and number of cells, shown on
hover) and ``data-n`` (its count), the median line ``data-median``.

Example
-------
>>> import numpy as np
>>> svg = histogram(np.array([1.0, 2.0, 2.0, 3.0]), "n_genes")
>>> svg.startswith("<svg") and 'data-median="2"' in svg
True
"""

from __future__ import annotations

import html
import math
import numpy as np

__all__ = ["histogram", "scatter", "category_scatter", "heatmap", "MAX_SCATTER_POINTS", "N_BINS"]

#: The scatter plot draws at most this many cells (a fixed random sample).
MAX_SCATTER_POINTS = 5_000
#: Number of histogram bars.
N_BINS = 60

_W, _H = 520, 340
_LEFT, _RIGHT, _TOP, _BOTTOM = 62, 16, 26, 46
_BAR, _MEDIAN, _AXIS, _GREY = "#0969da", "#cf222e", "#57606a", "#8c959f"
#: matplotlib's viridis at 9 evenly spaced stops (interpolated linearly between them).
_VIRIDIS = np.array(
    [(68, 1, 84), (71, 44, 122), (59, 81, 139), (44, 113, 142), (33, 144, 141),
     (39, 173, 129), (92, 200, 99), (170, 220, 50), (253, 231, 37)], dtype=float,
)  # fmt: skip
_N_COLOURS = 24
#: matplotlib's tab20 (the first 10 are tab10): one colour per category, repeating after 20.
_CATEGORY = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
    "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5",
)  # fmt: skip


def histogram(values: np.ndarray, name: str, *, log: bool = False) -> str:
    """An SVG histogram of finite ``values`` with a dashed line at the median.

    With ``log``, values <= 0 are left out (and counted in the axis label) and the bins are
    evenly spaced in log10.
    """
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    skipped = 0
    if log:
        positive = values[values > 0]
        skipped, values = len(values) - len(positive), positive
    xlabel = name + (f" ({skipped} cells with 0 not shown)" if skipped else "")
    if len(values) == 0:
        return _empty(f"no {'positive ' if log else ''}values", xlabel)
    lo, hi = float(values.min()), float(values.max())
    if hi > lo:
        edges = np.logspace(math.log10(lo), math.log10(hi), N_BINS + 1) if log else np.linspace(lo, hi, N_BINS + 1)
        edges[0], edges[-1] = lo, hi  # 10 ** log10(x) need not give x back: keep min and max inside
        x0, x1 = lo, hi
    else:  # one value: one narrow bar in the middle of the axis
        edges = np.array([lo / 1.03, lo * 1.03]) if log else np.array([lo - 0.03 * (abs(lo) or 1), lo + 0.03 * (abs(lo) or 1)])
        x0, x1 = (lo / 2, lo * 2) if log else (lo - (abs(lo) or 1), lo + (abs(lo) or 1))
    counts, edges = np.histogram(values, bins=edges)
    xs = _Scale(x0, x1, _LEFT, _W - _RIGHT, log, pad=0.01)
    ys = _Scale(0.0, float(counts.max()) * 1.08, _H - _BOTTOM, _TOP, False, integer=True)
    parts = [_open(f"histogram of {name}")]
    parts += _axes(xs, ys, xlabel, "cells")
    parts.append(f'<g fill="{_BAR}" fill-opacity="0.85">')
    for n, a, b in zip(counts, edges[:-1], edges[1:], strict=True):
        if n == 0:
            continue
        xa, xb, y = xs(a), xs(b), ys(float(n))
        tip = f"{_fmt(a)} to {_fmt(b)}: {int(n)} cell{'' if n == 1 else 's'}"
        parts.append(
            f'<rect x="{xa:.1f}" y="{y:.1f}" width="{max(xb - xa, 0.8):.1f}" height="{ys(0.0) - y:.1f}" '
            f'data-n="{int(n)}"><title>{_e(tip)}</title></rect>'
        )
    parts.append("</g>")
    median = float(np.median(values))
    xm = xs(median)
    parts.append(
        f'<line x1="{xm:.1f}" y1="{_TOP}" x2="{xm:.1f}" y2="{_H - _BOTTOM}" stroke="{_MEDIAN}" '
        f'stroke-width="1.2" stroke-dasharray="5 3" data-median="{median:.6g}"/>'
    )
    lx = _W - _RIGHT - 8
    parts.append(
        f'<rect x="{lx - 136}" y="{_TOP + 2}" width="140" height="20" fill="#fff" fill-opacity="0.8"/>'
        f'<line x1="{lx - 130}" y1="{_TOP + 12}" x2="{lx - 110}" y2="{_TOP + 12}" stroke="{_MEDIAN}" '
        f'stroke-width="1.2" stroke-dasharray="5 3"/>'
        f'<text x="{lx - 104}" y="{_TOP + 16}" font-size="11">median {_e(_fmt(median))}</text>'
    )
    return "".join(parts) + "</svg>"


def scatter(x: np.ndarray, y: np.ndarray, colour: np.ndarray | None, *, xlabel: str, ylabel: str, clabel: str) -> str:
    """An SVG log-log scatter plot of the cells with positive, finite ``x`` and ``y``.

    Points are coloured by ``colour`` on the viridis scale (grey where it is not finite),
    with a colour bar; above :data:`MAX_SCATTER_POINTS` cells a fixed random sample is drawn
    and the title says so.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    idx = np.flatnonzero(np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0))
    if len(idx) == 0:
        return _empty("no cells with counts", xlabel)
    n_kept = len(idx)
    if n_kept > MAX_SCATTER_POINTS:
        idx = np.sort(np.random.default_rng(0).choice(idx, MAX_SCATTER_POINTS, replace=False))
    px, py = x[idx], y[idx]
    c = None if colour is None else np.asarray(colour, dtype=float)[idx]
    right = _RIGHT + (70 if c is not None else 0)
    xs = _Scale(float(px.min()), float(px.max()), _LEFT, _W - right, True, pad=0.03)
    ys = _Scale(float(py.min()), float(py.max()), _H - _BOTTOM, _TOP, True, pad=0.03)
    parts = [_open(f"scatter plot of {ylabel} against {xlabel}")]
    if n_kept > MAX_SCATTER_POINTS:
        parts.append(
            f'<text x="{(_LEFT + _W - right) / 2:.0f}" y="14" font-size="11" text-anchor="middle">'
            f"random sample of {MAX_SCATTER_POINTS:,} of {n_kept:,} cells</text>"
        )
    parts += _axes(xs, ys, xlabel, ylabel)
    level = np.full(len(idx), -1)
    cmin = cmax = 0.0
    if c is not None and np.isfinite(c).any():
        cmin, cmax = float(np.nanmin(c)), float(np.nanmax(c))
        span = cmax - cmin if cmax > cmin else 1.0
        finite = np.isfinite(c)
        level[finite] = np.minimum(((c[finite] - cmin) / span * _N_COLOURS).astype(int), _N_COLOURS - 1)
    sx, sy = xs.array(px), ys.array(py)
    for lv in np.unique(level):
        pick = level == lv
        fill = _BAR if c is None else _GREY if lv < 0 else _viridis((lv + 0.5) / _N_COLOURS)
        dots = "".join(f"M{a:.1f} {b:.1f}h0" for a, b in zip(sx[pick], sy[pick], strict=True))
        parts.append(
            f'<path d="{dots}" stroke="{fill}" stroke-opacity="0.75" stroke-width="3.5" '
            f'stroke-linecap="round" data-n="{int(pick.sum())}"/>'
        )
    if c is not None:
        parts.append(_colour_bar(cmin, cmax, _W - right + 16, clabel))
    return "".join(parts) + "</svg>"


def category_scatter(x: np.ndarray, y: np.ndarray, labels: np.ndarray, *, xlabel: str, ylabel: str, marked: np.ndarray | None = None, marked_label: str = "") -> str:
    """An SVG scatter plot (linear axes) of points coloured by their category ``labels``, with
    a legend; points where ``marked`` is true are drawn as grey crosses under ``marked_label``."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    labels = np.asarray(labels).astype(str)
    marked = np.zeros(len(x), dtype=bool) if marked is None else np.asarray(marked, dtype=bool)
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.any():
        return _empty("no points", xlabel)
    cats = sorted(set(labels[ok & ~marked]))
    right = _RIGHT + 170
    xs = _Scale(float(x[ok].min()), float(x[ok].max()), _LEFT, _W - right, False, pad=0.03)
    ys = _Scale(float(y[ok].min()), float(y[ok].max()), _H - _BOTTOM, _TOP, False, pad=0.03)
    parts = [_open(f"scatter plot of {ylabel} against {xlabel} by category")]
    parts += _axes(xs, ys, xlabel, ylabel)
    sx, sy = xs.array(np.where(ok, x, 0.0)), ys.array(np.where(ok, y, 0.0))
    legend = ['<g font-size="10" fill="#1f2328">']
    shown = cats[:18]
    for i, cat in enumerate(cats):
        pick = ok & ~marked & (labels == cat)
        colour = _CATEGORY[i % len(_CATEGORY)]
        dots = "".join(f"M{a:.1f} {b:.1f}h0" for a, b in zip(sx[pick], sy[pick], strict=True))
        parts.append(f'<path d="{dots}" stroke="{colour}" stroke-opacity="0.8" stroke-width="3.5" stroke-linecap="round" data-label="{_e(cat)}" data-n="{int(pick.sum())}"/>')
        if cat in shown:
            ly = _TOP + 6 + 14 * shown.index(cat)
            legend.append(f'<circle cx="{_W - right + 18}" cy="{ly:.1f}" r="3.5" fill="{colour}"/><text x="{_W - right + 26}" y="{ly + 3.5:.1f}">{_e(_short(cat, 19))} ({int(pick.sum())})<title>{_e(cat)}</title></text>')
    if len(cats) > len(shown):
        legend.append(f'<text x="{_W - right + 12}" y="{_TOP + 6 + 14 * len(shown) + 3.5:.1f}">and {len(cats) - len(shown)} more</text>')
    mk = ok & marked
    if mk.any():
        crosses = "".join(f"M{a - 2.5:.1f} {b - 2.5:.1f}l5 5M{a - 2.5:.1f} {b + 2.5:.1f}l5 -5" for a, b in zip(sx[mk], sy[mk], strict=True))
        parts.append(f'<path d="{crosses}" stroke="{_AXIS}" stroke-width="1" data-label="{_e(marked_label)}" data-n="{int(mk.sum())}"/>')
        ly = _TOP + 6 + 14 * (len(shown) + (1 if len(cats) > len(shown) else 0))
        legend.append(f'<text x="{_W - right + 14}" y="{ly + 3.5:.1f}" fill="{_AXIS}">× {_e(marked_label)} ({int(mk.sum())})</text>')
    legend.append("</g>")
    return "".join(parts + legend) + "</svg>"


def heatmap(matrix: np.ndarray, rows: list[str], columns: list[str], *, xlabel: str, ylabel: str, clabel: str) -> str:
    """An SVG heatmap of ``matrix`` (values in [0, 1]) on a white-to-blue scale, each cell with
    its value as a tooltip and ``data-v``; row and column labels are shortened to 22 characters."""
    m = np.asarray(matrix, dtype=float)
    if m.size == 0:
        return _empty("no rows", xlabel)
    left, bottom, top, right = 150, 120, 12, 80
    w, h = 560, max(200, 16 * len(rows) + bottom + top)
    cw, ch = (w - left - right) / max(len(columns), 1), (h - top - bottom) / max(len(rows), 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" '
        f'aria-label="{_e(f"heatmap of {ylabel} by {xlabel}")}" font-family="system-ui,sans-serif" '
        f'style="max-width:100%;height:auto;border:1px solid #d0d7de;background:#fff">'
    ]
    for i, r in enumerate(rows):
        for j, c in enumerate(columns):
            v = float(m[i, j]) if np.isfinite(m[i, j]) else 0.0
            shade = int(round(255 - 200 * min(max(v, 0.0), 1.0)))
            fill = f"#{shade:02x}{min(255, shade + 25):02x}ff" if v > 0 else "#ffffff"
            parts.append(
                f'<rect x="{left + j * cw:.1f}" y="{top + i * ch:.1f}" width="{cw:.1f}" height="{ch:.1f}" fill="{fill}" '
                f'stroke="#eaeef2" data-v="{v:.4g}"><title>{_e(f"{r} -> {c}: {v:.2f}")}</title></rect>'
            )
    labels = ['<g font-size="9" fill="#1f2328">']
    for i, r in enumerate(rows):
        labels.append(f'<text x="{left - 4}" y="{top + (i + 0.5) * ch + 3:.1f}" text-anchor="end">{_e(_short(r, 26))}<title>{_e(r)}</title></text>')
    for j, c in enumerate(columns):
        x = left + (j + 0.5) * cw
        labels.append(f'<text x="{x:.1f}" y="{h - bottom + 10}" text-anchor="end" transform="rotate(-60 {x:.1f} {h - bottom + 10})">{_e(_short(c, 22))}<title>{_e(c)}</title></text>')
    labels.append("</g>")
    parts += labels
    parts.append(f'<text x="{left + (w - left - right) / 2:.1f}" y="{h - 4}" font-size="11" text-anchor="middle">{_e(xlabel)}</text>')
    parts.append(f'<text x="10" y="{top + (h - top - bottom) / 2:.1f}" font-size="11" text-anchor="middle" transform="rotate(-90 10 {top + (h - top - bottom) / 2:.1f})">{_e(ylabel)}</text>')
    bar_x = w - right + 16
    for k in range(10):
        v = (k + 0.5) / 10
        shade = int(round(255 - 200 * v))
        y0 = top + (h - top - bottom) * (1 - (k + 1) / 10)
        parts.append(f'<rect x="{bar_x}" y="{y0:.1f}" width="10" height="{(h - top - bottom) / 10 + 0.3:.1f}" fill="#{shade:02x}{min(255, shade + 25):02x}ff"/>')
    parts.append(f'<text x="{bar_x + 14}" y="{top + 8}" font-size="9">1</text><text x="{bar_x + 14}" y="{h - bottom}" font-size="9">0</text>')
    cy = top + (h - top - bottom) / 2
    parts.append(f'<text x="{bar_x + 40}" y="{cy:.1f}" font-size="10" text-anchor="middle" transform="rotate(90 {bar_x + 40} {cy:.1f})">{_e(clabel)}</text>')
    return "".join(parts) + "</svg>"


# ----------------------------------------------------------------------------- drawing


class _Scale:
    """Maps data values in ``[d0, d1]`` to pixels ``[p0, p1]``, linearly or in log10."""

    def __init__(
        self, d0: float, d1: float, p0: float, p1: float, log: bool, pad: float = 0.0, integer: bool = False
    ) -> None:
        if log:
            d0, d1 = math.log10(d0), math.log10(d1)
        if d1 <= d0:  # a single value: centre it
            d0, d1 = d0 - 0.5, d1 + 0.5
        margin = (d1 - d0) * pad
        self.d0, self.d1, self.p0, self.p1, self.log = d0 - margin, d1 + margin, p0, p1, log
        self.integer = integer  # ticks at whole numbers only (counts of cells)

    def __call__(self, v: float) -> float:
        t = math.log10(v) if self.log else v
        return self.p0 + (t - self.d0) / (self.d1 - self.d0) * (self.p1 - self.p0)

    def array(self, v: np.ndarray) -> np.ndarray:
        t = np.log10(v) if self.log else v
        return self.p0 + (t - self.d0) / (self.d1 - self.d0) * (self.p1 - self.p0)

    def ticks(self) -> list[float]:
        lo, hi = self.d0, self.d1
        if not self.log:
            return _linear_ticks(lo, hi, min_step=1.0 if self.integer else 0.0)
        if hi - lo < 0.3:  # less than a factor of 2: linear ticks read better
            return [v for v in _linear_ticks(10.0**lo, 10.0**hi, 4) if v > 0]
        for mult in ((1,), (1, 2, 5), (1, 2, 3, 5, 7), (1, 1.5, 2, 3, 4, 5, 6, 7, 8, 9)):
            out = [m * 10.0**k for k in range(math.floor(lo), math.ceil(hi) + 1) for m in mult]
            out = [v for v in out if lo - 1e-9 <= math.log10(v) <= hi + 1e-9]
            if len(out) >= 3:
                return out[:: math.ceil(len(out) / 8)]
        return out


def _linear_ticks(lo: float, hi: float, n: int = 5, min_step: float = 0.0) -> list[float]:
    raw = max((hi - lo) / n, min_step)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 12) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _open(label: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" '
        f'role="img" aria-label="{_e(label)}" font-family="system-ui,sans-serif" '
        f'style="max-width:100%;height:auto;border:1px solid #d0d7de;background:#fff">'
    )


def _axes(xs: _Scale, ys: _Scale, xlabel: str, ylabel: str) -> list[str]:
    x0, x1, y0, y1 = xs.p0, xs.p1, ys.p0, ys.p1
    out = [f'<g stroke="{_AXIS}" stroke-width="1" fill="none"><path d="M{x0:.1f} {y1:.1f}V{y0:.1f}H{x1:.1f}"/></g>']
    labels = ['<g font-size="10" fill="#1f2328">']
    for v in xs.ticks():
        p = xs(v)
        out.append(f'<path d="M{p:.1f} {y0:.1f}v4" stroke="{_AXIS}"/>')
        labels.append(f'<text x="{p:.1f}" y="{y0 + 15:.1f}" text-anchor="middle">{_e(_fmt(v))}</text>')
    for v in ys.ticks():
        p = ys(v)
        out.append(f'<path d="M{x0:.1f} {p:.1f}h-4" stroke="{_AXIS}"/>')
        labels.append(f'<text x="{x0 - 6:.1f}" y="{p + 3.5:.1f}" text-anchor="end">{_e(_fmt(v))}</text>')
    labels.append("</g>")
    out += labels
    out.append(f'<text x="{(x0 + x1) / 2:.1f}" y="{_H - 8}" font-size="12" text-anchor="middle">{_e(xlabel)}</text>')
    cy = (y0 + y1) / 2
    out.append(
        f'<text x="14" y="{cy:.1f}" font-size="12" text-anchor="middle" transform="rotate(-90 14 {cy:.1f})">{_e(ylabel)}</text>'
    )
    return out


def _colour_bar(cmin: float, cmax: float, x: float, label: str) -> str:
    h = _H - _TOP - _BOTTOM
    step = h / _N_COLOURS
    rects = "".join(
        f'<rect x="{x:.1f}" y="{_TOP + h - (i + 1) * step:.1f}" width="12" height="{step + 0.3:.1f}" '
        f'fill="{_viridis((i + 0.5) / _N_COLOURS)}"/>'
        for i in range(_N_COLOURS)
    )
    ticks = _linear_ticks(cmin, cmax, 4) if cmax > cmin else [cmin]
    span = cmax - cmin if cmax > cmin else 1.0
    text = "".join(
        f'<text x="{x + 16:.1f}" y="{_TOP + h - (v - cmin) / span * h + 3.5:.1f}" font-size="10">{_e(_fmt(v))}</text>'
        for v in ticks
    )
    cy = _TOP + h / 2
    title = (
        f'<text x="{x + 52:.1f}" y="{cy:.1f}" font-size="11" text-anchor="middle" '
        f'transform="rotate(90 {x + 52:.1f} {cy:.1f})">{_e(label)}</text>'
    )
    return f"<g>{rects}{text}{title}</g>"


def _empty(message: str, xlabel: str) -> str:
    return (
        _open(message)
        + f'<text x="{_W / 2}" y="{_H / 2}" font-size="13" text-anchor="middle" fill="{_AXIS}">{_e(message)}</text>'
        + f'<text x="{_W / 2}" y="{_H - 8}" font-size="12" text-anchor="middle">{_e(xlabel)}</text></svg>'
    )


def _viridis(t: float) -> str:
    pos = min(max(t, 0.0), 1.0) * (len(_VIRIDIS) - 1)
    i = min(int(pos), len(_VIRIDIS) - 2)
    rgb = _VIRIDIS[i] + (pos - i) * (_VIRIDIS[i + 1] - _VIRIDIS[i])
    return "#" + "".join(f"{int(round(v)):02x}" for v in rgb)


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _fmt(v: float) -> str:
    """A short, exact-enough label: ``1,200``, ``3.5``, ``0.012``, ``1.2e+06``."""
    v = float(v)
    if v == 0:
        return "0"
    if abs(v) >= 1e6 or abs(v) < 1e-3:
        return f"{v:.2g}"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.4g}"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)
