"""Saved runs: the list, and one run exactly as saved (``?run=ID``), with its comments and Re-run."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from explain.report.job import report_html
from explain.workspace import Action
from ui import jobs, state
from ui import workspace as team
from ui.comments import render_comments
from ui.report_download import render_report_job
from ui.run_view import render_saved_run, rerun_differences, rerun_refusal, submit_rerun, submit_run_report
from ui.text import escape_markdown

ws, who = team.workspace(), team.actor()
run_id = st.query_params.get("run")

if not run_id:
    st.title("Saved runs")
    with state.error_boundary("Listing the saved runs"):
        runs = ws.runs.list(who)
        if not runs:
            st.info("No saved runs yet. Explain something on the Output, Structure, Training or Overview page "
                    "and press **Save run**.")
        else:
            st.dataframe(pd.DataFrame([{"id": r.id, "page": r.page, "title": r.title, "model": f"{r.model}@v{r.version}",
                                        "author": r.author, "created": r.created} for r in runs]),
                         hide_index=True, width="stretch", key="gb_runs_table")
            chosen = st.selectbox("Open run", [r.id for r in runs], key="gb_runs_open",
                                  format_func=lambda i: next(f"{r.id} · {r.title}" for r in runs if r.id == i))
            if st.button("Open", type="primary"):
                st.query_params["run"] = chosen
                st.rerun()
    st.stop()

loaded = False
with state.error_boundary("Opening the run"):
    run = ws.runs.open(who, run_id)
    loaded = True
if not loaded:
    st.stop()

info = run.info
st.title(escape_markdown(info.title))
st.caption(f"Run `{info.id}` · {info.page} page · model **{escape_markdown(info.model)}** v{info.version} · "
           f"saved by {escape_markdown(info.author)} on {info.created.replace('T', ' ')[:16]} UTC")
c1, c2 = st.columns([3, 2])
with c1:
    st.markdown(f"Model file sha256: `{info.sha256}`")
    if info.summary.get("inputs_sha256"):
        st.markdown(f"Inputs sha256: `{info.summary['inputs_sha256']}`")
    team.render_share_link("Link to this run:", run=info.id)
with c2:
    with st.expander("Method, parameters and environment"):
        st.json({"method": info.method, "params": info.params, "target": info.target,
                 "environment": info.environment}, expanded=True)

with state.error_boundary("Drawing the saved run"):
    render_saved_run(run)

RERUN_JOB_KEY = f"gb_rerun_{info.id}"  # the job re-running this run, followed until it ends
refusal = rerun_refusal(run)  # a report or a page's snapshot: the one line why not
if refusal is not None:
    st.caption(escape_markdown(refusal))
elif not team.can(Action.SAVE_RUN):
    st.caption("Re-run needs the editor role: it recomputes as a job of the team's queue, saved as a run.")
else:
    if st.button("Re-run", key="gb_rerun", help="Compute it again as a job of the queue, with what the run "
                 "recorded (inputs, methods, parameters and target; each input or token with the steps it used), "
                 "never from a cache; show the differences to what was saved."):
        with state.error_boundary("Queueing the re-run"):
            st.session_state[RERUN_JOB_KEY] = submit_rerun(run).id
    if st.session_state.get(RERUN_JOB_KEY):
        with state.error_boundary("Re-running"):
            job, fresh = jobs.follow_job(st.session_state[RERUN_JOB_KEY], f"Re-running run {info.id}")
            if fresh is None:  # cancelled, here or on the Queue page
                del st.session_state[RERUN_JOB_KEY]
                st.info("The re-run was cancelled.")
            else:
                st.markdown("**Re-run: differences to the saved run**")
                st.dataframe(rerun_differences(run, fresh), hide_index=True, width="stretch",
                             key="gb_rerun_table")
                team.render_share_link(f"The re-run is saved as run `{fresh.info.id}` (job {job.id}). Link to it:",
                                       run=fresh.info.id)

with state.error_boundary("Loading the comments"):
    render_comments(run)

st.divider()
REPORT_JOB_KEY = f"gb_run_report_{info.id}"
if info.page == "report":
    st.download_button("Download report (HTML)", report_html(run), file_name=f"glassbox-run-{info.id}.html",
                       mime="text/html", type="primary")
elif not team.can(Action.SAVE_RUN):
    st.caption("Reports are built as jobs of the team's queue and saved as runs, which needs the editor role.")
else:
    if st.button("Build report (HTML)", key="gb_run_report",
                 help="The run's model and inputs, its methods, and this run's comments and the version's decisions."):
        with state.error_boundary("Queueing the report"):
            st.session_state[REPORT_JOB_KEY] = submit_run_report(run).id
    if st.session_state.get(REPORT_JOB_KEY):
        with state.error_boundary("Building the report"):
            if not render_report_job(st.session_state[REPORT_JOB_KEY], f"run:{info.id}", f"run-{info.id}"):
                del st.session_state[REPORT_JOB_KEY]
