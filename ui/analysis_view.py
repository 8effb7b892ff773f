"""The results of the Structure page's Rank layers and the Training page's attribution drift, drawn
the same way on their page and on the Saved runs page (`ui.run_view.DRAWERS`): both are jobs of the
queue (`ui.jobs.submit_importance` / `submit_drift`) whose saved runs these functions place."""
from __future__ import annotations

import numpy as np
import streamlit as st

from explain.output.layer_importance import LayerImportance
from explain.spec import InputSpec
from explain.training.evolution import AttributionDrift
from ui.choice import choice_box
from ui.widgets import caption_skipped_layers

DRIFT_CAPTION = ("Integrated gradients of the same inputs for the final checkpoint's predicted class at every "
                 "checkpoint; ρ is the Spearman rank correlation with the final checkpoint's attributions.")


def render_importance(result: LayerImportance, key: str = "gb_imp_chart") -> None:
    """The layer ranking chart and which layers were not scored, and why."""
    from explain.viz import structure as viz

    st.plotly_chart(viz.figure_layer_importance(result), width="stretch", key=key)
    caption_skipped_layers(result.skipped, "Not scored")


def render_drift(drift: AttributionDrift, spec: InputSpec, inputs: np.ndarray, key: str = "gb_drift") -> None:
    """The correlation with the final checkpoint per checkpoint, then one chosen input's maps."""
    from explain.viz import training as viz

    st.caption(DRIFT_CAPTION)
    st.plotly_chart(viz.figure_drift_correlation(drift), key=f"{key}_corr")
    index = choice_box(st, "Input", list(range(len(inputs))), key=f"{key}_index",
                         format_func=lambda i: f"#{i} · {spec.class_name(int(drift.target[i]))}")
    st.plotly_chart(viz.figure_attribution_drift(drift, index, spec, inputs), key=f"{key}_maps")
