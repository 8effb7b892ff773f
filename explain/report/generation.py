"""The report's Generation section: a saved generation run (`explain.generation.job.saved_generation`)
drawn with the Generate page's figure (`explain.viz.generation.generation_figure`): per prompt, the
text, the attribution matrix, each token's log-probability and completeness error, the quality, and the
selected step the run kept: its attention, logit lens and contrast (`_views_html`, the page's functions)."""
from __future__ import annotations

import numpy as np

from explain.attribution import step_raising_text
from explain.generation.job import SavedGeneration
from explain.generation.prompts import decode_ids
from explain.generation.quality import token_quality_rows
from explain.generation.result import GenerationAttribution
from explain.generation.step_views import StepViews
from explain.inputs.text import display_tokens, token_display
from explain.report.document import Section, escape, key_value_html, round_data, table_html
from explain.spec import InputSpec
from explain.viz import generation as viz


def build_generation_section(saved: SavedGeneration, spec: InputSpec) -> Section:
    """One part per prompt: the prompt and its continuation, a table of the generated tokens (log p,
    completeness error), the attribution matrix and, when the run judged it, the quality table."""
    parts = [key_value_html({"method": saved.settings.get("method", ""), "steps": saved.settings.get("steps", ""),
                             "baseline": saved.settings.get("baseline") or "—",
                             "continuations": "given (teacher forcing)" if saved.forced else "greedy",
                             "prompts": len(saved.attributions),
                             "steps raised": step_raising_text(saved.settings, "token(s)") or "—"})]
    figures, data = [], []
    for i, (attr, judged) in enumerate(zip(saved.attributions, saved.quality)):
        p, t_count = attr.prompt_length, len(attr.generated_ids)
        labels = [t.label for t in token_display(attr.input_ids, spec)]
        text = decode_ids(attr.generated_ids, spec)
        parts.append(f"<h3>Prompt {i + 1}</h3><p>{escape(decode_ids(attr.input_ids[:p], spec))} "
                     f"<b>→ {escape(text)}</b></p>")
        rows = [{"token": labels[p + j], "log p": float(attr.logprobs[j]),
                 "completeness error": None if np.isnan(attr.completeness_error[j]) else float(attr.completeness_error[j])}
                for j in range(t_count)]
        parts.append(table_html(rows, numeric=("log p", "completeness error")) if rows
                     else '<p class="muted">No token generated.</p>')
        if judged:
            parts.append(table_html(token_quality_rows(judged), numeric=("this method", "random")))
        if t_count:
            figures.append(viz.generation_figure(attr.values, p, labels,
                                                 title=f"Prompt {i + 1}: each generated token's log-probability, attributed"))
        views = saved.views[i] if i < len(saved.views) else None
        if views is not None:
            parts.append(_views_html(views, attr, spec, i, figures))
        data.append({"prompt": decode_ids(attr.input_ids[:p], spec), "text": text,
                     "logprobs": attr.logprobs, "completeness_error": attr.completeness_error})
    return Section(title="Generation", body="\n".join(parts), figures=figures, data=round_data({"texts": data}))


def _views_html(views: StepViews, attr: GenerationAttribution, spec: InputSpec, i: int, figures: list) -> str:
    """The selected step the run kept (`explain.generation.step_views`), drawn with the Generate page's functions:
    its attention figure (appended to ``figures``), the logit lens's table and the contrast's highlighted context."""
    p, t = attr.prompt_length, views.selected
    shown = token_display(attr.input_ids, spec)
    labels = [s.label for s in shown]
    parts = [f"<h4>Prompt {i + 1}, selected step {t + 1}: “{escape(labels[p + t])}”</h4>"]
    if views.has_layers:  # else hidden states out of reach (a .pt2): its note says why
        parts += ["<p>What each layer would predict at the position that predicts it (logit lens; the last row is "
                  "the model's own):</p>",
                  table_html(viz.logit_lens_rows(views.lens_ids, views.lens_probs, t,
                                                 lambda ids: display_tokens(ids, spec)), numeric=("p",))]
    parts += [f'<p class="muted">{escape(note)}</p>' for note in views.notes]
    if views.has_layers and views.steps.size:
        figures.append(viz.step_attention_figure(views.attention, views.rollout, p + t - 1, labels, row=0,
                                                 title=f"Prompt {i + 1}: what step {t + 1} attends to, per layer and "
                                                       "head, then the rollout"))
    c = views.contrast
    if c is not None:
        rather = display_tokens([c.alternative], spec)[0]
        parts += [viz.contrast_html(c, labels, [s.joins for s in shown], rather),
                  f"<p>{escape(viz.contrast_caption(c, labels, rather))}</p>"]
    return "\n".join(parts)
