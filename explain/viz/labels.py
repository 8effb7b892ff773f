"""Axis labels that fit: long layer names elided in the middle, margins computed from the labels.

plotly's ``automargin`` grows a margin only as far as the plot area allows and never in a
static export, so a figure with long category labels (``bert.encoder.layer.11.attention.output.dense``)
had them clipped; the figures that list layers set their margin from the labels themselves.
"""
from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np

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


def plot_text(label) -> str:
    """``label`` as plotly text: ``<`` ``>`` ``&`` escaped, and ``%{`` written ``&#37;{``. Plotly reads
    labels, titles, legend entries and hover text as HTML, so a token such as ``</s>`` or ``<s>``
    (RoBERTa's, Llama's) closed or opened a strike-through and vanished from its axis, and a feature,
    class, series or checkpoint name ``<a href=...>`` became a link in the page and the report; it reads
    ``%{...}`` in hover templates, trace names and titles as a variable, so a label ``%{y}`` showed a
    number or nothing. Every user's string that reaches a figure goes through here; the text a person
    sees is the label itself."""
    return html.escape(str(label), quote=False).replace("%{", "&#37;{")


def elide_all(labels: Sequence[str], max_chars: int = MAX_LABEL_CHARS) -> list[str]:
    """`elide` every label, keeping them distinct (a category axis merges equal labels).

    Names that share their ends (``bert.encoder.layer.0.attention.output.dense`` ...
    ``layer.29...``) would all elide to the same label: those keep the part where they differ
    instead (``…encoder.layer.18.attention.output.dense``), so each bar still says which layer it
    is; only labels that still collide are numbered.
    """
    labels = [str(label) for label in labels]
    short = [elide(label, max_chars) for label in labels]
    groups: dict[str, set[str]] = {}
    for label, cut in zip(labels, short):
        groups.setdefault(cut, set()).add(label)
    for i, (label, cut) in enumerate(zip(labels, short)):
        if len(groups[cut]) > 1:
            short[i] = _window(label, len(_common_prefix(groups[cut])), max_chars)
    out: list[str] = []
    seen: set[str] = set()
    for label, cut in zip(labels, short):
        n = 2
        unique = cut
        while unique in seen:  # still equal (two names alike where they differ): number the later one
            unique = f"{elide(label, max_chars - 3)}·{n}"
            n += 1
        seen.add(unique)
        out.append(unique)
    return out


def _common_prefix(names: set[str]) -> str:
    first, last = min(names), max(names)  # the common prefix of all is that of the extremes
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    return first[:n]


def _window(label: str, start: int, max_chars: int) -> str:
    """``max_chars`` of ``label`` that include its characters from ``start`` on (a few before them as
    context), as much of the end as fits, "…" where it is cut."""
    if len(label) <= max_chars:
        return label
    s = max(0, min(start - 8, len(label) - (max_chars - 1)))
    if s == 0:
        return label[: max_chars - 1] + "…"
    if s + max_chars - 1 >= len(label):
        return "…" + label[len(label) - (max_chars - 1):]
    return "…" + label[s : s + max_chars - 2] + "…"


def label_margin(labels: Sequence[str], font_size: float = 12, pad: int = 16) -> int:
    """Pixels a horizontal axis title-less label column needs: the longest label at ``font_size``."""
    longest = max((len(str(s)) for s in labels), default=0)
    return int(round(longest * font_size * CHAR_WIDTH)) + pad


#: line height of a figure title, as a share of its font size (plotly's LINE_SPACING is 1.3).
LINE_HEIGHT = 1.3
#: the narrowest column a figure is drawn in (the Overview's panes, a report figure printed two a row):
#: a title wraps to fit it.
NARROW_WIDTH = 300
TITLE_SIZE = 14


def text_width(text: str, font_size: float = 12) -> int:
    """Pixels ``text`` takes at ``font_size`` (an estimate: `CHAR_WIDTH` per character)."""
    return int(round(len(str(text)) * font_size * CHAR_WIDTH))


def wrap_title(text: str, width: int = NARROW_WIDTH, font_size: float = TITLE_SIZE, max_lines: int = 3) -> str:
    """``text`` in lines of at most ``width`` pixels at ``font_size``, joined by ``<br>`` (plotly's line break),
    each line as plotly text (`plot_text`).

    A title that fits stays one line. Else each part of a "·" title ("layer · what") starts a line,
    and a part too long for one breaks at spaces; a single word (a layer name) longer than a line is
    elided in the middle (`elide`); past ``max_lines`` the last line is elided.
    """
    text = str(text)
    per_line = max(8, int(width // (font_size * CHAR_WIDTH)))
    if len(text) <= per_line:
        return plot_text(text)
    lines: list[str] = []
    for part in text.split(" · "):
        line = ""
        for word in part.split(" "):
            word = elide(word, per_line)
            if line and len(line) + 1 + len(word) > per_line:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}" if line else word
        lines.append(line)
    if len(lines) > max_lines:
        lines = lines[: max_lines - 1] + [elide(" ".join(lines[max_lines - 1 :]), per_line)]
    return "<br>".join(plot_text(line) for line in lines)  # escaped after the cuts: no entity is cut


def title_lines(text: str) -> int:
    """How many lines a plotly title takes (its ``<br>``s plus one)."""
    return str(text).count("<br>") + 1 if text else 0


def title_margin(text: str, font_size: float = TITLE_SIZE, pad: int = 14) -> int:
    """Pixels the top margin needs for a (wrapped) title: its lines and a gap above the plot."""
    return int(round(title_lines(text) * font_size * LINE_HEIGHT)) + pad if text else pad


def format_value(value: float, signed: bool = False) -> str:
    """A number for a tick or a colour bar's end, in two significant digits: plain between 0.001 and
    10,000 (``0.0012``, ``0.12``, ``120``), else with an exponent (``3.4e−6``, ``2.5e5``); a
    true minus sign; ``signed`` puts "+" before positive numbers."""
    v = float(value)
    if v == 0 or not np.isfinite(v):
        return "0" if v == 0 else str(v)
    a = float(f"{abs(v):.2g}")  # rounded to two significant digits
    if 1e-3 <= a < 1e4:
        body = f"{a:.{max(0, 1 - int(np.floor(np.log10(a))))}f}".rstrip("0").rstrip(".") if a < 1 else f"{a:g}"
    else:
        mantissa, exponent = f"{a:.1e}".split("e")
        mantissa = mantissa.rstrip("0").rstrip(".")
        body = f"{mantissa}e{int(exponent)}".replace("-", "−")
    sign = "−" if v < 0 else "+" if signed else ""
    return sign + body


def keep_labels_inside(fig):
    """Every axis grows its margin for its tick labels and title, and a figure title gets a top margin
    of its own: explicit, so the figure does not depend on the default template (the app's
    "streamlit" template sets no ``automargin``: a report built in the app's process had clipped
    ticks and axis titles over them).

    The title is centred in the top margin (plotly's ``y="auto"`` in the figure's coordinates), at the
    figure's left edge unless the figure placed it, and the top margin holds all its lines (`title_margin`). Neither
    plotly's title automargin nor ``yanchor="top"`` is used: both move a title of several lines
    up out of the figure.
    """
    fig.update_xaxes(automargin=True)
    fig.update_yaxes(automargin=True)
    title = fig.layout.title
    if title.text:
        size = title.font.size or TITLE_SIZE
        fig.update_layout(title=dict(yref="container", font=dict(size=size)))  # y, yanchor: auto
        if title.x is None:  # the figure's left edge, whatever the template (plotly's 0.05, or centred)
            fig.update_layout(title=dict(x=0, xref="container", xanchor="left", pad=dict(l=8)))
        need = title_margin(title.text, size) + 8
        if (fig.layout.margin.t or 0) < need:
            fig.update_layout(margin_t=need)
    return fig
