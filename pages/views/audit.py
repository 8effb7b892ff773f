"""Audit log: every write, who, when, before and after (admins only), exportable as CSV."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from ui import state
from ui import workspace as team

st.title("Audit log")
ws, who = team.workspace(), team.actor()
with state.error_boundary("Reading the audit log"):
    rows = ws.audit.rows(who)  # refused for anyone but an admin, whatever the page shows
    st.download_button("Download CSV", ws.audit.csv(who), file_name="glassbox-audit.csv", mime="text/csv")
    st.dataframe(pd.DataFrame([r.to_dict() for r in rows[::-1]]), hide_index=True, width="stretch",
                 key="gb_audit_table")
