"""DeepLift-SHAP (Lundberg & Lee 2017): DeepLift averaged over a background set.

Equal in definition to ``captum.attr.DeepLiftShap``: each input is explained
against every background row and the attributions are averaged (weighted by
k-means cluster size when a tabular background is summarised). Runs on the
graph-based rescale rules (see `explain.output.methods.deeplift`), so it works where
Captum's hooks do not. Completeness: Σ values = f(x) - E[f(b)]. The background used is
named in the params (``background_description``) and under each map.
"""
from __future__ import annotations

import numpy as np

from explain.output.baselines import background_description, background_set, describe_background, text_reference
from explain.output.methods.base import register
from explain.output.methods.common import ENGINE_PARAMS, array_param
from explain.output.methods.deeplift import RulesMethod
from explain.output.methods.gradient_shap import BACKGROUND_SIZE_PARAM, FALLBACK_PARAM


@register
class DeepLiftShap(RulesMethod):
    name = "deeplift_shap"
    family = "shap"
    title = "DeepLift-SHAP"
    params = {
        "background_size": BACKGROUND_SIZE_PARAM,
        "baseline": FALLBACK_PARAM,
        **ENGINE_PARAMS,
        "background": array_param(),
    }

    def references(self, model, x, background_size, baseline, background):
        if model.modality == "text" and background is None:
            ref = text_reference(x, model.spec, "pad", keep_first="most_common")[:1]  # one row, as DeepLift's
            return ref, np.ones(1), {"baseline": baseline, "background_size": background_size,
                                     "background_description": describe_background("padding", 1, len(x))}
        rows, weights = background_set(background, x, model.modality, background_size, baseline)
        rows = np.asarray(rows, dtype=x.dtype)
        return rows, weights, {"baseline": baseline, "background_size": background_size,
                               "background_description": background_description(background, rows, x, model.modality,
                                                                                baseline)}
