"""Cascading model-parameter randomisation (Adebayo et al. 2018, "Sanity checks for saliency
maps"): randomise the model's layers one block at a time from the top (the output end),
cumulatively, re-explain the inputs (same targets) after each step, and measure the Spearman
rank correlation of each new map with the original (absolute values by default, the paper's
main figure). A faithful map decorrelates as the learned weights go; a map that survives
(an edge detector, which never looks at the model) fails the check: its mean correlation
after the last step stays at or above ``threshold``.

``per_input`` is the rank correlation after the last step; ``curve`` [N, steps + 1] the
whole curve (step 0 is the original, 1.0), ``curve_labels`` the block randomised at each
step. The model is copied; the user's model is never changed. Needs an eager model (its
parameters), and re-explains once per step.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any

import numpy as np
import torch
from torch import nn

from explain.model import LoadedModel
from explain.output.metrics.base import Metric, MetricResult, Subject, register
from explain.output.metrics.common import feature_map, spearman
from explain.params import ParamSpec
from explain.progress import report_progress


def randomization_blocks(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The blocks randomised in turn, top (output end) first: the model's children that hold
    parameters, in reverse order of registration; a wrapper with a single such child is
    looked through."""
    prefix = ""
    while True:
        children = [(n, m) for n, m in module.named_children() if any(True for _ in m.parameters())]
        if len(children) != 1 or not any(True for _ in children[0][1].children()):
            break
        name, module = children[0]
        prefix = f"{prefix}{name}."
    if not children and any(True for _ in module.parameters(recurse=False)):
        children = [(prefix.rstrip(".") or "model", module)]
    return [(f"{prefix}{n}", m) for n, m in reversed(children)]


def randomize_(block: nn.Module, generator: torch.Generator) -> None:
    """Re-draw every parameter of ``block`` in place: a normal distribution with each tensor's own
    standard deviation (or 1/sqrt(fan-in) for a constant one, such as a BatchNorm's), biases
    included; BatchNorm running statistics reset."""
    with torch.no_grad():
        for p in block.parameters():
            std = float(p.std()) if p.numel() > 1 else 0.0
            if not np.isfinite(std) or std == 0.0:
                std = 1.0 / np.sqrt(max(p.shape[-1] if p.dim() else 1, 1))
            p.copy_(torch.randn(p.shape, generator=generator) * std)
        for m in block.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()


@register
class Randomization(Metric):
    name = "randomization"
    category = "randomisation"
    title = "Randomisation check"
    summary = ("Rank correlation with the original map after the model's layers are randomised from "
               "the top; lower is better (a map that survives does not depend on the model).")
    higher_is_better = False
    reexplains = True
    params = {
        "steps": ParamSpec("int", 0, minimum=0, maximum=256,
                           help="Blocks to randomise, from the top (0 = all); one re-explanation each."),
        "absolute": ParamSpec("bool", True, help="Compare absolute maps (the paper's main figure)."),
        "threshold": ParamSpec("float", 0.5, minimum=0.0, maximum=1.0,
                               help="A method whose mean final correlation stays at or above this fails."),
        "seed": ParamSpec("int", 0, minimum=0, maximum=2**31 - 1, help="Seed of the random weights."),
    }

    def incompatibility(self, model: LoadedModel) -> str | None:
        if model.process is not None:  # a user's graph or a Hugging Face model: its weights stay in its process
            return ("The randomisation check needs the model's parameters, which stay in the model's own "
                    f"process for a {model.format} model; load the weights (safetensors / checkpoint).")
        if not model.is_eager:
            return ("The randomisation check needs the model's parameters, which a "
                    f"{model.format} graph does not expose; load the weights (safetensors / checkpoint).")
        return None

    def _evaluate(self, subject: Subject, progress, steps: int, absolute: bool, threshold: float, seed: int,
                  **_: Any) -> MetricResult:
        attr, model = subject.attribution, subject.model
        x = np.asarray(attr.inputs)
        n = len(x)

        def comparable(values: np.ndarray) -> np.ndarray:
            m = feature_map(model, values).reshape(n, -1)
            return np.abs(m) if absolute else m

        original = comparable(attr.values)
        module = copy.deepcopy(model.module).eval()
        blocks = randomization_blocks(module)
        if steps:
            blocks = blocks[:steps]
        copy_model = dataclasses.replace(model, module=module, sha256=f"{model.sha256}:randomised", extra={})
        generator = torch.Generator().manual_seed(int(seed))
        curve = [np.ones(n)]
        for k, (_, block) in enumerate(blocks):
            randomize_(block, generator)
            curve.append(spearman(original, comparable(subject.explain(copy_model, x, attr.target))))
            report_progress(progress, k + 1, len(blocks))
        curves = np.stack(curve, axis=1)  # [N, steps + 1]
        final = curves[:, -1]
        notes = []
        finite = final[np.isfinite(final)]
        if finite.size and finite.mean() >= threshold:
            notes.append(f"fails the randomisation check: mean rank correlation {finite.mean():.2f} "
                         f"after randomising {len(blocks)} blocks (threshold {threshold:g})")
        return self.result(subject, final, curve_x=np.arange(len(blocks) + 1, dtype=np.float64), curve=curves,
                           curve_labels=["original"] + [name for name, _ in blocks],
                           params={"steps": len(blocks), "absolute": absolute, "threshold": threshold, "seed": seed},
                           notes=notes)


def fails(result: MetricResult) -> bool:
    """True when a randomisation result's mean final correlation is at or above its threshold."""
    mean = result.mean
    return bool(np.isfinite(mean) and mean >= float(result.params.get("threshold", 0.5)))
