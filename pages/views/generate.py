"""Generate: what a causal LM generates from a prompt, and why each token (issue 22, first version).

Greedy generation (or a given continuation, teacher-forced), then each generated token's
log-probability attributed to every earlier position (`explain.generation`), drawn by
`explain.viz.generation`. It runs here in the page while the bar fills, not as a queue job.
"""
from __future__ import annotations

import pandas as pd
import streamlit as st

from explain.attribution import completeness_text
from explain.generation.attribution import DEFAULT_STEPS, MAX_STEPS, METHODS, attribute_generation
from explain.generation.continuation import force_continuations
from explain.generation.greedy import MAX_NEW_TOKENS, generate_greedy
from explain.generation.logit_lens import logit_lens
from explain.generation.prompts import decode_ids, encode_texts
from explain.generation.reference import BASELINES
from explain.inputs.text import display_tokens, token_display
from explain.viz import generation as viz
from explain.viz.attribution import text_attribution_html
from ui import state
from ui import workspace as team
from ui.figures import figure_config
from ui.text import escape_markdown

NEEDS_CAUSAL_LM = ("The Generate page explains causal language models: load a Hugging Face folder or zip "
                   "whose `config.json` names a `*ForCausalLM`.")
RESULT_KEY = "gb_gen_result"  # (request, (GeneratedText, GenerationAttribution, LogitLens))
LENS_TOP_K = 5
IG = "integrated_gradients"


def _compute(model, prompt: str, continuation: str, max_new: int, method: str, steps: int, baseline: str):
    """Generate (or force the continuation), attribute every new token, read the lens; a bar meanwhile."""
    bar = st.progress(0.0, text="Generating…")

    def phase(lo: float, hi: float, text: str):
        def progress(done: int, total: int) -> None:
            bar.progress(min(1.0, lo + (hi - lo) * done / max(total, 1)), text=text)
        return progress

    prompts = encode_texts([prompt], model.spec)
    if continuation.strip():
        texts = force_continuations(model, prompts, encode_texts([continuation], model.spec, special_tokens=False))
    else:
        texts = generate_greedy(model, prompts, max_new, progress=phase(0.0, 0.2, "Generating…"))
    attr = attribute_generation(model, texts, method, steps, baseline,
                                progress=phase(0.2, 0.9, f"Attributing each token ({method.replace('_', ' ')})…"))[0]
    # one pass over the text minus its last token: position P + t - 1 is where token t is predicted
    lens = logit_lens(model, [texts[0].input_ids[:-1]], top_k=LENS_TOP_K, progress=phase(0.9, 1.0, "Logit lens…"))
    bar.empty()
    return texts[0], attr, lens


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
st.caption(f"{escape_markdown(model.name)} · {model.architecture or model.format} · causal LM · "
           "runs in this page (not a queue job)")
prompt = st.text_area("Prompt", key="gb_gen_prompt", height=90, placeholder="The text the model continues")
continuation = st.text_input("Continuation to explain (optional)", key="gb_gen_continuation",
                             help="Given tokens are scored by teacher forcing instead of generating; "
                                  "write it as it follows the prompt (a leading space included).")
c1, c2, c3, c4 = st.columns(4)
max_new = int(c1.number_input("Max new tokens", 1, MAX_NEW_TOKENS, 8, key="gb_gen_max_new",
                              disabled=bool(continuation.strip()), help="Greedy generation stops here or at end-of-sequence."))
method = c2.selectbox("Method", METHODS, key="gb_gen_method", format_func=lambda m: m.replace("_", " "))
steps = int(c3.number_input("Steps", 1, MAX_STEPS, DEFAULT_STEPS, key="gb_gen_steps", disabled=method != IG,
                            help="Integrated gradients' path steps (Gauss-Legendre)."))
baseline = c4.selectbox("Baseline", BASELINES, key="gb_gen_baseline", disabled=method != IG,
                        help="The reference embedding at every earlier position: the pad token's, <unk>'s or zero.")
forced = bool(continuation.strip())
request = (model.sha256, prompt, continuation if forced else "", 0 if forced else max_new, method,
           steps if method == IG else 1, baseline if method == IG else "")
clicked = st.button("Generate and explain", type="primary", key="gb_gen_run", disabled=not prompt.strip())
stored = st.session_state.get(RESULT_KEY)
if clicked:
    stored = None
    with state.error_boundary("Generating"):
        stored = (request, _compute(model, prompt, continuation, max_new, method, request[5], baseline))
    st.session_state[RESULT_KEY] = stored
if stored is None or stored[0] != request:
    if stored is not None:
        st.caption("The settings changed since the last run: press Generate and explain.")
    st.stop()

text, attr, lens = stored[1]
p, t_count = attr.prompt_length, len(attr.generated_ids)
shown = token_display(attr.input_ids, spec)
labels = [t.label for t in shown]
verb = "Given continuation (teacher forcing)" if text.forced else "Greedy continuation"
st.subheader("Generated text")
st.caption(f"{verb}: {t_count} tokens after a prompt of {p} · {attr.method.replace('_', ' ')}"
           + (f" · {attr.params.get('steps')} steps · baseline {attr.params.get('baseline')}" if attr.method == IG else "")
           + f" · {attr.seconds:.1f} s")
st.code(decode_ids(attr.generated_ids, spec), language=None, wrap_lines=True)
if t_count == 0:
    st.stop()

st.plotly_chart(viz.generation_figure(attr.values, p, labels, title="Each generated token's log-probability, attributed"),
                config=figure_config(f"generation_{attr.method}"), key="gb_gen_matrix")
for note in attr.notes:
    st.caption(escape_markdown(note))

t = st.selectbox("Generated token", range(t_count), key="gb_gen_token",
                 format_func=lambda i: f"{i + 1}. {labels[p + i]}")
t = min(int(t), t_count - 1)
st.html(text_attribution_html(labels[:p + t], attr.values[t, :p + t], joins=[s.joins for s in shown[:p + t]],
                              target=f"“{labels[p + t]}”"))
err_line, _ = completeness_text(float(attr.completeness_error[t]))
if attr.method == IG:
    err_line += " (|Σ attribution − Δ log-probability| against the baseline)"
st.caption(escape_markdown(f"“{labels[p + t]}”: log p = {attr.logprobs[t]:.4f} · {err_line}"))
if attr.method == IG:
    st.caption(escape_markdown("Completeness error per token: " + " · ".join(
        f"{labels[p + i]} {attr.completeness_error[i]:.1e}" for i in range(t_count))))

st.subheader("Logit lens")
st.caption(escape_markdown(f"What each layer would predict at the position that predicts “{labels[p + t]}”: "
                           "its hidden state through the final norm and the LM head (the last row is the model's own)."))
rows = viz.logit_lens_rows(lens.top_ids[0], lens.top_probs[0], p + t - 1, lambda ids: display_tokens(ids, spec))
st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", key="gb_gen_lens",
             column_config={"p": st.column_config.NumberColumn(format="%.3f")})
for note in lens.notes:
    st.caption(escape_markdown(note))
