"""Attack A1 (stop 31): a report's PDF is printed by headless Chromium with scripts on, and the report holds
users' strings (comments, titles, labels, tokens). Were one to slip past escaping, its script ran in a
browser with file access and the network. The report now carries a Content-Security-Policy that lets only
its own scripts run (plotly, each figure's, the resize), by their sha256; a page without it (a report saved
before) is printed under a policy that runs none of its scripts; Chromium reaches no address either way. The marker an injected script
would leave is the PDF's title (Chromium writes ``document.title`` into it)."""
from __future__ import annotations

import re
import subprocess

import numpy as np
import plotly.graph_objects as go
import pytest

from explain.report.document import Report, Section, content_security_policy, find_chromium, print_pdf, printable

CHROMIUM = "/usr/bin/chromium"
needs_chromium = pytest.mark.skipif(find_chromium(CHROMIUM) is None, reason="chromium not installed")

#: what a slip in escaping a user's string would put in a section: a script, an inline handler, a fetch
INJECTED = ('<script>document.title = "RAN-SCRIPT"; fetch("http://127.0.0.1:9/x")</script>'
            '<img src="x" onerror="document.title = \'RAN-HANDLER\'">')


def _report() -> Report:
    bars = go.Figure(go.Bar(x=["a", "b"], y=[1, 2]))
    heat = go.Figure(go.Heatmap(z=np.arange(16.0).reshape(4, 4)))
    return Report("Quarterly model", [Section("Review", body=f"<p>a comment</p>{INJECTED}", figures=[bars, heat])])


def _pdf_title(pdf: bytes) -> str:
    return re.search(rb"/Title \(([^)]*)\)", pdf).group(1).decode("latin-1")


def test_the_policy_names_exactly_the_reports_own_scripts():
    html = _report().to_html()
    policy = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]*)">', html).group(1)
    assert html.index("Content-Security-Policy") < html.index("<script")  # before any script
    ours = re.findall(r"<script>(.*?)</script>", html, re.S)
    injected = 'document.title = "RAN-SCRIPT"; fetch("http://127.0.0.1:9/x")'
    assert injected in ours  # a script the page holds ...
    expected = content_security_policy([code for code in ours if code != injected])
    assert policy.replace("&#x27;", "'") == expected  # ... that the policy does not name
    assert len(re.findall("'sha256-", expected)) == 4  # plotly, two figures, the resize
    assert "default-src 'none'" in expected and "unsafe-inline" not in expected.split("script-src")[1].split(";")[0]
    assert printable(html) == html


def test_a_page_without_its_own_policy_is_printed_without_scripts():
    old = "<!DOCTYPE html><html><head><meta charset='utf-8'><title>t</title><script>x()</script></head><body></body>"
    page = printable(old)
    assert page.startswith("<!DOCTYPE html><html><head><meta http-equiv=\"Content-Security-Policy\"")
    assert "script-src" not in page.split('content="')[1].split('"')[0]  # default-src 'none': no script
    # a policy a user's string wrote into the body is not the report's
    forged = old.replace("<body>", '<body><meta http-equiv="Content-Security-Policy" content="">')
    assert printable(forged).startswith("<!DOCTYPE html><html><head><meta http-equiv=\"Content-Security-Policy\" content=\"default-src")


@needs_chromium
def test_the_reports_figures_draw_and_an_injected_script_does_not_run(tmp_path):
    """In Chromium: plotly draws both figures under the policy (two SVG roots each, the heat map's image); the
    script and the handler from the user's string leave the title as it was."""
    page = tmp_path / "r.html"
    page.write_text(_report().to_html(), encoding="utf-8")
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path}/p",
                          "--virtual-time-budget=3000", "--dump-dom", page.as_uri()],
                         capture_output=True, timeout=120, check=True).stdout.decode()
    assert re.search(r"<title>([^<]*)</title>", dom).group(1) == "Quarterly model"
    drawn = re.findall(r'<div [^>]*class="[^"]*js-plotly-plot[^"]*"', dom)
    assert len(drawn) == 2 and dom.count("<image") == 1  # both figures drawn, the heat map as its image


@needs_chromium
def test_printing_runs_the_reports_scripts_only(tmp_path):
    pdf = print_pdf(_report().to_html(), tmp_path / "r.pdf", chromium=CHROMIUM).read_bytes()
    assert _pdf_title(pdf) == "Quarterly model"  # was RAN-HANDLER: the handler ran last
    without = tmp_path / "old.html"
    without.write_text(re.sub(r'<meta http-equiv="Content-Security-Policy" content="[^"]*">', "",
                              _report().to_html()), encoding="utf-8")
    old_pdf = print_pdf(without.read_text(encoding="utf-8"), tmp_path / "old.pdf", chromium=CHROMIUM).read_bytes()
    assert _pdf_title(old_pdf) == "Quarterly model"  # an older report: no script of it runs
    # the report's own scripts drew its figures: many more PDF objects than the page printed without them
    objects = [int(re.search(rb"/Size (\d+)", p).group(1)) for p in (pdf, old_pdf)]
    assert objects[0] > 1.5 * objects[1], objects
