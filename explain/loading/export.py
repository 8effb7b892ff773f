"""Hardened loading of ``torch.export`` ``.pt2`` archives.

``torch.export.load`` (torch 2.13) is not safe on untrusted files:

- a blob the safe unpickler rejects (sample inputs, state dict, constants) is
  retried with ``torch.load(weights_only=False)`` — running what the file
  carries; pickled weights and constants are loaded that way directly, and
  "opaque object" constants go through plain ``pickle.loads``;
- symbolic shape expressions are parsed with ``sympy.sympify`` (``eval``);
- ``ep.module()`` ``exec``s the archive's ``guards_code`` when sample inputs
  are present; node names end up in FX-generated Python source.

So Glassbox reads the archive itself with ``zipfile`` and JSON, checks the
serialized graph (operators, names, expressions) *before* torch sees it,
reads every tensor with ``weights_only=True`` or from raw bytes, refuses
pickled Python objects, never passes the sample inputs to torch (they are only
checked with the safe unpickler) and drops ``guards_code``. Only then does it
call torch's ``ExportedProgramDeserializer`` on those plain dicts, with
``deserialize_torch_artifact`` patched to refuse any pickle fallback.
"""
from __future__ import annotations

import contextlib
import json
import re
import threading
import zipfile
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from explain import config
from explain.errors import CorruptFile, IncompatibleInput, TooLarge, UnsafeFile, one_line
from explain.loading.model_process import in_model_process
from explain.loading.op_allowlist import is_allowed
from explain.loading.shape_expr import check_expression
from explain.loading.source import (
    MAX_SPEC_BYTES,
    Archive,
    LoadedParts,
    open_archive,
    read_zip_member,
    spec_from_text,
    weights_only_load,
)
from explain.spec import SPEC_FILENAME, InputSpec, SpecGuess, modality_for

_PATCH_LOCK = threading.Lock()
_PT2_HINT = "Export the model again with torch.export.save (tensors only), or upload safetensors."
MODEL_NAME = "model"  # torch.export.save stores its program under this name
#: Python-level operators export uses for getitem and symbolic shape arithmetic.
ALLOWED_PY_OPS = frozenset(
    ["_operator.getitem"]
    + [f"_operator.{n}" for n in ("eq ne le ge lt gt neg pos mul add sub floordiv mod pow truediv and_ or_ lshift rshift".split())]
    + ["math.trunc"]
    + [f"torch.sym_{n}" for n in ("not", "int", "float", "ite", "max", "min", "sqrt")]
)
_IDENTIFIER = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]*)?$")  # empty: unnamed higher-order op inputs
_OP_PART = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FQN = re.compile(r"^[A-Za-z0-9_.]*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")


def is_export_archive(archive: Archive, names: list[str]) -> bool:
    """True for a zip holding ``<root>/archive_format`` = ``pt2`` (a member of a few bytes)."""
    member = next((n for n in names if n.rsplit("/", 1)[-1] == "archive_format"), None)
    if member is None or archive.sizes.get(member, 0) > 64:
        return False
    return archive.read(member).strip() == b"pt2"


def check_export_parts(data: bytes, archive: Archive | None = None) -> LoadedParts:
    """Check a ``.pt2`` in the server and load it in its own model process (`explain.loading.model_process`).

    The server checks the program and the spec (`read_export_archive` with ``tensors=False``: JSON
    only); the weight and constant tables and the sample-inputs blob, which only the child reads or
    unpickles, are checked there, by the same `read_export_archive`, before torch's deserializer
    sees anything. The program
    is deserialised and run only in the child, so the server never imports torch's export
    deserializer (``torch._export.serde.serialize`` pulls in dynamo and sympy: more than a torch import).
    """
    from explain.loading.model_process import load_remote_parts

    _, _, _, embedded = read_export_archive(data, archive, tensors=False)
    return load_remote_parts(data, "export", embedded)


def load_export_parts(data: bytes) -> LoadedParts:
    """Load a ``.pt2`` (in a model process) without ever unpickling Python objects or eval-ing its strings."""
    from explain.loading.export_lm import ExportedLMModule, lm_signature

    raw, state_dict, constants, embedded = read_export_archive(data)
    ep = _deserialize(raw, state_dict, constants)
    causal = lm_signature(ep)  # ids [N, L] -> logits [N, L, V]: answered as a causal LM (`explain.loading.export_lm`)
    return LoadedParts(
        ep.module() if causal is None else ExportedLMModule(ep.module(), causal), "export", embedded_spec=embedded,
        fixed_batch_size=static_batch_size(ep), exported_program=ep,
    )


def read_export_archive(data: bytes, archive: Archive | None = None, *, tensors: bool = True
                        ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], InputSpec | None]:
    """Read and check a ``.pt2``: its program JSON, weights, constants and embedded spec (nothing is run).

    ``tensors=False`` (the server, which never reads them): the weights, constants and sample inputs are
    neither read nor checked (nothing of the file is unpickled in the server), and come back empty.

    Raises:
        UnsafeFile: pickled objects, a sample-inputs blob the safe unpickler
            rejects, forbidden operators or expressions.
        CorruptFile: missing or malformed archive members.
    """
    archive = archive or open_archive(data, ".pt2")
    zf, names = archive.zf, archive.names
    fmt = next(n for n in names if n.rsplit("/", 1)[-1] == "archive_format")
    root = fmt[: -len("archive_format")]

    def member(path: str) -> bytes | None:
        return read_zip_member(zf, root + path, ".pt2") if root + path in names else None

    name = f"{root}models/{MODEL_NAME}.json"  # refused by its declared size before it is inflated and parsed
    program = archive.read(name, config.max_program_bytes(), "An operator can raise it with GLASSBOX_MAX_PROGRAM_MB.") \
        if name in names else None
    if program is None:
        raise CorruptFile("The .pt2 archive holds no exported program (models/model.json).",
                          "Save the model with torch.export.save(torch.export.export(model, ...)).")
    try:
        raw = json.loads(program)
    except ValueError as exc:
        raise CorruptFile(f"The .pt2 program is not valid JSON ({exc}).") from None
    check_program(raw)
    raw["guards_code"] = []  # torch exec()s these; never needed to run the graph
    sample = member(f"data/sample_inputs/{MODEL_NAME}.pt") if tensors else None  # unpickled in the child only:
    if sample:  # checked, never handed to torch (it would retry with weights_only=False); a deflated blob inflates
        weights_only_load(sample, ".pt2 sample-inputs blob", _PT2_HINT)  # to its records' declared sizes
    state_dict = _read_payloads(zf, names, root, "weights") if tensors else {}
    constants = _read_payloads(zf, names, root, "constants") if tensors else {}
    spec_name = f"{root}extra/{SPEC_FILENAME}"  # as a TorchScript archive's: capped before it is inflated
    spec_text = archive.read(spec_name, MAX_SPEC_BYTES) if spec_name in names else None
    embedded = spec_from_text(spec_text.decode("utf-8", errors="replace")) if spec_text else None
    return raw, state_dict, constants, embedded


# --------------------------------------------------------------------------
# checking the serialized program
# --------------------------------------------------------------------------
def check_program(raw: Any) -> None:
    """Refuse a serialized program whose strings could run code or call foreign operators.

    Walks the whole JSON: node targets (and operator arguments) must be on
    the shared operator allowlist or export's getitem and shape arithmetic;
    names must be identifiers; symbolic expressions may use only bounded
    sympy arithmetic (`explain.loading.shape_expr`); no string may contain control
    characters. Stack traces are dropped (they would land in generated
    source comments).
    """
    if not isinstance(raw, dict) or "graph_module" not in raw:
        raise CorruptFile("The .pt2 program is not a torch.export program.")
    for key in raw.get("range_constraints") or {}:
        check_expression(key)
    _walk(raw, None)


def _walk(obj: Any, key: str | None) -> None:
    if isinstance(obj, dict):
        if "target" in obj and "inputs" in obj and "outputs" in obj:
            check_operator(obj["target"])
        meta = obj.get("metadata")
        if isinstance(meta, dict):
            meta.pop("stack_trace", None)
        for k, v in obj.items():
            if _CONTROL.search(str(k)):
                raise UnsafeFile("The .pt2 program contains control characters in a key.")
            _walk(v, k)
    elif isinstance(obj, list):
        for v in obj:
            _walk(v, key)
    elif isinstance(obj, str):
        _check_string(obj, key)


def _check_string(value: str, key: str | None) -> None:
    if key == "expr_str":
        check_expression(value)
    elif key == "as_operator":
        check_operator(value)
    elif _CONTROL.search(value):
        raise UnsafeFile(f"The .pt2 program has a {key or 'string'} value with control characters.")
    elif key in ("name", "as_name", "forward_arg_names", "arg_name") and not _IDENTIFIER.match(value):
        raise UnsafeFile(f"The .pt2 program has a node name that is not an identifier: {value[:60]!r}.")
    elif key in ("parameter_name", "buffer_name", "tensor_constant_name", "fqn") and not _FQN.match(value):
        raise UnsafeFile(f"The .pt2 program has a malformed attribute name: {value[:60]!r}.")


def check_operator(target: Any) -> None:
    """Refuse an operator outside the shared allowlist (`explain.loading.op_allowlist`), naming it.

    ``torch.ops.aten.add.Tensor`` is checked as ``aten::add``,
    ``torch.ops.higher_order.cond`` as ``higher_order::cond``; export's
    Python-level getitem and shape arithmetic (`ALLOWED_PY_OPS`) pass too.
    """
    if not isinstance(target, str):
        raise UnsafeFile("The .pt2 program has a node without an operator name.")
    if target in ALLOWED_PY_OPS:
        return
    op = operator_name(target)
    if op is None or not is_allowed(op):
        raise UnsafeFile(
            f"The .pt2 graph calls operator {target[:80]!r}, which is not on Glassbox's operator allowlist "
            "(reviewed tensor operators only; nothing that touches files, storages or custom code).",
            "Export the model without custom operators, or upload safetensors + a registered architecture.",
        )


def operator_name(target: str) -> str | None:
    """``torch.ops.aten.add.Tensor`` -> ``aten::add``; None for anything not shaped like an operator."""
    parts = target.split(".")
    if parts[:2] != ["torch", "ops"] or not all(_OP_PART.match(p) for p in parts):
        return None
    if len(parts) == 4 or (len(parts) == 5 and parts[2] != "higher_order"):
        return f"{parts[2]}::{parts[3]}"
    return None


# --------------------------------------------------------------------------
# tensors
# --------------------------------------------------------------------------
def _read_payloads(zf: zipfile.ZipFile, names: list[str], root: str, kind: str) -> dict[str, Any]:
    """Weights or constants as tensors: raw bytes, or weights-only unpickling."""
    from torch._export.serde import schema
    from torch._export.serde.serialize import _dict_to_dataclass

    directory = f"{root}data/{kind}/"
    legacy = f"{directory}{MODEL_NAME}.pt"
    if legacy in names:
        loaded = weights_only_load(read_zip_member(zf, legacy, ".pt2"), f".pt2 {kind}", _PT2_HINT)
        if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
            raise UnsafeFile(f"The .pt2 {kind} blob holds something other than tensors.")
        return loaded
    config_name = f"{directory}{MODEL_NAME}_{kind}_config.json"
    if config_name not in names:
        raise CorruptFile(f"The .pt2 archive lacks its {kind} table ({config_name[len(root):]}).")
    try:
        table = _dict_to_dataclass(schema.PayloadConfig, json.loads(read_zip_member(zf, config_name, ".pt2")))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise CorruptFile(f"The .pt2 {kind} table is malformed ({one_line(exc, 200, typed=False)}).") from None
    check_payload_table(zf, table, directory, kind)  # declared bytes against bytes present, before any read
    flat: dict[str, torch.Tensor] = {}
    out: dict[str, Any] = {}
    present = set(names)
    for fqn, meta in table.config.items():
        path = directory + meta.path_name
        if kind == "constants" and not meta.path_name.startswith("tensor_"):
            raise UnsafeFile(
                f"The .pt2 file carries a pickled object constant ({fqn}); loading it could run code.",
                "Export a model whose constants are tensors only.",
            )
        if meta.use_pickle:
            tensor = weights_only_load(read_zip_member(zf, path, ".pt2"), f".pt2 {kind} entry {fqn!r}", _PT2_HINT)
            if not isinstance(tensor, torch.Tensor):
                raise UnsafeFile(f"The .pt2 {kind} entry {fqn!r} is not a tensor.")
            out[fqn] = tensor
            continue
        out[fqn] = _raw_tensor(zf, path, meta, flat, kind == "weights", path in present)
    return out


def tensor_description(tm: Any, what: str) -> tuple[torch.dtype, list[int], list[int], int]:
    """dtype, sizes, strides and storage offset of one weight-table entry, each a plain non-negative int.

    Raises:
        CorruptFile: no description, a malformed one, symbolic, negative or mismatched sizes.
    """
    from torch._export.serde.serialize import (
        deserialize_scalar_type,
        deserialize_size,
        deserialize_storage_offset,
        deserialize_stride,
    )

    if tm is None:
        raise CorruptFile(f"The .pt2 {what} has no tensor description.")
    try:
        dtype = deserialize_scalar_type(tm.dtype)
        size, stride = list(deserialize_size(tm.sizes)), list(deserialize_stride(tm.strides))
        offset = deserialize_storage_offset(tm.storage_offset)
    except Exception as exc:
        raise CorruptFile(f"The .pt2 tensor description is malformed ({one_line(exc, 200, typed=False)}).") from None
    if len(size) != len(stride) or not all(isinstance(v, int) and v >= 0 for v in (*size, *stride, offset)):
        raise CorruptFile(f"The .pt2 {what} has symbolic, negative or mismatched sizes.")
    return dtype, size, stride, offset


def _raw_tensor(
    zf: zipfile.ZipFile, path: str, meta: Any, flat: dict[str, torch.Tensor], weights: bool, present: bool
) -> Any:
    """One tensor from its raw record (shared records keep their aliasing), bounds-checked."""

    tm = meta.tensor_meta
    dtype, size, stride, offset = tensor_description(tm, f"entry {path.rsplit('/', 1)[-1]!r}")
    if path not in flat:
        if not present:
            raise CorruptFile(f"The .pt2 archive lacks the record {path.rsplit('/', 1)[-1]!r} its tables name.")
        raw = read_zip_member(zf, path, ".pt2")
        element = torch.empty((), dtype=dtype).element_size()
        if len(raw) % element:
            raise CorruptFile(f"The .pt2 weight file {path.rsplit('/', 1)[-1]!r} has a partial element.")
        flat[path] = torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)
    storage = flat[path]
    numel = 1
    for s in size:
        numel *= s
    last = offset + sum((s - 1) * st for s, st in zip(size, stride)) if numel else offset
    if numel and last >= storage.numel():  # (an empty record is refused too: no zeros are made up)
        raise CorruptFile("The .pt2 weights point outside their data (truncated or crafted file).")
    tensor = torch.as_strided(storage, size, stride, offset)
    if weights and meta.is_param:
        return nn.Parameter(tensor, requires_grad=bool(tm.requires_grad))
    return tensor


def check_payload_table(zf: zipfile.ZipFile, table: Any, directory: str, kind: str) -> None:
    """Refuse a weights / constants table that declares more bytes than its records hold.

    Checked from the table and the archive's directory alone, before any record
    is read (``zipfile`` never reads past a member's stated size): every raw
    entry's extent (storage offset to its farthest element, times the element
    size) must fit in its record, so an empty record cannot stand for zeros of
    any size (torch itself reads it so; Glassbox makes nothing up); and entries
    sharing one record (tied weights) must declare the same dtype and byte count.
    What the loaded tensors occupy is then what the archive holds.

    Raises:
        CorruptFile: a missing record, a malformed description, or an entry
            declaring more bytes than its record holds, or sharing it with an
            entry of another size; one line naming the entry.
    """

    users: dict[str, tuple[str, Any, int]] = {}  # record -> (first entry, dtype, bytes)
    for fqn, meta in table.config.items():
        if meta.use_pickle:  # unpickled weights-only, from its own record's bytes
            continue
        path = directory + meta.path_name
        dtype, size, stride, offset = tensor_description(meta.tensor_meta, f"{kind} entry {fqn!r}")
        try:
            present = zf.getinfo(path).file_size
        except KeyError:
            raise CorruptFile(f"The .pt2 archive lacks the record {meta.path_name!r} its tables name.") from None
        numel = 1
        for n in size:
            numel *= n
        extent = offset + 1 + sum((n - 1) * st for n, st in zip(size, stride)) if numel else 0
        declared = extent * dtype.itemsize
        if declared > present:
            raise CorruptFile(f"The .pt2 {kind} entry {fqn!r} declares {declared:,} bytes, but its record "
                              f"{meta.path_name!r} holds {present:,}.", _PT2_HINT)
        first, first_dtype, first_bytes = users.setdefault(path, (fqn, dtype, numel * dtype.itemsize))
        if (first_dtype, first_bytes) != (dtype, numel * dtype.itemsize):
            raise CorruptFile(f"The .pt2 {kind} entries {first!r} and {fqn!r} share the record "
                              f"{meta.path_name!r} with different sizes or dtypes.", _PT2_HINT)


# --------------------------------------------------------------------------
# deserializing
# --------------------------------------------------------------------------
@contextlib.contextmanager
def refuse_pickle_fallback() -> Iterator[None]:
    """While active, torch's export deserializer cannot unpickle with ``weights_only=False``.

    Glassbox passes plain dicts, so torch should never unpickle; this makes
    sure of it: any bytes it is asked to unpickle go through the safe
    unpickler and a refusal raises `UnsafeFile` instead of falling back.
    """
    from torch._export.serde import serialize

    def safe_artifact(serialized: Any) -> Any:
        if isinstance(serialized, (dict, tuple)):
            return serialized
        if not serialized:
            return {}
        artifact = weights_only_load(bytes(serialized), ".pt2 blob", _PT2_HINT)
        if not isinstance(artifact, (tuple, dict)):
            raise CorruptFile(f"A .pt2 blob holds a {type(artifact).__name__}, not a tuple or dict.")
        return artifact

    with _PATCH_LOCK:  # one patch at a time, so restoring never leaves a stale function
        original = serialize.deserialize_torch_artifact
        serialize.deserialize_torch_artifact = safe_artifact
        try:
            yield
        finally:
            serialize.deserialize_torch_artifact = original


def _deserialize(raw: dict[str, Any], state_dict: dict[str, Any], constants: dict[str, Any]) -> Any:
    from torch._export.serde import schema
    from torch._export.serde.serialize import ExportedProgramDeserializer, _dict_to_dataclass

    try:
        serialized = _dict_to_dataclass(schema.ExportedProgram, raw)
        with refuse_pickle_fallback():
            ep = ExportedProgramDeserializer().deserialize(serialized, state_dict, constants, None)
    except (UnsafeFile, CorruptFile, TooLarge):
        raise
    except Exception as exc:
        raise CorruptFile(
            f"The .pt2 program cannot be deserialized ({one_line(exc, 200)}).",
            "It may come from another torch version; export it again with this one.",
        ) from None
    ep._guards_code = []
    return ep


def static_batch_size(ep: Any) -> int | None:
    """The batch size a ``.pt2`` was exported with when its batch dim is static, else None.

    Read from the user-input placeholders' fake tensors: an ``int`` first
    dimension is static, a ``SymInt`` is dynamic.
    """
    user_inputs = set(ep.graph_signature.user_inputs)
    sizes = set()
    for node in ep.graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs:
            val = node.meta.get("val")
            if not isinstance(val, torch.Tensor) or val.dim() == 0:
                continue
            first = val.shape[0]
            if not isinstance(first, int):
                return None
            sizes.add(int(first))
    return sizes.pop() if len(sizes) == 1 else None


def check_program_fits(parts: LoadedParts, spec: InputSpec) -> None:
    """`check_spec_fits` for a program that lives in its model process (run there)."""
    from explain.model import LoadedModel

    model = LoadedModel(module=parts.module, format="export", sha256=parts.process.sha256, spec=spec,
                        fixed_batch_size=parts.fixed_batch_size, process=parts.process)
    _check_model_fits(model)


@in_model_process
def _check_model_fits(model: Any) -> None:
    if model.exported_program is not None:
        check_spec_fits(model.exported_program, model.spec)


#: Why a ``.pt2`` causal LM (token ids [N, L] -> logits [N, L, V]) is refused a classifier's spec, and the remedy.
CAUSAL_PT2 = ("This .pt2 maps token ids to logits at every position (a causal LM), but its spec describes a "
              "classifier.")
CAUSAL_PT2_HINT = ("Leave the spec out (a tokenizer.json beside the .pt2, or in it as extra/tokenizer.json), "
                   "or give one with \"task\": \"causal_lm\".")


def archive_tokenizer(archive: Archive) -> str | None:
    """The ``tokenizer.json`` a ``.pt2`` carries as ``extra/tokenizer.json`` (torch.export.save's
    ``extra_files``), size-checked; None without one."""
    from explain import config
    from explain.inputs.text import check_tokenizer_size

    member = archive.find("extra/tokenizer.json")
    if member is None:
        return None
    declared, cap = archive.sizes.get(member, 0), config.max_tokenizer_bytes()
    if declared > cap:  # before it is inflated
        raise TooLarge(f"The .pt2's tokenizer.json is {declared / 2**20:.0f} MiB, over the {cap / 2**20:.0f} MiB limit.",
                       "An operator can raise it with GLASSBOX_MAX_TOKENIZER_MB.")
    raw = read_zip_member(archive.zf, member, ".pt2")
    check_tokenizer_size(raw)
    return raw.decode("utf-8", errors="replace")


def check_spec_fits(ep: Any, spec: InputSpec) -> None:
    """Refuse a spec whose per-sample shape differs from the graph's static dims, a classifier's spec on a
    causal LM's signature (`CAUSAL_PT2`), and a causal LM's spec on any other program."""
    from explain.loading.export_lm import lm_signature, per_position_logits

    causal = per_position_logits(ep)
    if causal and not spec.is_causal_lm:
        raise IncompatibleInput(CAUSAL_PT2, CAUSAL_PT2_HINT)
    if spec.is_causal_lm:
        if lm_signature(ep) is None:
            raise IncompatibleInput("The spec says causal_lm, but this .pt2 does not map token ids [N, L] to "
                                    "logits [N, L, V] (an optional mask beside the ids).",
                                    "Give the classifier's spec, or export ids -> logits.")
        _check_vocabulary_fits(ep, spec)
        return  # its length: any within the program's range (`explain.loading.export_lm`)
    user_inputs = list(ep.graph_signature.user_inputs)
    for node in ep.graph.nodes:
        if node.op == "placeholder" and node.name == (user_inputs[0] if user_inputs else None):
            val = node.meta.get("val")
            if isinstance(val, torch.Tensor):
                dims = [d if isinstance(d, int) else None for d in val.shape[1:]]
                want = list(spec.input_shape)
                if len(dims) != len(want) or any(d is not None and d != w for d, w in zip(dims, want)):
                    raise IncompatibleInput(
                        f"The .pt2 graph takes inputs of shape {[d if d is not None else '*' for d in dims]} per "
                        f"sample, but the spec says {want}."
                    )


def _check_vocabulary_fits(ep: Any, spec: InputSpec) -> None:
    """Refuse a causal spec whose tokenizer (or vocabulary) is not readable or has ids at or past the program's
    V logits: they would index past its embedding in the middle of a generation, and a program with fewer logits
    than its tokenizer's tokens (a token classifier's labels) is not that tokenizer's language model."""
    from explain.inputs.text import tokenizer_vocab
    from explain.loading.export_lm import logits_width

    width = logits_width(ep)  # V of the logits [N, L, V]
    if spec.tokenizer:
        tokenizer_vocab(spec.tokenizer, width)  # CorruptFile: unreadable, or an id at or past V
    elif width is not None and spec.vocabulary and len(spec.vocabulary) > width:
        raise CorruptFile(f"The spec's vocabulary has {len(spec.vocabulary):,} tokens, but the model's vocabulary "
                          f"has {width:,} entries.")


def signature_guess(ep: Any) -> SpecGuess | None:
    """One sample's input shape and dtype from the exported program's signature.

    Read from the first user-input placeholder's fake tensor: the batch dim is
    dropped, every other ``SymInt`` dim becomes None (dynamic). None when the
    program takes no tensor input.
    """
    user_inputs = list(ep.graph_signature.user_inputs)
    first = user_inputs[0] if user_inputs else None
    for node in ep.graph.nodes:
        if node.op == "placeholder" and node.name == first:
            val = node.meta.get("val")
            if not isinstance(val, torch.Tensor) or val.dim() == 0:
                return None
            shape = tuple(d if isinstance(d, int) else None for d in val.shape[1:])
            dtype = str(val.dtype).removeprefix("torch.")
            return SpecGuess(shape, dtype, "the .pt2 signature", modality_for(len(shape), dtype))
    return None
