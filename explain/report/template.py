"""The report's inline CSS and page template (no external fonts, links or scripts)."""

#: figures side by side in a section: plotly sizes each to the row's full width before the flex row is
#: laid out, so all but the last were clipped; every plot is resized once the page is laid out and
#: again for printing (the print page is narrower than the window).
RESIZE_SCRIPT = ("for (const e of ['load','beforeprint']) window.addEventListener(e, () => "
                 "document.querySelectorAll('.js-plotly-plot').forEach(p => Plotly.Plots.resize(p)));")

CSS = """
:root { --ink:#1d2430; --muted:#5b6675; --line:#dde2e8; --accent:#2f5d8a; --bad:#a4262c; --bg:#ffffff; }
* { box-sizing: border-box; }
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: var(--ink);
       background: var(--bg); margin: 0; line-height: 1.45; font-size: 14px; }
main { max-width: 1120px; margin: 0 auto; padding: 28px 32px 64px; }
header.top { border-bottom: 3px solid var(--accent); padding-bottom: 12px; margin-bottom: 18px; }
header.top h1 { margin: 0 0 4px; font-size: 26px; }
header.top .meta { color: var(--muted); }
nav.toc { background: #f6f8fa; border: 1px solid var(--line); border-radius: 6px; padding: 10px 18px; margin-bottom: 26px; }
nav.toc h2 { font-size: 15px; margin: 4px 0 6px; border: 0; }
nav.toc ol { margin: 0; padding-left: 22px; columns: 2; }
nav.toc a { color: var(--accent); text-decoration: none; }
section { margin: 0 0 34px; }
h2 { font-size: 20px; border-bottom: 1px solid var(--line); padding-bottom: 4px; margin: 0 0 12px; }
h3 { font-size: 15px; margin: 18px 0 8px; }
table { border-collapse: collapse; margin: 6px 0 14px; font-size: 13px; }
table.grid th, table.grid td { border: 1px solid var(--line); padding: 3px 8px; text-align: left; vertical-align: top; }
table.grid thead th { background: #f0f3f6; }
table.card th { text-align: left; padding: 3px 16px 3px 0; color: var(--muted); font-weight: 600; vertical-align: top; }
table.card td { padding: 3px 0; word-break: break-all; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.muted, .note { color: var(--muted); }
.failed { border-left: 4px solid var(--bad); background: #fbeeee; padding: 8px 12px; margin: 6px 0 12px; }
.bad { color: var(--bad); }
.cards { display: flex; flex-wrap: wrap; gap: 14px; }
.cell { border: 1px solid var(--line); border-radius: 6px; padding: 8px; break-inside: avoid; page-break-inside: avoid; }
.cell .cap { font-size: 12px; color: var(--muted); max-width: 240px; }
.cell .pred { max-width: 240px; }
.cell .pred { font-weight: 600; }
img.pix { image-rendering: pixelated; display: inline-block; margin-right: 4px; border: 1px solid var(--line); }
.tokens { line-height: 2; font-size: 14px; }
.figs { display: flex; flex-wrap: wrap; gap: 12px; }
.fig { flex: 1 1 460px; min-width: 320px; break-inside: avoid; page-break-inside: avoid; }
ul.findings li { margin: 2px 0; }
.sev-warning { color: #8a5300; font-weight: 600; }
.sev-error { color: var(--bad); font-weight: 600; }
.sev-info { color: var(--muted); font-weight: 600; }
pre { background: #f6f8fa; border: 1px solid var(--line); padding: 8px; white-space: pre-wrap; word-break: break-all; font-size: 12px; }
footer { color: var(--muted); font-size: 12px; border-top: 1px solid var(--line); margin-top: 30px; padding-top: 8px; }
@media print {
  main { max-width: none; padding: 0; }
  nav.toc { break-after: page; }
  section { break-before: auto; }
  h2 { break-after: avoid; }
  a { color: inherit; }
  .modebar-container { display: none !important; }
}
@page { size: A4; margin: 14mm 12mm; }
"""

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="Glassbox">
<title>{title}</title>
<style>{css}</style>
<script>{plotlyjs}</script>
</head>
<body>
<main>
<header class="top"><h1>{title}</h1><div class="meta">{subtitle}made {created}</div></header>
<nav class="toc"><h2>Contents</h2><ol>{toc}</ol></nav>
{body}
<footer>Made by Glassbox on {created}. This file is self-contained: it loads nothing from the network.</footer>
</main>
<script type="application/json" id="{data_id}">{data}</script>
<script>{resize}</script>
</body>
</html>
"""
