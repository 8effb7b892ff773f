"""One input's attribution map on a page, with no torch imported.

`draw_map` places `explain.viz.attribution.attribution_figure` (the one drawing of a map, as the report
draws it) and its caption (`caption_for`) from the spec alone, so the app's first paint (`ui.first_paint`)
draws a sample's saved first view the way the Overview and the Output page draw theirs
(`ui.attribution_view.render_attribution`, which judges the completeness with the method's tolerance).
"""
from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from explain.attribution import Attribution, run_details
from explain.spec import InputSpec
from explain.viz import attribution as viz
from ui.figures import figure_config
from ui.text import escape_markdown


@dataclass(frozen=True)
class MapOptions:
    """How image maps are drawn: which sign, which view (`viz.VIEWS`), which colour scale (`viz.SCALES`)."""

    sign: str = "all"
    view: str = "overlay"
    scale: str = "shared"


def caption_for(attr: Attribution, index: int, judged: tuple[str, bool]) -> str:
    """The Markdown under a map: what it was made with (Grad-CAM's layer, a SHAP method's background),
    its completeness error as ``judged`` (`explain.output.methods.base.completeness_caption`: flagged in
    orange with ⚠ above the method's tolerance), time and device."""
    err_text, exceeded = judged
    if exceeded:
        err_text = f":orange[**{err_text}**]"
    details = "".join(f"{escape_markdown(d)} · " for d in run_details(attr.params))
    inputs = "1 input" if len(attr) == 1 else f"{len(attr)} inputs"
    return f"{details}{err_text} · {attr.seconds:.2f} s for {inputs} · {attr.device} · {attr.precision}"


def draw_map(spec: InputSpec, attr: Attribution, row: int, title: str, key: str, judged: tuple[str, bool],
             limit: float | None = None, options: MapOptions = MapOptions()) -> None:
    """Input ``row``'s map (`viz.attribution_figure`) and its caption (`caption_for`, ``judged``: its
    completeness as ``(text, exceeded)``). ``limit``: the image's colour limit (default `viz.map_limits`
    over the attribution's rows)."""
    drawn = viz.attribution_figure(attr, spec, row, limit=limit, sign=options.sign, view=options.view,
                                   title=title if spec.modality != "text" else "")
    if isinstance(drawn, str):  # highlighted tokens
        st.caption(escape_markdown(title))
        st.html(drawn)
    else:
        name = f"{attr.method}_{'row' if spec.modality == 'tabular' else 'input'}{row}"  # the download's file name
        st.plotly_chart(drawn, config=figure_config(name), key=key)
    st.caption(caption_for(attr, row, judged))
