"""`Report` / `Section`: everything Glassbox shows, as ONE self-contained HTML file.

The file needs nothing from the network: plotly's JavaScript is inlined once,
figures are plotly ``<div>``s that use it, images are ``data:`` URIs (PNG made
with Pillow), the CSS is inline and only system fonts are named. Every number
a section shows is also kept in its ``data`` dict and embedded in the file as
JSON (``<script type="application/json" id="glassbox-data">``), so two reports
(e.g. one from the CLI, one from the page) can be compared number by number.

`explain.report.sections.build_report` assembles the sections from the library
(`explain.report.analysis` holds the analysis sections); a part that fails becomes a section that says
what failed and why, and the rest of the report is still built.
"""
from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from explain.digest import digest_base64
from explain.errors import UsageError, one_line
from explain.report.template import CSS as _CSS
from explain.report.template import PAGE as _PAGE
from explain.report.template import RESIZE_SCRIPT

#: keys in a section's ``data`` that change from run to run (timings, clocks);
#: `drop_volatile` leaves them out.
VOLATILE_KEYS = frozenset({"seconds", "created", "elapsed_seconds", "build_seconds"})
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "chromium", "chromium-browser")
DATA_SCRIPT_ID = "glassbox-data"


# -- small pure HTML helpers ---------------------------------------------------------
def escape(value: Any) -> str:
    """HTML-escape any value's text (user-supplied names, tokens, file names)."""
    return html.escape(str(value), quote=True)


def slugify(text: str) -> str:
    """An anchor id for a heading: lower-case letters, digits and dashes."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug or "section"


def format_number(value: Any, digits: int = 4) -> str:
    """A number for a table cell: ints with thousands separators, floats to ``digits``."""
    if value is None:
        return "—"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if not np.isfinite(v):
            return "—"
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.{max(digits - 1, 1)}e}"
        return f"{v:.{digits}g}"
    return str(value)


def table_html(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None,
               headers: Sequence[str] | None = None, numeric: Iterable[str] = ()) -> str:
    """An HTML table of dict rows (cells escaped; numbers formatted and right-aligned)."""
    if not rows:
        return '<p class="muted">(empty)</p>'
    columns = list(columns or rows[0].keys())
    headers = list(headers or columns)
    numeric = set(numeric)
    head = "".join(f"<th{' class=num' if c in numeric else ''}>{escape(h)}</th>" for c, h in zip(columns, headers))
    body = []
    for row in rows:
        cells = []
        for c in columns:
            v = row.get(c)
            text = format_number(v) if isinstance(v, (int, float, np.number)) or v is None else str(v)
            cells.append(f"<td{' class=num' if c in numeric else ''}>{escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="grid"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def key_value_html(items: dict[str, Any]) -> str:
    """A two-column table (a model card): keys in bold, values escaped."""
    rows = "".join(
        f"<tr><th>{escape(k)}</th><td>{escape(format_number(v) if not isinstance(v, str) else v)}</td></tr>"
        for k, v in items.items()
    )
    return f'<table class="card">{rows}</table>'


def png_bytes(pixels: np.ndarray) -> bytes:
    """PNG bytes of a uint8 [H, W] or [H, W, 3|4] array (Pillow)."""
    from PIL import Image

    arr = np.asarray(pixels)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def image_tag(pixels: np.ndarray, alt: str, width: int = 144) -> str:
    """An ``<img>`` holding the array as a PNG ``data:`` URI, upscaled pixel-exact."""
    from PIL import Image

    arr = np.asarray(pixels)
    h, w = arr.shape[:2]
    scale = max(1, int(round(width / max(w, 1))))
    if scale > 1:
        arr = np.asarray(Image.fromarray(arr).resize((w * scale, h * scale), Image.NEAREST))
    uri = "data:image/png;base64," + base64.b64encode(png_bytes(arr)).decode("ascii")
    return f'<img src="{uri}" alt="{escape(alt)}" width="{width}" class="pix">'


def round_data(value: Any, digits: int = 6) -> Any:
    """Plain JSON values for ``data``: floats to ``digits`` significant digits, NaN to None."""
    if isinstance(value, dict):
        return {str(k): round_data(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [round_data(v, digits) for v in value]
    if isinstance(value, np.ndarray):
        return round_data(value.tolist(), digits)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return float(f"{v:.{digits}g}") if np.isfinite(v) else None
    if value is None or isinstance(value, str):
        return value
    return str(value)


# -- the report --------------------------------------------------------------------
@dataclass
class Section:
    """One part of a report.

    Attributes:
        title: the heading (also the table-of-contents entry).
        body: HTML built by Glassbox (user text already escaped).
        figures: plotly figures, placed after ``body``.
        data: every number the section shows (plain JSON values).
        error: set when the part failed: one line saying what and why.
        notes: short remarks shown under the heading.
    """

    title: str
    body: str = ""
    figures: list[Any] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    @classmethod
    def failed(cls, title: str, exc: BaseException | str) -> Section:
        """A section that says this part could not be built, and why (one line)."""
        reason = one_line(exc)
        return cls(title=title, error=reason, data={"error": reason})

    @property
    def anchor(self) -> str:
        return slugify(self.title)

    def to_html(self, anchor: str | None = None) -> str:
        return self._html(anchor, self.figure_divs())

    def figure_divs(self) -> list[str]:
        """Each figure as plotly's ``<div>`` and the ``<script>`` that draws it (the report's CSP allows those)."""
        divs = []
        for fig in self.figures:
            height = (fig.layout.height or 360) if hasattr(fig, "layout") else 360
            divs.append(fig.to_html(full_html=False, include_plotlyjs=False, default_height=f"{int(height)}px",
                                    config={"displaylogo": False, "responsive": True}))
        return divs

    def _html(self, anchor: str | None, divs: list[str]) -> str:
        parts = [f'<section id="{escape(anchor or self.anchor)}"><h2>{escape(self.title)}</h2>']
        if self.error:
            parts.append(f'<div class="failed"><strong>This part could not be built.</strong> {escape(self.error)}</div>')
        parts.extend(f'<p class="note">{escape(n)}</p>' for n in self.notes)
        parts.append(self.body)
        if divs:
            parts.append('<div class="figs">')
            parts.extend(f'<div class="fig">{div}</div>' for div in divs)
            parts.append("</div>")
        parts.append("</section>")
        return "\n".join(parts)


@dataclass
class Report:
    """An exportable report.

    Attributes:
        title: shown at the top and in the browser tab.
        sections: in order.
        created: when it was made (UTC).
        params: every parameter used to build it (for reproduction).
        subtitle: one line under the title (what was reported on).
    """

    title: str
    sections: list[Section] = field(default_factory=list)
    created: datetime = field(default_factory=lambda: datetime.now(UTC))
    params: dict[str, Any] = field(default_factory=dict)
    subtitle: str = ""

    @property
    def section_titles(self) -> list[str]:
        return [s.title for s in self.sections]

    @property
    def failed_sections(self) -> list[str]:
        return [s.title for s in self.sections if s.error]

    def section(self, title: str) -> Section:
        for s in self.sections:
            if s.title == title:
                return s
        raise KeyError(title)

    def data_json(self) -> str:
        """All sections' data as JSON (what the HTML embeds)."""
        payload = {"title": self.title, "created": self.created.isoformat(timespec="seconds"),
                   "params": round_data(self.params), "sections": {s.title: round_data(s.data) for s in self.sections}}
        return json.dumps(payload, allow_nan=False, sort_keys=False)

    def to_html(self) -> str:
        """The whole report as one self-contained HTML document."""
        import plotly.offline

        anchors = _unique_anchors(self.sections)
        toc = "".join(
            f'<li><a href="#{escape(a)}">{escape(s.title)}</a>{" <span class=bad>(failed)</span>" if s.error else ""}</li>'
            for s, a in zip(self.sections, anchors)
        )
        divs = [s.figure_divs() for s in self.sections]
        body = "\n".join(s._html(a, d) for s, a, d in zip(self.sections, anchors, divs))
        plotlyjs = plotly.offline.get_plotlyjs()
        scripts = [plotlyjs, RESIZE_SCRIPT] + [code for d in divs for div in d for code in _SCRIPT.findall(div)]
        created = self.created.strftime("%Y-%m-%d %H:%M:%S UTC")
        # no "<" in the data at all: "</script" would close the element early, and "<!--<script>" puts the parser
        # into the double-escaped state where the element runs on past its end tag (a comment's text is data)
        data = self.data_json().replace("<", "\\u003c")
        return _PAGE.format(
            title=escape(self.title), created=escape(created), toc=toc,
            subtitle=escape(self.subtitle + " · " if self.subtitle else ""), body=body, css=_CSS,
            plotlyjs=plotlyjs, data=data, data_id=DATA_SCRIPT_ID, resize=RESIZE_SCRIPT,
            csp=escape(content_security_policy(scripts)),
        )

    def save(self, path: str | Path) -> Path:
        """Write the HTML to ``path`` (parents created)."""
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(self.to_html(), encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"Cannot write the report to {path} ({exc.strerror}).") from None
        return path

    def to_pdf(self, path: str | Path, chromium: str | None = None, timeout: float = 120.0) -> Path:
        """Print the report to PDF with headless Chromium (`print_pdf`).

        Raises:
            UsageError: no Chromium is installed, or it failed to print.
        """
        return print_pdf(self.to_html(), path, chromium, timeout)


#: a script element as Glassbox and plotly write them (no attributes)
_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)
#: where a report's Content-Security-Policy is (`content_security_policy`), before any script of the file
_CSP_META = re.compile(r'<meta http-equiv="Content-Security-Policy" content="[^"]*">')
#: what a page printed without a policy of its own gets (an older report): no script, nothing loaded
NO_SCRIPT_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; font-src data:"


def content_security_policy(scripts: Iterable[str]) -> str:
    """A report's Content-Security-Policy: only ``scripts`` (its own: plotly, each figure's, the resize) run,
    by their sha256; nothing is loaded (images are data: URIs), nothing is sent, no form, no base. A script
    that a user's string brought into the page, or an inline handler (``onerror=``), does not run."""
    digests = {digest_base64(code.encode("utf-8")) for code in scripts}
    hashes = " ".join(f"'sha256-{d}'" for d in sorted(digests))
    return (f"default-src 'none'; script-src {hashes}; style-src 'unsafe-inline'; img-src data:; font-src data:; "
            "base-uri 'none'; form-action 'none'")


def printable(html_text: str) -> str:
    """The page Chromium prints: a report with its own policy (`Report.to_html`, before its first script) as it
    is; any other page (a report saved before the policy) with `NO_SCRIPT_POLICY` first in its head, so no
    script of it runs (its figures are then not drawn). Chromium's own switch for scripts
    (``--blink-settings=scriptEnabled=false``) stops headless printing altogether."""
    first_script = html_text.find("<script")
    head = html_text if first_script < 0 else html_text[:first_script]
    if _CSP_META.search(head):
        return html_text
    meta = f'<meta http-equiv="Content-Security-Policy" content="{NO_SCRIPT_POLICY}">'
    at = re.search(r"<head[^>]*>", head, re.I)
    if at is None:  # no head of its own: the meta opens the document (HTML puts it in the head it makes)
        return meta + html_text
    return html_text[:at.end()] + meta + html_text[at.end():]


#: why a PDF cannot be made, and what to do instead: one wording for the CLI and the page.
NO_CHROMIUM = "PDF export needs Chromium, which is not installed."
NO_CHROMIUM_HINT = "Install it (apt-get install -y chromium) or save the HTML report and print it from a browser."


def print_pdf(html_text: str, path: str | Path, chromium: str | None = None, timeout: float = 120.0) -> Path:
    """Print a report's HTML to ``path`` as PDF with headless Chromium: offline (the HTML is self-contained, and
    Chromium reaches no address), only the report's own scripts run (`printable`).

    Raises:
        UsageError: no Chromium is installed, or it failed to print.
    """
    exe = find_chromium(chromium)
    if exe is None:
        raise UsageError(NO_CHROMIUM, NO_CHROMIUM_HINT)
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    page = printable(html_text)
    with tempfile.TemporaryDirectory(prefix="glassbox-pdf-") as tmp:
        src = Path(tmp) / "report.html"
        src.write_text(page, encoding="utf-8")
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--no-pdf-header-footer",
               # no network, whatever the page asks: no name resolves, every address (loopback too) goes
               # to a proxy that is not there
               "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=socks5://127.0.0.1:9",
               "--proxy-bypass-list=<-loopback>",
               f"--user-data-dir={tmp}/profile", "--virtual-time-budget=3000",
               f"--print-to-pdf={path}", src.as_uri()]
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise UsageError(f"Chromium did not finish printing the PDF within {timeout:.0f} s.") from None
    if not path.exists() or path.stat().st_size == 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise UsageError(f"Chromium could not print the PDF (exit {proc.returncode}: {tail[0][:200]}).")
    return path


def pdf_bytes(html_text: str, chromium: str | None = None, timeout: float = 120.0) -> bytes:
    """`print_pdf` into memory (for a download button)."""
    with tempfile.TemporaryDirectory(prefix="glassbox-pdf-out-") as tmp:
        return print_pdf(html_text, Path(tmp) / "report.pdf", chromium, timeout).read_bytes()


def find_chromium(explicit: str | None = None) -> str | None:
    """The path of a Chromium executable, or None."""
    for candidate in ([explicit] if explicit else []) + list(CHROMIUM_CANDIDATES):
        found = candidate if Path(candidate).is_file() else shutil.which(candidate)
        if found:
            return str(found)
    return None


def read_report_data(html_text: str) -> dict[str, Any]:
    """The JSON data embedded in a report's HTML (to compare two reports)."""
    match = re.search(rf'<script type="application/json" id="{DATA_SCRIPT_ID}">(.*?)</script>', html_text, re.S)
    if not match:
        raise UsageError("This HTML is not a Glassbox report (no embedded data).")
    return json.loads(match.group(1).replace("<\\/", "</"))  # "<\\/": a report made before "<" became \\u003c


def drop_volatile(data: Any) -> Any:
    """``data`` without `VOLATILE_KEYS`, at any depth."""
    return _drop_volatile(data)


def _drop_volatile(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _drop_volatile(v) for k, v in data.items() if k not in VOLATILE_KEYS}
    if isinstance(data, list):
        return [_drop_volatile(v) for v in data]
    return data


def _unique_anchors(sections: Sequence[Section]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for s in sections:
        a = s.anchor
        seen[a] = seen.get(a, 0) + 1
        out.append(a if seen[a] == 1 else f"{a}-{seen[a]}")
    return out
