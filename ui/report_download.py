"""A report's downloads (the Overview, a saved run's page): the HTML, and the same report printed to PDF by headless
Chromium on the server (`explain.report.document.pdf_bytes`); without Chromium the page says so in
one line and the HTML (which a browser prints to PDF) stays."""
from __future__ import annotations

import streamlit as st

from explain.report.document import NO_CHROMIUM, NO_CHROMIUM_HINT, find_chromium, pdf_bytes
from ui import state

PDF_KEY = "gb_report_pdf"


def render_report_downloads(report_key: str, html_bytes: bytes, name: str) -> None:
    """HTML and PDF download buttons for the report built under ``report_key``."""
    c1, c2 = st.columns(2)
    c1.download_button("Download report (HTML)", html_bytes, file_name=f"glassbox-{name}.html",
                       mime="text/html", key="gb_ov_download", type="primary")
    with c2:
        if find_chromium() is None:
            st.caption(f"{NO_CHROMIUM} {NO_CHROMIUM_HINT}")
            return
        stored = st.session_state.get(PDF_KEY)
        if stored and stored[0] == report_key:
            st.download_button("Download report (PDF)", stored[1], file_name=f"glassbox-{name}.pdf",
                               mime="application/pdf", key="gb_ov_download_pdf")
        elif st.button("Make PDF", key="gb_ov_make_pdf", help="Print this report to PDF (a few seconds)."):
            with state.error_boundary("Printing the report to PDF"), st.spinner("Printing the report to PDF…"):
                st.session_state[PDF_KEY] = (report_key, pdf_bytes(html_bytes.decode("utf-8")))
                st.rerun()


def render_report_job(job_id: str, report_key: str, name: str) -> bool:
    """Follow a report job (progress, Cancel), then its downloads, its failed parts and its share
    link: what the Overview and a saved run's page show. False when the job was cancelled."""
    from explain.report.job import report_html
    from ui import jobs
    from ui import workspace as team
    from ui.text import escape_markdown

    _, run = jobs.follow_job(job_id, "Building the report")
    if run is None:
        st.info("The report was cancelled.")
        return False
    failed = list(run.info.summary.get("failed", {}))
    if failed:
        st.warning("Parts that could not be built (the report says why): " + escape_markdown(", ".join(failed)))
    render_report_downloads(report_key, report_html(run), name)
    team.render_share_link(f"Saved as run `{run.info.id}`. Link to it:", run=run.info.id)
    return True
