"""User-supplied text on a page: always shown literally, never as Markdown.

Streamlit renders Markdown — plus emoji shortcodes (``:smile:``), colour and
icon directives (``:red[...]``, ``:material/home:``) and ``$math$`` — in
``st.markdown``, ``st.caption``, ``st.error`` / ``warning`` / ``info`` /
``success`` / ``toast``, titles and headers, expander, tab and widget labels,
radio options, metric labels and values, progress and spinner text. File
names, messages that quote them, column, class, layer and feature names and
tokens all come from users, so every such piece goes through
:func:`escape_markdown` (the app's own formatting around it stays Markdown).
Selectbox / multiselect options, ``st.text``, ``st.code``, ``st.json`` and
dataframes show plain text already.
"""
from __future__ import annotations

import re

# Every ASCII punctuation character: CommonMark lets a backslash escape each of them, and escaping them all
# also disarms Streamlit's extensions (":" for shortcodes and directives, "$" for math, "~" for strikethrough).
_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")


def escape_markdown(text: object) -> str:
    """``text`` as Markdown that renders exactly as the characters given.

    Line breaks become spaces (one line, as every message is) and leading
    whitespace is dropped, so nothing turns into a code block or a list.

    Args:
        text: any value; ``str()`` of it is escaped.

    Returns:
        the escaped text, e.g. ``\\*\\*bold\\*\\* \\_x\\_`` for ``**bold** _x_``.
    """
    one_line = " ".join(str(text).splitlines()).lstrip()
    return _PUNCTUATION.sub(r"\\\1", one_line)
