"""A prompt explained end to end, as the Generate page shows it, and kept in one file.

`explain_prompt`: greedy generation (or a given continuation, teacher-forced), each new token's
attribution to every earlier position, the logit lens along the text and, optionally, the
quality of the attribution (`explain.generation.quality`). `save_explained` / `read_explained`
write and read it as one ``.npz`` (plain arrays and a JSON ``meta``, no pickle): a causal-LM
sample's **first view** is computed by ``python -m sample_models.train`` and saved beside the
sample (`FIRST_VIEW_FILE`), so the Generate page opens on it already explained.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from explain.errors import CorruptFile, IncompatibleInput, UsageError, one_line
from explain.generation.attribution import DEFAULT_STEPS, REFERENCE_METHODS
from explain.generation.chat import render_chat
from explain.generation.continuation import force_continuations
from explain.generation.greedy import generate_greedy
from explain.generation.logit_lens import logit_lens
from explain.generation.occlusion import OCCLUSION, attribute_texts
from explain.generation.prompts import encode_texts
from explain.generation.quality import generation_quality
from explain.generation.result import GeneratedText, GenerationAttribution, LogitLens
from explain.generation.sampling import Sampling, generate_sampled
from explain.model import LoadedModel
from explain.output.metrics import MetricResult
from explain.progress import ProgressFn, report_progress

#: The file a sample's first view is saved in, beside its model.
FIRST_VIEW_FILE = "first_view.npz"
#: Tokens the logit lens lists per layer.
LENS_TOP_K = 5
DEFAULT_MAX_NEW = 8
IG = "integrated_gradients"


@dataclass
class ExplainedGeneration:
    """A prompt's continuation and why each token of it.

    Attributes:
        settings: prompt, continuation ("" when generated), max_new_tokens, method, steps, baseline.
        model_sha256: the model it was computed with.
        text, attribution: the continuation and its attribution matrix (values [T, P + T]).
        lens: the logit lens of the text minus its last token ([1, layers + 1, P + T - 1, k]).
        quality: metric name -> `MetricResult` per generated token (empty when not asked).
    """

    settings: dict[str, Any]
    model_sha256: str
    text: GeneratedText
    attribution: GenerationAttribution
    lens: LogitLens
    quality: dict[str, MetricResult] = field(default_factory=dict)


def settings_of(prompt: str, continuation: str = "", max_new_tokens: int = DEFAULT_MAX_NEW, method: str = IG,
                steps: int = DEFAULT_STEPS, baseline: str = "pad", granularity: str = "token",
                sampling: Sampling | None = None, chat: bool = False,
                turns: Sequence[dict[str, str]] = ()) -> dict[str, Any]:
    """The settings that decide a result (steps only for integrated gradients, the baseline for the methods
    that have one, occlusion's granularity, sampling's settings when sampled, ``chat`` when the prompt is a
    user message through the chat template, after the chat's earlier ``turns`` (system / user / assistant
    messages) when any; the defaults leave their keys out): equal settings of the same
    model give the same result."""
    forced = bool(continuation.strip())
    settings = {"prompt": prompt, "continuation": continuation if forced else "",
                "max_new_tokens": 0 if forced else int(max_new_tokens), "method": method,
                "steps": int(steps) if method == IG else 1, "baseline": baseline if method in (*REFERENCE_METHODS, OCCLUSION) else ""}
    if method == OCCLUSION and granularity != "token":
        settings["granularity"] = granularity
    if sampling is not None and not forced:
        settings.update(sampling.to_dict())
    if chat:
        settings["chat"] = True
        if turns:
            settings["turns"] = [{"role": m["role"], "content": m["content"]} for m in turns]
    return settings


def chat_of(settings: dict[str, Any]) -> list[dict[str, str]]:
    """The chat of chat ``settings`` (`settings_of`): its earlier turns, then the prompt as the user's message."""
    return [*settings.get("turns", []), {"role": "user", "content": settings["prompt"]}]


def explain_prompt(model: LoadedModel, settings: dict[str, Any], quality: bool = True,
                   progress: ProgressFn | None = None) -> ExplainedGeneration:
    """Generate from ``settings`` (`settings_of`) and explain every new token.

    Raises:
        UsageError: an empty prompt. GlassboxError: what generation or attribution refuse.
    """
    if not str(settings.get("prompt", "")).strip():
        raise UsageError("The prompt is empty.", "Write a prompt for the model to continue.")
    total = 100

    def phase(lo: int, hi: int):
        return lambda done, count: report_progress(progress, lo + (hi - lo) * done // max(count, 1), total)

    if settings.get("chat"):  # the prompt is the user's last message, through the model's chat template
        rendered = render_chat(model, [chat_of(settings)])
        prompts = encode_texts(rendered, model.spec, special_tokens=False)
    else:
        prompts = encode_texts([settings["prompt"]], model.spec)
    if settings["continuation"]:
        given = encode_texts([settings["continuation"]], model.spec, special_tokens=False)
        texts = force_continuations(model, prompts, given)
    elif "seed" in settings:
        sampling = Sampling(*(settings[k] for k in ("temperature", "top_k", "top_p", "seed")))
        texts = generate_sampled(model, prompts, settings["max_new_tokens"], sampling, progress=phase(0, 20))
    else:
        texts = generate_greedy(model, prompts, settings["max_new_tokens"], progress=phase(0, 20))
    baseline = settings["baseline"] or "pad"
    attr = attribute_texts(model, texts, settings["method"], settings["steps"], baseline,
                           settings.get("granularity", "token"), progress=phase(20, 80))[0]
    # one pass over the text minus its last token: position P + t - 1 is where token t is predicted
    try:
        lens = logit_lens(model, [texts[0].input_ids[:-1]], top_k=LENS_TOP_K, progress=phase(80, 90))
    except IncompatibleInput as exc:  # hidden states out of reach (a .pt2 gives logits only): the rest still stands
        width = len(texts[0].input_ids) - 1
        lens = LogitLens(np.full((1, 0, width, LENS_TOP_K), -1), np.zeros((1, 0, width, LENS_TOP_K)), [width],
                         [one_line(exc)])
    judged = {}
    if quality and len(attr.generated_ids):
        judged = generation_quality(model, attr, replace="unk" if baseline == "unk" else "pad")
    report_progress(progress, total, total)
    return ExplainedGeneration(dict(settings), model.sha256, texts[0], attr, lens, judged)


def save_explained(path: str | Path, explained: ExplainedGeneration) -> None:
    """Write ``explained`` as one ``.npz``: its arrays, and ``meta`` (JSON) for the rest."""
    a, t, lens = explained.attribution, explained.text, explained.lens
    arrays = {"prompt_ids": t.prompt_ids, "generated_ids": t.generated_ids, "text_logprobs": t.logprobs,
              "values": a.values, "logprobs": a.logprobs, "baseline_logprobs": a.baseline_logprobs,
              "completeness_error": a.completeness_error, "lens_top_ids": lens.top_ids,
              "lens_top_probs": lens.top_probs, "lens_lengths": lens.lengths}
    quality_meta = {}
    for name, result in explained.quality.items():
        arrays.update({f"quality.{name}.{key}": value for key, value in result.to_npz_dict().items()})
        quality_meta[name] = {"method": result.method, **result.meta()}
    meta = {"settings": explained.settings, "model_sha256": explained.model_sha256, "forced": bool(t.forced),
            "method": a.method, "params": a.params, "seconds": a.seconds, "notes": a.notes,
            "lens_notes": lens.notes, "quality": quality_meta}
    np.savez_compressed(path, meta=np.array(json.dumps(meta)), **arrays)


def read_explained(path: str | Path) -> ExplainedGeneration:
    """The inverse of `save_explained`.

    Raises:
        CorruptFile: not a file `save_explained` wrote.
    """
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
        meta = json.loads(str(arrays.pop("meta")))
        text = GeneratedText(arrays["prompt_ids"], arrays["generated_ids"], arrays["text_logprobs"], meta["forced"])
        attr = GenerationAttribution(text.input_ids, len(text.prompt_ids), arrays["values"], arrays["logprobs"],
                                     arrays["baseline_logprobs"], arrays["completeness_error"], meta["method"],
                                     meta["params"], meta["seconds"], meta["notes"])
        lens = LogitLens(arrays["lens_top_ids"], arrays["lens_top_probs"], arrays["lens_lengths"], meta["lens_notes"])
        quality = {}
        for name, info in meta["quality"].items():
            own = {key.split(".", 2)[2]: value for key, value in arrays.items() if key.startswith(f"quality.{name}.")}
            quality[name] = MetricResult.from_npz_dict(name, info["method"], own, info)
        return ExplainedGeneration(dict(meta["settings"]), str(meta["model_sha256"]), text, attr, lens, quality)
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise CorruptFile(f"{Path(path).name} is not a saved generation ({type(exc).__name__}).") from None
