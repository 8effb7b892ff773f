"""Team review in a real browser: four people, four browser contexts, one workspace.

An editor saves a run and copies its link; a viewer opens the link and sees the same map and
sha256 but no comment box (and the library refuses a crafted post); a reviewer comments on one
input and approves the version; the editor sees both after a reload, still signed in.
"""
from __future__ import annotations

import re
import tempfile

import pytest

from explain.errors import PermissionDenied
from explain.workspace import Actor, open_workspace
from tests.conftest import SCREENSHOTS, choose_option, start_streamlit, stop_streamlit, wait_for_app

PASSWORDS = {"ada": "admin-pass-1", "ed": "editor-pass-1", "rita": "review-pass-1", "vic": "viewer-pass-1"}
ROLES = {"ada": "admin", "ed": "editor", "rita": "reviewer", "vic": "viewer"}


@pytest.fixture(scope="module")
def team_server():
    home = tempfile.mkdtemp(prefix="glassbox-team-")
    ws = open_workspace(url=f"sqlite:///{home}/glassbox.db", home=home)
    ws.users.add(Actor.local(), "ada", "admin", PASSWORDS["ada"])
    for name in ("ed", "rita", "vic"):
        ws.users.add(Actor("ada"), name, ROLES[name], PASSWORDS[name])
    proc, url = start_streamlit(env={"GLASSBOX_HOME": home})
    yield url, ws
    stop_streamlit(proc)
    ws.close()


def _sign_in(page, url: str, name: str) -> None:
    page.goto(url)
    page.get_by_label("Username", exact=True).fill(name)
    page.get_by_role("textbox", name="Password").fill(PASSWORDS[name])
    page.get_by_role("button", name="Sign in").click()
    page.get_by_text(f"Signed in as {name}").wait_for(timeout=120_000)
    wait_for_app(page)


def _shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"team_{name}.png"), full_page=True)


@pytest.mark.browser
def test_editor_saves_viewer_reads_reviewer_comments_and_approves(team_server, chromium):
    url, ws = team_server
    ctx = {name: chromium.new_context(viewport={"width": 1400, "height": 1000}) for name in ("ed", "vic", "rita")}
    try:
        # -- the editor explains on the Output page (a job saved as a run) and takes its link ------
        editor = ctx["ed"].new_page()
        editor.set_default_timeout(180_000)
        _sign_in(editor, url + "/output", "ed")
        code = editor.locator('[data-testid="stCode"]', has_text="?run=").first
        code.wait_for()
        link = re.search(r"https?://\S+\?run=[\w-]+", code.inner_text()).group(0)
        run_id = link.rsplit("=", 1)[1]
        saved = ws.runs.info(Actor("ada"), run_id)
        assert saved.author == "ed" and saved.page == "output" and saved.model == "shapes"
        _shot(editor, "editor_saved")

        # -- the viewer opens the link: same map, same sha256, no comment box ----------------------
        viewer = ctx["vic"].new_page()
        viewer.set_default_timeout(180_000)
        _sign_in(viewer, link, "vic")
        viewer.get_by_text(saved.sha256).first.wait_for()
        viewer.get_by_text("integrated_gradients on").first.wait_for()
        viewer.get_by_text("Comments (0)").first.wait_for()  # .first: a rerun's stale copy may still be there
        wait_for_app(viewer)
        _shot(viewer, "viewer_link")
        # the run after sign-in may still be drawing (a stale sign-in form above placeholders): wait for the figures
        viewer.locator('[data-testid="stImage"] img, [data-testid="stPlotlyChart"]').nth(3).wait_for(state="attached")
        wait_for_app(viewer)
        assert viewer.get_by_label("Comment", exact=True).count() == 0
        assert viewer.get_by_role("button", name="Post").count() == 0
        assert viewer.get_by_text("commenting needs the reviewer role").count() == 1
        _shot(viewer, "viewer_link")
        with pytest.raises(PermissionDenied):  # the request a viewer could craft is refused by the library
            ws.review.post(Actor("vic"), run_id, "sneaky")
        assert ws.review.comments(Actor("vic"), run_id) == []

        # -- the reviewer comments on input #1 and approves the version ----------------------------
        reviewer = ctx["rita"].new_page()
        reviewer.set_default_timeout(180_000)
        _sign_in(reviewer, link, "rita")
        reviewer.get_by_text("Comments (0)").wait_for()
        wait_for_app(reviewer)
        _shot(reviewer, "reviewer_link")
        choose_option(reviewer, reviewer.locator('[data-testid="stForm"] [data-testid="stSelectbox"]').first, "input #1")
        reviewer.get_by_label("Comment", exact=True).fill("The map sits on the **edges** of the triangle.")
        reviewer.get_by_role("button", name="Post").click()
        reviewer.get_by_text("on input #1").first.wait_for()
        wait_for_app(reviewer)
        _shot(reviewer, "reviewer_commented")
        reviewer.goto(f"{url}/?model=shapes&version={saved.version}")
        reviewer.get_by_role("button", name="Record decision").wait_for()
        reviewer.get_by_label("Note", exact=True).fill("Attributions look right.")
        reviewer.get_by_role("button", name="Record decision").click()
        reviewer.get_by_text("approve by rita").wait_for()
        wait_for_app(reviewer)
        _shot(reviewer, "reviewer_approved")

        comments = ws.review.comments(Actor("ada"), run_id)
        assert [(c.author, c.anchor_kind, c.anchor) for c in comments] == [("rita", "input", "1")]
        decisions = ws.review.decisions(Actor("ada"), "shapes", saved.version)
        assert [(d.author, d.verdict, d.note) for d in decisions] == [("rita", "approve", "Attributions look right.")]

        # -- the editor reloads: still signed in (cookie), sees the comment and the decision --------
        editor.goto(link)
        editor.reload()
        editor.get_by_text("Signed in as ed").wait_for()
        assert editor.get_by_label("Username", exact=True).count() == 0
        editor.get_by_text("on input #1").first.wait_for()
        editor.get_by_text("edges").first.wait_for()
        editor.goto(f"{url}/?model=shapes&version={saved.version}")
        editor.get_by_text("Attributions look right.").first.wait_for()
        wait_for_app(editor)
        _shot(editor, "editor_sees_review")
        for page in (editor, viewer, reviewer):
            assert page.locator('[data-testid="stException"]').count() == 0
    finally:
        for c in ctx.values():
            c.close()


@pytest.mark.browser
def test_a_viewer_cannot_load_or_run_a_model(team_server, chromium):
    """A viewer signs in: no Source choice and no uploader in the sidebar, a line saying why and links to
    the samples' versions; the Overview and Structure pages say explaining needs an editor instead of
    running the model; the library refuses the load a viewer could craft."""
    url, ws = team_server
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    try:
        page = context.new_page()
        page.set_default_timeout(180_000)
        _sign_in(page, url, "vic")
        main, sidebar = page.locator('[data-testid="stMain"]'), page.locator('[data-testid="stSidebar"]')
        # .first: while Streamlit reruns after the sign-in, the stale element and the new one are both there
        main.get_by_text("Explaining needs the editor role").first.wait_for()
        sidebar.get_by_text("Loading or uploading a model needs the editor role").first.wait_for()
        wait_for_app(page)
        from playwright.sync_api import expect  # retried until settled: a rerun's stale copy goes

        expect(main.get_by_text("Explaining needs the editor role")).to_have_count(1)  # said once, when settled
        assert sidebar.get_by_role("link", name="v1").count() == 3  # shapes, cancer, sentiment
        assert page.locator('input[type="file"]').count() == 0
        assert sidebar.get_by_text("Source", exact=True).count() == 0
        assert page.locator('[data-testid="stPlotlyChart"], [data-testid="stDataFrame"]').count() == 0
        wait_for_app(page)
        page.screenshot(path="/tmp/viewer.png", full_page=True)
        _shot(page, "viewer_cannot_load")

        page.goto(f"{url}/structure")
        main.get_by_text("Explaining needs the editor role").first.wait_for()
        wait_for_app(page)
        assert main.get_by_text("Explaining needs the editor role").count() == 1
        assert page.locator('[data-testid="stDataFrame"], [data-testid="stGraphVizChart"]').count() == 0
        with context.expect_page() as opened:  # Streamlit opens a Markdown link in a new tab
            sidebar.get_by_role("link", name="v1").first.click()  # the shapes sample's version page
        version = opened.value
        version.set_default_timeout(180_000)
        version.get_by_text("Exploring a version runs it in the page, which needs the editor role").wait_for()
        assert version.locator('[data-testid="stMain"] h1', has_text="shapes · v1").count() == 1
        assert version.get_by_role("button", name="Explore this version").count() == 0
        for shown in (page, version):
            assert shown.locator('[data-testid="stException"]').count() == 0
        with pytest.raises(PermissionDenied, match="may not load model"):
            ws.load_model(Actor("vic"), b"not even read")
    finally:
        context.close()
