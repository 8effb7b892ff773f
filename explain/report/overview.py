"""The Overview's computations: one input explained, its layers, its training runs and its
attention, as the Overview page shows them beside each other (the page only places them).

Each function answers one concept of the page and remembers its last answers in this process
(keyed by content: the model's sha256, the input's digest, the files' paths and sizes), so a
rerun of a view already computed draws without computing:

    layers = layer_overview(model, x)              # the layer table (`layer_frame`) + the layers offered
    runs = training_overview(logs, checkpoints)    # the runs, their findings, where they came from
    fig = training_figure(runs, epoch)             # the curves as the Overview draws them
    attr = explain_input(model, x, method)         # the Output column's map (`OVERVIEW_STEPS` steps)
    at_ckpt = checkpoint_model(model, path)        # the model with a checkpoint's weights
    layer = explain_input_layer(model, x, layer, method, steps)
    maps = last_attention(model, x)                # a text model's last-layer attention, or why not

A sample's **first view** (input #0, the default method, the final weights: what opening the app
shows) is an Overview run's record (`first_view_record`), shipped beside the sample and saved once in
the workspace (`explain.report.first_view`); a server reads it back (`remember_first_view`) instead of
measuring the layers and explaining again, so the app's first map needs no computation.

The answers are about a model, never holders of it: an answer kept for a model object (a checkpoint's
model, or the model whose id a key holds) refers to it weakly and goes when the model goes, so a model
lives as long as the process's one model cache (`explain.service.models.shared_models`) keeps it (and a
checkpoint's model as long as the model it was made from).
"""
from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from explain.attribution import Attribution
from explain.digest import digest_array
from explain.errors import GlassboxError, IncompatibleInput
from explain.finding import Finding, sort_findings
from explain.model import LoadedModel
from explain.report.first_view import (  # noqa: F401 - DEFAULT_METHOD, FIRST_VIEW, OVERVIEW_STEPS re-exported
    DEFAULT_METHOD,
    FIRST_VIEW,
    OVERVIEW_STEPS,
    FirstView,
)
from explain.report.first_view import first_view_id as _first_view_id
from explain.service.model_locks import hold_model
from explain.workspace.runs import RunRecord, spec_inputs

#: key -> (a weak reference to the object the answer is about, or None; the answer)
_MEMO: OrderedDict[tuple, tuple[weakref.ref | None, Any]] = OrderedDict()
_MEMO_LOCK = threading.RLock()  # re-entered when a model dies inside a locked step (`_forget`)
_MEMO_SIZE = 64


def _forget(ref: weakref.ref, memo: OrderedDict = _MEMO, lock: threading.RLock = _MEMO_LOCK) -> None:
    """A model (or other object answers were kept about) is gone: its answers go too (a checkpoint's model
    kept for it among them). The memo and lock are bound here: a model collected at interpreter exit
    calls this after the module's globals are cleared."""
    with lock:
        for key in [k for k, (r, _) in memo.items() if r is ref]:
            memo.pop(key, None)


def _about(found: tuple[weakref.ref | None, Any], of: Any) -> bool:
    """Whether an answer kept as ``found`` is about ``of`` (None: about no object)."""
    return found[0] is None if of is None else found[0] is not None and found[0]() is of


def _keep(key: tuple, value: Any, of: Any = None) -> None:
    with _MEMO_LOCK:
        _MEMO[key] = (None if of is None else weakref.ref(of, _forget), value)
        _MEMO.move_to_end(key)
        while len(_MEMO) > _MEMO_SIZE:
            _MEMO.popitem(last=False)


def _remembered(key: tuple, compute: Callable[[], Any], of: Any = None) -> Any:
    """``compute()``'s answer, kept under ``key`` (the last `_MEMO_SIZE` answers of this module);
    ``of``: the object the answer is about when the key holds its ``id`` (a model built from a
    checkpoint), referred to weakly: an answer kept for another object that had the same id is not
    returned, and the answers about an object go with it."""
    with _MEMO_LOCK:
        found = _MEMO.get(key)
        if found is not None and _about(found, of):
            _MEMO.move_to_end(key)
            return found[1]
    value = compute()
    _keep(key, value, of)
    return value


def _file_key(path: str) -> tuple:
    try:
        stat = os.stat(path)
        return path, stat.st_size, stat.st_mtime_ns
    except OSError:
        return path, None, None


def _holding(model: LoadedModel, compute: Callable[[], Any], shared: bool = False) -> Callable[[], Any]:
    """``compute`` run with ``model``'s lock held (`explain.service.model_locks.hold_model`), only when an
    answer is computed: the page's hooked work (layer probes, attention, attribution) exclusive, so it
    waits for a job running on the same model object and no hook of either fires in the other's passes;
    a forward pass alone (``shared``) beside jobs that share the model."""
    def held() -> Any:
        with hold_model(model, shared=shared):
            return compute()

    return held


def probabilities(model: LoadedModel, inputs: np.ndarray) -> np.ndarray:
    """[N, K] class probabilities of ``inputs`` (`LoadedModel.predict_proba`)."""
    # by the model object too: a checkpoint's model (`checkpoint_model`) has its reference's sha256
    return _remembered(("probs", model.sha256, id(model), digest_array(inputs)),
                       _holding(model, lambda: model.predict_proba(inputs), shared=True),
                       of=model)


@dataclass(frozen=True)
class LayerOverview:
    """The Structure page's layer table at the depth it opens at (`layer_frame`), and the layers a
    layer attribution can be asked of (`classify_layers`; none for a model whose layers are hidden)."""

    frame: Any  # pandas.DataFrame
    choices: Any  # explain.output.layer_attribution.LayerChoices


def layer_overview(model: LoadedModel, x: np.ndarray) -> LayerOverview:
    """The layer table of ``x`` [1, ...] and the layers offered for attribution."""
    def compute() -> LayerOverview:
        from explain.output.layer_attribution import LayerChoices, classify_layers
        from explain.structure.layers import build_layer_table, layer_frame

        frame = layer_frame(build_layer_table(model, x))
        try:
            choices = classify_layers(model, x)
        except GlassboxError:  # not an eager model: the table still shows
            choices = LayerChoices([], {})
        return LayerOverview(frame, choices)

    return _remembered(("layers", model.sha256, digest_array(x)), _holding(model, compute))


@dataclass(frozen=True)
class TrainingOverview:
    """The training runs (several logs of one series are runs to compare, as on the Training page and
    in the report: `analysis.read_training_runs`), each run's findings (worst first) and their names."""

    histories: list
    findings: list[list[Finding]]
    origin: str
    names: list[str]

    @property
    def all_findings(self) -> list[Finding]:
        return [f for fs in self.findings for f in fs]


def training_overview(logs: Sequence[str], checkpoints: Sequence[str]) -> TrainingOverview:
    """The runs read from ``logs`` / ``checkpoints`` (paths) and their findings (`diagnose`)."""
    def compute() -> TrainingOverview:
        from explain.report.analysis import read_training_runs
        from explain.training.findings import diagnose
        from explain.viz.training import run_names

        histories, origin = read_training_runs(list(logs), list(checkpoints))
        return TrainingOverview(histories, [sort_findings(diagnose(h)) for h in histories], origin,
                                run_names(histories))

    return _remembered(("training", tuple(map(_file_key, logs)), tuple(map(_file_key, checkpoints))), compute)


def training_figure(runs: TrainingOverview, epoch: float | None = None, height: int = 420):
    """The Overview's curves: one run with its findings marked, or the runs overlaid; the legend
    below, and a dotted line at ``epoch`` (the checkpoint the map explains). Kept: do not modify it."""
    def compute():
        from explain.viz.training import figure_overview

        return figure_overview(runs.histories, runs.findings, runs.names, epoch, height)

    return _remembered(("training_figure", id(runs), epoch, height), compute, of=runs)


def checkpoint_model(model: LoadedModel, path: str) -> LoadedModel:
    """``model`` with the weights of the checkpoint file at ``path`` (`evolution.model_at`), kept while
    ``model`` lives."""
    from explain.training.checkpoints import read_checkpoint
    from explain.training.evolution import model_at

    return _remembered(("checkpoint", model.sha256, id(model), _file_key(path)),
                       lambda: model_at(read_checkpoint(path), model), of=model)


def explain_input(model: LoadedModel, x: np.ndarray, method: str, steps: int = OVERVIEW_STEPS) -> Attribution:
    """``method`` on ``x`` [1, ...] for the predicted class, with ``steps`` where the method has steps
    (the attribution cache answers a map already computed)."""
    def compute() -> Attribution:
        from explain.output.methods import get_method

        explainer = get_method(method)
        params = {"steps": int(steps)} if "steps" in explainer.params else {}
        return explainer.explain(model, x, **params)

    return _remembered(_explain_key(model, x, method, steps), _holding(model, compute), of=model)


def _explain_key(model: LoadedModel, x: np.ndarray, method: str, steps: int) -> tuple:
    return "explain", model.sha256, id(model), digest_array(x), method, int(steps)


def explain_input_layer(model: LoadedModel, x: np.ndarray, layer: str, method: str, steps: int):
    """Attribution of ``x`` [1, ...] to ``layer``'s units (`layer_attribution.explain_layer`)."""
    from explain.output.layer_attribution import explain_layer

    return _remembered(("layer", model.sha256, id(model), digest_array(x), layer, method, int(steps)),
                       _holding(model, lambda: explain_layer(model, x, layer, method=method, steps=int(steps))), of=model)


@dataclass(frozen=True)
class LastAttention:
    """A text model's last-layer attention as the Overview draws it, or why there is none."""

    figure: Any = None
    reason: str | None = None


def last_attention(model: LoadedModel, x: np.ndarray, height: int = 380) -> LastAttention:
    """The heads of the last attention layer for ``x`` [1, L] (the report's `attention_figures`), or
    the reason none can be captured (as the Structure page says it)."""
    def compute() -> LastAttention:
        from explain.report.analysis import attention_figures, attention_tokens
        from explain.structure.attention import attention_unavailable_reason, capture_attention

        why_not = attention_unavailable_reason(model)
        if why_not:
            return LastAttention(reason=why_not)
        try:
            maps = capture_attention(model, x)
        except IncompatibleInput as exc:
            return LastAttention(reason=exc.message)
        tokens, keep = attention_tokens(model, x[0], maps.weights.shape[-1])
        last = maps.weights[-1:, 0]  # [1, head, q, k]
        fig = attention_figures(last, maps.layer_names[-1:], [tokens[i] for i in keep], keep, grid=False)[0]
        fig.update_layout(height=height)
        return LastAttention(figure=fig)

    return _remembered(("attention", model.sha256, digest_array(x), height), _holding(model, compute))


# -- a sample's first view, saved once ------------------------------------------------------------
def is_computed(model: LoadedModel, x: np.ndarray, method: str = DEFAULT_METHOD,
                steps: int = OVERVIEW_STEPS) -> bool:
    """Whether the map and the layers of ``x`` are already at hand in this process."""
    with _MEMO_LOCK:
        found = _MEMO.get(_explain_key(model, x, method, steps))
        return (found is not None and _about(found, model)
                and ("layers", model.sha256, digest_array(x)) in _MEMO)


def first_view_id(model: LoadedModel, x: np.ndarray, method: str = DEFAULT_METHOD) -> str:
    """The run id of ``model``'s first view of ``x`` (the same in every process: saved once)."""
    return _first_view_id(model.sha256, x, method)


def first_view_record(name: str, version: int, model: LoadedModel, x: np.ndarray, index: int,
                      method: str = DEFAULT_METHOD) -> RunRecord:
    """The Overview run of ``x`` [1, ...] (input ``index``) as the page opens on it: its prediction, the
    layer table and the map (`snapshot_record`, as Save run keeps it), the spec, plus what
    `remember_first_view` and the app's first paint need to answer from it (the model's format, the layers
    offered, the map's parameters, seconds, device, precision, its method's completeness tolerance and remedy)."""
    import dataclasses

    import pandas as pd

    from explain.jsonable import to_json_safe
    from explain.output.methods import get_method
    from explain.workspace.records import snapshot_record

    layers, attr, probs = layer_overview(model, x), explain_input(model, x, method), probabilities(model, x)[0]
    record = snapshot_record(
        "overview", name, version, f"Overview of input #{index} of {model.name} (the first view, saved once)", x,
        {"Prediction": pd.DataFrame({"class": [model.spec.class_name(i) for i in range(len(probs))],
                                     "probability": probs}), "Layers": layers.frame},
        results={f"{method}/{k}": v for k, v in attr.to_npz_dict().items() if v is not None})
    explainer = get_method(method)
    view = {"method": method, "steps": OVERVIEW_STEPS, "index": int(index), "format": model.format,
            "params": to_json_safe({k: v for k, v in attr.params.items() if not isinstance(v, np.ndarray)}),
            "seconds": attr.seconds, "device": attr.device, "precision": attr.precision, "notes": list(attr.notes),
            "attributable": list(layers.choices.attributable), "skipped": dict(layers.choices.skipped),
            "tolerance": explainer.tolerance(attr.params), "remedy": explainer.completeness_remedy}
    return dataclasses.replace(record, method=method, inputs={**record.inputs, **spec_inputs(model.spec)},
                               summary={**record.summary, FIRST_VIEW: view})


def first_view_of(record: RunRecord, model: LoadedModel, x: np.ndarray) -> FirstView:
    """``record`` (`first_view_record`) as it reads back: what ``python -m sample_models.train`` ships beside
    a sample (`FirstView.write`)."""
    return FirstView(first_view_id(model, x, record.method or DEFAULT_METHOD), model.sha256, record.summary,
                     dict(record.inputs), dict(record.results))


def remember_first_view(first: FirstView, model: LoadedModel) -> bool:
    """Answer the layers and the map of a first view's input from it (`first_view_record`, read back by
    `explain.report.first_view.find_first_view`) from now on, as if computed here; False for a view that is
    not one of ``model``'s."""
    from explain.output.layer_attribution import LayerChoices
    from explain.structure.layers import FLOPS_COLUMN
    from explain.workspace.records import saved_tables

    if first.sha256 != model.sha256:
        return False
    view = first.view
    frame = saved_tables(first.summary)["Layers"]
    frame[FLOPS_COLUMN] = frame[FLOPS_COLUMN].astype("Int64")  # as `layer_frame` types it (JSON has no <NA>)
    layers = LayerOverview(frame, LayerChoices(list(view["attributable"]), dict(view["skipped"])))
    _keep(("layers", model.sha256, digest_array(first.x)), layers)
    _keep(_explain_key(model, first.x, view["method"], int(view["steps"])), first.attribution(), of=model)
    return True
