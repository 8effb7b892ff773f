"""A select box that shows its current options' labels (torch-free: the first paint draws one)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import streamlit as st


def choice_box(container: Any, label: str, options: Sequence[Any], *, key: str, format_func: Any = str,
               index: int = 0, **kwargs: Any) -> Any:
    """``container.selectbox`` whose box shows the current options' labels. Streamlit (1.67) keeps one widget
    per key whatever its options, so when they change (another model's classes, another text's tokens) the
    browser kept showing the earlier label ("#0 · triangle" on a model with no such class) while the page
    used the new option; when the labels change, the choice goes back to ``options[index]``, set through the
    session state, which redraws the box. For choices that belong to a model or a result, not to a filter."""
    options = list(options)
    labels = tuple(str(format_func(o)) for o in options)
    seen_key = f"{key}__labels"
    seen = st.session_state.get(seen_key)
    st.session_state[seen_key] = labels
    if seen is not None and seen != labels and options:
        st.session_state[key] = options[index]
        return container.selectbox(label, options, key=key, format_func=format_func, **kwargs)
    return container.selectbox(label, options, key=key, format_func=format_func, index=index, **kwargs)
