"""DeepLift (Shrikumar et al. 2017), rescale rule, for every model format.

Captum's ``DeepLift`` works through module hooks, so it misses functional
nonlinearities and gives wrong numbers on a reused or in-place ``nn.ReLU``
(the shapes sample has both). Glassbox therefore runs the same rules on a
captured ATen graph (`explain.output.methods.deeplift_rules`, flavour
``"captum"``: Captum's softmax-head and max-pool rules and eps), so the values
equal Captum's where Captum's hooks see every nonlinearity, and layer norm,
softmax attention and products get exact rules (`explain.output.aten_rules`).
The user's model is never modified. The engine picks the chunk size and backs
off on out-of-memory.

Text models are attributed at the embedding output with a padding reference
(`explain.output.baselines.text_reference`: the inputs' most common first token
kept, so attention has a key). Completeness: Σ values = f(x) -
f(b) exactly when every nonlinearity has an exact rule (notes say when not;
a final ``nn.Softmax`` keeps Captum's inexact rule).
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from explain.attribution import Attribution, compute_completeness_error
from explain.errors import TooLarge
from explain.model import LoadedModel
from explain.output.aten_graph import is_capturable_format
from explain.output.baselines import make_baseline, text_reference
from explain.output.engine import CPU_CHUNK_BYTES, MAX_CHUNK_ROWS, Engine
from explain.output.methods.base import Explainer, register
from explain.output.methods.common import BASELINE_PARAM, ENGINE_PARAMS, array_param, resolve_targets
from explain.output.methods.engine_method import clean_array_param
from explain.output.precision import is_out_of_memory

#: what an error above the tolerance means for the rule methods (deeplift, deeplift_shap, shap_deep).
RULES_REMEDY = "a nonlinearity has no exact rule (see the notes)"


def rules_incompatibility(model: LoadedModel) -> str | None:
    """Why the graph-based DeepLift rules cannot run on ``model`` (None if they can)."""
    if not is_capturable_format(model):
        return f"DeepLift cannot read a graph from this {model.format} model; use integrated_gradients."
    return None


def run_rules(engine: Engine, model: LoadedModel, x: np.ndarray, refs: np.ndarray, targets: np.ndarray,
              grid: bool, progress) -> Any:
    """`deeplift_rescale_attributions` in engine-sized chunks, halving on out-of-memory."""
    from explain.output.methods.deeplift_rules import deeplift_rescale_attributions

    row_bytes = int(np.prod(x.shape[1:])) * 4 * (1 if model.modality != "text" else 256)
    size = engine.batch_size or max(1, min(MAX_CHUNK_ROWS, CPU_CHUNK_BYTES // max(row_bytes, 1)))
    while True:
        try:
            return deeplift_rescale_attributions(
                model, x, refs, targets, grid=grid, batch_size=size, progress=progress, flavour="captum"
            ), size
        except Exception as exc:  # noqa: BLE001 - only out-of-memory is retried
            if not is_out_of_memory(exc) or size == 1:
                if is_out_of_memory(exc):
                    raise TooLarge("Out of memory even for one row.", "Use fewer inputs or --device cpu.") from None
                raise
            size //= 2
            engine.notes.append(f"out of memory: batch size lowered to {size}.")
            if engine.device.type == "cuda":
                torch.cuda.empty_cache()


class RulesMethod(Explainer):
    """Shared frame of DeepLift and DeepLift-SHAP."""

    family = "gradient"
    completeness_remedy = RULES_REMEDY

    def is_compatible(self, model: LoadedModel) -> bool:
        return self.incompatibility(model) is None

    def incompatibility(self, model: LoadedModel) -> str | None:
        return rules_incompatibility(model)

    def references(self, model: LoadedModel, x: np.ndarray, **params) -> tuple[np.ndarray, np.ndarray | None, dict]:
        """(reference rows, per-row weights or None for paired refs, params to record)."""
        raise NotImplementedError  # pragma: no cover

    def _explain(self, model, inputs, target, progress, **params) -> Attribution:
        start = time.perf_counter()
        engine = Engine(params.pop("device", "auto"), "fp32", params.pop("batch_size", 0), progress)
        params.pop("precision", None)
        params = {k: clean_array_param(k, v) for k, v in params.items()}
        model, xt = engine.prepare(model, inputs)
        x = xt.cpu().numpy()
        targets = resolve_targets(model, xt, target)
        refs, weights, recorded = self.references(model, x, **params)
        if weights is None:  # one reference per input (DeepLift)
            result, size = run_rules(engine, model, x, refs, targets, False, progress)
            values, output, base = result.values, result.output, result.base_value
        elif np.allclose(weights, weights[0]):  # equal weights: the rules' own (input x reference) grid
            result, size = run_rules(engine, model, x, refs, targets, True, progress)
            values, output, base = result.values, result.output, result.base_value
        else:  # every input against every weighted reference, weighted mean
            n, m = len(x), len(refs)
            xs = np.repeat(x, m, axis=0)  # [N*M, ...] pair p = (p // M, p % M)
            rs = np.tile(refs, (n,) + (1,) * (refs.ndim - 1))
            result, size = run_rules(engine, model, xs, rs, np.repeat(targets, m), False, progress)
            per = result.values.reshape(n, m, *result.values.shape[1:])  # [N, M, ...]
            values = np.tensordot(per, weights, axes=([1], [0]))  # weighted mean over M -> [N, ...]
            output = result.output.reshape(n, m)[:, 0]
            base = result.base_value.reshape(n, m) @ weights
        return Attribution(
            values=values, inputs=np.asarray(inputs), target=targets, method=self.name,
            params={**recorded, "batch_size": size}, base_value=base, output=output,
            completeness_error=compute_completeness_error(values, output, base),
            seconds=time.perf_counter() - start, device=engine.device_label, precision="fp32",
            notes=[*engine.notes, *result.notes],
        )


@register
class DeepLift(RulesMethod):
    name = "deeplift"
    title = "DeepLift (rescale)"
    params = {
        "baseline": BASELINE_PARAM,
        **ENGINE_PARAMS,
        "baseline_array": array_param(),
        "background": array_param(),
    }

    def references(self, model, x, baseline, baseline_array, background):
        if model.modality == "text":
            if baseline == "file" and baseline_array is not None:
                ref = np.asarray(baseline_array, dtype=np.int64).reshape(-1, x.shape[1])
            else:
                ref = text_reference(x, model.spec, "pad", keep_first="most_common")
            return np.broadcast_to(ref, x.shape).copy(), None, {"baseline": "padding" if baseline != "file" else "file"}
        ref = make_baseline(baseline, x, model.modality, baseline_array, background)
        return ref, None, {"baseline": baseline}
