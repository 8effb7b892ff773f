"""A saved generation run in the app (`explain.generation.job.SavedGeneration`): per prompt, the text,
the attribution matrix (`explain.viz.generation.generation_figure`, the Generate page's figure),
each token's log-probability and completeness error, the quality table and the selected step's attention,
logit lens and contrast the run kept (the page's figures and tables). Drawn from the run's arrays and
stored spec: nothing is loaded or recomputed."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from explain.attribution import step_raising_text
from explain.generation.attribution import COMPLETE_METHODS
from explain.generation.job import SavedGeneration
from explain.generation.prompts import decode_ids
from explain.generation.quality import token_quality_rows
from explain.generation.result import GenerationAttribution
from explain.generation.step_views import StepViews
from explain.inputs.text import display_tokens, token_display
from explain.spec import InputSpec
from explain.viz import generation as viz
from ui.choice import choice_box
from ui.figures import figure_config
from ui.text import escape_markdown


def render_saved_generation(saved: SavedGeneration, spec: InputSpec, key: str) -> None:
    """Every prompt of ``saved`` with its continuation and why each token (``spec``: the run's model's,
    whose tokenizer names the tokens; ``key``: the elements' prefix)."""
    verb = "given continuation (teacher forcing)" if saved.forced else "greedy continuation"
    for i, (attr, judged) in enumerate(zip(saved.attributions, saved.quality)):
        p, t_count = attr.prompt_length, len(attr.generated_ids)
        labels = [t.label for t in token_display(attr.input_ids, spec)]
        st.markdown(f"**Prompt {i + 1}:** " + escape_markdown(decode_ids(attr.input_ids[:p], spec)))
        st.caption(escape_markdown(f"{verb}: {t_count} tokens · {attr.method.replace('_', ' ')}" + "".join(
            f" · {k} {v}" for k, v in attr.params.items() if k in ("steps", "baseline", "tolerance", "granularity"))
            + (f" · {raised}" if (raised := step_raising_text(attr.params, "token(s)")) else "")))
        st.code(decode_ids(attr.generated_ids, spec), language=None, wrap_lines=True)
        if not t_count:
            continue
        st.plotly_chart(viz.generation_figure(attr.values, p, labels, title="Each generated token's log-probability, "
                                              "attributed"), config=figure_config(f"generation_{attr.method}"),
                        key=f"{key}_matrix_{i}")
        if attr.method in COMPLETE_METHODS:
            st.caption(escape_markdown("Completeness error per token: " + " · ".join(
                f"{labels[p + j]} {attr.completeness_error[j]:.1e}" for j in range(t_count))))
        st.caption(escape_markdown("log p per token: " + " · ".join(
            f"{labels[p + j]} {attr.logprobs[j]:.4f}" for j in range(t_count))))
        if judged:
            st.dataframe(pd.DataFrame(token_quality_rows(judged)), hide_index=True, key=f"{key}_quality_{i}",
                         column_config={c: st.column_config.NumberColumn(format="%.3f") for c in ("this method", "random")})
        views = saved.views[i] if i < len(saved.views) else None
        if views is not None:
            _render_views(views, attr, spec, f"{key}_{i}")


def _render_views(views: StepViews, attr: GenerationAttribution, spec: InputSpec, key: str) -> None:
    """The run's kept views of one text (`explain.generation.step_views`) drawn as the Generate page draws
    its selected step: the attention per layer and head with the rollout, the logit lens, the contrast."""
    p, t_count = attr.prompt_length, len(attr.generated_ids)
    shown = token_display(attr.input_ids, spec)
    labels = [s.label for s in shown]
    st.markdown("**Selected step: attention and logit lens**")
    t = choice_box(st, "Generated token", range(t_count), index=views.selected, key=f"{key}_token",
                   format_func=lambda j: f"{j + 1}. {labels[p + j]}")
    kept = [int(s) for s in views.steps]
    if not views.has_layers:  # hidden states out of reach (a .pt2): the note says why, no empty panels
        for note in views.notes:
            st.caption(escape_markdown(note))
    elif t in kept:
        st.plotly_chart(viz.step_attention_figure(views.attention, views.rollout, p + t - 1, labels, row=kept.index(t)),
                        config=figure_config("generation_step_attention"), key=f"{key}_step_attention")
    else:
        st.caption("The run kept the attention of " + (", ".join(labels[p + s] for s in kept) or "no step") + " only.")
    if views.has_layers:
        rows = viz.logit_lens_rows(views.lens_ids, views.lens_probs, t, lambda ids: display_tokens(ids, spec))
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", key=f"{key}_lens",
                     column_config={"p": st.column_config.NumberColumn(format="%.3f")})
        for note in views.notes:
            st.caption(escape_markdown(note))
    c = views.contrast
    if c is not None:
        rather = display_tokens([c.alternative], spec)[0]
        st.html(viz.contrast_html(c, labels, [s.joins for s in shown], rather))
        st.caption(escape_markdown(viz.contrast_caption(c, labels, rather)))
