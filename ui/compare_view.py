"""A comparison of two versions drawn in Streamlit (`explain.compare.comparison.Comparison`): the
Compare page and the Saved runs page's ``comparison`` drawer place the same figures
(`explain.viz.compare`), which the report's Compare section also draws."""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from explain.compare.comparison import Comparison
from explain.model import LoadedModel
from explain.spec import InputSpec
from explain.viz import compare as viz
from explain.workspace.registry import VersionInfo, parse_ref
from ui import state
from ui import workspace as team
from ui.figures import figure_config
from ui.text import escape_markdown

#: the alias a version is compared with when the link names only ``a`` (`default_refs`)
DEFAULT_ALIAS = "production"


def default_refs(a: str | None, b: str | None) -> tuple[str | None, str | None]:
    """The page's URL contract: ``?a=NAME@vN`` (or ``NAME@ALIAS``) and ``b`` likewise; with only
    ``a``, B is ``NAME@production``."""
    if a and not b:
        b = f"{parse_ref(a)[0]}@{DEFAULT_ALIAS}"
    return a or None, b or None


def version_model(info: VersionInfo) -> LoadedModel:
    """A registry version's model through the pages' one model cache (`ui.state.open_model`)."""
    data, filename, spec = team.workspace().registry.file(team.actor(), info.name, info.version)
    return state.open_model(data, info.sha256, f"Loading {info.ref}…", filename=filename,
                            spec=InputSpec.from_json(spec) if spec else None, name=info.name)


def render_comparison(comparison: Comparison, spec: InputSpec, key: str = "gb_compare") -> None:
    """Outputs, explanations, structure and training of A against B, in that order."""
    o, at, s = comparison.outputs, comparison.attributions, comparison.structure
    a, b = (escape_markdown(label) for label in comparison.labels)
    st.subheader("Outputs")
    cols = st.columns(3)
    cols[0].metric("Agreement", f"{o.agreement:.1%}")
    cols[1].metric("Flipped inputs", len(o.flipped))
    cols[2].metric("Largest probability change", f"{o.max_probability_change:.3f}")
    if o.flipped:
        st.markdown("**Flipped:** " + ", ".join(
            f"#{i} ({escape_markdown(spec.class_name(int(o.predicted_a[i])))} → "
            f"{escape_markdown(spec.class_name(int(o.predicted_b[i])))})" for i in o.flipped))
    st.plotly_chart(viz.figure_probability_shifts(comparison), config=figure_config("probability_shifts"),
                    key=f"{key}_shifts")
    st.subheader("Explanations")
    mean = at.mean
    st.caption(f"{escape_markdown(at.a.method)} for {a}'s predicted class, maps as shown (channels summed); "
               f"Spearman ρ per input, mean {'—' if mean is None else f'{mean:.3f}'}.")
    st.plotly_chart(viz.figure_rank_correlation(comparison), config=figure_config("rank_correlation"),
                    key=f"{key}_rho")
    for row in comparison.most_changed():
        flipped = " (flipped)" if row in o.flipped else ""
        st.markdown(f"**Input {row}**{flipped}")
        for col, drawn, label in zip(st.columns(2), viz.figure_maps(comparison, spec, row), (a, b)):
            with col:
                if isinstance(drawn, str):  # highlighted tokens
                    st.caption(label)
                    st.html(drawn)
                else:
                    st.plotly_chart(drawn, config=figure_config(f"map_{label}_{row}"), key=f"{key}_map_{label}_{row}")
    st.subheader("Structure")
    st.dataframe(pd.DataFrame(s.table()).rename(columns={"a": comparison.labels[0], "b": comparison.labels[1]}),
                 hide_index=True, width="stretch")
    changed = s.layers_changed
    if changed:
        st.markdown(f"**Layers changed** ({len(changed)})")
        st.dataframe(pd.DataFrame(changed), hide_index=True, width="stretch")
    else:
        st.caption("Same layers, by name and shape.")
    st.subheader("Training")
    fig = viz.figure_training(comparison)
    if fig is None:
        st.caption("Neither version has a training log attached.")
    else:
        st.plotly_chart(fig, config=figure_config("training"), key=f"{key}_training")


def comparison_summary(comparison: Comparison) -> str:
    """One line: agreement, flips and mean ρ (the page's status and the run list's)."""
    mean = comparison.attributions.mean
    return (f"Agreement {comparison.outputs.agreement:.1%}, {len(comparison.outputs.flipped)} flipped, "
            f"mean ρ {'—' if mean is None or np.isnan(mean) else f'{mean:.3f}'}")
