"""What the Generate page shows of a text's selected step, kept in a generation run.

The page computes these live; a ``generation`` run (`explain.generation.job`) keeps them so the Saved
runs page and a report draw what the page drew without loading the model:

- the logit lens at every position that predicts a generated token (position P + t - 1 for token t):
  `explain.generation.logit_lens.logit_lens` of the text minus its last token, ``top_ids`` / ``top_probs``
  [layers + 1, T, k] (`LENS_TOP_K` tokens per layer, the page's);
- the attention of the selected step's query row per layer and head, and its rollout row
  (`explain.generation.attention.text_attention`, `causal_rollout`), for the selected step and the ones
  after it: at most `MAX_ATTENTION_STEPS` steps and `MAX_ATTENTION_BYTES` of weights per text;
- the contrast at the selected step when one was asked (`explain.generation.occlusion.contrast_texts`).

A model whose hidden states are out of reach (a ``.pt2`` gives its logits only,
`explain.generation.causal_lm.hidden_states_out_of_reach`) keeps no layers (`StepViews.has_layers`): its
views are the selected step, the contrast and that one line among the notes.
A run keeps views for its texts while they fit `MAX_RUN_VIEW_BYTES` together; the rest say so in a note.
`view_arrays` / `read_step_views` are the run's form (``views.{i}.*`` arrays, a JSON meta per text);
`views_answer` the API's (``:generate``'s ``parameters.views``), at most `MAX_ANSWER_VALUES` numbers a view.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from explain.generation.attention import causal_rollout, text_attention
from explain.generation.causal_lm import hidden_states_out_of_reach
from explain.generation.contrastive import ContrastAttribution
from explain.generation.explained import LENS_TOP_K
from explain.generation.logit_lens import logit_lens
from explain.generation.prompts import token_strings
from explain.generation.result import GenerationAttribution, LogitLens
from explain.jsonable import to_json_safe
from explain.model import LoadedModel
from explain.spec import InputSpec

#: The most generated steps whose attention a text keeps in a run.
MAX_ATTENTION_STEPS = 8
#: The most bytes of attention weights a text keeps in a run (fewer steps when one step's rows are large).
MAX_ATTENTION_BYTES = 8 * 2**20
#: The most bytes of lens and attention a run keeps over all its texts.
MAX_RUN_VIEW_BYTES = 64 * 2**20
#: The views an API answer may hold of a text (``:generate``'s ``parameters.views``).
VIEW_NAMES = ("logit_lens", "attention", "contrast")
#: The most numbers of one view (lens entries, attention weights) an API answer holds per text.
MAX_ANSWER_VALUES = 2**16


@dataclass
class StepViews:
    """The selected step(s) of one text as the page shows them.

    Attributes:
        prompt_length: P.
        lens_ids: int64 [layers + 1, T, k] each layer's top-k tokens at the position predicting token t
            ([0, T, k] and attention [0, 0, S, L] where the hidden states are out of reach: `has_layers`).
        lens_probs: float32 [layers + 1, T, k] their probabilities.
        steps: int64 [S] the generated steps whose attention is kept (the selected one first).
        attention: float32 [layers, heads, S, L] each kept step's query row (position P + s - 1) over
            the L = P + T - 1 positions read; 0 after the query.
        rollout: float64 [S, L] the same rows of the rollout.
        contrast: the contrast at the selected step, when asked.
        notes: what was left out and why.
    """

    prompt_length: int
    lens_ids: np.ndarray
    lens_probs: np.ndarray
    steps: np.ndarray
    attention: np.ndarray
    rollout: np.ndarray
    contrast: ContrastAttribution | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def selected(self) -> int:
        """The selected step (the first kept), 0 when no attention was kept."""
        return int(self.steps[0]) if self.steps.size else 0

    @property
    def has_layers(self) -> bool:
        """False where the model's hidden states were out of reach (a ``.pt2``): no lens, no attention to draw."""
        return self.lens_ids.shape[0] > 0

    @property
    def nbytes(self) -> int:
        return int(self.lens_ids.nbytes + self.lens_probs.nbytes + self.attention.nbytes + self.rollout.nbytes)


def attention_steps(selected: int, t_count: int, row_bytes: int, budget: int = MAX_ATTENTION_BYTES) -> list[int]:
    """The steps whose attention rows a text keeps: ``selected``, then the ones after it, then before it,
    at most `MAX_ATTENTION_STEPS` and ``budget // row_bytes`` of them (``selected`` always)."""
    if t_count <= 0:
        return []
    selected = min(max(int(selected), 0), t_count - 1)
    most = max(1, min(MAX_ATTENTION_STEPS, budget // max(row_bytes, 1)))
    order = [selected, *range(selected + 1, t_count), *range(selected - 1, -1, -1)]
    return order[:most]


def step_rows(weights: np.ndarray, rollout: np.ndarray, positions: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The query rows ``positions`` [S] of one text's attention ``weights`` [layers, heads, L, L] and
    ``rollout`` [L, L]: ([layers, heads, S, L], [S, L])."""
    index = np.asarray(positions, dtype=np.int64)
    return np.asarray(weights)[:, :, index, :], np.asarray(rollout)[index]


def step_views(model: LoadedModel, attr: GenerationAttribution, selected: int = 0,
               contrast: ContrastAttribution | None = None, lens: LogitLens | None = None,
               attention_budget: int = MAX_ATTENTION_BYTES) -> StepViews | None:
    """The views of ``attr``'s text at step ``selected`` (None: no generated token). The lens and the
    attention are computed here (two forward passes in the model's process) unless ``lens`` is given
    (`logit_lens` of the text minus its last token, as `explain.generation.explained.explain_prompt` has it)."""
    p, t_count = attr.prompt_length, len(attr.generated_ids)
    if t_count == 0:
        return None
    reads = attr.input_ids[:-1]  # the last generated token is never an input: [P + T - 1]
    out_of_reach = hidden_states_out_of_reach(model)
    if out_of_reach is not None:  # logits only: the selected step and the contrast stand, with the one line why
        length = len(reads)
        return StepViews(p, np.zeros((0, t_count, LENS_TOP_K), np.int64), np.zeros((0, t_count, LENS_TOP_K), np.float32),
                         np.asarray([selected], np.int64), np.zeros((0, 0, 1, length), np.float32),
                         np.zeros((1, length)), contrast, [out_of_reach])
    lens = lens if lens is not None else logit_lens(model, [reads], top_k=LENS_TOP_K)
    lens_ids = lens.top_ids[0][:, p - 1: p - 1 + t_count]  # [layers + 1, T, k]
    lens_probs = lens.top_probs[0][:, p - 1: p - 1 + t_count]
    maps = text_attention(model, attr.input_ids)
    weights = maps.weights[:, 0]  # [layers, heads, L, L]
    layers, heads, length = weights.shape[0], weights.shape[1], weights.shape[-1]
    notes = list(lens.notes)
    if attention_budget > 0:
        steps = attention_steps(selected, t_count, layers * heads * length * 4, attention_budget)
        notes += [] if len(steps) == t_count else [
            f"Attention kept for {len(steps)} of {t_count} steps (at most {MAX_ATTENTION_STEPS} steps and "
            f"{MAX_ATTENTION_BYTES // 2**20} MiB per text)."]
    else:
        steps = []
        notes.append(f"Attention not kept: the run's {MAX_RUN_VIEW_BYTES // 2**20} MiB of views were used.")
    rows, roll = step_rows(weights, causal_rollout(maps.weights)[0], [p + s - 1 for s in steps])
    return StepViews(p, lens_ids, lens_probs, np.asarray(steps, np.int64), rows.astype(np.float32), roll,
                     contrast, notes)


def view_arrays(i: int, views: StepViews) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Text ``i``'s views as run arrays (``views.{i}.*``) and their JSON meta."""
    arrays = {f"views.{i}.{k}": getattr(views, k) for k in ("lens_ids", "lens_probs", "steps", "attention", "rollout")}
    meta: dict[str, Any] = {"notes": list(views.notes), "contrast": None}
    c = views.contrast
    if c is not None:
        arrays[f"views.{i}.contrast_values"] = c.values
        meta["contrast"] = {"step": c.step, "token": c.token, "alternative": c.alternative, "difference": c.difference,
                            "baseline_difference": c.baseline_difference, "completeness_error": c.completeness_error,
                            "method": c.method, "params": dict(c.params), "seconds": c.seconds}
    return arrays, to_json_safe(meta)  # NaN (a method without a reference) as null


def read_step_views(i: int, results: dict[str, np.ndarray], meta: dict[str, Any] | None,
                    attr: GenerationAttribution) -> StepViews | None:
    """The inverse of `view_arrays` for text ``i`` (None: the run kept none for it)."""
    prefix = f"views.{i}."
    if meta is None or prefix + "lens_ids" not in results:
        return None
    c = meta.get("contrast")
    contrast = None
    if c is not None:
        number = [float("nan") if c[k] is None else c[k] for k in ("difference", "baseline_difference",
                                                                     "completeness_error")]
        contrast = ContrastAttribution(attr.input_ids[: attr.prompt_length + int(c["step"])], c["step"], c["token"],
                                       c["alternative"], results[prefix + "contrast_values"], *number, c["method"],
                                       c["params"], c["seconds"])
    return StepViews(attr.prompt_length, *(results[prefix + k] for k in ("lens_ids", "lens_probs", "steps", "attention",
                                                                         "rollout")),
                     contrast, list(meta.get("notes", [])))


def views_answer(views: StepViews | None, asked: Sequence[str], spec: InputSpec | None,
                 most: int = MAX_ANSWER_VALUES) -> dict[str, Any] | None:
    """The views ``asked`` (`VIEW_NAMES`) of one text's kept `StepViews` as JSON for the API (None: the run
    kept none for the text), each view at most ``most`` numbers:

    - ``logit_lens``: ``steps`` [S'] and, per layer (the embeddings first), step and rank, ``top_ids``,
      ``top_tokens`` and ``top_probs`` [layers + 1, S', k]: every generated step, or the ones from the selected
      step on that fit;
    - ``attention``: the kept ``steps`` [S'] that fit (the selected one first), ``weights``
      [layers, heads, S', L] of their query rows (null when one step's rows are over ``most``) and ``rollout``
      [S', L];
    - ``contrast``: the step, its token and the alternative, ``values`` [P + step], the differences (null when
      undefined);

    ``null`` for a view the model has not (a ``.pt2``'s lens and attention, a contrast not asked), and the
    ``notes`` of what was left out.
    """
    if views is None:
        return None
    notes = list(views.notes)
    out: dict[str, Any] = {}
    if "logit_lens" in asked:
        out["logit_lens"] = _lens_answer(views, spec, most, notes) if views.has_layers else None
    if "attention" in asked:
        out["attention"] = _attention_answer(views, most, notes) if views.has_layers else None
    if "contrast" in asked:
        c = views.contrast
        out["contrast"] = None if c is None else to_json_safe({
            "step": int(c.step), "token": int(c.token), "alternative": int(c.alternative),
            "values": c.values.tolist(), "difference": c.difference, "baseline_difference": c.baseline_difference,
            "completeness_error": c.completeness_error, "method": c.method})  # NaN (undefined) as null
    return {**out, "notes": notes}


def _lens_answer(views: StepViews, spec: InputSpec | None, most: int, notes: list[str]) -> dict[str, Any]:
    layers, t_count, k = views.lens_ids.shape  # [layers + 1, T, k]
    fit = max(1, most // max(layers * k, 1))
    first = 0 if t_count <= fit else min(views.selected, t_count - 1)
    steps = list(range(first, min(t_count, first + fit)))
    if len(steps) < t_count:
        notes.append(f"Logit lens answered for {len(steps)} of {t_count} steps (at most {most:,} entries).")
    ids = views.lens_ids[:, steps]  # [layers + 1, S', k]
    tokens = np.asarray(token_strings(ids, spec), dtype=object).reshape(ids.shape) if spec is not None else None
    return {"steps": steps, "top_ids": ids.tolist(), "top_tokens": None if tokens is None else tokens.tolist(),
            "top_probs": views.lens_probs[:, steps].tolist()}


def _attention_answer(views: StepViews, most: int, notes: list[str]) -> dict[str, Any]:
    layers, heads, kept, length = views.attention.shape  # [layers, heads, S, L]
    fit = min(kept, most // max(layers * heads * length, 1))
    shown = max(fit, min(kept, 1))  # the selected step's rollout row at least
    if fit < kept:
        notes.append(f"Attention answered for {fit} of the {kept} kept steps (at most {most:,} weights)"
                     + ("; the rollout of the selected step only." if fit == 0 else "."))
    return {"steps": views.steps[:shown].tolist(),
            "weights": views.attention[:, :, :fit].tolist() if fit else None,
            "rollout": views.rollout[:shown].tolist()}
