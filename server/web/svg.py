"""Charts as inline SVG, drawn on the server: no JavaScript library, readable offline.

Each function returns markup sized by a viewBox (the page scales it to the
screen); colours come from CSS classes (`s-in`, `s-out`, `s-deny`) so the
charts follow the stylesheet. Every bar has a <title> with its exact value.
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

W = 720
PAD_L, PAD_R, PAD_T, PAD_B = 40, 10, 10, 28


def _nice_max(value: int) -> int:
    """The axis top: a round number divisible by 4 (four grid steps of whole numbers)."""
    for top in (4, 8, 12, 20, 40, 60, 80, 100, 200, 400, 600, 800, 1000, 2000, 4000, 8000):
        if value <= top:
            return top
    return -(-value // 4000) * 4000


def _axis(height: int, top: int) -> str:
    inner = height - PAD_T - PAD_B
    parts = []
    for k in range(5):
        v = top * k // 4
        y = PAD_T + inner - inner * k / 4
        parts.append(
            f'<line class="grid" x1="{PAD_L}" x2="{W - PAD_R}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="tick" x="{PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end">{v}</text>'
        )
    return "".join(parts)


def grouped_bars(
    labels: Sequence[str],
    series: Sequence[tuple[str, str, Sequence[int]]],
    title: str,
    height: int = 220,
    label_every: int = 1,
) -> Markup:
    """Bars per label, one per series (css class, legend name, values)."""
    n = max(len(labels), 1)
    top = _nice_max(max((v for _, _, vals in series for v in vals), default=0))
    inner_w, inner_h = W - PAD_L - PAD_R, height - PAD_T - PAD_B
    slot = inner_w / n
    bar = min(max(slot * 0.8 / max(len(series), 1), 1.0), 48.0)
    x_pad = (slot - bar * len(series)) / 2
    out = [
        f'<svg class="chart" viewBox="0 0 {W} {height}" role="img"'
        f' aria-label="{escape(title)}"><title>{escape(title)}</title>',
        _axis(height, top),
    ]
    for i, label in enumerate(labels):
        x0 = PAD_L + i * slot + x_pad
        for j, (cls, name, values) in enumerate(series):
            v = values[i] if i < len(values) else 0
            h = inner_h * v / top
            out.append(
                f'<rect class="{cls}" x="{x0 + j * bar:.1f}" y="{PAD_T + inner_h - h:.1f}"'
                f' width="{bar - 0.5:.1f}" height="{h:.1f}">'
                f"<title>{escape(label)} {escape(name)}: {v}</title></rect>"
            )
        if i % label_every == 0:
            out.append(
                f'<text class="tick" x="{PAD_L + i * slot + slot / 2:.1f}"'
                f' y="{height - 10}" text-anchor="middle">{escape(label)}</text>'
            )
    out.append("</svg>")
    return Markup("".join(out))


def lines(
    labels: Sequence[str],
    series: Sequence[tuple[str, str, Sequence[int]]],
    title: str,
    height: int = 220,
    label_every: int = 24,
) -> Markup:
    """A line per series over many points (a week of hours)."""
    n = max(len(labels), 2)
    top = _nice_max(max((v for _, _, vals in series for v in vals), default=0))
    inner_w, inner_h = W - PAD_L - PAD_R, height - PAD_T - PAD_B
    out = [
        f'<svg class="chart" viewBox="0 0 {W} {height}" role="img"'
        f' aria-label="{escape(title)}"><title>{escape(title)}</title>',
        _axis(height, top),
    ]
    for cls, _name, values in series:
        points = " ".join(
            f"{PAD_L + inner_w * i / (n - 1):.1f},{PAD_T + inner_h - inner_h * v / top:.1f}"
            for i, v in enumerate(values)
        )
        out.append(f'<polyline class="line {cls}" points="{points}"/>')
    for i, label in enumerate(labels):
        if i % label_every == 0:
            out.append(
                f'<text class="tick" x="{PAD_L + inner_w * i / (n - 1):.1f}" y="{height - 10}"'
                f' text-anchor="start">{escape(label)}</text>'
            )
    out.append("</svg>")
    return Markup("".join(out))


def hbars(items: Sequence[tuple[str, int]], title: str, cls: str = "s-deny") -> Markup:
    """Horizontal bars with their labels (denials by reason)."""
    row, label_w = 26, 260
    height = max(len(items), 1) * row + 10
    top = max((v for _, v in items), default=0) or 1
    out = [
        f'<svg class="chart" viewBox="0 0 {W} {height}" role="img"'
        f' aria-label="{escape(title)}"><title>{escape(title)}</title>'
    ]
    for i, (label, v) in enumerate(items):
        y = 5 + i * row
        w = (W - label_w - 60) * v / top
        out.append(
            f'<text class="tick" x="{label_w - 8}" y="{y + 17}" text-anchor="end">'
            f"{escape(label)}</text>"
            f'<rect class="{cls}" x="{label_w}" y="{y + 4}" width="{max(w, 1):.1f}"'
            f' height="{row - 8}"><title>{escape(label)}: {v}</title></rect>'
            f'<text class="value" x="{label_w + w + 6:.1f}" y="{y + 17}">{v}</text>'
        )
    out.append("</svg>")
    return Markup("".join(out))
