"""Comment threads on a saved run: read by everyone, written by reviewers and up.

Bodies are rendered with ``st.markdown`` (raw HTML is never enabled), so a comment can format
text but cannot inject markup or script; `comment_markdown` first turns every image into a plain
link (its alt text, else its address), so reading a comment makes the browser fetch nothing from
anywhere (``![](http://host/pixel.png)`` would tell that host who read it, and when).
"""
from __future__ import annotations

import streamlit as st

from explain.workspace import Action, SavedRun
from explain.workspace.review import CommentInfo
from ui import state
from ui import workspace as team
from ui.text import escape_markdown


def _image_end(text: str, start: int) -> tuple[int, int] | None:
    """For ``![`` at ``start``: (index of the ``]`` closing the alt text, index of the ``)`` closing
    an inline destination ``(url "title")``), or None when no inline image starts there (a reference
    image ``![alt][ref]``, or no image at all)."""
    i, depth, n = start + 2, 1, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":
            depth += 1
        elif c == "]":
            depth -= 1
            if depth == 0:
                break
        i += 1
    else:
        return None
    label_end = i
    if not text.startswith("(", label_end + 1):
        return None
    i, depth, quote = label_end + 2, 1, None
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if quote:
            if c == quote:
                quote = None
        elif c in "\"'" and text[i - 1] in " \t\n":
            quote = c
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return label_end, i
        i += 1
    return None


def _escape_bangs(text: str) -> str:
    """Every ``![`` not already escaped as ``\\![`` (a backslash escape means the same in a link's
    destination and title, so this changes no address)."""
    out, i, n = [], 0, len(text)
    while i < n:
        if text[i] == "\\":
            out.append(text[i:i + 2])
            i += 2
            continue
        out.append("\\!" if text.startswith("![", i) else text[i])
        i += 1
    return "".join(out)


def comment_markdown(body: str) -> str:
    """A comment's Markdown with no image left in it: ``![alt](url "title")`` becomes the link
    ``[alt](url "title")`` (``[url](url)`` without alt text), and any other ``![`` (a reference
    image ``![alt][ref]``, nested or malformed ones) is escaped to a literal ``!``, so the rendered
    comment loads nothing from anywhere. Everything else stays Markdown (raw HTML is off anyway)."""
    out, i, n = [], 0, len(body)
    while i < n:
        c = body[i]
        if c == "\\":  # an escape pair: "\\![" is no image, "\\\\![" is one
            out.append(body[i:i + 2])
            i += 2
            continue
        if c == "!" and body.startswith("[", i + 1):
            found = _image_end(body, i)
            if found is None:
                out.append("\\!")
                i += 1
                continue
            label_end, close = found
            alt, target = comment_markdown(body[i + 2:label_end]).strip(), body[label_end + 2:close]
            address = target.strip().split()[0].strip("<>") if target.strip() else ""
            out.append(f"[{alt or escape_markdown(address) or 'image'}]({_escape_bangs(target)})")
            i = close + 1
            continue
        out.append(c)
        i += 1
    return _escape_bangs("".join(out))  # and no "!" of the text left right before a link made here


def anchor_options(run: SavedRun) -> list[tuple[str, str]]:
    """(kind, anchor) a comment can point at: the run, each saved input, each layer or finding shown."""
    options = [("run", "")]
    rows = run.inputs.get("rows")
    if rows is not None:
        options += [("input", str(int(r))) for r in rows]
    elif "inputs" in run.inputs:
        options += [("input", str(i)) for i in range(len(run.inputs["inputs"]))]
    summary = run.info.summary
    layers = summary.get("tables", {}).get("Layers")
    if layers and "layer" in layers["columns"]:
        col = layers["columns"].index("layer")
        options += [("layer", str(row[col]).strip()) for row in layers["data"] if str(row[col]).strip()]
    options += [("finding", f["kind"]) for f in summary.get("findings", [])]
    return list(dict.fromkeys(options))


def _label(option: tuple[str, str]) -> str:
    kind, anchor = option
    return "the whole run" if kind == "run" else f"{kind} #{anchor}" if kind == "input" else f"{kind}: {anchor}"


def _render_comment(c: CommentInfo, reply: bool = False) -> None:
    head = f"**{escape_markdown(c.author)}** · {c.created.replace('T', ' ')[:16]}"
    if not reply:
        head += f" · on {escape_markdown(_label((c.anchor_kind, c.anchor)))}"
        if c.resolved:
            head += f" · resolved by {escape_markdown(c.resolved_by or '')}"
    st.markdown(head)
    st.markdown(comment_markdown(c.body))  # Markdown without images, raw HTML off


def render_comments(run: SavedRun) -> None:
    ws, who = team.workspace(), team.actor()
    comments = ws.review.comments(who, run.info.id)
    may_comment = team.can(Action.COMMENT)
    st.subheader(f"Comments ({len(comments)})")
    replies: dict[int, list[CommentInfo]] = {}
    for c in comments:
        if c.parent_id is not None:
            replies.setdefault(c.parent_id, []).append(c)
    for c in comments:
        if c.parent_id is not None:
            continue
        with st.container(border=True):
            _render_comment(c)
            for r in replies.get(c.id, []):
                with st.container():
                    st.markdown("↳")
                    _render_comment(r, reply=True)
            if may_comment:
                cols = st.columns([4, 1, 1])
                text = cols[0].text_input("Reply", key=f"gb_reply_{c.id}", label_visibility="collapsed",
                                          placeholder="Reply…")
                if cols[1].button("Reply", key=f"gb_reply_btn_{c.id}") and text.strip():
                    with state.error_boundary("Replying"):
                        ws.review.post(who, run.info.id, text, parent_id=c.id)
                        st.rerun()
                label = "Reopen" if c.resolved else "Resolve"
                if cols[2].button(label, key=f"gb_resolve_{c.id}"):
                    with state.error_boundary(f"{label[:-1]}ing the thread"):
                        ws.review.set_resolved(who, c.id, not c.resolved)
                        st.rerun()
    if not may_comment:
        st.caption("You can read the comments; commenting needs the reviewer role.")
        return
    options = anchor_options(run)
    with st.form("gb_comment_form", clear_on_submit=True):
        anchor = st.selectbox("On", options, format_func=_label, key="gb_comment_anchor")
        body = st.text_area("Comment", key="gb_comment_body", placeholder="Markdown is fine; HTML is shown as text, images as links.")
        if st.form_submit_button("Post", type="primary"):
            with state.error_boundary("Posting the comment"):
                ws.review.post(who, run.info.id, body, anchor_kind=anchor[0], anchor=anchor[1])
                st.rerun()
