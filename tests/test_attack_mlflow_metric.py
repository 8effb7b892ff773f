"""Attack A3 on the MLflow metric reader (``timestamp value step`` lines, sniffed from their first 20 lines):
whatever the later lines hold, the answer is the series or one CorruptFile line, never a bare ValueError."""
from __future__ import annotations

import numpy as np
import pytest

from explain.errors import CorruptFile
from explain.training.formats import parse_mlflow_metric
from explain.training.history import read_history

GOOD = b"".join(b"16000000000%02d 0.%d %d\n" % (i, i % 10, i) for i in range(30))  # 30 lines, steps 0..29


@pytest.mark.parametrize("tail, words", [
    (b"abc 0.5 30\n", "could not convert"),  # a timestamp that is no number, past the sniffed lines
    (b"1600000000030 0.5 1.5\n", "not a whole number"),
    (b"1600000000030 0.5 " + b"9" * 30 + b"\n", "not a whole number"),  # was read as step 1e30
    (b"1600000000030 0.5 " + b"9" * 5000 + b"\n", "not a whole number"),  # was int()'s 4300-digit error
    (b"1600000000030 0.5 30 7\n", "Expected 3 fields"),
    (b"1600000000030\n", "expected 'timestamp value step'"),
])
def test_a_damaged_later_line_is_one_corrupt_file_line(tail, words):
    with pytest.raises(CorruptFile, match=words) as caught:
        read_history(GOOD + tail, filename="val_loss")
    assert "\n" not in str(caught.value)


def test_values_steps_and_logged_nan_read_as_before():
    history = read_history(GOOD + b"1600000000030 nan 30\n1600000000031 inf 31\n", filename="val_loss")
    frame = history.frame
    assert frame["step"].tolist() == list(range(32))
    assert frame["val_loss"].tolist()[:3] == [0.0, 0.1, 0.2] and np.isinf(frame["val_loss"].tolist()[30:]).all()
    old = parse_mlflow_metric(b"1600000000000 0.5\r\n1600000000500 0.25\r\n", "m/loss")  # MLflow < 1.0: no step
    assert list(old) == ["wall_time", "loss"] and old["wall_time"].tolist() == [1600000000.0, 1600000000.5]
    assert old["loss"].tolist() == ["0.5", "0.25"]
