"""Attack A1 on training logs read in the server: a tiny torch.save checkpoint whose history holds
more values than the file has bytes (an expanded, stride-0 tensor; one record or list shared by
reference over and over) is refused in one line before it is walked, copied or tabled.

Unrefused, a 1.6 KB file with a stride-0 tensor of 10^8 values, or 1.5 KB of lists shared 2^28
times, or 2 MB of one 200-key record referenced 10^6 times, each held the Training page's server
past 100 s (2-core shared CPU, load 8)."""
from __future__ import annotations

import io

import pytest
import torch

from explain.errors import CorruptFile, one_line
from explain.training.history import read_history


def _ckpt(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _shared_lists(depth: int) -> list:
    x = [1.0]
    for _ in range(depth):
        x = [x, x]  # 2^depth leaves, depth + 1 lists in the file
    return x


ATTACKS = {
    "expanded tensor": {"history": {"loss": torch.zeros(1).expand(10**6)}},
    "shared lists": {"history": _shared_lists(20)},
    "shared record": {"history": [{f"k{i}": 0.5 for i in range(20)}] * 20_000},
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_history_with_more_values_than_bytes_is_refused(name):
    data = _ckpt(ATTACKS[name])
    with pytest.raises(CorruptFile) as caught:
        read_history(("run.pt", data))
    line = one_line(caught.value)
    assert "\n" not in line and "more values than its file has bytes" in line, line


def test_a_real_checkpoint_history_still_reads():
    history = [{"epoch": e, "loss": 1.0 / (e + 1), "val_loss": torch.tensor(2.0 / (e + 1))} for e in range(5)]
    data = _ckpt({"state_dict": {"w": torch.ones(3)}, "history": history,
                  "curve": torch.arange(4.0)})
    frame = read_history(("run.pt", data)).frame
    assert list(frame["loss"]) == pytest.approx([1.0, 0.5, 1 / 3, 0.25, 0.2])
    assert list(frame["val_loss"]) == pytest.approx([2.0, 1.0, 2 / 3, 0.5, 0.4])
