"""Red-team checks of KServe V2 binary bodies (`explain.service.binary`): two headers that passed its
checks and raised a plain Python error (a 500 through `OneLineErrors`) instead of a one-line 400."""
from __future__ import annotations

import json

import numpy as np
import pytest

from explain.errors import UsageError
from explain.service import binary

ROW = np.zeros((1, 30), np.float32).tobytes()  # [1, 30]
INPUT = {"name": "x", "shape": [1, 30], "datatype": "FP32", "parameters": {"binary_data_size": 120}}


@pytest.mark.parametrize("length", ["\u00b2", "1\u00b9", "\u00b3"])  # latin-1 superscripts: str.isdigit() is True
def test_a_header_length_of_superscript_digits_is_a_usage_error(length):
    """HTTP header values arrive latin-1 decoded; '²' passed ``isdigit`` and then ``int()`` raised ValueError."""
    with pytest.raises(UsageError, match="whole number of bytes"):
        binary.split_body(b"{}" + ROW, length)


@pytest.mark.parametrize("parameters", [[1], "binary", 3])
def test_an_outputs_parameters_not_an_object_is_a_usage_error(parameters):
    """``outputs[i].parameters`` a list / string / number: ``.get`` raised AttributeError."""
    head = json.dumps({"inputs": [INPUT], "outputs": [{"name": "probabilities", "parameters": parameters}]}).encode()
    with pytest.raises(UsageError, match='"parameters" must be a JSON object'):
        binary.read_request(head + ROW, {binary.HEADER_LENGTH: str(len(head))}, (30,))


def test_an_outputs_binary_data_flag_still_asks_for_bytes():
    head = json.dumps({"inputs": [INPUT], "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]})
    x, parameters, binary_output = binary.read_request(head.encode() + ROW, {binary.HEADER_LENGTH: str(len(head))}, (30,))
    assert x.shape == (1, 30) and parameters == {} and binary_output is True


DEEP = "@deep@"  # in the header's text: a list nested 1,000 deep (past json.dumps' and repr's recursion
DEEP_TEXT = b"[" * 1000 + b"]" * 1000  # limit; orjson reads it, its own limit is 1024)


@pytest.mark.parametrize("where", ["shape", "datatype", "name", "output", "flat datatype"])
def test_a_header_value_of_the_wrong_kind_is_a_usage_error(where):
    """A value the error line quoted (json.dumps, str) nested 1,000 deep raised RecursionError, and a
    datatype that is a list met ``in DATATYPES`` (TypeError: unhashable): both 500s."""
    entry, outputs = dict(INPUT), None
    if where == "shape":
        entry["shape"] = [1, DEEP]
    elif where == "datatype":
        entry["datatype"] = DEEP
    elif where == "flat datatype":
        entry["datatype"] = ["FP32"]
    elif where == "name":
        entry["name"] = DEEP
    else:
        outputs = [{"name": DEEP}]
    head = json.dumps({"inputs": [entry], **({"outputs": outputs} if outputs else {})}).encode()
    head = head.replace(json.dumps(DEEP).encode(), DEEP_TEXT)
    with pytest.raises(UsageError) as caught:
        binary.read_request(head + ROW, {binary.HEADER_LENGTH: str(len(head))}, (30,))
    assert len(str(caught.value).splitlines()) == 1 and len(str(caught.value)) < 300


@pytest.mark.parametrize("key", ["steps", "baseline"])
def test_explain_parameters_nested_past_the_json_bodys_depth_are_refused(key):
    """orjson reads a header 1,024 deep, pydantic's parser (a JSON body's) far less: an ``:explain``
    parameter nested 1,000 deep reached check_explain, whose error line repr()s it: RecursionError."""
    head = json.dumps({"inputs": [INPUT], "parameters": {"method": "saliency", key: DEEP}}).encode()
    head = head.replace(json.dumps(DEEP).encode(), DEEP_TEXT)
    with pytest.raises(UsageError, match="nests deeper than 32 levels"):
        binary.split_body(head + ROW, str(len(head)))
    # many lists, none deep (an image baseline's rows): read as before
    rows = [[float(i)] * 2 for i in range(100)]
    head = json.dumps({"inputs": [INPUT], "parameters": {"method": "saliency", "baseline": rows}}).encode()
    header, data = binary.split_body(head + ROW, str(len(head)))
    assert header["parameters"]["baseline"] == rows and len(data) == 120
