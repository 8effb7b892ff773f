"""Session state shared by every page: the chosen model and inputs.

Pages call `current_model()` and `current_inputs()`; they return the default
sample when the user chose nothing, so a page works alone, e.g. under
``AppTest.from_file("pages/views/x.py")``. In upload mode they return the upload
or raise why it does not load (never the sample in its place). Uploaded bytes are
kept in ``st.session_state`` so a failing later step never loses what the user gave.

An upload's spec is resolved as everywhere (`explain.loading.loader.resolve_spec`):
the uploaded spec JSON or the spec form's, else the file's, else a ``.pt2``'s
signature, else the first ``.npy`` / ``.npz`` among the uploaded inputs, whether
they came before or after the model.

Running a model in the page needs the editor role: every load (`open_model`: a sample, an upload, a
run's version, the Compare page's files) goes through the library (`explain.workspace.Workspace.load_model`,
which checks `Action.LOAD_MODEL` on every call, before the shared cache answers); a viewer or
reviewer gets `PermissionDenied` (the pages say so first, `ui.workspace.stop_unless_may_explain`).
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st

from explain.config import trusted_mode
from explain.digest import digest_bytes
from explain.errors import GlassboxError, one_line
from explain.inputs.reading import InputBatch, model_ready_array, read_inputs
from explain.model import LoadedModel
from explain.service.models import shared_models
from explain.spec import CAUSAL_LM_NOTE, InputSpec, SpecGuess, guess_from_array
from sample_models import ALL_SAMPLES, SAMPLE_NAMES, sample_dir, sample_file, sample_inputs
from ui.sample_choice import DEFAULT_SAMPLE, SOURCE_KEY, chosen_sample, set_sample  # noqa: F401 - re-exported
from ui.text import escape_markdown

log = logging.getLogger("glassbox.ui")

_MODEL_UPLOAD_KEY = "gb_model_upload"  # UploadedBlob | None
_SPEC_UPLOAD_KEY = "gb_spec_upload"
_FORM_SPEC_KEY = "gb_form_spec"  # UploadedBlob | None: the spec form's JSON, for the current model upload
_INPUT_UPLOAD_KEY = "gb_input_uploads"  # list[UploadedBlob]


@dataclass(frozen=True)
class UploadedBlob:
    """An uploaded file kept in the session: name, bytes and their sha256."""

    name: str
    data: bytes
    sha256: str

    @classmethod
    def from_upload(cls, upload) -> UploadedBlob:
        data = upload.getvalue()
        return cls(upload.name, data, digest_bytes(data))


# -- loaders: the process's one model cache (`explain.service.models.shared_models`) -----------
@functools.lru_cache(maxsize=len(ALL_SAMPLES))
def _sample_file(name: str) -> tuple[bytes, str, str]:
    """A sample's model file (a classifier's: the safetensors file a new workspace registers; a causal
    LM's: its Hugging Face folder as a zip), its sha256 and its name."""
    path = sample_file(name)
    data = path.read_bytes()
    return data, digest_bytes(data), path.name


def open_model(data: bytes, sha256: str, spinner: str = "Loading the model…", **options) -> LoadedModel:
    """The model of a file through the one cache the pages, saved runs and the app's worker share
    (`explain.service.models.shared_models`): loaded and vetted once per file and spec in this process.
    Every page's load (a sample, an upload, a run's version for its Re-run or report, the Compare page's
    files) asks `Workspace.load_model`, which checks the signed-in user's role before the cache answers.

    Raises:
        PermissionDenied: below editor (`Action.LOAD_MODEL`).
    """
    ws, who = _team()

    def load(_data: bytes) -> LoadedModel:
        with st.spinner(spinner) if shared_models().find(sha256) is None else contextlib.nullcontext():
            return shared_models().open(data, sha256=sha256, vetted=ws.vetting, **options)

    return ws.load_model(who, data, loader=load)


def _cached_sample(name: str) -> LoadedModel:
    data, sha, filename = _sample_file(name)
    return open_model(data, sha, "Loading sample model…", filename=f"{name}{Path(filename).suffix}", name=name)


def _cached_upload(blob: UploadedBlob, spec: UploadedBlob | None, sample: np.ndarray | None) -> LoadedModel:
    return open_model(blob.data, blob.sha256, "Loading uploaded model…", filename=blob.name,
                       spec=spec.data if spec else None, sample_input=sample)


@st.cache_data(max_entries=16, show_spinner=False)
def _cached_first_row(sha256: str, _blob: UploadedBlob) -> np.ndarray | None:
    """Row 0 of a model-ready (.npy / .npz) input upload, None for any other file or an unreadable one."""
    try:
        arr = model_ready_array(_blob.data, filename=_blob.name)
    except GlassboxError:  # read_inputs says why, once the model is known
        return None
    return None if arr is None or arr.ndim < 1 or len(arr) == 0 else np.ascontiguousarray(arr[:1])


@st.cache_data(max_entries=8, show_spinner=False)
def _cached_sample_inputs(name: str) -> dict[str, np.ndarray]:
    return sample_inputs(name)


# -- selection (the sample: `ui.sample_choice`, torch-free; `set_sample`, `DEFAULT_SAMPLE` re-exported) --
def set_model_upload(blob: UploadedBlob | None, spec: UploadedBlob | None) -> None:
    old = model_upload()
    if blob is None or old is None or old.sha256 != blob.sha256:
        st.session_state[_FORM_SPEC_KEY] = None  # the form's spec was for the other model
    st.session_state[_MODEL_UPLOAD_KEY] = blob
    st.session_state[_SPEC_UPLOAD_KEY] = spec
    st.session_state[SOURCE_KEY] = "upload" if blob else "sample"


def use_registry_model(data: bytes, filename: str, spec_json: bytes | None) -> None:
    """Make a registered model version the current model (as if its file had been uploaded)."""
    spec = UploadedBlob(f"{filename}.spec.json", spec_json, digest_bytes(spec_json)) if spec_json else None
    set_model_upload(UploadedBlob(filename, data, digest_bytes(data)), spec)


def set_upload_mode() -> None:
    """The user chose Upload: the pages wait for the upload instead of showing a sample."""
    st.session_state[SOURCE_KEY] = "upload"


def upload_mode() -> bool:
    return st.session_state.get(SOURCE_KEY) == "upload"


def set_form_spec(spec: InputSpec | None) -> None:
    """Use the spec form's spec for the uploaded model (an uploaded spec JSON still wins)."""
    data = spec.to_json(indent=2).encode() if spec is not None else None
    st.session_state[_FORM_SPEC_KEY] = UploadedBlob("spec form.json", data, digest_bytes(data)) if data else None


def form_spec() -> InputSpec | None:
    blob = st.session_state.get(_FORM_SPEC_KEY)
    return InputSpec.from_json(blob.data) if blob else None


def set_input_uploads(blobs: list[UploadedBlob]) -> None:
    st.session_state[_INPUT_UPLOAD_KEY] = list(blobs)


def model_upload() -> UploadedBlob | None:
    return st.session_state.get(_MODEL_UPLOAD_KEY)


def input_uploads() -> list[UploadedBlob]:
    return list(st.session_state.get(_INPUT_UPLOAD_KEY, []))


def current_sample_name() -> str | None:
    """The sample in use, or None in upload mode (whether or not the upload loads)."""
    if upload_mode():
        return None
    return chosen_sample()


def upload_failure() -> GlassboxError | None:
    """Why the uploaded model does not load (None if it loads or there is none)."""
    blob = model_upload()
    if blob is None:
        return None
    try:
        _load_upload(blob)
    except GlassboxError as exc:
        return exc
    except Exception as exc:  # a model that raises while loading: still a message
        log.exception("upload failed")
        return GlassboxError(f"The model could not be loaded: {type(exc).__name__}: {exc}")
    return None


def _explicit_spec() -> UploadedBlob | None:
    return st.session_state.get(_SPEC_UPLOAD_KEY) or st.session_state.get(_FORM_SPEC_KEY)


def _input_sample() -> np.ndarray | None:
    """Row 0 of the first model-ready input upload: what tells the spec of a model that has none."""
    for blob in input_uploads():
        row = _cached_first_row(blob.sha256, blob)
        if row is not None:
            return row
    return None


def inputs_guess() -> SpecGuess | None:
    """What the uploaded inputs say about the model's input (the spec form's fallback prefill)."""
    row = _input_sample()
    return guess_from_array(row, "the uploaded inputs") if row is not None else None


def _team():
    """The workspace and who is signed in (imported here: ``ui.workspace`` imports this module)."""
    from ui import workspace as team

    return team.workspace(), team.actor()


def _load_upload(blob: UploadedBlob) -> LoadedModel:
    spec = _explicit_spec()
    sample = _input_sample() if spec is None else None  # keyed by its shape and dtype (`models.sample_key`)
    return _cached_upload(blob, spec, sample)  # `open_model` asks the library, which checks the role


def current_model() -> LoadedModel:
    """The model the pages explain: the sample, or in upload mode the upload.

    Raises:
        PermissionDenied: the signed-in user may not run a model in the page (below editor).
        GlassboxError: upload mode with no model yet, or why the upload does not load.
    """
    if upload_mode():
        blob = model_upload()
        if blob is None:
            raise GlassboxError("No model is uploaded yet.",
                                "Upload a checkpoint in the sidebar, or choose Sample model.")
        return _load_upload(blob)
    name = current_sample_name()  # a sample runs in the page too: `open_model` checks the role
    if name not in ALL_SAMPLES:
        name = DEFAULT_SAMPLE
    return _cached_sample(name)


def _matching_sample(spec: InputSpec) -> str | None:
    for name in SAMPLE_NAMES:
        sample_spec = _cached_sample(name).spec
        if sample_spec.modality == spec.modality and tuple(sample_spec.input_shape) == tuple(spec.input_shape):
            return name
    return None


def current_inputs() -> InputBatch:
    """Inputs for the current model: uploads if any, else the matching sample's (a causal LM has none:
    its prompts are the Generate page's)."""
    model = current_model()
    if model.spec.is_causal_lm:
        raise GlassboxError(CAUSAL_LM_NOTE)
    blobs = input_uploads()
    if blobs:
        batches = [read_inputs(b.data, model.spec, filename=b.name) for b in blobs]
        return batches[0] if len(batches) == 1 else InputBatch.concatenate(batches)
    name = current_sample_name() or _matching_sample(model.spec)
    if name is None:
        raise GlassboxError(
            "This model has no inputs yet.",
            "Upload inputs in the sidebar (.npy/.npz, images, .csv or .txt).",
        )
    arrays = _cached_sample_inputs(name)
    return InputBatch.from_arrays(arrays["inputs"], model.spec, labels=arrays.get("labels"))


def stop_if_causal_lm(model: LoadedModel) -> None:
    """A classifier's view on a causal LM: it says so in one line (`CAUSAL_LM_NOTE`) and stops."""
    if model.spec.is_causal_lm:
        st.info(CAUSAL_LM_NOTE)
        st.stop()


# -- errors ----------------------------------------------------------------------
def show_error(exc: BaseException, doing: str | None = None) -> None:
    """Render an error as one clear line (never a traceback), shown literally: it quotes user text."""
    prefix = f"{doing} failed: " if doing else ""
    if not isinstance(exc, GlassboxError):
        log.exception("unexpected error", exc_info=exc)
    st.error(escape_markdown(prefix + one_line(exc)), icon="⚠️")


@contextlib.contextmanager
def error_boundary(doing: str) -> Iterator[None]:
    """``with error_boundary("Explaining"):`` turns any failure into a message."""
    try:
        yield
    except Exception as exc:  # st.stop()/st.rerun() raise BaseException subclasses and pass through
        show_error(exc, doing)


def show_trusted_banner() -> None:
    if trusted_mode():
        st.warning("Trusted mode is ON: full pickles are loaded. Only use it for your own files.", icon="🔓")


# -- training files uploaded for a model (Training page) -> Overview and its report ----------------
_TRAINING_KEY = "gb_training_uploads"


def remember_training_uploads(model_sha: str, logs: list[tuple[str, bytes]], ckpts: list[tuple[str, bytes]]) -> None:
    """Keep the Training page's uploads for ``model_sha`` so the Overview and its report use them too.

    The files go to a private folder of this session under the temporary directory (written
    whole, then renamed), because the views and the report read logs and checkpoints by path.
    """
    fingerprint = (model_sha, tuple((n, len(d)) for n, d in logs), tuple((n, len(d)) for n, d in ckpts))
    if st.session_state.get("gb_training_fingerprint") == fingerprint:  # a rerun: already kept
        return
    token = st.session_state.setdefault("gb_session_token", secrets.token_hex(8))
    folder = Path(tempfile.gettempdir()) / "glassbox-training" / token / model_sha[:16]
    paths: dict[str, list[str]] = {"logs": [], "ckpts": []}
    for kind, files in (("logs", logs), ("ckpts", ckpts)):
        target = folder / kind
        target.mkdir(parents=True, exist_ok=True, mode=0o700)
        for name, data in files:
            path = target / (Path(name).name or "upload")
            tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
            paths[kind].append(str(path))
    st.session_state.setdefault(_TRAINING_KEY, {})[model_sha] = (paths["logs"], paths["ckpts"])
    st.session_state["gb_training_fingerprint"] = fingerprint


def training_uploads(model_sha: str) -> tuple[list[str], list[str]]:
    """(log paths, checkpoint paths) the Training page received for ``model_sha``; empty when none."""
    return st.session_state.get(_TRAINING_KEY, {}).get(model_sha, ([], []))


def training_sources(model_sha: str) -> tuple[list[str], list[str]]:
    """Training logs and checkpoints (paths) of the current model, oldest first: those uploaded on the
    Training page for ``model_sha``, else the current sample's own (what the Overview and its report read)."""
    from explain.training.checkpoints import checkpoint_sort_key

    uploaded_logs, uploaded_ckpts = training_uploads(model_sha)
    sample = current_sample_name()
    if uploaded_logs or uploaded_ckpts or sample is None:
        return uploaded_logs, sorted(uploaded_ckpts, key=lambda p: checkpoint_sort_key(Path(p).name))
    root = Path(sample_dir(sample))
    logs = [str(root / "train_log.csv")] if (root / "train_log.csv").is_file() else []
    return logs, sorted((str(p) for p in (root / "checkpoints").glob("*.pt")),
                        key=lambda p: checkpoint_sort_key(Path(p).name))


def current_masks() -> np.ndarray | None:
    """Ground-truth masks of the current inputs ([N, ...] bool) when they are a sample's that ships
    them (shapes), else None (uploaded inputs carry none; the Quality tab takes a masks upload)."""
    if input_uploads():
        return None
    name = current_sample_name() or _matching_sample(current_model().spec)
    masks = _cached_sample_inputs(name).get("masks") if name else None
    return None if masks is None else np.asarray(masks, dtype=bool)
