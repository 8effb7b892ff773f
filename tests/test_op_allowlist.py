"""The shared operator allowlist: generated, free of I/O operators, and enough for what we ship.

`explain/loading/allowed_ops.txt` decides which operators an uploaded TorchScript or
.pt2 model may call (security issue 9); see tests/test_malicious_models.py for
the payloads it stops.
"""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
import torch
from test_malicious_models import _edit_code  # the one "attacker edits the zip" helper
from torch import nn

from explain.errors import UnsafeFile
from explain.loading.export import ALLOWED_PY_OPS, operator_name
from explain.loading.op_allowlist import ALLOWLIST_FILE, DENIED_NAMES, allowed_ops
from explain.loading.op_allowlist_gen import PATH_ARGUMENTS, generate_text
from explain.loading.script_check import check_torchscript_archive

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ("cancer", "shapes", "sentiment")


def _script_bytes(module: nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buf)
    return buf.getvalue()


def test_allowlist_file_is_what_the_generator_produces():
    assert ALLOWLIST_FILE.read_text(encoding="utf-8") == generate_text(), (
        "run `python -m explain.loading.op_allowlist_gen --write` and review the diff"
    )


def test_no_operator_that_reaches_files_or_storages_is_allowed():
    allowed = allowed_ops()
    schemas = torch._C._jit_get_all_schemas()
    refused = set()
    for schema in schemas:
        types = [str(a.type) for a in schema.arguments] + [str(r.type) for r in schema.returns]
        path_arg = any(str(a.type).rstrip("?") == "str" and a.name in PATH_ARGUMENTS for a in schema.arguments)
        if path_arg or any("Storage" in t or "__torch__.torch.classes" in t for t in types):
            refused.add(schema.name)
    assert {"aten::from_file", "aten::save", "aten::set_"} <= refused
    assert not refused & allowed
    assert not {op for op in allowed if op.split("::")[1] in DENIED_NAMES}
    for name in ("from_file", "save", "load", "_load_for_mobile", "set_", "storage", "untyped_storage",
                 "data_ptr", "_print", "empty", "resize_", "manual_seed"):
        assert f"aten::{name}" not in allowed and f"prim::{name}" not in allowed
    assert "prim::Print" not in allowed and "higher_order::call_torchbind" not in allowed
    names = {s.name for s in schemas}
    assert all(op in names or op.startswith(("prim::", "higher_order::")) for op in allowed)


def _graph_kinds(graph) -> set[str]:
    kinds, stack = set(), [graph]
    while stack:
        for node in stack.pop().nodes():
            kinds.add(node.kind())
            stack.extend(node.blocks())
    return kinds


@pytest.mark.parametrize("sample", SAMPLES)
def test_every_operator_the_samples_use_is_allowed(sample):
    folder = ROOT / "sample_models" / sample
    check_torchscript_archive((folder / "model.torchscript.pt").read_bytes())
    kinds = _graph_kinds(torch.jit.load(str(folder / "model.torchscript.pt")).inlined_graph)
    assert kinds - allowed_ops() == set()
    for name in ("model.pt2", "model_static.pt2"):
        with zipfile.ZipFile(folder / name) as zf:
            program = json.loads(zf.read(next(n for n in zf.namelist() if n.endswith("models/model.json"))))
        targets = {n["target"] for n in program["graph_module"]["graph"]["nodes"]}
        assert {t for t in targets if t not in ALLOWED_PY_OPS and operator_name(t) not in allowed_ops()} == set()


def test_common_layers_pass_the_torchscript_check():
    layers = [nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), nn.MultiheadAttention(8, 2), nn.LSTM(4, 4),
              nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten()),
              nn.Embedding(10, 4), nn.Upsample(scale_factor=2, mode="bilinear")]
    for layer in layers:
        check_torchscript_archive(_script_bytes(layer))


def test_every_operator_the_schema_rules_refuse_is_a_denied_name():
    from explain.loading.op_allowlist_gen import _is_safe

    schemas: dict[str, list] = {}
    for schema in torch._C._jit_get_all_schemas():
        schemas.setdefault(schema.name, []).append(schema)
    unsafe = {name.split("::")[1] for name, group in schemas.items()
              if name.split("::")[0] in ("aten", "prim") and not _is_safe(name, group)}
    assert unsafe and unsafe <= DENIED_NAMES


class Traced(nn.Module):
    """Declares an attribute named like an operator that is not allowed (``aten::trace``)."""

    def __init__(self):
        super().__init__()
        self.trace = "row"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.trace == "row":
            return x + 1
        return x


def test_class_attributes_named_like_operators_are_attributes_but_denied_names_never_pass():
    data = _script_bytes(Traced())
    check_torchscript_archive(data)  # self.trace is the declared attribute
    with pytest.raises(UnsafeFile, match="aten::kron"):  # an undeclared name is the operator
        check_torchscript_archive(_edit_code(data, "torch.add(x, 1)", "x.kron(x)"))
    with pytest.raises(UnsafeFile, match="'seed'"):  # a denied name is refused even when declared
        check_torchscript_archive(_edit_code(data, "trace", "seed"))
