"""Comprehensiveness and sufficiency (ERASER's AOPC, as ferret computes them) and deletion / insertion over
tokens (issue 22): hand-built models whose output depends on one feature or token, computed by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from explain.errors import IncompatibleInput, UsageError
from explain.generation.quality import TOKEN_METRICS, token_quality
from explain.generation.result import GenerationAttribution
from explain.model import LoadedModel
from explain.output.methods import get_method
from explain.output.metrics import get_metric
from explain.output.metrics.base import METRIC_CACHE
from explain.output.metrics.faithfulness.comprehensiveness import rationale_sets
from explain.spec import InputSpec

PAD = 0
DECIDING = 7  # the token that decides: p = 0.9 while it stands at position 2, else 0.1


def one_token_model(contexts, masks, targets):
    """A causal LM's scores by hand: p(target) = 0.9 when position 2 still holds `DECIDING`, else 0.1."""
    out = []
    for context, mask in zip(contexts, masks):
        ids = np.where(mask, PAD, np.asarray(context)[None])  # [R, n]: replaced positions hold the pad token
        out.append(np.where(ids[:, 2] == DECIDING, 0.9, 0.1))
    return out


def one_token_attribution() -> GenerationAttribution:
    """Prompt [3, 4, 7, 5, 6], one generated token; its values rank position 0 first, the deciding
    position 2 second, then 3 (the only positive ones), then 1 and 4."""
    values = np.zeros((1, 6), np.float32)
    values[0, :5] = [0.5, -0.2, 0.3, 0.1, -0.4]
    return GenerationAttribution(np.array([3, 4, DECIDING, 5, 6, 9]), 5, values, [0.0], [0.0], [0.0],
                                 "integrated_gradients")


def test_ferret_rationales_take_the_top_tenths_of_the_positive_scores():
    sets, valid = rationale_sets(np.array([[0.5, -0.2, 0.3, 0.1, -0.4]]))
    # (k * 5) // 10 tokens at k = 1..10: 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, positive scores only
    assert valid[0].tolist() == [False] + [True] * 9
    want = [[], [0], [0], [0, 2], [0, 2], [0, 2, 3], [0, 2, 3], [0, 2, 3], [0, 2, 3], [0, 2, 3]]
    assert [np.flatnonzero(s).tolist() for s in sets[0]] == want


def test_token_metrics_of_a_model_that_reads_one_token_equal_the_hand_computation():
    q = token_quality(one_token_attribution(), one_token_model, steps=5)
    assert list(q) == list(TOKEN_METRICS)
    # comprehensiveness: 9 valid thresholds; the deciding token is removed from k = 4 on (7 of them)
    assert q["comprehensiveness"].per_input[0] == pytest.approx(7 * 0.8 / 9, abs=1e-12)
    # sufficiency: only k = 2, 3 keep a rationale without it ({0}): 0.9 - 0.1 twice
    assert q["sufficiency"].per_input[0] == pytest.approx(2 * 0.8 / 9, abs=1e-12)
    np.testing.assert_allclose(q["comprehensiveness"].curve[0], [np.nan, 0, 0] + [0.8] * 7, atol=1e-12)
    # deletion in order 0, 2, 3, 1, 4: p = .9 .9 .1 .1 .1 .1 over 0, .2, ..., 1 -> trapezoids .18 + .1 + 3 x .02
    np.testing.assert_allclose(q["deletion"].curve[0], [0.9, 0.9, 0.1, 0.1, 0.1, 0.1], atol=1e-12)
    assert q["deletion"].per_input[0] == pytest.approx(0.34, abs=1e-12)
    assert q["insertion"].per_input[0] == pytest.approx(0.66, abs=1e-12)  # .02 + .1 + 3 x .18
    assert q["comprehensiveness"].higher_is_better and not q["sufficiency"].higher_is_better
    assert not q["deletion"].higher_is_better and q["insertion"].higher_is_better
    for result in q.values():  # a random attribution for scale: seeded, so the same twice
        again = token_quality(one_token_attribution(), one_token_model, steps=5)[result.metric]
        assert np.isfinite(result.random_baseline).all() and result.random_baseline == again.random_baseline


def test_each_distinct_perturbed_context_is_scored_once():
    seen = []

    def counting(contexts, masks, targets):
        seen.extend(masks)
        return one_token_model(contexts, masks, targets)

    token_quality(one_token_attribution(), counting, steps=5)
    (rows,) = seen  # one generated token: one batch
    assert len(np.unique(rows, axis=0)) == len(rows) < 1 + 2 * (10 + 10 + 6 + 6)  # the plan's 65 rows, deduplicated


def test_token_quality_refuses_a_metric_that_does_not_judge_tokens():
    with pytest.raises(UsageError, match="infidelity does not judge token attributions"):
        token_quality(one_token_attribution(), one_token_model, metrics=("infidelity",))


def test_comprehensiveness_and_sufficiency_of_a_classifier_reading_one_feature():
    """logit_1 = 3 x_2, logit_0 = 0: p = sigmoid(3) with x_2 = 1, 1/2 with it removed (zero substrate)."""
    module = nn.Linear(6, 2)
    with torch.no_grad():
        module.weight.zero_()
        module.bias.zero_()
        module.weight[1, 2] = 3.0
    spec = InputSpec("tabular", (6,), class_names=["a", "b"], feature_names=[f"f{i}" for i in range(6)])
    model = LoadedModel(module.eval(), "state_dict", "one-feature", spec, name="one-feature")
    x = np.array([[0.5, -1.0, 1.0, 2.0, 0.0, 1.5]], np.float32)
    attr = get_method("input_x_gradient").explain(model, x, use_cache=False)  # 3 at feature 2, 0 elsewhere
    METRIC_CACHE.clear()
    comp = get_metric("comprehensiveness").evaluate(model, attr, substrate="zero")
    suff = get_metric("sufficiency").evaluate(model, attr, substrate="zero")
    sigmoid3 = 1 / (1 + np.exp(-3.0))
    assert comp.per_input[0] == pytest.approx(sigmoid3 - 0.5, abs=1e-6)  # every valid rationale is {2}
    assert suff.per_input[0] == pytest.approx(0.0, abs=1e-6)  # {2} alone keeps the answer
    assert comp.random_baseline is not None and suff.random_baseline is not None


def test_the_classifier_metrics_send_a_causal_lm_to_the_generate_page():
    spec = InputSpec("text", (8,), dtype="int64", vocabulary=["<pad>", "a", "b"], task="causal_lm")
    model = LoadedModel(nn.Identity(), "huggingface", "lm", spec, name="lm")
    reason = get_metric("comprehensiveness").incompatibility(model)
    assert "Generate page" in reason
    with pytest.raises(IncompatibleInput, match="Generate page"):
        get_metric("deletion").evaluate(model, None)
