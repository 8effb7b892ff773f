"""Axis labels that fit: long layer names elided in the middle, margins computed from the labels.

plotly's ``automargin`` grows a margin only as far as the plot area allows and never in a
static export, so a figure with long category labels (``bert.encoder.layer.11.attention.output.dense``)
had them clipped; the figures that list layers set their margin from the labels themselves.
"""
from __future__ import annotations

from collections.abc import Sequence

#: labels longer than this keep their start and end with "…" between (the full name is in the hover).
MAX_LABEL_CHARS = 40
#: average width of a character of the figures' sans-serif font, as a share of the font size.
CHAR_WIDTH = 0.6


def elide(label: str, max_chars: int = MAX_LABEL_CHARS) -> str:
    """``label`` itself, or its first and last characters around "…" (``max_chars`` in all)."""
    label = str(label)
    if len(label) <= max_chars:
        return label
    tail = (max_chars - 1) // 2
    head = max_chars - 1 - tail
    return f"{label[:head]}…{label[-tail:]}"


def elide_all(labels: Sequence[str], max_chars: int = MAX_LABEL_CHARS) -> list[str]:
    """`elide` every label, keeping them distinct (a category axis merges equal labels)."""
    out: list[str] = []
    seen: set[str] = set()
    for label in labels:
        short = elide(label, max_chars)
        n = 2
        while short in seen:  # two names that share their ends: number the later one
            short = f"{elide(label, max_chars - 3)}·{n}"
            n += 1
        seen.add(short)
        out.append(short)
    return out


def label_margin(labels: Sequence[str], font_size: float = 12, pad: int = 16) -> int:
    """Pixels a horizontal axis title-less label column needs: the longest label at ``font_size``."""
    longest = max((len(str(s)) for s in labels), default=0)
    return int(round(longest * font_size * CHAR_WIDTH)) + pad
