"""A ``.pt2`` exported for a fixed batch of 1 runs whole chunks through vmap, with row-by-row results.

Speed is measured in benchmarks/fixed_batch_pt2.py (never here).
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from explain.output.methods import get_method
from explain.output.model_function import ModelFunction
from tests.conftest import in_process

warnings.filterwarnings("ignore", category=UserWarning)


@pytest.fixture
def mapping_spy(monkeypatch):
    """Records whether each session's vmapped outputs agreed with row-by-row ones."""
    seen: list[bool] = []
    original = ModelFunction._mapping_agrees

    def spy(self, mapped, rows):
        ok = original(self, mapped, rows)
        seen.append(ok)
        return ok

    monkeypatch.setattr(ModelFunction, "_mapping_agrees", spy)
    return seen


@pytest.mark.parametrize("sample, method", [("cancer", "integrated_gradients"), ("cancer", "saliency"),
                                            ("sentiment", "integrated_gradients")])
def test_row_mapped_equals_row_by_row(sample, method, mapping_spy, monkeypatch):
    from sample_models import load_sample, sample_inputs

    x = sample_inputs(sample)["inputs"][:2]
    static = in_process(load_sample(sample, "export_static"))  # the spy is in this process
    assert static.fixed_batch_size == 1
    params = {"steps": 8} if method == "integrated_gradients" else {}
    mapped = get_method(method).explain(static, x, use_cache=False, **params)
    assert mapping_spy and all(mapping_spy)  # the vmapped path ran
    monkeypatch.setattr(ModelFunction, "_mapping_agrees", lambda self, mapped, rows: False)  # row by row
    rows = get_method(method).explain(static, x, use_cache=False, **params)
    np.testing.assert_allclose(mapped.values, rows.values, atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(mapped.output, rows.output, atol=1e-5)
    dynamic = get_method(method).explain(load_sample(sample, "export"), x, use_cache=False, **params)
    np.testing.assert_allclose(mapped.values, dynamic.values, atol=1e-4, rtol=1e-3)
