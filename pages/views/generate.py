"""Generate: what a causal LM generates from a prompt, and why each token (issue 22, first version).

Greedy generation (or a given continuation, teacher-forced), then each generated token's
log-probability attributed to every earlier position and the attribution's quality
(`explain.generation.explained.explain_prompt`), drawn by `explain.viz.generation`. It runs here
in the page while the bar fills, not as a queue job. A causal-LM sample opens on its first view,
saved beside it by ``python -m sample_models.train`` (`explain.generation.explained.FIRST_VIEW_FILE`).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from explain.attribution import completeness_text, step_raising_text
from explain.errors import GlassboxError
from explain.generation.attention import causal_rollout, text_attention
from explain.generation.attribution import COMPLETE_METHODS, DEFAULT_STEPS, MAX_STEPS, REFERENCE_METHODS
from explain.generation.causal_lm import hidden_states_out_of_reach
from explain.generation.contrastive import alternative_tokens
from explain.generation.explained import (
    DEFAULT_MAX_NEW,
    FIRST_VIEW_FILE,
    IG,
    chat_of,
    explain_prompt,
    read_explained,
    settings_of,
)
from explain.generation.granularity import GRANULARITIES, group_labels, group_spans, group_values, shared_group_values
from explain.generation.greedy import MAX_NEW_TOKENS
from explain.generation.occlusion import CONTRAST_METHODS, GENERATION_METHODS, OCCLUSION, contrast_texts
from explain.generation.prompts import decode_ids, encode_texts
from explain.generation.quality import token_quality_rows
from explain.generation.reference import BASELINES
from explain.generation.sampling import MAX_TEMPERATURE, Sampling
from explain.inputs.text import display_tokens, token_display
from explain.service.model_locks import hold_model
from explain.viz import generation as viz
from explain.viz.attribution import text_attribution_html
from sample_models import CAUSAL_LM_SAMPLES, sample_dir
from ui import state
from ui import workspace as team
from ui.choice import choice_box
from ui.figures import figure_config
from ui.text import escape_markdown

NEEDS_CAUSAL_LM = ("The Generate page explains causal language models: load a Hugging Face folder or zip "
                   "whose `config.json` names a `*ForCausalLM`.")
EMPTY_PROMPT = "Write a prompt above: the model continues it and each new token is explained."
RESULT_KEY = "gb_gen_result"  # (request, ExplainedGeneration)
CONTRAST_KEY = "gb_gen_contrast_result"  # ((request, step, alternative), ContrastAttribution)
ATTENTION_KEY = "gb_gen_attention"  # ((sha256, ids), (weights, rollout)) of the selected text
ROLES = ("system", "user", "assistant")
MAX_TURNS = 16  # the editor's rows; a longer chat goes through the CLI or the API


def _first_view(model):
    """The current causal-LM sample's saved first view (`FIRST_VIEW_FILE`), or None (another model,
    none saved, or one saved for other weights)."""
    name = state.current_sample_name()
    if name not in CAUSAL_LM_SAMPLES:
        return None
    path = Path(sample_dir(name)) / FIRST_VIEW_FILE
    try:
        view = read_explained(path) if path.is_file() else None
    except GlassboxError:
        return None
    return view if view is not None and view.model_sha256 == model.sha256 else None


def _compute(model, settings: dict, quality: bool):
    """Generate (or force the continuation) and explain every new token; a bar meanwhile."""
    bar = st.progress(0.0, text="Generating and explaining each token…")
    with hold_model(model):  # generation and attribution hook the model the queue's worker shares
        view = explain_prompt(model, settings, quality=quality,
                              progress=lambda done, total: bar.progress(min(1.0, done / max(total, 1)),
                                                                        text="Generating and explaining each token…"))
    bar.empty()
    return view


def _text_attention(model, input_ids) -> tuple:
    """(weights [layers, heads, L, L], rollout [L, L]) of the explained text, read once per text (the model's
    process runs one forward pass) and kept in the session."""
    key = (model.sha256, tuple(int(i) for i in input_ids))
    kept = st.session_state.get(ATTENTION_KEY)
    if kept is None or kept[0] != key:
        with hold_model(model):  # hooks on the attention layers
            maps = text_attention(model, input_ids)
        kept = (key, (maps.weights[:, 0], causal_rollout(maps.weights)[0]))
        st.session_state[ATTENTION_KEY] = kept
    return kept[1]


def _contrast(model, view, t: int, labels: list[str], shown: list, request) -> None:
    """Why the chosen token rather than another: log p(it) - log p(the other) attributed (gradient methods)."""
    attr = view.attribution
    other = st.text_input("Rather than (one token)", key="gb_gen_contrast",
                          help="Why this token rather than that one: the difference of their log-probabilities, "
                               "attributed by the same method (a leading space is part of a token).")
    if not other:
        return
    if attr.method not in CONTRAST_METHODS:
        st.caption("A contrast is attributed by " + ", ".join(m.replace("_", " ") for m in CONTRAST_METHODS) + ".")
        return
    ids = None
    with state.error_boundary("Contrasting"):
        ids = encode_texts([other], model.spec, special_tokens=False)[0]
    if ids is None:
        return
    if len(ids) != 1:  # a typo, not a failure: how this model's tokenizer splits it
        pieces = f" ({' · '.join(display_tokens(ids, model.spec))})" if len(ids) else ""
        st.warning(escape_markdown(f"“{other}” is {len(ids)} tokens for this model{pieces}; a contrast compares "
                                   "the token with one other token."))
        return
    key = (request, t, other)
    cached = st.session_state.get(CONTRAST_KEY)
    if cached is None or cached[0] != key:
        cached = None
        with state.error_boundary("Contrasting"):
            alternative = alternative_tokens([other], model.spec, "The contrast")[0]  # the unknown token refused
            with hold_model(model):
                found = contrast_texts(model, [view.text], [alternative], t, attr.method,
                                       int(attr.params.get("steps", 1)), attr.params.get("baseline") or "pad",
                                       attr.params.get("granularity", "token"))[0]
            cached = st.session_state[CONTRAST_KEY] = (key, found)
    if cached is None:
        return
    c = cached[1]
    rather = display_tokens([c.alternative], model.spec)[0]
    st.html(viz.contrast_html(c, labels, [s.joins for s in shown], rather))
    st.caption(escape_markdown(viz.contrast_caption(c, labels, rather)))


def _turns(box) -> list[dict[str, str]]:
    """The chat's earlier turns before the prompt, drawn in ``box``: rows of role + text (a row with no text is left out)."""
    count = int(box.number_input("Earlier turns", 0, MAX_TURNS, 0, key="gb_gen_turns",
                                 help="System, user and assistant messages before the prompt, in order."))
    out = []
    for i in range(count):
        c1, c2 = box.columns([1, 4])
        role = c1.selectbox("Role", ROLES, key=f"gb_gen_turn_role_{i}", label_visibility="collapsed")
        content = c2.text_input("Text", key=f"gb_gen_turn_text_{i}", label_visibility="collapsed",
                                placeholder=f"Turn {i + 1}: the {role}'s message")
        if content:
            out.append({"role": role, "content": content})
    return out


STEP_KEY = "gb_gen_step"  # the selected generated token (an int), as the selectbox last showed it

st.title("Generate")
team.stop_unless_may_explain()  # generation and its attribution run the model here
model = None
with state.error_boundary("Loading the model"):
    model = state.current_model()
if model is None:
    st.stop()
if not model.spec.is_causal_lm:
    st.info(NEEDS_CAUSAL_LM)
    st.stop()

spec = model.spec
first = _first_view(model)
if first is not None:  # the sample opens on its first view: its prompt filled in
    st.session_state.setdefault("gb_gen_prompt", first.settings["prompt"])
st.caption(f"{escape_markdown(model.name)} · {model.architecture or model.format} · causal LM · "
           "Generate and explain runs in this page; Save as a run queues it as a job saved with its link")
prompt = st.text_area("Prompt", key="gb_gen_prompt", height=90, placeholder="The text the model continues")
continuation = st.text_input("Continuation to explain (optional)", key="gb_gen_continuation",
                             help="Given tokens are scored by teacher forcing instead of generating; "
                                  "write it as it follows the prompt (a leading space included).")
# What a page draws only sometimes goes in a container drawn every time: the browser keeps the last run's
# elements by place until this run draws that place, so an element drawn once moved the ones after it (ticking
# Chat drew the 4-column row where the 6-column one was, its old Top-p / Seed left there greyed until the run ended)
chat_box = st.container()  # the chat checkbox and its turns' rows (empty for a model with no chat template)
chat = bool(spec.chat_template) and chat_box.checkbox(
    "Chat: the prompt is the user's last message, through the model's chat template", key="gb_gen_chat",
    help="The template (tokenizer_config.json or chat_template.jinja) renders in a sandbox; its special tokens included.")
turns = _turns(chat_box) if chat else []
c1, c2, c3, c4 = st.columns(4)
max_new = int(c1.number_input("Max new tokens", 1, MAX_NEW_TOKENS, DEFAULT_MAX_NEW, key="gb_gen_max_new",
                              disabled=bool(continuation.strip()), help="Greedy generation stops here or at end-of-sequence."))
method = c2.selectbox("Method", GENERATION_METHODS, key="gb_gen_method", format_func=lambda m: m.replace("_", " "))
steps = int(c3.number_input("Steps", 1, MAX_STEPS, DEFAULT_STEPS, key="gb_gen_steps", disabled=method != IG,
                            help="Integrated gradients' path steps (Gauss-Legendre)."))
baseline = c4.selectbox("Baseline", BASELINES, key="gb_gen_baseline", disabled=method not in (*REFERENCE_METHODS, OCCLUSION),
                        help="The reference embedding at every earlier position: the pad token's, <unk>'s or zero; "
                             "occlusion's replacement token (pad or unk).")
g1, g2, g3, g4, g5, g6 = st.columns(6)
granularity = g1.selectbox("Granularity", GRANULARITIES, key="gb_gen_granularity",
                           help="Token attributions summed into words or sentences; occlusion replaces whole ones.")
sampled = g2.toggle("Sample", key="gb_gen_sample", disabled=bool(continuation.strip()),
                    help="Draw the tokens with a seed instead of greedy generation.")
temperature = g3.number_input("Temperature", 0.0, MAX_TEMPERATURE, 1.0, 0.1, key="gb_gen_temperature", disabled=not sampled)
top_k = g4.number_input("Top-k", 0, 1_000_000, 0, key="gb_gen_top_k", disabled=not sampled, help="0: every token.")
top_p = g5.number_input("Top-p", 0.01, 1.0, 1.0, 0.05, key="gb_gen_top_p", disabled=not sampled, help="1: every token.")
seed = g6.number_input("Seed", 0, 2**31 - 1, 0, key="gb_gen_seed", disabled=not sampled)
sampling = Sampling(float(temperature), int(top_k), float(top_p), int(seed)) if sampled else None
quality = st.checkbox("Judge the attribution (comprehensiveness, sufficiency, deletion, insertion)", True,
                      key="gb_gen_quality", help="About 2 x (22 + 2 x 11) forward passes per generated token.")
if not prompt.strip():
    st.info(EMPTY_PROMPT)
    st.stop()
settings = settings_of(prompt, continuation, max_new, method, steps, baseline, granularity, sampling, chat, turns)
request = (model.sha256, tuple(sorted(settings.items())), quality)
clicked = st.button("Generate and explain", type="primary", key="gb_gen_run")
# Save as a run: the same explanation as a job of the queue, its run linked; it keeps the selected step's
# attention, logit lens and contrast as shown below (the widgets' last values)
kept = st.session_state.get(RESULT_KEY)
shown_here = (kept is not None and kept[0] == request) or (kept is None and first is not None)  # what the step is of
selected = (int(st.session_state.get(STEP_KEY) or 0) if shown_here else 0,
            str(st.session_state.get("gb_gen_contrast") or "") if shown_here else "")
save_key = repr((request, selected))
saved = st.button("Save as a run", key="gb_gen_save", help="Computed by the queue's worker and saved as a run to "
                  "share, comment on and decide on; it keeps the selected step's attention, logit lens and contrast")
saving = st.container()  # Save as a run's progress and link (empty until asked)
status = st.container()  # the first view's note, Generate's progress bar or error, 'the settings changed'
if saved or save_key in st.session_state.get("gb_gen_jobs", {}):
    from ui import jobs

    with saving, state.error_boundary("Saving as a run"):
        saved_run = jobs.follow_request("gb_gen_jobs", save_key, lambda: jobs.submit_generation(
            model, [] if chat else [prompt], continuations=[continuation] if settings["continuation"] else None,
            max_new_tokens=max_new, method=method, steps=steps, baseline=baseline, granularity=granularity,
            sampling=sampling, chats=[chat_of(settings)] if chat else None, quality=quality,
            selected_step=selected[0],
            contrast=selected[1] if method in CONTRAST_METHODS else None), "Generating and explaining as a job")
        if saved_run is not None:
            team.render_share_link(f"Saved as run {saved_run.info.id}: open it on Saved runs, comment and decide.",
                                   run=saved_run.info.id)
stored = st.session_state.get(RESULT_KEY)
if stored is None and first is not None and (first.model_sha256, tuple(sorted(first.settings.items())),
                                             bool(first.quality)) == request:
    stored = (request, first)  # computed once, by python -m sample_models.train
    status.caption("The sample's first view, saved with it: press Generate and explain to compute it here.")
if clicked:
    stored = None
    with status, state.error_boundary("Generating"):
        stored = (request, _compute(model, settings, quality))
    st.session_state[RESULT_KEY] = stored
if stored is None or stored[0] != request:
    if stored is not None:
        status.caption("The settings changed since the last run: press Generate and explain.")
    st.stop()

view = stored[1]
text, attr, lens = view.text, view.attribution, view.lens
p, t_count = attr.prompt_length, len(attr.generated_ids)
shown = token_display(attr.input_ids, spec)
labels = [t.label for t in shown]
verb = ("Given continuation (teacher forcing)" if text.forced else
        f"Sampled continuation (seed {view.settings['seed']})" if "seed" in view.settings else "Greedy continuation")
st.subheader("Generated text")
st.caption(f"{verb}: {t_count} tokens after a prompt of {p} · {attr.method.replace('_', ' ')}"
           + (f" · {attr.params.get('steps')} steps" if attr.method == IG else "")
           + "".join(f" · {k} {attr.params[k]}" for k in ("baseline", "background") if k in attr.params)
           + f" · {attr.seconds:.1f} s")
raised = step_raising_text(attr.params, "token(s)")  # integrated gradients' tolerance, per token
if raised:
    st.caption(escape_markdown(raised))
st.code(decode_ids(attr.generated_ids, spec), language=None, wrap_lines=True)
if t_count == 0:
    st.stop()

if granularity == "token":
    matrix = viz.generation_figure(attr.values, p, labels, title="Each generated token's log-probability, attributed")
else:  # the columns are the text's words or sentences
    spans = group_spans(attr.input_ids, spec, granularity)
    grouped = (shared_group_values if attr.method == OCCLUSION else group_values)(attr.values, spans)  # [T, G]
    matrix = viz.generation_figure(grouped, p, labels, groups=(group_labels(attr.input_ids, spec, spans), spans[:, 0]),
                                   title=f"Each generated token's log-probability, attributed by {granularity}")
st.plotly_chart(matrix, config=figure_config(f"generation_{attr.method}"), key="gb_gen_matrix")
for note in attr.notes:
    st.caption(escape_markdown(note))

# a new text's tokens: the selection starts at its first token, its label redrawn (`choice_box`)
t = choice_box(st, "Generated token", range(t_count), key="gb_gen_token",
               format_func=lambda i: f"{i + 1}. {labels[p + i]}")
t = min(int(t), t_count - 1)
# the step as an int for the next run's Save as a run, read above before this selectbox exists: its own state is
# then what Streamlit serialised, the label when the label does not map back ('1. \xaa' of a byte token: ValueError)
st.session_state[STEP_KEY] = t
if granularity == "token":
    st.html(text_attribution_html(labels[:p + t], attr.values[t, :p + t], joins=[s.joins for s in shown[:p + t]],
                                  target=f"“{labels[p + t]}”"))
else:  # the context's words or sentences: their tokens' values summed (occlusion's: the group's own drop)
    spans = group_spans(attr.input_ids[:p + t], spec, granularity)
    grouped = (shared_group_values if attr.method == OCCLUSION else group_values)(attr.values[t, :p + t], spans)
    st.html(text_attribution_html(group_labels(attr.input_ids[:p + t], spec, spans), grouped,
                                  target=f"“{labels[p + t]}”, by {granularity}"))
err_line, _ = completeness_text(float(attr.completeness_error[t]))
if attr.method in COMPLETE_METHODS:
    err_line += " (|Σ attribution − Δ log-probability| against the baseline)"
st.caption(escape_markdown(f"“{labels[p + t]}”: log p = {attr.logprobs[t]:.4f} · {err_line}"))
if attr.method in COMPLETE_METHODS:
    st.caption(escape_markdown("Completeness error per token: " + " · ".join(
        f"{labels[p + i]} {attr.completeness_error[i]:.1e}" for i in range(t_count))))

_contrast(model, view, t, labels, shown, request)

if view.quality:
    st.subheader("Quality of the attribution")
    st.caption("Each generated token judged with its context as the input (tokens replaced by the reference "
               "token), averaged over the generated tokens; a random attribution (the values shuffled) for scale.")
    st.dataframe(pd.DataFrame(token_quality_rows(view.quality)), hide_index=True, key="gb_gen_quality_table",
                 column_config={c: st.column_config.NumberColumn(format="%.3f") for c in ("this method", "random")})

# ---- Selected step: attention and logit lens ----
st.subheader("Selected step: attention and logit lens")
out_of_reach = hidden_states_out_of_reach(model)
if out_of_reach:  # a .pt2 gives its logits only: one line why, not an error box over empty panels
    st.info(escape_markdown(out_of_reach))
    st.stop()
step_attention = None
with state.error_boundary("Reading the attention"):
    step_attention = _text_attention(model, attr.input_ids)
if step_attention is not None:
    weights, rollout = step_attention
    st.caption(escape_markdown(f"What the position that predicts “{labels[p + t]}” attends to: each layer's heads, "
                               "then the rollout through all layers (heads averaged, the residual as half identity)."))
    st.plotly_chart(viz.step_attention_figure(weights, rollout, p + t - 1, labels), key="gb_gen_step_attention",
                    config=figure_config("generation_step_attention"))
st.markdown("**Logit lens**")
st.caption(escape_markdown(f"What each layer would predict at the position that predicts “{labels[p + t]}”: "
                           "its hidden state through the final norm and the LM head (the last row is the model's own)."))
rows = viz.logit_lens_rows(lens.top_ids[0], lens.top_probs[0], p + t - 1, lambda ids: display_tokens(ids, spec))
st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", key="gb_gen_lens",
             column_config={"p": st.column_config.NumberColumn(format="%.3f")})
for note in lens.notes:
    st.caption(escape_markdown(note))
