"""AppTest of the team pages (Saved runs, Models, Review, Audit log), sign-in and Save run,
each against its own workspace (GLASSBOX_HOME in a temp dir)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from explain.digest import digest_bytes
from explain.training.history import read_history
from explain.workspace import Actor, RunRecord

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")




def _app(**query) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=300)
    for k, v in query.items():
        at.query_params[k] = v
    return at.run()


def _sign_in(at: AppTest, name: str, password: str) -> AppTest:
    username, pw = [t for t in at.text_input if t.label == "Username"][0], [t for t in at.text_input if t.label == "Password"][0]
    username.input(name)
    pw.input(password)
    return [b for b in at.button if b.label == "Sign in"][0].click().run()


def _save_output_run(at: AppTest) -> AppTest:
    """The Output page: its explanation is a job whose result is saved as a run, with its link."""
    return at.switch_page("pages/views/output.py").run()


def test_single_local_user_saves_a_run_and_opens_its_link(home):
    _, ws = home
    at = _save_output_run(_app())
    assert not at.exception, at.exception
    link = [c.value for c in at.code if "?run=" in c.value][0]
    run_id = link.rsplit("=", 1)[1]
    info = ws.runs.info(Actor.local(), run_id)
    assert (info.page, info.model, info.version, info.author) == ("output", "shapes", 1, "local")
    assert info.params["integrated_gradients"]["steps"] > 0 and info.environment["packages"]["torch"]
    assert any("Single local user" in c.value for c in at.sidebar.caption)

    opened = _app(run=run_id)
    assert not opened.exception, opened.exception
    assert any(info.sha256 in m.value for m in opened.markdown)
    assert any("integrated\\_gradients on" in t.value for t in opened.title)
    assert [b.label for b in opened.button].count("Post") == 1  # the local user is admin: may comment


def test_saved_run_redraws_the_saved_arrays_not_a_recomputation(home):
    _, ws = home
    at = _save_output_run(_app())
    run_id = [c.value for c in at.code if "?run=" in c.value][0].rsplit("=", 1)[1]
    saved = ws.runs.open(Actor.local(), run_id)
    from explain.workspace.records import output_attributions

    attrs = output_attributions(saved)
    assert [a.method for a in attrs] == ["integrated_gradients"]
    assert np.array_equal(attrs[0].values, saved.results["0/values"])
    rerun = _app(run=run_id)
    [b for b in rerun.button if b.label == "Re-run"][0].click().run()
    diff = rerun.dataframe[-1].value
    assert diff["max |difference|"].iloc[0] < 1e-5  # same model, inputs, parameters: the same map
    again = ws.runs.open(Actor.local(), [j for j in ws.jobs.list(Actor.local()) if j.params.get("rerun_of")][0].run)
    notes = again.info.summary["notes"]["integrated_gradients"]  # the same worker: recomputed, not its cache
    assert again.info.summary["rerun_of"] == run_id and not any("attribution cache" in n for n in notes)


def test_sign_in_is_required_once_an_admin_exists_and_roles_shape_the_page(home):
    _, ws = home
    rid = ws.runs.save(Actor.local(), RunRecord(page="structure", model="shapes", version=1, title="layers",
                                                inputs={"inputs": np.zeros((2, 3, 32, 32), np.float32)})).id
    ws.users.add(Actor.local(), "ada", "admin", "admin-pass-1")
    ws.users.add(Actor("ada"), "vic", "viewer", "viewer-pass-1")
    ws.users.add(Actor("ada"), "rita", "reviewer", "review-pass-1")

    at = _app(run=rid)
    assert [t.label for t in at.text_input] == ["Username", "Password"]
    assert [b.label for b in at.button] == ["Sign in"]
    assert not at.title or all(t.value != "layers" for t in at.title)  # nothing behind the form

    at = _sign_in(at, "vic", "wrong-password")
    assert any("wrong" in e.value for e in at.error)
    at = _sign_in(at, "vic", "viewer-pass-1")
    assert not at.exception, at.exception
    assert any(t.value == "layers" for t in at.title)
    assert "Post" not in [b.label for b in at.button] and not [t for t in at.text_area if t.label == "Comment"]
    assert "Save run" not in [b.label for b in at.button]
    assert any("Signed in as **vic** · viewer" in c.value for c in at.sidebar.caption)

    audit = at.switch_page("pages/views/audit.py").run()  # listed, but the library refuses a viewer
    assert any("may not read audit" in e.value for e in audit.error)

    at = _sign_in(_app(run=rid), "rita", "review-pass-1")
    assert [t for t in at.text_area if t.label == "Comment"] and "Post" in [b.label for b in at.button]


def test_reviewer_comment_with_html_is_shown_as_text_and_review_page_lists_it(home):
    _, ws = home
    rid = ws.runs.save(Actor.local(), RunRecord(page="structure", model="shapes", version=1, title="layers",
                                                inputs={"inputs": np.zeros((2, 3, 32, 32), np.float32)})).id
    ws.review.post(Actor.local(), rid, "<img src=x onerror=alert(1)> look at **conv1**", anchor_kind="layer",
                   anchor="conv1")
    at = _app()
    at.switch_page("pages/views/review.py").run()
    assert not at.exception, at.exception
    assert any("shapes" in s.value and "v1" in s.value for s in at.subheader), [s.value for s in at.subheader]
    bodies = [m for m in at.markdown if "look at" in m.value]
    assert bodies and all(not m.allow_html for m in bodies)  # Markdown, raw HTML never enabled


def test_models_page_lists_samples_and_a_version_page_records_a_decision(home):
    _, ws = home
    at = _app()
    at.switch_page("pages/views/models.py").run()
    assert not at.exception, at.exception
    listed = at.dataframe[0].value
    assert set(listed["model"]) >= {"shapes", "cancer", "sentiment"}

    at = _app(model="cancer", version="1")
    assert any(t.value.startswith("cancer") for t in at.title)
    [r for r in at.radio if r.label == "Decision"][0].set_value("approve")
    [t for t in at.text_area if t.label == "Note"][0].input("Calibrated.")
    [t for t in at.text_input if t.label.startswith("Move alias")][0].input("production")
    [b for b in at.button if b.label == "Record decision"][0].click().run()
    assert not at.exception, at.exception
    assert ws.registry.resolve(Actor.local(), "cancer@production").version == 1
    assert [(d.verdict, d.note) for d in ws.review.decisions(Actor.local(), "cancer")] == [("approve", "Calibrated.")]
    assert any("approve" in m.value and "local" in m.value for m in at.markdown)


def test_audit_page_shows_every_write_to_an_admin(home):
    _, ws = home
    at = _save_output_run(_app())
    at.switch_page("pages/views/audit.py").run()
    assert not at.exception, at.exception
    actions = list(at.dataframe[0].value["action"])
    assert "version.add" in actions and "run.save" in actions


def test_report_review_section_carries_comments_and_decisions_escaped(home):
    from explain.report.review import build_review_section, review_record

    _, ws = home
    rid = ws.runs.save(Actor.local(), RunRecord(page="structure", model="shapes", version=1, title="layers")).id
    c = ws.review.post(Actor.local(), rid, "<script>alert(1)</script>", anchor_kind="input", anchor="2")
    ws.review.post(Actor.local(), rid, "agreed", parent_id=c.id)
    ws.review.decide(Actor.local(), "shapes", 1, "request_changes", "needs <b>work</b>")
    section = build_review_section(review_record(ws, Actor.local(), "shapes", 1, run_id=rid))
    html = section.to_html()
    assert "<script>" not in html and "&lt;script&gt;" in html and "&lt;b&gt;work" in html
    assert "on input 2" in html and "agreed" in html and "request changes" in html
    assert [d["verdict"] for d in section.data["decisions"]] == ["request_changes"]
    assert len(section.data["comments"]) == 2


def test_training_run_saves_findings_and_attaches_the_logs_to_the_version(home):
    _, ws = home
    at = _app()
    at.switch_page("pages/views/training.py").run()
    [b for b in at.button if b.label == "Save run"][0].click().run()
    assert not at.exception, at.exception
    run = ws.runs.list(Actor.local(), model="shapes")[0]
    assert run.page == "training" and run.summary["tables"] and run.summary["findings"]
    assert run.title == "Training of shapes (1 log)"
    opened = _app(run=run.id)  # the link: the curves drawn again, the table with its epochs
    assert not opened.exception, opened.exception
    figure = json.loads(opened.get("plotly_chart")[0].proto.spec)
    shown = {t["name"] for t in figure["data"] if t.get("name")}
    assert {"train loss (train_loss)", "validation loss (val_loss)"} <= shown, shown
    log = read_history(ROOT / "sample_models" / "shapes" / "train_log.csv").by_epoch()
    table = opened.dataframe[0].value
    assert table["epoch"].tolist() == log.index.tolist()
    np.testing.assert_allclose(table["val_loss"], log["val_loss"])
    kinds = {a.kind for a in ws.registry.attachments(Actor.local(), "shapes", 1)}
    assert kinds == {"training_log", "checkpoint"}
    again = at.switch_page("pages/views/training.py").run()  # saving again stores no second copy
    [b for b in again.button if b.label == "Save run"][0].click().run()
    names = [a.filename for a in ws.registry.attachments(Actor.local(), "shapes", 1)]
    assert len(names) == len(set(names))


def test_with_an_auth_section_sign_in_goes_through_oidc(home):
    _, ws = home
    ws.users.add(Actor.local(), "ada@example.com", "admin", None, email="ada@example.com")
    at = AppTest.from_file(APP, default_timeout=300)
    at.secrets["auth"] = {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "x" * 32,
                          "client_id": "glassbox", "client_secret": "s",
                          "server_metadata_url": "https://idp.example/.well-known/openid-configuration"}
    at.run()
    assert not at.exception, at.exception
    assert [b.label for b in at.button] == ["Sign in"]  # st.login, no password form
    assert not [t for t in at.text_input if t.label == "Password"]


def test_audit_csv_defuses_spreadsheet_formulas_and_tokens_can_be_revoked(home):
    import csv
    import io

    _, ws = home
    ws.users.add(Actor.local(), "=HYPERLINK(1)", "admin", "admin-pass-1")
    rows = list(csv.DictReader(io.StringIO(ws.audit.csv(Actor("=HYPERLINK(1)")))))
    added = [r for r in rows if r["action"] == "user.add"][0]
    assert added["object_id"] == "'=HYPERLINK(1)" and added["actor"] == "local"
    assert not any(v.startswith(("=", "+", "-", "@")) for r in rows for v in r.values() if v)
    token = ws.users.add_token(Actor("=HYPERLINK(1)"), "ci", "viewer")
    assert ws.users.token_identity(token) == ("ci", "viewer")
    ws.users.remove_token(Actor("=HYPERLINK(1)"), "ci")
    assert ws.users.token_identity(token) is None


def test_a_runs_report_is_a_job_whose_html_carries_the_runs_comment(home):
    """Build report on a saved run: a report job, saved as a report run that downloads its HTML
    and carries the run's comments; the report run itself opens with that download."""
    from explain.report.job import report_html

    _, ws = home
    at = _save_output_run(_app())
    link = [c.value for c in at.code if "?run=" in c.value][0]
    rid = link.rsplit("=", 1)[1]
    ws.review.post(Actor.local(), rid, "the map looks <right>", anchor_kind="input", anchor="0")
    opened = _app(run=rid)
    [b for b in opened.button if b.label == "Build report (HTML)"][0].click().run()
    assert not opened.exception, opened.exception
    assert not opened.error, [e.value for e in opened.error]
    built = [c.value for c in opened.code if "?run=" in c.value and rid not in c.value][0].rsplit("=", 1)[1]
    report = ws.runs.open(Actor.local(), built)
    html = report_html(report).decode("utf-8")
    shown = html.split('<script type="application/json"')[0]  # the page; the data block is JSON, "</" escaped
    assert report.info.page == "report" and "the map looks &lt;right&gt;" in shown and "<right>" not in shown
    assert len(opened.get("download_button")) == 1
    again = _app(run=built)
    assert not again.exception, again.exception
    assert len(again.get("download_button")) == 1 and any("Sections:" in m.value for m in again.markdown)


# -- roles in the library: only an editor loads (and runs) a model in the page; Re-run is a job --------
OP = Actor("cli:tester", operator=True)
PASSWORDS = {"ada": "admin-pass-1", "ed": "editor-pass-1", "rita": "review-pass-1", "vic": "viewer-pass-1"}
EXPLAIN_PAGES = ("overview", "output", "dataset", "structure", "training", "generate")


def _team(ws) -> None:
    ws.users.add(Actor.local(), "ada", "admin", PASSWORDS["ada"])
    for name, role in (("ed", "editor"), ("rita", "reviewer"), ("vic", "viewer")):
        ws.users.add(Actor("ada"), name, role, PASSWORDS[name])


def _as(name: str, script: str = APP, **session) -> AppTest:
    """An AppTest session signed in as ``name`` (the state the sign-in form leaves)."""
    at = AppTest.from_file(script, default_timeout=300) if isinstance(script, str) else \
        AppTest.from_function(script, default_timeout=300)
    at.session_state["authentication_status"] = True
    at.session_state["username"] = name
    for key, value in session.items():
        at.session_state[key] = value
    return at


def _own_model() -> tuple[bytes, str]:
    """A model file of one's own, not in the registry: the cancer sample with its last weight zeroed."""
    from sample_models import sample_file

    data = bytearray(sample_file("cancer").read_bytes())
    data[-4:] = np.float32(0.0).tobytes()  # safetensors keeps the tensors last: still a valid file
    return bytes(data), "my-cancer.safetensors"


def _blob(data: bytes, name: str):
    from ui.state import UploadedBlob

    return UploadedBlob(name, data, digest_bytes(data))


def _output_run(ws, owner: Actor) -> str:
    """An Output run of the shapes sample saved by ``owner``'s job (run in this process)."""
    from explain.service.client import run_here
    from explain.service.runners import explain_methods_job
    from sample_models import load_sample, sample_inputs

    model = load_sample("shapes")
    params, arrays, title = explain_methods_job(model, "shapes", 1, sample_inputs("shapes")["inputs"][:2],
                                                [("saliency", {})], None)
    job = run_here(ws, ws.jobs.submit(owner, "explain", params, title=title, inputs=arrays).id)
    return job.run


def _load_in_the_page():
    """The page's loading path (`ui.state.current_model`) for an upload, then for a sample."""
    import streamlit as st

    from explain.errors import PermissionDenied
    from ui import state

    for mode in ("upload", "sample"):
        if mode == "sample":
            state.set_sample("shapes")
        try:
            st.write(f"{mode}: loaded {state.current_model().name}")
        except PermissionDenied as exc:
            st.write(f"{mode}: refused: {exc.message}")


def test_a_viewer_gets_no_uploader_sees_why_on_every_explain_page_and_the_library_refuses_the_load(home):
    from explain.errors import PermissionDenied

    _, ws = home
    _team(ws)
    rid = _output_run(ws, Actor("ed"))
    data, name = _own_model()
    audit_before, versions_before = len(ws.audit.rows(OP)), len(ws.registry.list(OP))

    # a crafted (or left-over) upload in a viewer's session is dropped; nothing offers to load one
    at = _as("vic", gb_model_upload=_blob(data, name), gb_source="upload").run()
    assert not at.exception, at.exception
    assert not [r for r in at.sidebar.radio if r.label == "Source"] and not at.get("file_uploader")
    assert any("needs the editor role" in c.value and "viewer" in c.value for c in at.sidebar.caption)
    links = " ".join(m.value for m in at.sidebar.markdown)
    assert "/?model=shapes&version=1" in links and f"/?run={rid}" in links
    assert at.session_state["gb_model_upload"] is None
    for page in EXPLAIN_PAGES:
        at.switch_page(f"pages/views/{page}.py").run()
        assert not at.exception, (page, at.exception)
        assert [i.value for i in at.info if "Explaining needs the editor role" in i.value], page
        assert not at.get("plotly_chart") and not at.dataframe, page  # the model never ran
    opened = _as("vic")
    opened.query_params["model"], opened.query_params["version"] = "shapes", "1"
    opened.run()
    assert "Explore this version" not in [b.label for b in opened.button]

    # the page's loading path asks the library, which refuses a viewer and a reviewer (editors load)
    for who, outcome in (("vic", "refused: vic (viewer) may not load model"),
                         ("rita", "refused: rita (reviewer) may not load model"), ("ed", "loaded")):
        run = _as(who, _load_in_the_page, gb_model_upload=_blob(data, name), gb_source="upload").run()
        assert not run.exception, run.exception
        said = [m.value for m in run.markdown]
        assert said[0].startswith(f"upload: {outcome}") and said[1].startswith(f"sample: {outcome}"), said
    with pytest.raises(PermissionDenied, match="may not load model"):
        ws.load_model(Actor("vic"), data, filename=name)
    assert ws.load_model(Actor("ed"), data, filename=name).sha256 == digest_bytes(data)
    assert len(ws.audit.rows(OP)) == audit_before  # a refusal and a load write nothing
    assert len(ws.registry.list(OP)) == versions_before


def test_an_editor_gets_the_uploader_and_an_upload_explained_is_registered_under_their_name(home):
    _, ws = home
    _team(ws)
    at = _as("ed").run()
    assert not at.exception, at.exception
    [r for r in at.sidebar.radio if r.label == "Source"][0].set_value("Upload").run()
    assert len(at.get("file_uploader")) == 3  # checkpoint, spec, inputs

    data, name = _own_model()
    at = _as("ed", gb_model_upload=_blob(data, name), gb_source="upload")
    at.switch_page("pages/views/output.py").run()
    assert not at.exception, at.exception
    assert any("?run=" in c.value for c in at.code)  # explained as a job, saved as a run
    version = ws.registry.find_by_sha(OP, digest_bytes(data))
    assert version is not None and (version.name, version.created_by) == ("my-cancer", "ed")
    added = [r for r in ws.audit.rows(OP) if r.action == "version.add"]
    assert [r.actor for r in added][-1] == "ed"


def test_rerun_is_an_editors_job_of_the_queue_and_shows_its_differences(home):
    from explain.errors import PermissionDenied
    from explain.service.runners import rerun_job
    from sample_models import load_sample

    _, ws = home
    _team(ws)
    rid = _output_run(ws, Actor("ed"))
    jobs_before = len(ws.jobs.list(OP))

    viewer = _as("vic")
    viewer.query_params["run"] = rid
    viewer.run()
    assert not viewer.exception, viewer.exception
    assert "Re-run" not in [b.label for b in viewer.button]
    assert any("Re-run needs the editor role" in c.value for c in viewer.caption)
    params, arrays, title = rerun_job(load_sample("shapes"), ws.runs.open(Actor("vic"), rid))
    with pytest.raises(PermissionDenied, match="may not save run"):  # the request a viewer could craft
        ws.jobs.submit(Actor("vic"), "explain", params, title=title, inputs=arrays)
    assert len(ws.jobs.list(OP)) == jobs_before

    editor = _as("ed")
    editor.query_params["run"] = rid
    editor.run()
    [b for b in editor.button if b.label == "Re-run"][0].click().run()
    assert not editor.exception, editor.exception
    job = ws.jobs.list(OP)[0]
    assert (job.kind, job.owner, job.status, job.params["rerun_of"], job.params["fresh"]) == (
        "explain", "ed", "done", rid, True)
    diff = [d.value for d in editor.dataframe if "max |difference|" in d.value.columns][0]
    assert list(diff["method"]) == ["saliency"] and diff["max |difference|"].iloc[0] < 1e-5
    again = ws.runs.open(OP, job.run)
    assert again.info.summary["rerun_of"] == rid and again.info.title.startswith(f"Re-run of {rid}")
    assert not any("attribution cache" in n for n in again.info.summary["notes"]["saliency"])
    assert any(job.run in c.value for c in editor.code)  # the re-run's own link
