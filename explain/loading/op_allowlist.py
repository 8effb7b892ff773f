"""The operators an uploaded model may call: one allowlist for TorchScript and ``.pt2``.

A TorchScript archive or a ``torch.export`` program is code: its operators run
in the server. Some operators torch ships touch files (``aten::from_file``,
``aten::save``), change process state (``aten::manual_seed``) or hand out
storages and raw memory (``aten::set_``, ``aten::empty``). So Glassbox never
asks "is this operator in a trusted namespace?" but "is this operator in the
reviewed list?": `ALLOWLIST_FILE` (``explain/loading/allowed_ops.txt``), one
``namespace::name`` per line, ``#`` comments allowed.

The file is generated from torch by ``python -m explain.loading.op_allowlist_gen
--write`` (the rules live there) and checked in, so every change to it is a
reviewed diff; a test asserts the file equals what the generator produces.

Names are operator names without overloads (``aten::add`` covers
``aten::add.Tensor`` and ``aten::add.out``); higher-order ``.pt2`` operators
are written ``higher_order::cond``.
"""
from __future__ import annotations

import functools
from pathlib import Path

ALLOWLIST_FILE = Path(__file__).with_name("allowed_ops.txt")
#: Names no uploaded model may call or read as an attribute, whatever class
#: defines them: they touch files, processes, storages, raw or uninitialised
#: memory, RPC, futures, C++ objects or global state. The generator keeps
#: every one of them out of the allowlist, and every ``aten`` / ``prim``
#: operator its schema rules refuse is listed here (a test checks it).
DENIED_NAMES = frozenset(
    """from_file save load _load _load_for_mobile _load_for_lite_interpreter set_ set storage untyped_storage
    _storage _typed_storage data_ptr _data_ptr _cdata _print Print print record_stream manual_seed seed
    initial_seed empty empty_like empty_strided new_empty new_empty_strided empty_permuted resize_ resize_as_
    pin_memory _pin_memory share_memory_ _share_memory_ is_shared is_set_to from_buffer frombuffer
    from_numpy numpy tofile fork wait rpc_async rpc_sync rpc_remote PythonOp IgnoredPythonOp __setstate__
    __getstate__ __reduce__ __reduce_ex__ _unsafe_view_from_storage call_torchbind executorch_call_delegate
    with_effects auto_functionalized auto_functionalized_v2 run_const_graph to_here owner owner_name local_value
    confirmed_by_owner is_owner awaitable awaitable_wait awaitable_nowait id quantized_lstm quantized_gru""".split()
)


@functools.lru_cache(maxsize=1)
def allowed_ops() -> frozenset[str]:
    """Every ``namespace::name`` the checked-in allowlist admits.

    Raises:
        RuntimeError: the data file is missing or names a denied operator
            (an installation error, not a user error).
    """
    try:
        text = ALLOWLIST_FILE.read_text(encoding="utf-8")
    except OSError as exc:  # pragma: no cover - packaging error
        raise RuntimeError(f"The operator allowlist {ALLOWLIST_FILE} cannot be read ({exc}).") from None
    names = frozenset(parse_allowlist(text))
    bad = sorted(n for n in names if n.split("::", 1)[-1] in DENIED_NAMES)
    if bad:
        raise RuntimeError(f"The operator allowlist admits denied operators: {', '.join(bad)}.")
    return names


def parse_allowlist(text: str) -> list[str]:
    """The operator names of an allowlist text, in order, without comments and blanks."""
    names = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line)
    return names


def is_allowed(op: str) -> bool:
    """True when ``op`` (``"aten::add"``, ``"prim::dtype"``, ``"higher_order::cond"``) may run."""
    return op in allowed_ops()


@functools.cache
def allowed_names(namespace: str = "aten") -> frozenset[str]:
    """The allowed operator names of one namespace, without the ``namespace::`` prefix."""
    prefix = f"{namespace}::"
    return frozenset(op[len(prefix):] for op in allowed_ops() if op.startswith(prefix))


@functools.lru_cache(maxsize=1)
def known_op_names() -> frozenset[str]:
    """Base names of every ``aten`` / ``prim`` operator this torch registers.

    TorchScript resolves a method call on a tensor, list, dict or string
    (``x.name(...)``) to ``aten::name``; the checker refuses such a call when
    ``name`` is an operator that is not allowed, even if the archive also
    defines a method of that name.
    """
    import torch

    names = set()
    for schema in torch._C._jit_get_all_schemas():
        namespace, _, name = schema.name.partition("::")
        if namespace in ("aten", "prim"):
            names.add(name)
    return frozenset(names)
