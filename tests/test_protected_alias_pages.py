"""AppTest of the version page's protected-alias controls (issue 24): the "Compare with production"
link, the admin's Protect / Unprotect controls, the decision form's comparison run, and refusals as
one line. The fixtures are tests/test_team_pages.py's (``home``: a workspace with the samples).
"""
from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from explain.workspace import Actor, RunRecord

APP = str(Path(__file__).resolve().parent.parent / "app.py")
OP = Actor("cli:tester", operator=True)


def _team(ws) -> str:
    """ada (admin), ed (editor), paula (reviewer); shapes@v2 beside the sample's v1, which holds
    production; a saved comparison of v2 against production. Returns the comparison's id."""
    ws.users.add(OP, "ada", "admin", "admin-pass-1")
    ws.users.add(Actor("ada"), "ed", "editor", "editor-pass-1")
    ws.users.add(Actor("ada"), "paula", "reviewer", "review-pass-1")
    ws.registry.set_alias(OP, "shapes", "production", 1)
    ws.registry.register(OP, "shapes", b"a second version", "shapes-v2.safetensors")
    return ws.runs.save(OP, RunRecord(page="comparison", model="shapes", version=2, title="v2 vs production",
                                      params={"a": "shapes@v2", "b": "shapes@production"})).id


def _version_page(name: str, version: int) -> AppTest:
    """The version page of shapes@v``version``, signed in as ``name`` (the state sign-in leaves)."""
    at = AppTest.from_file(APP, default_timeout=300)
    at.session_state["authentication_status"] = True
    at.session_state["username"] = name
    at.query_params["model"], at.query_params["version"] = "shapes", str(version)
    return at.run()


def _button(at: AppTest, label: str):
    return [b for b in at.button if b.label == label][0]


def test_the_link_to_compare_and_the_admins_protect_and_unprotect(home):
    _, ws = home
    _team(ws)
    at = _version_page("ada", 2)
    assert not at.exception, at.exception
    links = [m.value for m in at.markdown if "Compare with production" in m.value]
    assert links == ["[:material/compare_arrows: Compare with production (v1)](/compare?a=shapes%40v2)"]
    assert not [m for m in _version_page("ada", 1).markdown if "Compare with production" in m.value]  # it is production

    assert [m.label for m in at.multiselect] == ["Approvers"] and at.multiselect[0].options == ["ada", "ed", "paula"]
    at.multiselect[0].set_value(["paula"])
    _button(at, "Protect alias").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert [(p.alias, p.approvers) for p in ws.registry.protections(OP)] == [("production", ["paula"])]
    assert any("**production** is protected" in c.value and "paula" in c.value for c in at.caption)

    _button(at, "Unprotect production").click().run()
    assert not at.exception and ws.registry.protections(OP) == []
    assert "Unprotect production" not in [b.label for b in at.button]


def test_an_editor_is_refused_in_one_line_and_gets_no_admin_controls(home):
    _, ws = home
    _team(ws)
    ws.registry.protect(OP, "shapes", "production", ["paula"])
    at = _version_page("ed", 2)
    assert not at.exception, at.exception
    assert "Protect alias" not in [b.label for b in at.button] and not at.multiselect
    [t for t in at.text_input if t.label == "Alias"][0].input("production")
    _button(at, "Point alias here").click().run()
    assert not at.exception, at.exception
    [error] = [e.value.replace("\\", "") for e in at.error]  # shown with Markdown escapes
    assert "shapes@production is protected: only admins and its approvers (paula) may move it." in error
    assert "\n" not in error.strip() and "Traceback" not in error
    assert ws.registry.resolve(OP, "shapes@production").version == 1


def test_an_approver_moves_it_through_a_decision_naming_the_comparison(home):
    _, ws = home
    run = _team(ws)
    ws.registry.protect(OP, "shapes", "production", ["paula"])
    at = _version_page("paula", 2)
    assert not at.exception, at.exception
    assert any("You may move production" in c.value for c in at.caption)
    box = [s for s in at.selectbox if s.label == "Comparison it was made on"][0]
    assert box.options == ["none", f"v2 vs production · {run}"]

    [r for r in at.radio if r.label == "Decision"][0].set_value("approve")
    [t for t in at.text_input if t.label.startswith("Move alias")][0].input("production")
    box.set_value(run)
    _button(at, "Record decision").click().run()  # no justification: refused, nothing moved
    assert [e.value for e in at.error if "needs a justification" in e.value]
    assert ws.registry.resolve(OP, "shapes@production").version == 1 and ws.review.decisions(OP, "shapes") == []

    at = _version_page("paula", 2)
    [r for r in at.radio if r.label == "Decision"][0].set_value("approve")
    [t for t in at.text_area if t.label == "Note"][0].input("Same outputs on every input.")
    [t for t in at.text_input if t.label.startswith("Move alias")][0].input("production")
    [s for s in at.selectbox if s.label == "Comparison it was made on"][0].set_value(run)
    _button(at, "Record decision").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert ws.registry.resolve(OP, "shapes@production").version == 2
    [d] = ws.review.decisions(OP, "shapes")
    assert (d.author, d.note, d.alias, d.comparison_run) == ("paula", "Same outputs on every input.", "production", run)
    assert any(f"on comparison [{run}](/runs?run={run})" in m.value for m in at.markdown)
