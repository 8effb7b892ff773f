"""Max-sensitivity (Yeh et al. 2019), Captum's `captum.metrics.sensitivity_max`: re-explain
the input under ``samples`` small perturbations drawn uniformly from an L-infinity ball of
radius ``radius``; the largest relative change of the map, ||a(x + d) - a(x)|| / ||a(x)||
(Frobenius norm). Lower is better.

The costly metric: it runs the method again ``samples`` times per input (all of them in one
call, which the method's engine batches), so it defaults to few samples. The perturbations
are seeded per input (`perturbations`), the same in any batch.
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from explain.output.metrics.base import Metric, MetricResult, Subject, register
from explain.output.metrics.common import input_seed
from explain.params import ParamSpec
from explain.progress import report_progress


def perturbations(inputs: np.ndarray, samples: int, radius: float, seed: int) -> np.ndarray:
    """float32 [N, samples, ...]: uniform noise in [-radius, radius], seeded per input."""
    out = np.empty((len(inputs), samples, *inputs.shape[1:]), dtype=np.float32)
    for i in range(len(inputs)):
        rng = np.random.default_rng(input_seed(inputs[i], seed))
        out[i] = rng.uniform(-radius, radius, size=(samples, *inputs.shape[1:]))
    return out


def max_relative_change(original: np.ndarray, perturbed: np.ndarray) -> np.ndarray:
    """[N] max over samples of ||perturbed - original|| / ||original|| (a zero norm counts as 1).

    Args:
        original: [N, ...] maps. perturbed: [N, S, ...] maps of the perturbed inputs.
    """
    n, s = perturbed.shape[:2]
    a = np.asarray(original, dtype=np.float64).reshape(n, 1, -1)
    b = np.asarray(perturbed, dtype=np.float64).reshape(n, s, -1)
    norm = np.linalg.norm(a, axis=2)  # [N, 1]
    norm = np.where(norm == 0, 1.0, norm)
    return (np.linalg.norm(b - a, axis=2) / norm).max(axis=1)


@register
class MaxSensitivity(Metric):
    name = "max_sensitivity"
    category = "robustness"
    title = "Max-sensitivity"
    summary = ("Largest relative change of the map when the input moves a little (re-explained "
               "samples times: costly); lower is better.")
    higher_is_better: ClassVar[bool] = False
    modalities = ("image", "tabular")
    reexplains = True
    params = {
        "samples": ParamSpec("int", 4, minimum=1, maximum=256,
                             help="Perturbed copies per input; each is explained again (costly)."),
        "radius": ParamSpec("float", 0.02, minimum=0.0, maximum=100.0,
                            help="Largest change of any input value (L-infinity ball)."),
        "seed": ParamSpec("int", 0, minimum=0, maximum=2**31 - 1, help="Seed of the perturbations."),
    }

    def _evaluate(self, subject: Subject, progress, samples: int, radius: float, seed: int,
                  **_: Any) -> MetricResult:
        attr = subject.attribution
        x = np.asarray(attr.inputs)
        n = len(x)
        noisy = (x[:, None].astype(np.float32) + perturbations(x, samples, radius, seed))  # [N, S, ...]
        targets = np.repeat(attr.target, samples)  # [N*S], input-major like the rows
        again = subject.explain(subject.model, noisy.reshape(n * samples, *x.shape[1:]), targets)
        again = np.asarray(again).reshape(n, samples, *attr.values.shape[1:])
        report_progress(progress, 1, 1)
        return self.result(subject, max_relative_change(attr.values, again),
                           params={"samples": samples, "radius": radius, "seed": seed},
                           notes=[f"explained {n * samples} perturbed inputs again"])
