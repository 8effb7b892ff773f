"""Attack A1 on checkpoints compared in the server (the Training page's weight change and drift, the
report's evolution): a torch.save or TorchScript checkpoint whose tensors hold more values than the
file has bytes (an expanded, stride-0 tensor; thousands of names viewing one storage) is refused in
one line before a value of it is copied.

Unrefused, two 1.6 KB torch.save files with a 10^8-value stride-0 weight cost the server +2.3 GB in
3 s (compute_weight_changes' flat double copies; 10^9: ~12 GB), and a 2.2 KB TorchScript file's
buffer was cloned whole by read_script_state (+400 MB for 10^8; 2-core shared CPU)."""
from __future__ import annotations

import io

import pytest
import torch

from explain.errors import CorruptFile, one_line
from explain.training.checkpoints import read_checkpoint, read_checkpoints
from explain.training.evolution import compute_weight_changes


def _saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


class _Expanded(torch.nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.register_buffer("w", torch.zeros(1).expand(n))

    def forward(self, x):
        return x + self.w[0]


def _script(module: torch.nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def attacks() -> dict[str, bytes]:
    one = torch.zeros(1_000)
    return {
        "expanded state_dict tensor": _saved({"fc.weight": torch.zeros(1).expand(10**6)}),
        "one storage under 2,000 names": _saved({f"fc{i}.weight": one for i in range(2_000)}),
        "expanded TorchScript buffer": _script(_Expanded(10**6)),
    }


@pytest.mark.parametrize("name", ["expanded state_dict tensor", "one storage under 2,000 names",
                                  "expanded TorchScript buffer"])
def test_checkpoint_with_more_values_than_bytes_is_refused(attacks, name):
    with pytest.raises(CorruptFile) as caught:
        read_checkpoint(("epoch3.pt", attacks[name]))
    line = one_line(caught.value)
    assert "\n" not in line and "more values than its file has bytes" in line, line


def test_tied_weights_still_compare():
    w = torch.ones(10, 10)
    first = _saved({"emb.weight": w, "head.weight": w})  # tied: one storage, two names
    second = _saved({"emb.weight": 2 * w, "head.weight": 2 * w})
    change = compute_weight_changes(read_checkpoints([("epoch1.pt", first), ("epoch2.pt", second)]))
    assert change.layers == ["emb", "head"]
    assert change.values[:, 0] == pytest.approx([1.0, 1.0])  # ||2w - w|| / ||w||
    assert change.norms[:, 0] == pytest.approx([10.0, 10.0])
