"""The reference text of text models (`explain.output.baselines.text_reference`): its one meaning per caller."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from explain.errors import UsageError
from explain.inputs.text import padding_mask, special_token_ids, tokenize
from explain.output.baselines import text_reference
from explain.spec import InputSpec

#: the sample's convention: <pad> = 0, <unk> = 1, <cls> = 2
SPEC = InputSpec("text", (5,), dtype="int64", vocabulary=["<pad>", "<unk>", "<cls>", "good", "bad", "not"],
                 cls_token="<cls>")
#: a vocabulary whose special tokens sit elsewhere: <pad> = 3, <unk> = 4, <cls> = 0
ODD = InputSpec("text", (5,), dtype="int64", vocabulary=["<cls>", "good", "bad", "<pad>", "<unk>"],
                cls_token="<cls>")
IDS = np.array([[2, 3, 5, 0, 0],
                [2, 4, 0, 0, 0],
                [5, 3, 3, 4, 0]], dtype=np.int64)


def test_special_ids_come_from_the_vocabulary_else_the_convention():
    assert special_token_ids(SPEC) == (0, 1)
    assert special_token_ids(ODD) == (3, 4)
    assert special_token_ids(InputSpec("text", (5,), dtype="int64")) == (0, 1)  # no vocabulary
    assert special_token_ids(InputSpec("text", (5,), dtype="int64", vocabulary=["a", "b"])) == (0, 1)


def test_pad_reference_keeps_each_inputs_first_token():
    """Layer integrated gradients ("padding") and layer importance."""
    ref = text_reference(IDS, SPEC, "pad", keep_first="input")
    np.testing.assert_array_equal(ref, [[2, 0, 0, 0, 0], [2, 0, 0, 0, 0], [5, 0, 0, 0, 0]])
    assert ref.shape == IDS.shape and ref.dtype == IDS.dtype
    np.testing.assert_array_equal(text_reference(IDS, ODD, "pad", keep_first="input")[:, 1:], 3)  # the spec's <pad>


def test_pad_reference_with_the_most_common_first_token():
    """DeepLift and DeepLift-SHAP: the same row for every input."""
    ref = text_reference(IDS, SPEC, "pad", keep_first="most_common")
    np.testing.assert_array_equal(ref, np.tile([2, 0, 0, 0, 0], (3, 1)))
    tie = np.array([[5, 3], [4, 3]])  # a tie takes the smallest id
    np.testing.assert_array_equal(text_reference(tie, SPEC, "pad", keep_first="most_common"), [[4, 0], [4, 0]])


def test_pad_reference_with_the_specs_cls_token():
    """shap_deep's background: the spec's <cls> when the vocabulary has it, else the most common first token."""
    mostly_not = np.array([[5, 3], [5, 4], [2, 3]])
    np.testing.assert_array_equal(text_reference(mostly_not, SPEC, "pad", keep_first="cls")[:1], [[2, 0]])
    np.testing.assert_array_equal(text_reference(mostly_not, ODD, "pad", keep_first="cls")[:1], [[0, 3]])
    no_cls = InputSpec("text", (2,), dtype="int64", vocabulary=SPEC.vocabulary)
    np.testing.assert_array_equal(text_reference(mostly_not, no_cls, "pad", keep_first="cls")[:1], [[5, 0]])


def test_unk_reference_replaces_real_tokens_and_keeps_padding():
    """Layer integrated gradients ("unk") and layer attribution: the padding mask stays the input's."""
    ref = text_reference(IDS, SPEC, "unk", keep_first="input")
    np.testing.assert_array_equal(ref, [[2, 1, 1, 0, 0], [2, 1, 0, 0, 0], [5, 1, 1, 1, 0]])
    np.testing.assert_array_equal(text_reference(IDS, SPEC, "unk", keep_first=None),
                                  [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]])
    odd = np.array([[0, 1, 3, 3]])
    np.testing.assert_array_equal(text_reference(odd, ODD, "unk", keep_first="input"), [[0, 4, 3, 3]])


def test_tensors_keep_their_type_dtype_and_device():
    ids = torch.as_tensor(IDS)
    ref = text_reference(ids, SPEC, "pad", keep_first="input")
    assert isinstance(ref, torch.Tensor) and ref.dtype == torch.int64 and ref.device == ids.device
    assert ref.shape == ids.shape
    np.testing.assert_array_equal(ref.numpy(), text_reference(IDS, SPEC, "pad", keep_first="input"))
    assert torch.equal(ids, torch.as_tensor(IDS))  # the input is not modified


def test_unknown_kinds_are_refused():
    with pytest.raises(UsageError):
        text_reference(IDS, SPEC, "zero")
    with pytest.raises(UsageError):
        text_reference(IDS, SPEC, "pad", keep_first="last")


def test_every_caller_builds_its_reference_here():
    """The methods and views that need a reference text have no copy of their own."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "explain"
    callers = ["output/methods/deeplift.py", "output/methods/deeplift_shap.py", "output/methods/shap_deep.py",
               "output/methods/layer_integrated_gradients.py", "output/layer_attribution.py",
               "output/layer_importance.py"]
    for rel in callers:
        text = (root / rel).read_text()
        assert "text_reference(" in text, rel
        assert "def padding_reference" not in text and "def reference_ids" not in text, rel


def test_padding_tokenising_and_references_agree_on_the_spec_pad_id():
    """One pad id for the tokeniser, the padding mask and the reference (a vocabulary with <pad> at 3)."""
    ids = np.asarray(tokenize("good", ODD))
    assert ids[-1] == 3 and padding_mask(ids, ODD).tolist() == [i == 3 for i in ids.tolist()]
    ref = text_reference(ids[None], ODD, kind="pad", keep_first=None)
    assert padding_mask(ref, ODD).all()
