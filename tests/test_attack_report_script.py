"""Attack A1 on the static report: text anyone may write (a comment, a run title, a token) lands in the
report's embedded JSON (`Section.data`). Escaping only ``</`` left ``<!--<script>``, which puts an HTML
parser into the script element's double-escaped state: the data script then ran on past its own end
tag and swallowed the resize script after it (chromium's DOM: the data element's text ended in
``</script><script>for ...``, the resize never ran, and its JSON no longer parsed)."""
from __future__ import annotations

import re

from explain.report.document import DATA_SCRIPT_ID, Report, Section, read_report_data

BODIES = ["<!--<script>", "</script><script>alert(1)</script>", "<!-- x --> <SCRIPT>", "a < b > c"]


def test_data_script_holds_no_markup_and_reads_back():
    report = Report(title="t", sections=[Section(title="Review", body="<p>x</p>", data={"comments": BODIES})])
    html = report.to_html()
    script = re.search(rf'<script type="application/json" id="{DATA_SCRIPT_ID}">(.*?)</script>', html, re.S).group(1)
    assert "<" not in script  # no tag, no comment opener: the parser leaves script data only at </script>
    assert html.count("<script") == 3  # plotly, the data, the resize: none opened by a comment
    assert read_report_data(html)["sections"]["Review"]["comments"] == BODIES


def test_older_reports_still_read():
    old = f'<script type="application/json" id="{DATA_SCRIPT_ID}">{{"a": "<\\/script>"}}</script>'
    assert read_report_data(old) == {"a": "</script>"}
