"""Review: open comment threads per model version, and each version's latest decision."""
from __future__ import annotations

import streamlit as st

from ui import state
from ui import workspace as team
from ui.comments import comment_markdown
from ui.text import escape_markdown

st.title("Review")
ws, who = team.workspace(), team.actor()
show_resolved = st.toggle("Show resolved threads too", key="gb_review_resolved")
with state.error_boundary("Listing the threads"):
    threads = ws.review.threads(who, include_resolved=show_resolved)
    versions = {v.ref: v for v in ws.registry.list(who)}
    if not threads:
        st.info("No open threads. Comments on saved runs appear here, grouped by model version.")
    current = None
    for t in threads:
        ref = f"{t.model}@v{t.version}"
        if ref != current:
            current = ref
            decision = versions[ref].decision if ref in versions else None
            st.subheader(f"{escape_markdown(ref)}" + (f" · {decision.replace('_', ' ')}" if decision else ""))
            st.markdown(f"[Version page](/models?model={t.model}&version={t.version})")
        with st.container(border=True):
            c = t.root
            where = "the run" if c.anchor_kind == "run" else f"{c.anchor_kind} {escape_markdown(c.anchor)}"
            st.markdown(f"**{escape_markdown(c.author)}** on {where} of "
                        f"[{escape_markdown(t.run_title)}](/runs?run={c.run_id})"
                        + (" · resolved" if c.resolved else "") + f" · {len(t.replies)} replies")
            st.markdown(comment_markdown(c.body))  # no images: nothing is fetched for a reader
