"""Queue: every session's jobs with progress and Cancel, and the sidebar model's explanation as a job."""
from __future__ import annotations

import streamlit as st

from explain.output.methods import compatible_methods, get_method
from explain.workspace import Action
from ui import jobs, state
from ui import workspace as team
from ui.widgets import method_param_choices, param_widgets

st.title("Job queue")
st.caption("Long explanations run here on the server's workers: interactive jobs first (a running batch job "
           "pauses between its chunks to let them through, then goes on), then batch jobs, taking turns between "
           "people. Every session sees the same queue.")
jobs.ensure_worker()

if team.can(Action.SAVE_RUN):
    with st.expander("Queue an explanation of the sidebar's model", expanded=False):
        with state.error_boundary("Queueing the explanation"):
            model = state.current_model()
            batch = state.current_inputs()
            names = [m.name for m in compatible_methods(model)]
            c1, c2, c3 = st.columns([2, 1, 1])
            method = c1.selectbox("Method", names, key="gb_job_method",
                                  index=names.index("integrated_gradients") if "integrated_gradients" in names else 0)
            count = c2.number_input("Inputs", 1, len(batch.array), min(4, len(batch.array)), key="gb_job_rows")
            priority = c3.radio("Priority", ("interactive", "batch"), key="gb_job_priority")
            params = param_widgets(method, get_method(method).params, choices=method_param_choices(model, method))
            if st.button("Queue", type="primary", key="gb_job_submit"):
                job = jobs.submit_explain(model, batch.array[: int(count)], [(method, params)], None, priority=priority)
                st.success(f"Queued job `{job.id}`.")

with state.error_boundary("Listing the queue"):
    jobs.render_queue()
