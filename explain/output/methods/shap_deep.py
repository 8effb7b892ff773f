"""``shap_deep``: SHAP DeepExplainer's numbers, for every model format.

Equal to ``shap.DeepExplainer(model, background).shap_values(x)`` where SHAP
works (modules with non-in-place, non-reused activations), and the same
rescale-rule DeepLift averaged over the background where SHAP 0.51 fails:
in-place or reused ``nn.ReLU``, residual ``+=``, TorchScript and
``torch.export`` programs. The rules run on a captured ATen graph
(`explain.output.methods.deeplift_rules`), never on module hooks, so the user's
model is not modified.

Text models are attributed at the embedding output (one value per token,
plus the share of the padding masks computed from that token). Layer norm,
softmax attention and products of input-dependent tensors get exact rules
(`explain.output.aten_rules`), where SHAP passes the gradient, so on
transformer blocks the values add up to f(x) - E[f(b)]; a final
``nn.Softmax`` keeps SHAP's elementwise rule, as SHAP.

Background: an uploaded array, else ``background_kind``. Its ``auto`` is, for an
image model, each input's own blurred copy (`explain.output.baselines.blur_images`,
paired input by input as DeepLift pairs its references): with the batch as
background every map carried the outlines of the other inputs and changed with which
inputs were explained together, and a zero image (the mean colour of a normalised
model) is a flat picture no input resembles, while a blurred copy keeps the input's
colours and layout and asks what its detail contributed. Text and tabular models keep
the batch (2 or more inputs) or zeros. Whatever was used is named in the
`Attribution`'s params (``background_description``) and under each map.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from explain.attribution import Attribution, compute_completeness_error
from explain.errors import UsageError
from explain.model import LoadedModel
from explain.output.aten_graph import is_capturable_format
from explain.output.baselines import BLUR_SIGMA, blur_images, describe_background, text_reference
from explain.output.methods.base import Explainer, register
from explain.output.methods.common import DEVICE_PARAM, array_param, resolve_targets
from explain.output.methods.deeplift import RULES_REMEDY
from explain.output.methods.deeplift_rules import deeplift_rescale_attributions, model_logits
from explain.output.methods.engine_method import clean_array_param
from explain.output.precision import device_label, precision_context, resolve_device
from explain.params import ParamSpec
from explain.progress import ProgressFn

#: Where background rows come from when no array is given.
BACKGROUND_KINDS = ("auto", "blurred", "inputs", "zeros", "mean")


@register
class ShapDeep(Explainer):
    """SHAP DeepExplainer (rescale-rule DeepLift averaged over a background)."""

    name = "shap_deep"
    family = "shap"
    title = "SHAP DeepExplainer"
    completeness_remedy = RULES_REMEDY
    params = {
        "background": array_param(),
        "background_kind": ParamSpec(
            "choice",
            "auto",
            choices=BACKGROUND_KINDS,
            help="Without a background array: 'blurred' (each image against its own blurred copy), "
            "'inputs' (rows of the explained batch), 'zeros' (text: padding after the first token), "
            "'mean' of the inputs; 'auto' = blurred for images, else inputs when there are 2 or more, "
            "else zeros.",
        ),
        "background_size": ParamSpec(
            "int", 50, minimum=1, maximum=1000, help="At most this many background rows (evenly spaced)."
        ),
        "batch_size": ParamSpec(
            "int", 128, minimum=1, maximum=4096, help="(input, background) pairs per forward/backward pass."
        ),
        "device": DEVICE_PARAM,
    }

    def is_compatible(self, model: LoadedModel) -> bool:
        return self.incompatibility(model) is None

    def incompatibility(self, model: LoadedModel) -> str | None:
        if not is_capturable_format(model):
            return f"shap_deep cannot read a graph from this {model.format} model; use integrated_gradients."
        if model.modality == "text" and not model.spec.dtype.startswith("int"):
            return "shap_deep explains text models through token ids (int64 inputs)."
        return None

    def _explain(
        self,
        model: LoadedModel,
        inputs: np.ndarray,
        target: np.ndarray | int | None,
        progress: ProgressFn | None,
        *,
        background: Any,
        background_kind: str,
        background_size: int,
        batch_size: int,
        device: str,
    ) -> Attribution:
        start = time.perf_counter()
        where = resolve_device(device)
        if model.device != where:
            model.to(where)
        x = model.as_tensor(inputs).cpu().numpy()  # [N, ...] validated against the spec
        custom = clean_array_param("background", background)
        refs, described, paired = choose_background(model, x, background_kind, background_size, custom)
        targets = resolve_targets(model, x, target, logits=model_logits(model, x))  # clear error on a failing model
        with precision_context("fp32", where):
            result = deeplift_rescale_attributions(
                model, x, refs, targets, grid=not paired, batch_size=batch_size, progress=progress
            )
        return Attribution(
            values=result.values,
            inputs=x,
            target=targets,
            method=self.name,
            params={
                "background_kind": background_kind,
                "background_description": described,
                "background_size": background_size,
                "batch_size": batch_size,
                "device": device,
            },
            base_value=result.base_value,
            output=result.output,
            completeness_error=compute_completeness_error(result.values, result.output, result.base_value),
            seconds=time.perf_counter() - start,
            device=device_label(where),
            precision="fp32",
            notes=result.notes,
        )


def choose_background(
    model: LoadedModel, x: np.ndarray, choice: str, size: int, custom: np.ndarray | None = None
) -> tuple[np.ndarray, str, bool]:
    """Background rows [B, ...], their description (`describe_background`) and whether they are
    paired with the inputs (row i is input i's own reference) rather than shared by all.

    Args:
        model: the model (its spec tells text from float inputs).
        x: the explained inputs [N, ...].
        choice: one of `BACKGROUND_KINDS` (ignored when ``custom`` is given).
        size: at most this many rows, taken evenly spaced.
        custom: user-supplied rows [B, ...].

    Raises:
        UsageError: ``mean`` for token ids, ``blurred`` for a model that is not an image model.
    """
    text = model.modality == "text"
    if custom is not None:
        rows = model.as_tensor(custom).cpu().numpy()
        picked = _evenly(rows, size)
        return picked, describe_background("array", len(picked), len(x), len(rows), "evenly spaced rows"), False
    if choice == "auto":
        choice = "blurred" if model.modality == "image" else "inputs" if len(x) >= 2 else "zeros"
    if choice == "blurred":
        if model.modality != "image":
            raise UsageError("A blurred background is defined for images only.", "Use 'inputs', 'zeros' or 'mean'.")
        return blur_images(x.astype(np.float32), BLUR_SIGMA).astype(x.dtype), describe_background(
            "blurred", len(x), len(x)), True
    if choice == "inputs":
        picked = _evenly(x, size)
        return picked, describe_background("inputs", len(picked), len(x)), False
    if choice == "mean":
        if text:
            raise UsageError("A mean background is undefined for token ids.", "Use 'zeros' (padding) or 'inputs'.")
        return x.mean(axis=0, keepdims=True).astype(x.dtype), describe_background("mean", 1, len(x)), False
    if text:
        # one row of padding whose first token is the spec's <cls> (else the inputs' most common first token)
        return text_reference(x, model.spec, "pad", keep_first="cls")[:1], describe_background("padding", 1, len(x)), False
    return np.zeros((1, *x.shape[1:]), dtype=x.dtype), describe_background("zero", 1, len(x)), False


def _evenly(rows: np.ndarray, size: int) -> np.ndarray:
    """At most ``size`` rows, evenly spaced and in order (deterministic)."""
    if len(rows) <= size:
        return rows
    return rows[np.unique(np.linspace(0, len(rows) - 1, size).round().astype(int))]
