"""Models: the registry — versions, aliases, tags, decisions; one version at ``?model=NAME&version=N``.

A version links to the Compare page against the version holding ``production`` (``/compare?a=NAME@vN``;
the page compares with ``NAME@production`` by default); admins protect an alias and name its
approvers; a decision may name the comparison it was made on (required to move a protected alias).
"""
from __future__ import annotations

from urllib.parse import urlencode

import pandas as pd
import streamlit as st

from explain.errors import NotFound
from explain.workspace import Action
from explain.workspace.review import VERDICTS
from explain.workspace.roles import allows
from ui import state
from ui import workspace as team
from ui.text import escape_markdown

ws, who = team.workspace(), team.actor()
name = st.query_params.get("model")

if not name:
    st.title("Models")
    with state.error_boundary("Listing the registry"):
        versions = ws.registry.list(who)
        st.dataframe(pd.DataFrame([{"model": v.name, "version": v.version, "aliases": ", ".join(v.aliases),
                                    "protected": "; ".join(f"{a} (approvers: {', '.join(p) or 'admins only'})"
                                                           for a, p in v.protected.items()),
                                    "tags": ", ".join(v.tags), "decision": v.decision or "", "file": v.filename,
                                    "sha256": v.sha256[:12], "registered by": v.created_by, "created": v.created}
                                   for v in versions]), hide_index=True, width="stretch", key="gb_models_table")
        refs = [v.ref for v in versions]
        chosen = st.selectbox("Open version", refs, key="gb_models_open") if refs else None
        if chosen and st.button("Open", type="primary"):
            model_name, _, number = chosen.rpartition("@v")
            st.query_params.update({"model": model_name, "version": number})
            st.rerun()
    st.stop()

opened = False
with state.error_boundary("Opening the version"):
    raw = st.query_params.get("version")
    version = ws.registry.version(who, name, int(raw) if raw and raw.isdigit() else raw or None)
    opened = True
if not opened:
    st.stop()

st.title(f"{escape_markdown(version.name)} · v{version.version}")
st.caption(f"{escape_markdown(version.filename)} · {version.size:,} bytes · registered by "
           f"{escape_markdown(version.created_by)} on {version.created.replace('T', ' ')[:16]} UTC")
st.markdown(f"sha256: `{version.sha256}`  \naliases: {', '.join(version.aliases) or '—'} · "
            f"tags: {', '.join(version.tags) or '—'}")
team.render_share_link("Link to this version:", model=version.name, version=str(version.version))

protections = {p.alias: p.approvers for p in ws.registry.protections(who, version.name)}
for alias, approvers in protections.items():
    st.caption(f":material/lock: **{escape_markdown(alias)}** is protected: it moves only through an approving "
               f"decision by an admin or {escape_markdown(', '.join(approvers) or 'no named approver')}, with a "
               "justification and the comparison it was made on.")
try:
    production = ws.registry.resolve(who, f"{version.name}@production")
except NotFound:
    production = None
if production is not None and production.version != version.version:
    st.markdown(f"[:material/compare_arrows: Compare with production (v{production.version})]"
                f"(/compare?{urlencode({'a': version.ref})})")

if not team.can(Action.LOAD_MODEL):
    st.caption("Exploring a version runs it in the page, which needs the editor role: its saved runs are below.")
elif st.button("Explore this version", help="Make it the current model of the Output, Structure and other pages."):
    with state.error_boundary("Opening the model"):
        data, filename, spec = ws.registry.file(who, version.name, version.version)
        state.use_registry_model(data, filename, spec)
        st.switch_page("pages/views/overview.py")

st.subheader("Decisions")
history = ws.review.decisions(who, version.name, version.version)
if history:
    for d in history[::-1]:  # newest first
        icon = ":material/check_circle:" if d.verdict == "approve" else ":material/pan_tool:"
        moved = f" · moved **{escape_markdown(d.alias)}** here" if d.alias else ""
        compared = f" · on comparison [{d.comparison_run}](/runs?run={d.comparison_run})" if d.comparison_run else ""
        st.markdown(f"{icon} **{d.verdict.replace('_', ' ')}** by {escape_markdown(d.author)} on "
                    f"{d.created.replace('T', ' ')[:16]} UTC{moved}{compared}")
        if d.note:
            st.markdown(d.note)  # Markdown, raw HTML off
else:
    st.caption("No decision yet.")
if team.can(Action.DECIDE):
    comparisons = {r.id: r for r in ws.runs.list(who, model=version.name, version=version.version)
                   if r.page == "comparison"}
    is_admin = team.can(Action.PROTECT_ALIAS)
    movable = [a for a, approvers in protections.items() if is_admin or who.name in approvers]
    with st.form("gb_decide_form", clear_on_submit=True):
        verdict = st.radio("Decision", VERDICTS, horizontal=True, format_func=lambda v: v.replace("_", " "))
        note = st.text_area("Note", help="The justification: required to move a protected alias.")
        chosen = st.selectbox("Comparison it was made on", ["", *comparisons], key="gb_decide_comparison",
                              format_func=lambda rid: f"{comparisons[rid].title} · {rid}" if rid else "none")
        typed = st.text_input("or a saved run's id", key="gb_decide_comparison_id")
        alias = st.text_input("Move alias on approval (optional)", placeholder="e.g. production")
        if movable:
            st.caption(f"You may move {escape_markdown(', '.join(movable))} with an approval that names a "
                       "comparison and a justification.")
        if st.form_submit_button("Record decision", type="primary"):
            with state.error_boundary("Recording the decision"):
                ws.review.decide(who, version.name, version.version, verdict, note, move_alias=alias.strip() or None,
                                 comparison_run=typed.strip() or chosen or None)
                st.rerun()

if team.can(Action.PROTECT_ALIAS):
    with st.expander("Protected aliases (admins)"):
        with state.error_boundary("Listing the approvers"):
            deciders = [u.name for u in ws.users.list(who) if allows(u.role, Action.DECIDE)]
            c1, c2 = st.columns(2)
            guarded = c1.text_input("Alias to protect", value="production", key="gb_protect_alias")
            approvers = c2.multiselect("Approvers", deciders, key="gb_protect_approvers",
                                       help="Besides admins, who may move it (through a decision).")
            if st.button("Protect alias", key="gb_protect") and guarded.strip():
                with state.error_boundary("Protecting the alias"):
                    ws.registry.protect(who, version.name, guarded.strip(), approvers)
                    st.rerun()
            for alias in protections:
                if st.button(f"Unprotect {alias}", key=f"gb_unprotect_{alias}"):
                    with state.error_boundary("Unprotecting the alias"):
                        ws.registry.unprotect(who, version.name, alias)
                        st.rerun()

if team.can(Action.EDIT_REGISTRY):
    with st.expander("Aliases and tags"):
        c1, c2 = st.columns(2)
        alias = c1.text_input("Alias", key="gb_alias_name", placeholder="candidate")
        if c1.button("Point alias here") and alias.strip():
            with state.error_boundary("Moving the alias"):
                ws.registry.set_alias(who, version.name, alias.strip(), version.version)
                st.rerun()
        tag = c2.text_input("Tag", key="gb_tag_name")
        if c2.button("Add tag") and tag.strip():
            with state.error_boundary("Adding the tag"):
                ws.registry.add_tag(who, version.name, version.version, tag.strip())
                st.rerun()

st.subheader("Saved runs of this version")
runs = ws.runs.list(who, model=version.name, version=version.version)
if runs:
    for r in runs:
        st.markdown(f"[{escape_markdown(r.title)}](/runs?run={r.id}) · {r.page} · {escape_markdown(r.author)} · "
                    f"{r.created.replace('T', ' ')[:16]}")
else:
    st.caption("None yet.")
attachments = ws.registry.attachments(who, version.name, version.version)
if attachments:
    st.subheader("Attached training files")
    st.dataframe(pd.DataFrame([a.to_dict() for a in attachments]), hide_index=True, width="stretch")
