"""Server-side SVG: chain trees and bar charts (no JavaScript charting library needed)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from urllib.parse import quote

from markupsafe import Markup, escape

from localbroker.broker.chains import Chain

__all__ = ["bar_chart", "chain_svg", "segment"]

NODE_W = 520
NODE_H = 46
ROW_H = 58
INDENT = 30
MARGIN = 10


def chain_svg(chain: Chain, *, base: str, highlight: str | None = None, limit: int = 500) -> Markup:
    """The chain as an indented tree: one box per event, coloured by its worst delivery state.

    Each box links to the event's page; an edge joins each event to the event that caused it.
    """
    walk = chain.walk()[:limit]
    row = {id(node): i for i, (_, node) in enumerate(walk)}
    depth_of = {id(node): depth for depth, node in walk}
    width = MARGIN * 2 + NODE_W + INDENT * max((d for d, _ in walk), default=0)
    height = MARGIN * 2 + ROW_H * len(walk)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chain" role="img" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}">'
        f"<title>chain {escape(chain.correlation_id)}: {len(walk)} of {len(chain)} events "
        "drawn</title>"
    ]
    for depth, node in walk:
        x, y = MARGIN + depth * INDENT, MARGIN + row[id(node)] * ROW_H
        for child in node.children:
            if id(child) in row:
                cy = MARGIN + row[id(child)] * ROW_H + NODE_H / 2
                cx = MARGIN + depth_of[id(child)] * INDENT
                parts.append(
                    f'<path class="edge" d="M{x + 12} {y + NODE_H} V{cy} H{cx}" fill="none"/>'
                )
    for depth, node in walk:
        e = node.event
        x, y = MARGIN + depth * INDENT, MARGIN + row[id(node)] * ROW_H
        deliveries = ", ".join(
            f"{d.subscriber}: {d.state}" + (f" ({d.tries} tries)" if d.tries > 1 else "")
            for d in node.deliveries
        )
        when = datetime.fromtimestamp(e.time, UTC).strftime("%H:%M:%S.%f")[:-3]
        mark = " highlight" if highlight in (e.id, str(e.offset)) else ""
        parts.append(
            f'<a href="{escape(base)}/events/{e.offset}" class="node state-{escape(node.state)}{mark}" '
            f'data-event-id="{escape(e.id)}" data-state="{escape(node.state)}">'
            f"<title>{escape(e.topic)} {escape(e.id)} - {escape(node.state)}</title>"
            f'<rect x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" rx="6"/>'
            f'<text x="{x + 10}" y="{y + 18}" class="topic">{escape(e.topic)}'
            f'<tspan class="meta"> @{e.offset} {when} {escape(e.id[:13])}… {escape(node.state)}</tspan></text>'
            f'<text x="{x + 10}" y="{y + 36}" class="deliveries">'
            f"{escape(_clip(deliveries or 'no subscribers', 80))}</text></a>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def segment(text: str) -> str:
    """``text`` as one path segment of a URL: ``/`` and everything else reserved encoded
    (inbound Redis ids look like ``orders/1700000000000-0``)."""
    return quote(text, safe="")


def bar_chart(
    bars: Sequence[tuple[str, float]],
    *,
    title: str,
    unit: str = "",
    width: int = 720,
    height: int = 180,
) -> Markup:
    """A bar chart of ``(label, value)`` pairs; every bar has a tooltip with its label and value.

    Only the first and last labels are written under the axis, to stay readable with many bars.
    """
    top, bottom, left = 16, 22, 44
    plot_h = height - top - bottom
    peak = max((v for _, v in bars), default=0) or 1
    step = (width - left - 4) / max(len(bars), 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}"><title>{escape(title)}</title>',
        f'<text x="{left - 4}" y="{top + 8}" class="axis" text-anchor="end">{_num(peak)}</text>',
        f'<text x="{left - 4}" y="{top + plot_h}" class="axis" text-anchor="end">0</text>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width}" y2="{top + plot_h}" class="axis-line"/>',
    ]
    for i, (label, value) in enumerate(bars):
        h = plot_h * value / peak
        x = left + i * step
        parts.append(
            f'<rect class="bar" x="{x + 1:.1f}" y="{top + plot_h - h:.1f}" '
            f'width="{max(step - 2, 1):.1f}" height="{h:.1f}">'
            f"<title>{escape(label)}: {_num(value)}{escape(unit)}</title></rect>"
        )
    if bars:
        parts.append(
            f'<text x="{left}" y="{height - 6}" class="axis">{escape(bars[0][0])}</text>'
            f'<text x="{width - 2}" y="{height - 6}" class="axis" text-anchor="end">'
            f"{escape(bars[-1][0])}</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def _num(value: float) -> str:
    return f"{value:,.0f}" if value == int(value) else f"{value:,.3g}"


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
