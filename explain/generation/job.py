"""A causal LM's generation explained as a job of the queue, saved as a ``generation`` run
(`explain.workspace.run_kinds`).

    params, arrays, title = generation_job(model, name, version, prompts, max_new_tokens=8)  # checked now
    record = run_generation_job(model, params, arrays, progress, between_chunks)  # the worker (`service.runners`)
    saved = saved_generation(run)                # the run read back: a SavedGeneration

The job generates greedily from each prompt (or teacher-forces its given continuation) and attributes
every new token's log-probability to every earlier position (`explain.generation.occlusion.attribute_texts`:
the gradient methods or occlusion), one
prompt at a time: progress moves with the attribution's chunks, and between two prompts the job may be
cancelled or paused (``between_chunks``). Its run holds the arrays of ``python -m explain generate``'s
``G.npz`` (`generation_arrays`, padded to the longest text), each text's quality when asked
(`explain.generation.quality`) and the model's spec, so the Saved runs page and a report draw it
without loading the model.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from explain.attribution import merge_step_raising
from explain.errors import UsageError
from explain.generation.attribution import DEFAULT_STEPS, DEFAULT_TOLERANCE, MAX_STEPS, REFERENCE_METHODS
from explain.generation.causal_lm import causal_lm, max_positions, require_causal_lm
from explain.generation.chat import check_messages, render_chat
from explain.generation.continuation import force_continuations
from explain.generation.contrastive import alternative_tokens, check_contrast
from explain.generation.granularity import GRANULARITIES
from explain.generation.greedy import MAX_NEW_TOKENS, generate_greedy
from explain.generation.occlusion import (
    CONTRAST_METHODS,
    GENERATION_METHODS,
    OCCLUSION,
    attribute_texts,
    contrast_texts,
)
from explain.generation.prompts import MAX_PROMPTS, decode_ids, encode_texts
from explain.generation.quality import REPLACEMENTS, generation_quality
from explain.generation.reference import BASELINES
from explain.generation.result import GenerationAttribution
from explain.generation.sampling import Sampling, generate_sampled
from explain.generation.step_views import (
    MAX_ATTENTION_BYTES,
    MAX_RUN_VIEW_BYTES,
    VIEW_NAMES,
    StepViews,
    read_step_views,
    step_views,
    view_arrays,
    views_answer,
)
from explain.loading.model_process import in_model_process
from explain.model import LoadedModel
from explain.output.metrics import MetricResult
from explain.progress import ProgressFn, report_progress
from explain.spec import InputSpec
from explain.workspace.reruns import max_difference, relative
from explain.workspace.runs import RunRecord, SavedRun, environment, spec_inputs

#: the job kind (`explain.service.runners.RUNNERS`) and the run kind it saves
JOB_KIND = "generate"
RUN_KIND = "generation"
DEFAULT_MAX_NEW = 20  # as ``python -m explain generate``
#: each prompt's share of the bar: generating, attributing, judging
_PHASES = {"generate": (0, 20), "attribute": (20, 85), "quality": (85, 100)}


@dataclass
class SavedGeneration:
    """A generation run read back.

    Attributes:
        attributions: one `GenerationAttribution` per prompt (values [T_i, P_i + T_i]).
        quality: per prompt, metric name -> `MetricResult` per generated token (empty when not asked).
        forced: True when the continuations were given (teacher forcing), False when generated.
        settings: method, steps, baseline, max_new_tokens, quality as the job was asked.
        spec: the model's spec the run stored (its tokenizer names the tokens).
        views: per prompt, what the page shows of its selected step (lens, attention, contrast), or None
            (no generated token, over the run's bound, or a run saved before runs kept them).
    """

    attributions: list[GenerationAttribution]
    quality: list[dict[str, MetricResult]] = field(default_factory=list)
    forced: bool = False
    settings: dict[str, Any] = field(default_factory=dict)
    spec: InputSpec | None = None
    views: list[StepViews | None] = field(default_factory=list)


@in_model_process
def position_limit(model: LoadedModel) -> int | None:
    """The longest sequence ``model``'s positions allow (None: its config sets none)."""
    return max_positions(causal_lm(model))


def padded_ids(rows: Sequence[np.ndarray]) -> np.ndarray:
    """int64 [N, longest] of token id rows, -1 after each row's end."""
    out = np.full((len(rows), max((len(r) for r in rows), default=0)), -1, np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def unpadded_ids(array: np.ndarray) -> list[np.ndarray]:
    """The inverse of `padded_ids`: each row's ids before its first -1."""
    return [row[row >= 0] for row in np.asarray(array, dtype=np.int64)]


def generation_job(model: LoadedModel, name: str, version: int, prompts: Sequence[str], *,
                   continuations: Sequence[str] | None = None, max_new_tokens: int = DEFAULT_MAX_NEW,
                   method: str = "integrated_gradients", steps: int = DEFAULT_STEPS, baseline: str = "pad",
                   granularity: str = "token", sampling: Sampling | None = None, chat: bool = False,
                   chats: Sequence[list[dict[str, str]]] | None = None, quality: bool = False,
                   selected_step: int = 0, contrast: str | None = None, tolerance: float = DEFAULT_TOLERANCE,
                   per_token: Sequence[list[int] | None] | None = None,
                   ) -> tuple[dict[str, Any], dict[str, np.ndarray], str]:
    """Check a generation request against ``model`` (``name@v<version>``) now: the job's params, its
    arrays (``prompt_ids`` [N, P], ``target_ids`` [N, T] with ``continuations``; -1 padded) and title.

    ``granularity`` (token | word | sentence) decides occlusion's groups (`explain.generation.occlusion`);
    ``sampling``: draw the tokens (prompt i with seed ``sampling.seed + i``, as ``generate --sample`` does)
    instead of greedy generation; ``chat``: each prompt is a user's message, through the model's chat template;
    ``chats`` instead of ``prompts``: each a list of messages (system / user / assistant turns), through the
    template. ``selected_step``: the generated step whose attention, lens and ``contrast`` (one token: why the
    step's token rather than it) the run keeps (`explain.generation.step_views`). ``tolerance``: integrated
    gradients' completeness tolerance per generated token (nats, 0: none; steps raised within the budget,
    `explain.generation.attribution.attribute_generation`); ``per_token``: per prompt, the steps each token used
    (a run's record, `generation_rerun`), computed as recorded.

    Raises:
        IncompatibleInput: not a causal LM, a text with no tokens, a chat that is not a list of messages.
        UsageError: no prompts, an unknown method, baseline or granularity, steps or max_new_tokens out of range,
            continuations not one per prompt, a prompt longer than the model's positions allow, a continuation's
            token of no finite log-probability (scored now, `force_continuations`), a contrast of several tokens or
            not in the vocabulary, by a method that has none, at a step past the tokens asked, or of no finite
            log-probability where its context is known now (a continuation's step, a generation's first).
    """
    require_causal_lm(model, "Generate")
    if chats is not None:
        if prompts or isinstance(chats, str) or not isinstance(chats, Sequence) or not chats:
            raise UsageError("Give prompts or chats (a list of chats, each a list of messages), not both.")
        chats = [check_messages(c, f"Chat {i + 1}") for i, c in enumerate(chats)]
        prompts, chat = [c[-1]["content"] for c in chats], True
    elif isinstance(prompts, str) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise UsageError("prompts must be a non-empty list of non-empty texts.")
    elif chat:  # each prompt is one user message
        chats = [[{"role": "user", "content": p}] for p in prompts]
    if len(prompts) > MAX_PROMPTS:
        raise UsageError(f"{len(prompts):,} prompts; at most {MAX_PROMPTS:,} at once.")
    if method not in GENERATION_METHODS:
        raise UsageError(f"Unknown generation method {method!r}.", f"Use one of {', '.join(GENERATION_METHODS)}.")
    if baseline not in (REPLACEMENTS if method == OCCLUSION else BASELINES):
        raise UsageError(f"Unknown baseline {baseline!r} for {method}.",
                         f"Use one of {', '.join(REPLACEMENTS if method == OCCLUSION else BASELINES)}.")
    if granularity not in GRANULARITIES:
        raise UsageError(f"Unknown granularity {granularity!r}.", f"Use one of {', '.join(GRANULARITIES)}.")
    if not 1 <= int(steps) <= MAX_STEPS:
        raise UsageError(f"steps must be 1 .. {MAX_STEPS}, not {steps}.")
    if not 1 <= int(max_new_tokens) <= MAX_NEW_TOKENS:
        raise UsageError(f"max_new_tokens must be 1 .. {MAX_NEW_TOKENS}, not {max_new_tokens}.")
    if not 0 <= float(tolerance) < float("inf"):
        raise UsageError(f"tolerance must be a number >= 0 (nats; 0: none), not {tolerance}.")
    if per_token is not None and (isinstance(per_token, str) or len(per_token) != len(prompts)):
        raise UsageError(f"per_token must hold one record per prompt ({len(prompts)}).")
    if chat:  # the messages through the model's chat template, its special tokens included
        ids = encode_texts(render_chat(model, chats), model.spec, special_tokens=False)
    else:
        ids = encode_texts(list(prompts), model.spec)  # [P_i] each; the prompt as the CLI reads it
    arrays = {"prompt_ids": padded_ids(ids)}
    new = [int(max_new_tokens)] * len(ids)
    if continuations is not None:
        if isinstance(continuations, str) or len(continuations) != len(prompts):
            raise UsageError(f"continuations must be a list of one text per prompt ({len(prompts)}).")
        given = encode_texts(list(continuations), model.spec, special_tokens=False)
        arrays["target_ids"] = padded_ids(given)
        new = [len(g) for g in given]
    limit = position_limit(model)
    for i, (prompt, more) in enumerate(zip(ids, new)):
        if limit and len(prompt) + more > limit:
            raise UsageError(f"Prompt {i + 1} has {len(prompt)} tokens; with {more} more it exceeds the model's "
                             f"{limit} positions.", "Use a shorter prompt or fewer new tokens.")
    selected_step = int(selected_step)
    if not 0 <= selected_step < max(new):
        raise UsageError(f"selected_step must be 0 .. {max(new) - 1} (the tokens after a prompt), not {selected_step}.")
    alternative = None
    if contrast:
        if method not in CONTRAST_METHODS:
            raise UsageError(f"A contrast is attributed by {', '.join(CONTRAST_METHODS)}, not {method}.")
        alternative = alternative_tokens([contrast], model.spec, "The contrast")[0]
    forced = continuations is not None
    if forced:  # scored now (the model process): a token of no finite log-probability is refused before queueing
        texts = force_continuations(model, ids, given)
    if alternative is not None and (forced or selected_step == 0):  # the contrasted step's context known now
        contexts = ids  # a generation's first step: after its prompt
        if forced:
            at = [min(selected_step, len(t.generated_ids) - 1) for t in texts]  # a shorter continuation: its last
            contexts = [t.input_ids[: len(t.prompt_ids) + s] for t, s in zip(texts, at)
                        if int(t.generated_ids[s]) != alternative]  # the token itself: no contrast (`_views`)
        check_contrast(model, contexts, alternative, selected_step)
    params = {"model": name, "version": int(version), "method": method,
              "steps": int(steps) if method == "integrated_gradients" else 1,
              "baseline": baseline if method in (*REFERENCE_METHODS, OCCLUSION) else "",
              "granularity": granularity if method == OCCLUSION else "token",
              "max_new_tokens": 0 if forced else int(max_new_tokens), "forced": forced, "quality": bool(quality),
              "sampling": sampling.to_dict() if sampling is not None and not forced else None, "chat": bool(chat),
              "chats": chats if chat else None, "selected_step": selected_step, "contrast": alternative,
              "tolerance": float(tolerance) if method == "integrated_gradients" else 0.0,
              "per_token": list(per_token) if per_token is not None and method == "integrated_gradients" else None}
    what = "given continuations of" if forced else "generations from"
    return params, arrays, f"{method} on {what} {len(ids)} prompt{'s' * (len(ids) != 1)} of {name}@v{version}"


def run_generation_job(model: LoadedModel, params: dict[str, Any], arrays: dict[str, np.ndarray],
                       progress: ProgressFn | None = None, between_chunks: Callable[[], None] = lambda: None,
                       ) -> RunRecord:
    """What the worker runs for a ``generate`` job (`generation_job` built it): each prompt generated (or
    forced), attributed and, when asked, judged; ``between_chunks()`` between two prompts."""
    prompts = unpadded_ids(arrays["prompt_ids"])
    targets = unpadded_ids(arrays["target_ids"]) if "target_ids" in arrays else None
    baseline = params["baseline"] or "pad"
    results, judged, views = [], [], []
    for i, prompt in enumerate(prompts):
        if i:
            between_chunks()  # one prompt done, no hook on the model: cancel or pause here

        def phase(name: str, i: int = i) -> ProgressFn:
            lo, hi = _PHASES[name]
            return lambda done, total: report_progress(progress, 100 * i + lo + (hi - lo) * done // max(total, 1),
                                                       100 * len(prompts))

        if targets is not None:
            texts = force_continuations(model, [prompt], [targets[i]])
        elif params.get("sampling"):  # prompt i drawn with seed + i, as in one batch of every prompt
            drawn = Sampling(**{**params["sampling"], "seed": int(params["sampling"]["seed"]) + i})
            texts = generate_sampled(model, [prompt], int(params["max_new_tokens"]), drawn, progress=phase("generate"))
        else:
            texts = generate_greedy(model, [prompt], int(params["max_new_tokens"]), progress=phase("generate"))
        recorded = params.get("per_token")  # a re-run: each token's steps as the run used them
        attr = attribute_texts(model, texts, params["method"], int(params["steps"]), baseline,
                               params.get("granularity", "token"), progress=phase("attribute"),
                               tolerance=float(params.get("tolerance") or 0.0),
                               per_token=[recorded[i]] if recorded else None)[0]
        results.append(attr)
        judged.append(generation_quality(model, attr, replace="unk" if baseline == "unk" else "pad")
                      if params.get("quality") and len(attr.generated_ids) else {})
        views.append(_views(model, params, texts[0], attr, MAX_RUN_VIEW_BYTES - sum(v.nbytes for v in views if v)))
    report_progress(progress, 100 * len(prompts), 100 * len(prompts))
    return generation_record(params["model"], int(params["version"]), model, results, judged, params, targets, views)


def _views(model: LoadedModel, params: dict[str, Any], text, attr: GenerationAttribution, room: int) -> StepViews | None:
    """The run's views of one text at its selected step (`explain.generation.step_views`), its contrast when
    asked and the text reaches the step; None when nothing was generated or the run's views are full."""
    t_count, step = len(attr.generated_ids), int(params.get("selected_step") or 0)
    if t_count == 0 or room <= 0:
        return None
    step = min(step, t_count - 1)  # a text that ended early: its last step
    contrast = None
    if params.get("contrast") is not None and int(params["contrast"]) != int(attr.generated_ids[step]):
        contrast = contrast_texts(model, [text], [int(params["contrast"])], step, params["method"],
                                  int(params["steps"]), params["baseline"] or "pad",
                                  params.get("granularity", "token"))[0]
    return step_views(model, attr, step, contrast, attention_budget=min(room, MAX_ATTENTION_BYTES))


def generation_arrays(results: Sequence[GenerationAttribution]) -> dict[str, np.ndarray]:
    """``python -m explain generate``'s G.npz arrays of ``results``, padded to the longest text: ``input_ids``
    [N, L] and ``generated_ids`` [N, T] (-1 after a text's end), ``prompt_length`` / ``generated_length`` [N],
    ``values`` [N, T, L] (0 elsewhere), ``logprobs``, ``baseline_logprobs``, ``completeness_error`` [N, T]
    (NaN past a text's end)."""
    n = len(results)
    longest = max((r.input_ids.size for r in results), default=0)
    most = max((r.generated_ids.size for r in results), default=0)
    arrays = {
        "input_ids": padded_ids([r.input_ids for r in results]), "prompt_length": np.zeros(n, np.int64),
        "generated_length": np.zeros(n, np.int64), "generated_ids": np.full((n, most), -1, np.int64),
        "values": np.zeros((n, most, longest), np.float32), "logprobs": np.full((n, most), np.nan, np.float32),
        "baseline_logprobs": np.full((n, most), np.nan, np.float32),
        "completeness_error": np.full((n, most), np.nan, np.float32),
    }
    for i, r in enumerate(results):
        t, length = r.generated_ids.size, r.input_ids.size
        arrays["prompt_length"][i], arrays["generated_length"][i] = r.prompt_length, t
        arrays["generated_ids"][i, :t] = r.generated_ids
        arrays["values"][i, :t, :length] = r.values
        for key in ("logprobs", "baseline_logprobs", "completeness_error"):
            arrays[key][i, :t] = getattr(r, key)
    return arrays


def generation_record(name: str, version: int, model: LoadedModel, results: Sequence[GenerationAttribution],
                      quality: Sequence[dict[str, MetricResult]], params: dict[str, Any],
                      targets: Sequence[np.ndarray] | None = None,
                      views: Sequence[StepViews | None] = ()) -> RunRecord:
    """The ``generation`` run: the prompts (and given continuations) with the model's spec, the
    `generation_arrays`, each text's quality (``quality.{i}.{metric}.{key}``) and its selected step's views
    (``views.{i}.*``, `explain.generation.step_views.view_arrays`), the texts in its summary."""
    spec = model.spec
    arrays = generation_arrays(results)
    views_meta = []
    for i, seen in enumerate(views):
        own, meta = view_arrays(i, seen) if seen is not None else ({}, None)
        arrays.update(own)
        views_meta.append(meta)
    judged_meta = []
    for i, judged in enumerate(quality):
        judged_meta.append({m: {"method": q.method, **q.meta()} for m, q in judged.items()})
        for metric, result in judged.items():
            arrays.update({f"quality.{i}.{metric}.{key}": value for key, value in result.to_npz_dict().items()})
    inputs = {"prompt_ids": padded_ids([r.input_ids[: r.prompt_length] for r in results]), **spec_inputs(spec)}
    if targets is not None:
        inputs["target_ids"] = padded_ids(targets)
    errors = arrays["completeness_error"][np.isfinite(arrays["completeness_error"])]
    method = results[0].method if results else params["method"]
    tokens = int(arrays["generated_length"].sum())
    return RunRecord(
        page=RUN_KIND, model=name, version=int(version), method=method,
        title=(f"Re-run of {params['rerun_of']}: " if params.get("rerun_of") else "")
        + f"{method.replace('_', ' ')} on {tokens} token{'s' * (tokens != 1)} after {len(results)} "
          f"prompt{'s' * (len(results) != 1)} of {model.name}",
        params={**{k: params.get(k) for k in ("method", "steps", "baseline", "granularity", "max_new_tokens", "forced",
                                              "quality", "sampling", "chat", "chats", "selected_step", "contrast",
                                              "tolerance", "views")}, **step_record(results)},
        inputs=inputs, results=arrays,
        summary={"texts": [decode_ids(r.generated_ids, spec) for r in results],
                 "prompts": [decode_ids(r.input_ids[: r.prompt_length], spec) for r in results],
                 "max_completeness_error": float(errors.max()) if errors.size else None,
                 "attribution_params": [dict(r.params) for r in results], "seconds": [float(r.seconds) for r in results],
                 "notes": [list(r.notes) for r in results], "quality": judged_meta, "views": views_meta,
                 **({"rerun_of": params["rerun_of"]} if params.get("rerun_of") else {})},
        environment=environment())


def step_record(results: Sequence[GenerationAttribution]) -> dict[str, Any]:
    """What integrated gradients' tolerance did over the run's texts, as a classifier run records it:
    ``per_token`` (per prompt, each token's steps, None where none was raised: what a re-run computes again)
    and ``step_raising`` (`explain.attribution.merge_step_raising` of the texts'); {} when nothing was raised."""
    used = [(r.params.get("per_token") or {}).get("steps") for r in results]
    merged = merge_step_raising([r.params.get("step_raising") for r in results])
    return {**({"per_token": used} if any(u is not None for u in used) else {}),
            **({"step_raising": merged} if merged is not None else {})}


def generation_rerun(run: SavedRun) -> tuple[dict[str, Any], dict[str, np.ndarray], str]:
    """A saved generation run asked again (the job's params, arrays and title): its prompts' ids and given
    continuations as they were encoded, its settings, and each token's integrated-gradients steps as recorded
    (``per_token``), so the tokens come out as they were (greedy, or sampled with the same seeds) and are
    attributed exactly as the run attributed them."""
    info = run.info
    params = {"model": info.model, "version": int(info.version), "selected_step": 0, "contrast": None, "chats": None,
              **{k: v for k, v in info.params.items() if k != "step_raising"}, "rerun_of": info.id}
    params.setdefault("per_token", None)
    arrays = {k: np.asarray(run.inputs[k]) for k in ("prompt_ids", "target_ids") if k in run.inputs}
    return params, arrays, f"Re-run of {info.id}: {info.title}"


def generation_differences(saved: SavedGeneration, fresh: SavedGeneration) -> list[dict[str, Any]]:
    """How a re-run (``fresh``, `generation_rerun`'s run) differs from the generation run it repeats: per prompt
    whether the tokens are the same, the largest absolute difference of the attributions (also relative to the
    saved ones' largest value) and both largest completeness errors (NaN where undefined or not comparable)."""
    rows = []
    for i, attr in enumerate(saved.attributions):
        again = fresh.attributions[i] if i < len(fresh.attributions) else None
        same = again is not None and np.array_equal(again.input_ids, attr.input_ids)
        diff = max_difference(attr.values, again.values) if same else float("nan")
        rows.append({"prompt": i + 1, "same tokens": bool(same), "max |difference|": diff,
                     "relative to the largest value": relative(diff, attr.values),
                     "saved completeness error": _worst(attr.completeness_error),
                     "now completeness error": _worst(again.completeness_error) if again is not None else float("nan")})
    return rows


def _worst(errors: np.ndarray) -> float:
    """The largest finite completeness error, NaN when none is defined."""
    finite = np.asarray(errors, dtype=np.float64)[np.isfinite(errors)]
    return float(finite.max()) if finite.size else float("nan")


def saved_generation(run: SavedRun) -> SavedGeneration:
    """The inverse of `generation_record`: each text's `GenerationAttribution` and quality."""
    r, summary = run.results, run.info.summary
    attributions, quality = [], []
    for i, (p, t) in enumerate(zip(r["prompt_length"], r["generated_length"])):
        p, t = int(p), int(t)
        attributions.append(GenerationAttribution(
            r["input_ids"][i, : p + t], p, r["values"][i, :t, : p + t], r["logprobs"][i, :t],
            r["baseline_logprobs"][i, :t], r["completeness_error"][i, :t], run.info.method or "",
            summary["attribution_params"][i], summary["seconds"][i], summary["notes"][i]))
        judged = {}
        for metric, meta in summary["quality"][i].items():
            prefix = f"quality.{i}.{metric}."
            own = {key[len(prefix):]: value for key, value in r.items() if key.startswith(prefix)}
            judged[metric] = MetricResult.from_npz_dict(metric, meta["method"], own, meta)
        quality.append(judged)
    kept = summary.get("views") or []  # a run saved before runs kept views has none
    views = [read_step_views(i, r, kept[i] if i < len(kept) else None, a) for i, a in enumerate(attributions)]
    return SavedGeneration(attributions, quality, bool(run.info.params.get("forced")), dict(run.info.params), run.spec,
                           views)


def run_generation(ctx) -> RunRecord:
    """The ``generate`` job's runner (`explain.service.runners.JobContext` in): its model held for the job,
    progress and cancel through the context."""
    p = ctx.job.params
    return run_generation_job(ctx.model(p["model"], int(p["version"])), p, ctx.inputs, ctx.progress,
                              ctx.between_chunks)


#: what ``parameters`` of a generation request may hold (the API's ``:generate``), with each one's type
REQUEST_PARAMETERS = {"targets": list, "max_new_tokens": int, "method": str, "steps": int, "baseline": str,
                      "granularity": str, "sampling": dict, "chat": bool, "messages": list, "quality": bool,
                      "selected_step": int, "contrast": str, "tolerance": float, "views": list}
_TYPE_NAMES = {list: "a list of texts", int: "an integer", str: "a string", bool: "true or false",
               dict: "an object (temperature, top_k, top_p, seed)", float: "a number"}


def generation_request(model: LoadedModel, name: str, version: int, prompts: Any, parameters: dict[str, Any] | None,
                       messages: Any = None) -> tuple[dict[str, Any], dict[str, np.ndarray], str]:
    """A request as the API takes it (``{"prompts": [...], "parameters": {...}}``: `REQUEST_PARAMETERS`, ``targets``
    the given continuations, one per prompt, ``sampling`` a `Sampling`'s fields, ``views`` the kept views the
    answer holds, `VIEW_NAMES`: `generation_answer`) checked by `generation_job`: the job's params, arrays and
    title. ``messages`` (or ``parameters.messages``), instead of prompts: a chat (a list of ``{"role", "content"}``:
    system / user / assistant turns) or a list of chats, through the model's chat template.

    Raises:
        UsageError: an unknown parameter or one of the wrong type, prompts and messages both or neither, and
            whatever `generation_job` refuses.
    """
    given = dict(parameters or {})
    for key, value in given.items():
        kind = REQUEST_PARAMETERS.get(key)
        if kind is None:
            raise UsageError(f"Unknown parameter {key!r}.", f"Known: {', '.join(REQUEST_PARAMETERS)}.")
        if not isinstance(value, (kind, int) if kind is float else kind) or (kind in (int, float) and isinstance(value, bool)):
            raise UsageError(f"parameters.{key} must be {_TYPE_NAMES[kind] if key != 'messages' else 'a list'}.")
    if not isinstance(prompts, list):
        raise UsageError("prompts must be a non-empty list of non-empty texts.")
    continuations = given.pop("targets", None)
    if continuations is not None and not all(isinstance(c, str) for c in continuations):
        raise UsageError(f"parameters.targets must be {_TYPE_NAMES[list]}, one per prompt.")
    if "sampling" in given:
        try:
            given["sampling"] = Sampling(**given["sampling"])
        except TypeError:
            raise UsageError("parameters.sampling takes temperature, top_k, top_p and seed.") from None
    views = given.pop("views", [])
    if not all(isinstance(v, str) and v in VIEW_NAMES for v in views):
        raise UsageError(f"parameters.views must be a list of {', '.join(VIEW_NAMES)}, not {views}.")
    if "contrast" in views and not given.get("contrast"):
        raise UsageError("parameters.views has contrast but no parameters.contrast (the alternative token) was given.")
    chats = given.pop("messages", None)
    chats = messages if messages is not None else chats  # the body's, else the parameter's
    if chats is not None:
        if prompts:
            raise UsageError("Give prompts or messages, not both.", "A chat's last user message is its prompt.")
        if not isinstance(chats, list) or not chats:
            raise UsageError("messages must be a chat (a list of {role, content}) or a list of chats.")
        chats = [chats] if isinstance(chats[0], dict) else chats  # one chat, or several
    params, arrays, title = generation_job(model, name, version, prompts, continuations=continuations, chats=chats,
                                           **given)
    return {**params, "views": sorted(set(views))}, arrays, title


def generation_answer(saved: SavedGeneration) -> dict[str, Any]:
    """A generation run as the API answers it: per prompt its ``texts``, ``input_ids`` (prompt + generated),
    ``prompt_length``, ``generated_ids``, ``attributions`` ([T, P + T] each), ``logprobs`` and
    ``completeness_error`` (null where undefined); ``views`` when the request asked some (``parameters.views``) or a
    contrast: each text's kept views of its selected step (`explain.generation.step_views.views_answer`, bounded)."""
    spec = saved.spec
    attrs = saved.attributions
    return {"texts": [decode_ids(a.generated_ids, spec) for a in attrs] if spec is not None else None,
            "input_ids": [a.input_ids.tolist() for a in attrs], "prompt_length": [a.prompt_length for a in attrs],
            "generated_ids": [a.generated_ids.tolist() for a in attrs],
            "attributions": [a.values.tolist() for a in attrs], "logprobs": [a.logprobs.tolist() for a in attrs],
            "completeness_error": [[None if np.isnan(e) else float(e) for e in a.completeness_error] for a in attrs],
            **_answered_views(saved)}


def _answered_views(saved: SavedGeneration) -> dict[str, Any]:
    """``{"views": [per text]}`` of the views the request asked (its ``views``, and ``contrast`` with a contrast);
    {} when it asked none."""
    asked = [*(saved.settings.get("views") or ()), *(["contrast"] if saved.settings.get("contrast") is not None else [])]
    if not asked:
        return {}
    kept = saved.views or [None] * len(saved.attributions)
    return {"views": [views_answer(v, asked, saved.spec) for v in kept]}
