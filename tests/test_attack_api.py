"""Red-team checks of the API's input checks (explain.service.runners.model_array, which :predict and
:explain read instances with): a text model's token ids outside its vocabulary were let through to the
model, where the embedding raised IndexError inside the engine batch that other callers' rows share
(on a GPU, a device-side assert that breaks the CUDA context for every later request). They are
refused before any batch, as an upload's ids are (`explain.inputs.reading`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from explain.errors import UsageError
from explain.service.runners import model_array

SENTIMENT = Path(__file__).resolve().parents[1] / "sample_models" / "sentiment" / "model.safetensors"


@pytest.fixture(scope="module")
def text_model():
    from explain.loading.loader import load_model

    return load_model(SENTIMENT)  # token ids [N, 16], a vocabulary of 60


@pytest.mark.parametrize("bad", [-1, 60, 10**6])
def test_token_ids_outside_the_vocabulary_are_refused_before_the_model(text_model, bad):
    row = [1] * 15 + [bad]
    with pytest.raises(UsageError, match=rf"instances has token ids from {min(1, bad)} to {max(2, bad)}; "
                                         r"the vocabulary has ids 0\.\.59") as caught:
        model_array(text_model, [row, [2] * 16])
    assert len(str(caught.value).splitlines()) == 1


def test_ids_inside_the_vocabulary_pass_as_before(text_model):
    x = model_array(text_model, [[0] * 15 + [59]])
    assert x.dtype == np.int64 and x.shape == (1, 16) and x[0, -1] == 59
    assert text_model.predict_proba(x).shape == (1, 2)
