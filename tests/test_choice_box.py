"""`ui.choice.choice_box`: a keyed select box whose options' labels change (another model's classes,
another text's tokens) goes back to its default through the session state, so the browser redraws it."""
from __future__ import annotations

from streamlit.testing.v1 import AppTest


def _script():
    import streamlit as st

    from ui.choice import choice_box

    classes = st.session_state.get("classes", ["triangle", "square"])
    st.session_state["picked"] = choice_box(st, "Input", [0, 1], key="box",
                                            format_func=lambda i: f"#{i} · {classes[i]}")


def test_a_box_whose_labels_change_goes_back_to_its_default_and_tells_the_browser():
    at = AppTest.from_function(_script).run()
    at.selectbox(key="box").set_value(1).run()
    assert at.session_state["picked"] == 1
    at.run()  # the same labels: the person's choice stays
    assert at.session_state["picked"] == 1 and not at.selectbox(key="box").proto.set_value
    at.session_state["classes"] = ["benign", "malignant"]  # another model's classes
    at.run()
    box = at.selectbox(key="box")
    assert at.session_state["picked"] == 0 and box.value == 0
    assert box.proto.set_value and list(box.options) == ["#0 · benign", "#1 · malignant"]  # the browser redraws it
    assert not at.exception and not at.warning
