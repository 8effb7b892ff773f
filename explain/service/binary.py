"""KServe V2's binary tensor data extension for ``:predict`` and ``:explain`` (`explain.service.api`):
a body of a JSON header followed by raw tensor bytes, so a row is read with no JSON number parsing.

    POST /v1/models/cancer:predict
    Content-Type: application/octet-stream
    Inference-Header-Content-Length: 121                     (the JSON header's bytes; the rest is data)

    {"inputs": [{"name": "inputs", "shape": [2, 30], "datatype": "FP32", "parameters": {"binary_data_size": 240}}],
     "parameters": {"binary_data_output": true}}<240 bytes: 2 x 30 little-endian float32, row major>

The answer is KServe V2's ``{"model_name", "model_version", "outputs": [{"name": "probabilities",
"shape": [N, K], "datatype": "FP32", ...}]}``: its data as JSON (``"data"``, flat), or, when the request
asks (``"binary_data_output": true`` among its parameters, or ``"binary_data": true`` in the output's),
as bytes after the header, whose length the answer's ``Inference-Header-Content-Length`` gives. For
``:explain`` the header's ``"parameters"`` are the JSON body's (``method``, ``target``, ...) and the
answer is the JSON one.

Trust boundary (`read_tensors`): the header's length, each tensor's ``datatype`` (`DATATYPES`, no
BYTES / BOOL), ``shape`` and ``binary_data_size`` are checked against one another, against the body's
length and against the model's input shape with Python's integers (no overflow) before an array is
made; the arrays are views of the body (already capped by the `Gate`), copied only once they are
checked; the model's own checks (`runners.model_array`: NaN / infinite values, whole token ids, the
vocabulary) follow as for a JSON body. Anything malformed is a `UsageError`: 400, one line.

`encode_request` / `decode_response` are the caller's side (`benchmarks/api.py`, the tests).
"""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import orjson

from explain.errors import UsageError

#: the request / answer header that gives the JSON header's length in bytes
HEADER_LENGTH = "inference-header-content-length"
OCTET_STREAM = "application/octet-stream"
#: V2 datatype -> little-endian numpy dtype (the numeric ones; BYTES and BOOL are not taken)
DATATYPES: dict[str, str] = {"FP16": "<f2", "FP32": "<f4", "FP64": "<f8", "INT8": "i1", "INT16": "<i2",
                             "INT32": "<i4", "INT64": "<i8", "UINT8": "u1", "UINT16": "<u2", "UINT32": "<u4"}
NAMES = {np.dtype(v): k for k, v in DATATYPES.items()}
#: the most tensors and dimensions a header may describe
MAX_TENSORS = 4
MAX_DIMS = 8
#: the deepest a header's lists and objects may nest (an image baseline in "parameters": ~6)
MAX_DEPTH = 32
#: the one output of ``:predict``
OUTPUT = "probabilities"


def is_binary(headers) -> bool:
    """Whether a request (its Starlette ``headers``) carries a binary body."""
    kind = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return kind == OCTET_STREAM or HEADER_LENGTH in headers


def _shown(value: Any) -> str:
    """A header's value in an error line: a scalar as JSON (cut to 40 characters), else its kind (a list
    nested 1,000 deep would exhaust json.dumps' or repr's recursion)."""
    if value is None or isinstance(value, (str, int, float)):
        return json.dumps(value)[:40]
    return "a JSON " + ("list" if isinstance(value, list) else "object")


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UsageError(f"{what} must be a whole number of at least 0, not {_shown(value)}.")
    return value


def split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], memoryview]:
    """The JSON header of a binary body and the bytes after it (a view, not a copy)."""
    if header_length is None:
        raise UsageError(f"A binary body needs the {HEADER_LENGTH.title()} header: the length of its JSON "
                         f"header in bytes.")
    text = header_length.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 12:  # '²' is a digit to isdigit, not to int
        raise UsageError(f"{HEADER_LENGTH.title()} must be a whole number of bytes, not {text[:40]!r}.")
    n = int(text)
    if not 0 < n <= len(body):
        raise UsageError(f"{HEADER_LENGTH.title()} says {n} bytes; the body has {len(body)}.")
    try:
        header = orjson.loads(memoryview(body)[:n])
    except orjson.JSONDecodeError:  # not UTF-8, not JSON, or nested past orjson's depth
        raise UsageError(f"The first {n} bytes of the body are not a JSON header.") from None
    if not isinstance(header, dict):
        raise UsageError("The binary body's header must be a JSON object.")
    # orjson reads 1024 deep, and what quotes or repr()s a value recurses; walked only when it could be deep
    if body.count(b"[", 0, n) + body.count(b"{", 0, n) > MAX_DEPTH and _depth(header) > MAX_DEPTH:
        raise UsageError(f"The binary body's header nests deeper than {MAX_DEPTH} levels.")
    return header, memoryview(body)[n:]


def _depth(value: Any) -> int:
    """How deep lists and objects nest in a parsed JSON value (iteratively: no recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))
    return deepest


def read_tensors(header: dict[str, Any], data: memoryview, key: str = "inputs",
                 row_shape: tuple[int, ...] | None = None) -> dict[str, np.ndarray]:
    """The tensors ``header[key]`` describes, read from ``data`` (the bytes after the header), by name.
    ``row_shape``: the model's shape of one row; each tensor must be ``[N, *row_shape]`` with N >= 1.
    Every size is checked before an array is made; each array is its own writable copy.

    Raises:
        UsageError: a malformed header, a datatype not in `DATATYPES`, a shape that does not fit the
            model, a ``binary_data_size`` that does not match its shape, or sizes that do not add up
            to the body's.
    """
    entries = header.get(key)
    if not isinstance(entries, list) or not entries:
        raise UsageError(f'The header has no "{key}": a list of tensors, each with "name", "shape", '
                         f'"datatype" and "parameters": {{"binary_data_size": bytes}}.')
    if len(entries) > MAX_TENSORS:
        raise UsageError(f'The header lists {len(entries)} {key}; at most {MAX_TENSORS}.')
    planned, offset = [], 0
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise UsageError(f"{key}[{i}] must be a JSON object.")
        name = entry.get("name", f"{key}[{i}]")
        where = f"{key}[{i}] ({_shown(name)})"
        if not isinstance(name, str) or any(name == p[0] for p in planned):
            raise UsageError(f"{where}: each tensor needs a name of its own.")
        datatype = entry.get("datatype")
        if not isinstance(datatype, str) or datatype not in DATATYPES:  # a list is not hashable
            raise UsageError(f"{where}: datatype {_shown(datatype)} is not one of "
                             f"{', '.join(DATATYPES)}.")
        shape = entry.get("shape")
        if not isinstance(shape, list) or not shape or len(shape) > MAX_DIMS:
            raise UsageError(f"{where}: shape must be a list of 1 to {MAX_DIMS} sizes.")
        shape = [_int(d, f"{where}: a shape's size") for d in shape]
        parameters = entry.get("parameters") or {}
        if not isinstance(parameters, dict) or "binary_data_size" not in parameters:
            raise UsageError(f'{where}: a binary body carries each tensor as bytes; give its '
                             f'"parameters": {{"binary_data_size": bytes}}.')
        size = _int(parameters["binary_data_size"], f"{where}: binary_data_size")
        dtype = np.dtype(DATATYPES[datatype])
        if math.prod(shape) * dtype.itemsize != size:  # Python integers: no overflow
            raise UsageError(f"{where}: binary_data_size is {size} bytes; shape {shape} of {datatype} "
                             f"takes {math.prod(shape) * dtype.itemsize}.")
        if row_shape is not None and (tuple(shape[1:]) != tuple(row_shape) or shape[0] < 1):
            raise UsageError(f"{where}: shape {shape} does not fit this model, which takes "
                             f"[N, {', '.join(map(str, row_shape))}] with N at least 1.")
        planned.append((name, dtype, shape, offset, size))
        offset += size
    if offset != len(data):
        raise UsageError(f"The tensors' binary_data_size add up to {offset} bytes; the body has {len(data)} "
                         f"after its header.")
    return {name: np.frombuffer(data[start:start + size], dtype=dtype).reshape(shape).copy()
            for name, dtype, shape, start, size in planned}


def read_request(body: bytes, headers, row_shape: tuple[int, ...]) -> tuple[np.ndarray, dict[str, Any], bool]:
    """A binary ``:predict`` / ``:explain`` request: its one input ``[N, *row_shape]``, its parameters
    (``binary_data_output`` taken out) and whether the answer goes back as bytes."""
    header, data = split_body(body, headers.get(HEADER_LENGTH))
    tensors = read_tensors(header, data, "inputs", row_shape)
    if len(tensors) != 1:
        raise UsageError(f"This model takes one input tensor; the header lists {len(tensors)}.")
    parameters = header.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise UsageError('The header\'s "parameters" must be a JSON object.')
    parameters = dict(parameters)
    binary_output = parameters.pop("binary_data_output", False)
    outputs = header.get("outputs") or []
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise UsageError('The header\'s "outputs" must be a list of objects.')
    for o in outputs:
        if o.get("name") != OUTPUT:
            raise UsageError(f"No output {_shown(o.get('name'))}; the answer's output is {OUTPUT!r}.")
        asked = o.get("parameters") or {}
        if not isinstance(asked, dict):
            raise UsageError(f'The output {OUTPUT!r}\'s "parameters" must be a JSON object.')
        binary_output = binary_output or bool(asked.get("binary_data"))
    if not isinstance(binary_output, bool):
        raise UsageError("binary_data_output must be true or false.")
    (x,) = tensors.values()
    return x, parameters, binary_output


def answer(model_name: str, version: int, outputs: dict[str, np.ndarray], binary: bool
           ) -> tuple[bytes, dict[str, str]]:
    """A V2 answer of ``outputs`` (name -> array): its body and headers (``Content-Type``, and the
    header's length when the data follows it as bytes)."""
    described, blobs = [], []
    for name, array in outputs.items():
        array = np.ascontiguousarray(array)
        little = array.astype(array.dtype.newbyteorder("<"), copy=False)
        entry = {"name": name, "shape": list(array.shape), "datatype": NAMES[np.dtype(little.dtype.str)]}
        if binary:
            blob = little.tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = array.reshape(-1).tolist()
        described.append(entry)
    head = orjson.dumps({"model_name": model_name, "model_version": str(version), "outputs": described})
    if not binary:
        return head, {"content-type": "application/json"}
    return b"".join([head, *blobs]), {"content-type": OCTET_STREAM, HEADER_LENGTH: str(len(head))}


# -- the caller's side ---------------------------------------------------------------------------
def encode_request(x: np.ndarray, parameters: dict[str, Any] | None = None, *, binary_output: bool = True,
                   name: str = "inputs") -> tuple[bytes, dict[str, str]]:
    """A binary request of ``x`` [N, ...] (any of `DATATYPES`): its body and headers."""
    x = np.ascontiguousarray(x)
    little = x.astype(x.dtype.newbyteorder("<"), copy=False)
    blob = little.tobytes()
    header = {"inputs": [{"name": name, "shape": list(x.shape), "datatype": NAMES[np.dtype(little.dtype.str)],
                          "parameters": {"binary_data_size": len(blob)}}],
              "parameters": {**(parameters or {}), **({"binary_data_output": True} if binary_output else {})}}
    head = orjson.dumps(header)
    return head + blob, {"Content-Type": OCTET_STREAM, "Inference-Header-Content-Length": str(len(head))}


def decode_response(body: bytes, headers) -> dict[str, np.ndarray]:
    """A V2 answer's outputs by name, whether their data came as bytes or as JSON."""
    length = {k.lower(): v for k, v in dict(headers).items()}.get(HEADER_LENGTH)
    if length is None:
        header = orjson.loads(body)
        return {o["name"]: np.asarray(o["data"], dtype=DATATYPES[o["datatype"]]).reshape(o["shape"])
                for o in header["outputs"]}
    header, data = split_body(body, length)
    return read_tensors(header, data, "outputs")
