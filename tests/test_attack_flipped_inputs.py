"""Attack A1 (stop 31) on the engine's and the metrics' inputs: rows given as a reversed or flipped NumPy view
(``x[::-1]``, ``np.flip``, negative strides) failed in every prediction, method and metric with torch's
"tensors with negative strides are not currently supported". They now give what the same rows in a fresh
array give."""
from __future__ import annotations

import numpy as np

from explain.output.methods import get_method
from explain.output.metrics import get_metric
from explain.output.metrics.base import METRIC_CACHE
from sample_models import load_sample, sample_inputs


def test_reversed_rows_and_targets_are_the_rows_themselves():
    model = load_sample("cancer")
    x = np.asarray(sample_inputs("cancer")["inputs"])[:4]
    flipped, copied = x[::-1], x[::-1].copy()  # [4, 30]: a view with a negative stride, and its copy
    np.testing.assert_array_equal(model.predict_proba(flipped), model.predict_proba(copied))
    targets = np.array([0, 1, 1, 0])[::-1]
    a = get_method("saliency").explain(model, flipped, target=targets, use_cache=False)
    b = get_method("saliency").explain(model, copied, target=targets.copy(), use_cache=False)
    np.testing.assert_array_equal(a.values, b.values)
    for name in ("deletion", "insertion"):
        METRIC_CACHE.clear()
        got = get_metric(name).evaluate(model, a, steps=4)
        METRIC_CACHE.clear()
        want = get_metric(name).evaluate(model, b, steps=4)
        np.testing.assert_array_equal(got.per_input, want.per_input)


def test_a_flipped_picture_is_the_picture_flipped():
    model = load_sample("shapes")
    x = np.asarray(sample_inputs("shapes")["inputs"])[:2]
    flipped = np.flip(x, axis=3)  # [2, 3, 32, 32], mirrored: negative stride on W
    np.testing.assert_array_equal(model.predict_proba(flipped), model.predict_proba(flipped.copy()))


def test_a_background_given_as_a_reversed_view_is_the_background_itself():
    model = load_sample("cancer")
    x = np.asarray(sample_inputs("cancer")["inputs"], dtype=np.float32)[:6]
    background = x[::-1]  # [6, 30] float32 view with a negative stride
    for name in ("gradient_shap", "shap_gradient"):
        method = get_method(name)
        a = method.explain(model, x[:2], target=0, background=background, use_cache=False, seed=0)
        b = method.explain(model, x[:2], target=0, background=background.copy(), use_cache=False, seed=0)
        np.testing.assert_array_equal(a.values, b.values)
