"""Comments load nothing from anywhere: an image in a comment's Markdown (``![](http://host/pixel.png)``
would make every reader's browser fetch it) becomes a plain link on the pages (`ui.comments.comment_markdown`,
AppTest of a saved run and of the Review page), and the report shows comment bodies as escaped text."""
from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from explain.workspace import Actor, RunRecord
from ui.comments import comment_markdown

markdown_it = pytest.importorskip("markdown_it")  # a CommonMark renderer, as the page's (remark) is

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
PIXEL = "http://tracker.example/pixel.png"
BODY = f"![]({PIXEL}) look at ![the chart](http://tracker.example/c.png \"t\") and **conv1**"


RENDERER = markdown_it.MarkdownIt("commonmark", {"html": False})


def _html(markdown: str) -> str:
    return RENDERER.render(markdown)


@pytest.mark.parametrize("body, link", [
    (f"![]({PIXEL})", f'<a href="{PIXEL}">http://tracker.example/pixel.png</a>'),
    (f"![a chart]({PIXEL} \"t\")", f'<a href="{PIXEL}" title="t">a chart</a>'),
    (f"![a][r]\n\n[r]: {PIXEL}", f'!<a href="{PIXEL}">a</a>'),  # a reference image: a "!" and a link
    (f"![r]\n\n[r]: {PIXEL}", f'!<a href="{PIXEL}">r</a>'),
    (f"!![a]({PIXEL})", f'!<a href="{PIXEL}">a</a>'),
    (f"\\\\![a]({PIXEL})", f'\\<a href="{PIXEL}">a</a>'),  # an escaped backslash, then an image
    (f"![a ![b]({PIXEL})](http://h/2)", f'<a href="{PIXEL}">b</a>'),
    (f"![x](<{PIXEL}>)", f'<a href="{PIXEL}">x</a>'),
])
def test_every_kind_of_image_becomes_a_link(body, link):
    html = _html(comment_markdown(body))
    assert "<img" not in html and link in html, html


def test_text_links_and_formatting_stay_markdown():
    for body in ("**bold** _it_ `code` and [a link](http://h/x)", "a ! [b] (c)", "\\![not an image](http://h)",
                 "1. one\n2. two\n\n> quoted"):
        assert _html(comment_markdown(body)) == _html(body)


def test_no_arrangement_of_brackets_and_escapes_makes_an_image():
    rng = random.Random(19)
    pieces = ["!", "[", "]", "(", ")", "\\", "`", "<", ">", '"', "'", " ", "\n", "x", PIXEL, "![", "](",
              f"[r]: {PIXEL}\n", "    ", "```\n"]
    for _ in range(5000):
        body = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 30)))
        assert "<img" not in _html(comment_markdown(body)), body


# -- the pages --------------------------------------------------------------------------------------


def _comment_markdown_elements(at: AppTest) -> list:
    return [m for m in at.markdown if "look at" in m.value]


def _assert_nothing_remote(at: AppTest) -> None:
    assert not at.exception, at.exception
    shown = _comment_markdown_elements(at)
    assert shown, [m.value for m in at.markdown]
    for m in shown:
        assert not m.allow_html
        html = _html(m.value)
        assert "<img" not in html and f'href="{PIXEL}"' in html and "<strong>conv1</strong>" in html


def test_a_saved_runs_comments_and_the_review_page_show_images_as_links(home):
    _, ws = home
    rid = ws.runs.save(Actor.local(), RunRecord(page="structure", model="shapes", version=1, title="layers",
                                                inputs={"inputs": np.zeros((2, 3, 32, 32), np.float32)})).id
    ws.review.post(Actor.local(), rid, BODY, anchor_kind="run", anchor="")
    run_page = AppTest.from_file(APP, default_timeout=300)
    run_page.query_params["run"] = rid
    _assert_nothing_remote(run_page.run())
    review = AppTest.from_file(APP, default_timeout=300).run()
    _assert_nothing_remote(review.switch_page("pages/views/review.py").run())


def test_the_reports_review_section_shows_an_image_as_text(home):
    from explain.report.document import Report
    from explain.report.review import build_review_section, review_record

    _, ws = home
    rid = ws.runs.save(Actor.local(), RunRecord(page="structure", model="shapes", version=1, title="layers")).id
    ws.review.post(Actor.local(), rid, BODY, anchor_kind="run", anchor="")
    section = build_review_section(review_record(ws, Actor.local(), "shapes", 1, run_id=rid))
    html = Report("r", [section]).to_html()
    assert not re.search(r"<img[^>]*tracker\.example", html)
    assert not re.search(r"""(src|href)\s*=\s*["']?http://tracker""", html)
    assert f"![]({PIXEL}) look at" in section.to_html()  # shown as typed
