"""Training: how the model got here — curves, automatic findings, checkpoint evolution."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from explain.digest import digest_array, digest_bytes
from explain.finding import sort_findings
from explain.training.checkpoints import read_checkpoint, sort_checkpoints
from explain.training.downsampling import MAX_ROWS
from explain.training.drift_job import saved_drift
from explain.training.evolution import compute_weight_changes
from explain.training.findings import diagnose
from explain.training.formats import CHECKPOINT_HISTORY_KEYS
from explain.training.history import LOG_MODES, ROLES, default_log_mode, merge_histories, read_history
from explain.viz import training as viz
from ui import jobs, state
from ui import workspace as team
from ui.analysis_view import render_drift
from ui.run_view import snapshot_record
from ui.text import escape_markdown

LOG_TYPES = None  # TensorBoard event files have no fixed extension (events.out.tfevents.<time>.<host>)
CKPT_TYPES = ["pt", "pth", "ckpt", "bin", "tar", "safetensors", "zip"]  # zip: a Hugging Face model folder
ROLE_LABELS = {"train_loss": "Training loss", "val_loss": "Validation loss", "train_metric": "Training metric",
               "val_metric": "Validation metric", "lr": "Learning rate"}
NONE = "(none)"
DRIFT_INPUTS = {"image": 4, "tabular": 16, "text": 16}  # fewer rows make ρ noisy


def _sample_dir(name: str) -> Path:
    from sample_models import sample_dir

    return Path(sample_dir(name))


@st.cache_data(max_entries=32, show_spinner=False)
def _read_log(name: str, data: bytes):
    return read_history(data, filename=name)


@st.cache_data(max_entries=32, show_spinner=False)
def _read_ckpt(name: str, data: bytes):
    return read_checkpoint(data, filename=name)


def _render_findings(findings) -> None:
    findings = sort_findings(findings)  # the worst first
    if not findings:
        st.caption("No findings: the curves are too short or no loss is assigned.")
    for f in findings:
        where = ", ".join(f"{e:g}" for e in f.epochs[:6])
        st.markdown(f"{f.icon} **{f.kind}** ({where}) — {escape_markdown(f.message)}")
    if findings:
        with st.expander("Evidence (the numbers behind each finding)"):
            st.json([f.to_dict() for f in findings], expanded=False)  # the CLI's and the report's form
    if findings and all(f.kind == "best_epoch" for f in findings):
        st.success("No problems found: no overfitting, plateau, divergence, instability or underfitting.",
                   icon=":material/check_circle:")


st.title("Training")
st.caption("Loss and metric curves with automatic findings, and how weights and explanations "
           "changed from checkpoint to checkpoint.")
team.stop_unless_may_explain()  # checkpoints are model files of one's own; the drift runs them
sample = state.current_sample_name()
sample_path = _sample_dir(sample) if sample else None

with st.expander("Your training logs and checkpoints", expanded=sample is None):
    c1, c2 = st.columns(2)
    log_files = c1.file_uploader(
        "Training logs", type=LOG_TYPES, accept_multiple_files=True, key="gb_train_logs",
        help="CSV (Lightning/Keras CSVLogger, any epoch/step table), JSON / JSON lines, TensorBoard event "
             "files (events.out.tfevents.*), or checkpoints that store a 'history'. Logs longer than "
             f"{MAX_ROWS:,} rows are averaged down to about that many points (a note says so).",
    )
    ckpt_files = c2.file_uploader(
        "Checkpoints of this model (2 or more)", type=CKPT_TYPES, accept_multiple_files=True,
        key="gb_train_ckpts",
        help="Weights-only torch.save files (a state_dict, or a dict with 'model_state_dict' / Lightning's "
             "'state_dict'), safetensors, TorchScript files (their weights are read), or "
             "Hugging Face model folders as .zip (config.json and the weights, as save_pretrained writes them). "
             "A state_dict of the loaded Hugging Face model is compared in its architecture.",
    )

# -- read logs ---------------------------------------------------------------------------
logs: list[tuple[str, bytes]] = [(f.name, f.getvalue()) for f in log_files or []]
ckpts: list[tuple[str, bytes]] = [(f.name, f.getvalue()) for f in ckpt_files or []]
if logs or ckpts:  # the Overview and its report use this model's uploads too
    with state.error_boundary("Keeping the uploads for the Overview"):
        state.remember_training_uploads(state.current_model().sha256, logs, ckpts)
source_note = "your uploads"
if not ckpts and sample_path is not None and (sample_path / "checkpoints").is_dir():
    ckpts = [(p.name, p.read_bytes()) for p in sorted((sample_path / "checkpoints").glob("*.pt"))]
if not logs and sample_path is not None and (sample_path / "train_log.csv").is_file():
    logs = [("train_log.csv", (sample_path / "train_log.csv").read_bytes())]
    source_note = f"the **{escape_markdown(sample)}** sample's train\\_log.csv"
checkpoints, checkpoint_errors = [], []  # errors are shown under "Checkpoint evolution"
for name, data in ckpts:
    try:
        checkpoints.append(_read_ckpt(name, data))
    except Exception as exc:
        checkpoint_errors.append(exc)
checkpoints = sort_checkpoints(checkpoints)  # training order: the final checkpoint last
checkpoint_digests = tuple(digest_bytes(c.data) for c in checkpoints)  # once a run: the saved run's and the drift's keys
if not logs and checkpoints and any(k in checkpoints[-1].meta for k in CHECKPOINT_HISTORY_KEYS):
    logs = [(checkpoints[-1].source, checkpoints[-1].data)]  # the final checkpoint's stored history
    source_note = f"the history stored in {escape_markdown(logs[0][0])}"

histories = []
for name, data in logs:
    with state.error_boundary("Reading a training log"):
        histories.append(_read_log(name, data))

if not histories:
    st.info("Upload training logs (or checkpoints with a stored history) above to see curves and findings.")
else:
    st.caption(f"Curves from {source_note}.")
    for warning in (w for h in histories for w in h.warnings):  # damaged files, long logs averaged down
        st.warning(escape_markdown(warning), icon="⚠️")
    mode = "merge"
    if len(histories) > 1:
        mode = st.radio("Several logs", LOG_MODES, index=LOG_MODES.index(default_log_mode(histories)),
                        horizontal=True, key="gb_train_mode",
                        format_func={"merge": "Merge into one run", "runs": "Runs side by side"}.get,
                        help="Runs side by side: each log is a run (curves overlaid, findings per run). "
                             "Merge: the logs are files of one run (e.g. train and validation written apart).")
    c1, c2, c3, c4 = st.columns([3, 1, 1, 1])
    smoothing = c1.slider("Smoothing", 0.0, 0.99, viz.default_smoothing(histories), 0.01, key="gb_train_smoothing",
                          help="TensorBoard's debiased exponential moving average; raw values stay faint. "
                               "Off by default for short runs, where it would lag behind the curve.")
    log_y = c2.toggle("Log scale", key="gb_train_log")
    patience = c4.number_input("Patience", 1, 100, 5, key="gb_train_patience",
                               help="Early-stopping patience used for the best-epoch finding.")
    if mode == "merge":
        with state.error_boundary("Combining the logs"):
            history = merge_histories(histories)
            x_choice = c3.selectbox("x axis", history.x_columns, key="gb_train_x")
            cols = history.series_columns
            with st.expander("Series roles (which column is which)"):
                role_cols = st.columns(len(ROLES))
                key = digest_bytes("|".join(cols).encode())[:8]
                chosen = {}
                for col, role in zip(role_cols, ROLES):
                    options = [NONE] + cols
                    guess = history.roles.get(role)
                    pick = col.selectbox(ROLE_LABELS[role], options, index=options.index(guess) if guess else 0,
                                         key=f"gb_role_{role}_{key}")
                    chosen[role] = None if pick == NONE else pick
            history = history.with_roles(**chosen)
            findings = diagnose(history, patience=int(patience))
            st.plotly_chart(viz.figure_curves(history, findings, smoothing, log_y, x_choice),
                            key="gb_train_curves")
            st.subheader("Findings")
            _render_findings(findings)
    else:
        with state.error_boundary("Drawing the runs"):
            xs = sorted({c for h in histories for c in h.x_columns})
            x_choice = c3.selectbox("x axis", xs, key="gb_train_x_runs")
            st.plotly_chart(viz.figure_runs(histories, smoothing, log_y, x_choice), key="gb_train_runs")
            for h in histories:
                with st.expander(f"Findings · {escape_markdown(h.name)}", expanded=True):
                    _render_findings(diagnose(h, patience=int(patience)))

if histories:
    team.render_save_run("training", state.current_model(), lambda name, version: snapshot_record(
        "training", name, version, f"Training of {name} ({len(histories)} log{'s' if len(histories) > 1 else ''})",
        None, {h.name: h.by_epoch().reset_index() for h in histories},  # with its epoch (or step) column
        findings=[f for h in histories for f in diagnose(h, patience=int(patience))]), key="training",
        attach=[("training_log", n, d) for n, d in logs] + [("checkpoint", c.source, c.data) for c in checkpoints],
        shows=digest_bytes(repr((state.current_model().sha256, [(n, digest_bytes(d)) for n, d in logs],
                                 checkpoint_digests, int(patience))).encode()))

# -- checkpoint evolution ---------------------------------------------------------------------
st.header("Checkpoint evolution")
for exc in checkpoint_errors:
    state.show_error(exc, "Reading a checkpoint")
if len(checkpoints) < 2:
    st.info("Upload at least two checkpoints of the current model to see how its weights and "
            "explanations changed during training.")
    st.stop()

st.caption(escape_markdown(" · ".join(c.label for c in checkpoints)))
with state.error_boundary("Comparing the weights"):
    change = compute_weight_changes(checkpoints)
    st.subheader("Relative weight change per layer")
    st.caption("‖W(t+1) − W(t)‖ / ‖W(t)‖ of each layer's weights and biases between consecutive checkpoints.")
    st.plotly_chart(viz.figure_weight_changes(change), key="gb_train_weights")

st.subheader("Attribution drift")
with state.error_boundary("Explaining the checkpoints"):
    model = state.current_model()
    batch = state.current_inputs()
    c1, c2 = st.columns(2)
    n_default = min(DRIFT_INPUTS.get(model.modality, 4), len(batch.array))
    n = int(c1.number_input("Inputs to explain", 1, len(batch.array), n_default, key="gb_drift_n"))
    steps = int(c2.select_slider("Integration steps", [8, 16, 32, 64, 128], 32, key="gb_drift_steps"))
    inputs = batch.array[:n]
    key = digest_bytes(repr((checkpoint_digests, digest_array(inputs), model.sha256,
                             steps)).encode())
    # Uploads change one pick at a time (two files, then a third): the drift of uploaded checkpoints starts
    # from the button, once, for the set on the page; a set already asked in this session is followed again.
    if ckpt_files and key not in st.session_state.get("gb_drift_jobs", {}) and not st.button(
            f"Explain the {len(checkpoints)} checkpoints", key="gb_drift_start", type="primary",
            help="Integrated gradients of the inputs above at every checkpoint, as a job of the queue."):
        st.caption("Add every checkpoint first: the drift is computed for the set shown above.")
        st.stop()
    # a job of the queue (`explain.training.drift_job`), saved as a drift run and drawn from it
    run = jobs.follow_request("gb_drift_jobs", key, lambda: jobs.submit_drift(
        model, [(c.source, c.data) for c in checkpoints], inputs, steps),
        f"Explaining {len(checkpoints)} checkpoints with integrated gradients")
    if run is not None:
        render_drift(saved_drift(run), model.spec, inputs, key="gb_drift")
