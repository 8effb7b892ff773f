"""Red-team checks of generation requests (explain.generation.job.generation_request, the API's
``:generate``): a sampling field of the wrong type is the caller's mistake, a 400 in one line before
anything is queued, not a ValueError (a 500) or a seed / top-k stored as a string or a fraction that
fails the job later. The check runs before the model is read, so no model is needed here."""
from __future__ import annotations

import pytest

from explain.errors import UsageError
from explain.generation.job import generation_request
from explain.generation.sampling import Sampling

WRONG = [{"seed": "abc"}, {"seed": 1.5}, {"seed": True}, {"top_k": "5"}, {"top_k": 2.5},
         {"temperature": "hot"}, {"top_p": None}, {"temperature": [1]}]


@pytest.mark.parametrize("sampling", WRONG, ids=repr)
def test_a_sampling_field_of_the_wrong_type_is_a_usage_error(sampling):
    with pytest.raises(UsageError, match=r"^(temperature|top_k|top_p|seed) must be") as caught:
        generation_request(None, "m", 1, ["hello"], {"sampling": sampling})
    assert len(str(caught.value).splitlines()) == 1


def test_numbers_of_the_right_kind_still_make_a_sampling():
    import numpy as np

    assert Sampling(0.7, 5, 0.9, 3).to_dict() == {"temperature": 0.7, "top_k": 5, "top_p": 0.9, "seed": 3}
    assert Sampling(1, np.int64(2), 1, np.int64(4)).to_dict() == {"temperature": 1, "top_k": 2, "top_p": 1, "seed": 4}


@pytest.mark.parametrize("targets", [[1], [None], [["a"]], [{"text": "a"}]], ids=repr)
def test_targets_that_are_not_texts_are_a_usage_error(targets):
    """Each was a TypeError from the tokenizer ('TextInputSequence must be str'): a 500."""
    with pytest.raises(UsageError, match=r"^parameters.targets must be a list of texts, one per prompt"):
        generation_request(None, "m", 1, ["hello"], {"targets": targets})
