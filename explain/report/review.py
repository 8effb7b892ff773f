"""The report's Review section: the decisions on the model version and the comment threads on its
saved runs, so an offline copy of the report carries the review. Comment bodies are escaped
(shown as typed, never as HTML)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from explain.report.document import Section, escape, table_html
from explain.workspace.review import CommentInfo, DecisionInfo


@dataclass(frozen=True)
class ReviewRecord:
    """What the Review section shows: ``model@vN``, its decisions, and comments (with run titles)."""

    version: str
    decisions: Sequence[DecisionInfo] = ()
    comments: Sequence[CommentInfo] = ()
    run_titles: dict[str, str] = field(default_factory=dict)


def build_review_section(review: ReviewRecord) -> Section:
    decisions = [{"verdict": d.verdict.replace("_", " "), "by": d.author, "when": d.created, "note": d.note,
                  "moved alias": d.alias or "", "comparison run": d.comparison_run or ""} for d in review.decisions]
    parts = [f"<h3>Decisions on {escape(review.version)}</h3>",
             table_html(decisions) if decisions else '<p class="muted">No decision yet.</p>']
    replies: dict[int, list[CommentInfo]] = {}
    for c in review.comments:
        if c.parent_id is not None:
            replies.setdefault(c.parent_id, []).append(c)
    roots = [c for c in review.comments if c.parent_id is None]
    parts.append(f"<h3>Comments ({len(review.comments)})</h3>")
    if not roots:
        parts.append('<p class="muted">No comments.</p>')
    for c in roots:
        run = review.run_titles.get(c.run_id, c.run_id)
        state = " · resolved" if c.resolved else ""
        thread = [f'<div class="comment"><p><strong>{escape(c.author)}</strong> · {escape(c.created)} · on '
                  f'{escape(c.anchor_label)} of run “{escape(run)}”{state}</p>'
                  f'<p style="white-space:pre-wrap">{escape(c.body)}</p>']
        for r in replies.get(c.id, []):
            thread.append(f'<p style="margin-left:2em"><strong>{escape(r.author)}</strong> · {escape(r.created)}</p>'
                          f'<p style="margin-left:2em;white-space:pre-wrap">{escape(r.body)}</p>')
        parts.append("".join(thread) + "</div>")
    return Section(title="Review", body="\n".join(parts),
                   data={"version": review.version, "decisions": [d.to_dict() for d in review.decisions],
                         "comments": [c.to_dict() for c in review.comments]})


def review_record(workspace, actor, model: str, version: int, run_id: str | None = None) -> ReviewRecord:
    """The review of ``model@v<version>`` from a workspace: its decisions, and the comments on one
    run (``run_id``) or on every run of the version."""
    runs = workspace.runs.list(actor, model=model, version=version)
    titles = {r.id: r.title for r in runs}
    run_ids = [run_id] if run_id else [r.id for r in runs]
    comments = [c for rid in run_ids for c in workspace.review.comments(actor, rid)]
    if run_id and run_id not in titles:
        titles[run_id] = workspace.runs.info(actor, run_id).title
    return ReviewRecord(f"{model}@v{version}", workspace.review.decisions(actor, model, version), comments, titles)
