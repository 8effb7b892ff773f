"""Training logs that are damaged, hostile or huge: refused or read in part, never silently."""
from __future__ import annotations

import struct
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import explain.training.history as history_module
from explain.errors import CorruptFile
from explain.training.downsampling import downsample_points, downsample_rows
from explain.training.event_records import read_scalar_events, scan_records
from explain.training.history import merge_histories, read_history

DEEP = b"[" * 100_000 + b"]" * 100_000


# -- nesting -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("data, name", [
    (DEEP, "deep.json"),
    (b'{"loss": 1.0}\n{"loss": ' + DEEP + b"}\n", "deep.jsonl"),
    (b'{"history": ' + b'{"a": ' * 40 + b"1" + b"}" * 40 + b"}", "deep40.json"),  # deep, yet json.loads copes
])
def test_deeply_nested_json_is_refused_with_a_reason(data, name):
    start = time.perf_counter()
    with pytest.raises(CorruptFile, match="nests JSON more than 32 levels deep"):
        read_history(data, filename=name)
    assert time.perf_counter() - start < 5


def test_deeply_nested_checkpoint_history_is_refused(tmp_path):
    nested: list = [1.0]
    for _ in range(60):
        nested = [nested]
    torch.save({"history": {"loss": nested}}, tmp_path / "deep.pt")
    with pytest.raises(CorruptFile, match="nests JSON more than 32 levels deep"):
        read_history(tmp_path / "deep.pt")


# -- TensorBoard framing ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def event_file(tmp_path_factory) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    root = tmp_path_factory.mktemp("tb")
    w = SummaryWriter(str(root))
    for step in range(40):
        w.add_scalar("loss", 1.0 / (step + 1), step)
        w.add_scalar("val_loss", 1.2 / (step + 1), step)
    w.close()
    return next(root.glob("events.out.tfevents.*"))


def _record_offsets(data: bytes) -> list[int]:
    offsets, pos = [], 0
    while pos < len(data):
        offsets.append(pos)
        pos += 12 + struct.unpack_from("<Q", data, pos)[0] + 4
    return offsets


def _accumulator_scalars(path: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def test_intact_event_file_reads_like_tensorboard(event_file):
    rows, problem = read_scalar_events(event_file.read_bytes(), event_file.name)
    assert problem is None
    ours: dict[str, list] = {}
    for tag, step, _, value in rows:
        ours.setdefault(tag, []).append((step, pytest.approx(value)))
    assert ours == _accumulator_scalars(event_file)


def test_truncated_event_file_keeps_the_good_points_and_says_where(event_file, tmp_path):
    data = event_file.read_bytes()
    offsets = _record_offsets(data)
    cut = offsets[len(offsets) // 2] + 20  # inside the data of the middle record
    h = read_history(data[:cut], filename=event_file.name)
    assert len(h.warnings) == 1
    warning = h.warnings[0]
    assert f"truncated in record {len(offsets) // 2 + 1} " in warning and event_file.name in warning
    full = read_history(data, filename=event_file.name)
    kept = h.series("loss")
    assert 0 < len(kept) < len(full.series("loss"))
    assert kept.tolist() == pytest.approx(full.series("loss").iloc[: len(kept)].tolist())
    (tmp_path / event_file.name).write_bytes(data[:cut])  # TensorBoard itself reads this prefix without a word
    assert len(_accumulator_scalars(tmp_path / event_file.name)["loss"]) == len(kept)


@pytest.mark.parametrize("where, expected", [(4, "the length's checksum"), (14, "the data's checksum")])
def test_bad_checksum_is_reported_as_damage_at_that_record(event_file, where, expected):
    data = bytearray(event_file.read_bytes())
    offsets = _record_offsets(bytes(data))
    broken = len(offsets) // 3
    data[offsets[broken] + where] ^= 0xFF
    h = read_history(bytes(data), filename="events.out.tfevents.1.host")
    assert len(h.warnings) == 1 and f"damaged at record {broken + 1} " in h.warnings[0]
    assert expected in h.warnings[0]
    assert 0 < len(h.series("loss")) < 40
    assert merge_histories([h, read_history(event_file)]).warnings == h.warnings  # carried through merging


def test_event_file_damaged_in_its_first_record_is_refused(event_file):
    data = bytearray(event_file.read_bytes())
    data[14] ^= 0xFF
    with pytest.raises(CorruptFile, match="damaged at record 1"):
        read_history(bytes(data), filename="events.out.tfevents.1.host")
    assert scan_records(b"").records == [] and scan_records(b"").problem is None


def _write_events(path: Path, events) -> None:
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    writer = EventFileWriter(str(path))
    for event in events:
        writer.add_event(event)
    writer.close()


def test_tf2_tensor_scalars_and_a_logged_restart_read_like_tensorboard(tmp_path):
    from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, types_pb2

    def scalar(step: int, value: float) -> event_pb2.Event:
        tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[value])
        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag="epoch_loss", tensor=tensor)])
        return event_pb2.Event(step=step, wall_time=1000.0 + step, summary=summary)

    restart = event_pb2.Event(step=5, wall_time=2000.0, session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START))
    _write_events(tmp_path, [scalar(s, 1.0 / (s + 1)) for s in range(10)] + [restart]
                  + [scalar(s, 5.0 + s) for s in range(5, 8)])
    path = next(tmp_path.glob("events.out.tfevents.*"))
    h = read_history(path)
    assert h.warnings == [] and h.default_x == "epoch"  # Keras names: the step is the epoch
    assert h.series("epoch_loss").to_dict() == pytest.approx(
        {**{s: 1.0 / (s + 1) for s in range(5)}, **{s: 5.0 + s for s in range(5, 8)}})  # 8, 9 dropped as TB does


# -- long logs ----------------------------------------------------------------------------------------
def test_long_csv_is_averaged_down_with_a_note(monkeypatch):
    monkeypatch.setattr(history_module, "MAX_ROWS", 100)
    rows = ["step,epoch,loss,val_loss"]
    for step in range(1000):
        epoch = step // 100
        val = f"{1.0 / (epoch + 1):.4f}" if step % 100 == 99 else ""
        loss = "nan" if step == 555 else f"{2.0 - step / 1000:.4f}"
        rows.append(f"{step},{epoch},{loss},{val}")
    h = read_history("\n".join(rows).encode(), filename="long.csv")
    assert 100 <= len(h.frame) <= 110 and len(h.warnings) == 1
    assert "1,000 rows averaged into" in h.warnings[0] and "never across an epoch" in h.warnings[0]
    per_epoch = h.by_epoch()
    assert per_epoch["val_loss"].tolist() == [round(1.0 / (e + 1), 4) for e in range(10)]  # sparse: exact
    assert np.isinf(per_epoch["loss"].iloc[5]) and np.isfinite(per_epoch["loss"].drop(5.0)).all()
    assert h.frame["step"].iloc[-1] == 999 and h.frame["step"].is_monotonic_increasing


def test_downsampling_is_a_no_op_for_short_frames_and_keeps_gaps_when_drawing():
    frame = pd.DataFrame({"epoch": [0.0, 1.0], "loss": [1.0, 0.5]})
    assert downsample_rows(frame, 10, "x") == (frame, None)
    xs, ys = downsample_points(np.arange(10.0), np.array([1, 2, 3, np.inf, 5, 6, 7, 8, 9, 10.0]), 4)
    assert xs.tolist() == [2.0, 5.0, 8.0, 9.0] and ys[0] == 2.0 and np.isinf(ys[1]) and ys[3] == 10.0


@pytest.mark.parametrize("text", [
    "epoch\tloss\tval_loss\n0\t1.0\t1.1\n1\tnan\t0.9\n2\t 0.5\tNone\n",
    "epoch;loss;val_loss;done\n0;1.0;1.1;False\n1;NaN;0.9;False\n2;0.5;null;True\n",
])
def test_fast_csv_reader_keeps_the_cell_conventions(text):
    h = read_history(text.encode(), filename="log.csv")
    assert h.series_columns == ["loss", "val_loss"]  # a True/False column is not a curve
    loss = h.frame["loss"].tolist()
    assert loss[0] == 1.0 and np.isinf(loss[1]) and loss[2] == 0.5  # "nan" = logged non-finite
    assert np.isnan(h.frame["val_loss"].iloc[2])  # "None"/"null" = not logged
