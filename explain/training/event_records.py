"""TensorBoard event files read record by record, with their damage reported.

An event file is a TFRecord stream. Each record is framed as

    uint64 length (little-endian) | uint32 masked crc32c(length) | data[length] | uint32 masked crc32c(data)

TensorBoard's own loader stops quietly at the first truncated or damaged record
(a file still being written looks the same), so a broken file would read as
half its points. Here every record's framing and both checksums are checked:
the records before the first problem are kept, and the problem is reported
("truncated in record 7 of ...", "damaged at record 3: ...").
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from explain.errors import CorruptFile

_HEADER = struct.Struct("<QI")  # length, masked crc32c of the 8 length bytes
_FOOTER = struct.Struct("<I")  # masked crc32c of the data


@dataclass
class RecordScan:
    """The intact records of one event file, and what stopped the scan.

    Attributes:
        records: the data of every record before the first problem, in order.
        problem: None for an intact file, else one line naming the record
            (1-based) and what is wrong with it.
    """

    records: list[bytes] = field(default_factory=list)
    problem: str | None = None


def _masked_crc32c(data: bytes) -> int:
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c  # pure Python, ~4 MB/s

    return masked_crc32c(data)


def scan_records(data: bytes) -> RecordScan:
    """Split a TFRecord stream into records, checking lengths and checksums.

    Args:
        data: the whole file.

    Returns:
        the intact records up to the first truncated or damaged one.
    """
    scan = RecordScan()
    pos, size = 0, len(data)
    while pos < size:
        number = len(scan.records) + 1
        where = f"record {number} (byte {pos:,} of {size:,})"
        if size - pos < _HEADER.size:
            scan.problem = f"truncated in the header of {where}"
            break
        length, length_crc = _HEADER.unpack_from(data, pos)
        if _masked_crc32c(data[pos : pos + 8]) != length_crc:
            scan.problem = f"damaged at {where}: the length's checksum does not match"
            break
        start = pos + _HEADER.size
        end = start + length
        if end + _FOOTER.size > size:
            scan.problem = f"truncated in {where}: {length:,} bytes announced, {max(size - start, 0):,} present"
            break
        record = data[start:end]
        if _masked_crc32c(record) != _FOOTER.unpack_from(data, end)[0]:
            scan.problem = f"damaged at {where}: the data's checksum does not match"
            break
        scan.records.append(record)
        pos = end + _FOOTER.size
    return scan


def _file_version(text: str) -> float:
    try:
        return float(text.rsplit(":", 1)[-1])
    except ValueError:
        return 0.0


def _scalar(value) -> float | None:
    """The number of one summary value: a simple_value, or a one-element numeric tensor (TF2)."""
    if value.HasField("simple_value"):
        return float(value.simple_value)
    if value.HasField("tensor"):
        from tensorboard.util import tensor_util

        try:
            arr = tensor_util.make_ndarray(value.tensor)
        except Exception:  # a dtype TensorBoard cannot decode: not a curve
            return None
        if arr.size == 1 and np.issubdtype(arr.dtype, np.number):
            return float(arr.reshape(()))
    return None


def read_scalar_events(data: bytes, source: str) -> tuple[list[tuple[str, int, float, float]], str | None]:
    """(tag, step, wall_time, value) of every scalar in an event file, and its damage if any.

    Like TensorBoard's loader, a restart (a ``SessionLog.START``, or a tag's
    step going back) drops what that tag logged from that step on.

    Args:
        data: the event file's bytes.
        source: its name, for messages.

    Returns:
        the rows, and None or one line saying where the file is truncated or damaged.

    Raises:
        CorruptFile: not even the first record is readable.
    """
    from google.protobuf.message import DecodeError
    from tensorboard.compat.proto import event_pb2

    scan = scan_records(data)
    if not scan.records:
        raise CorruptFile(f"{source}: not a readable TensorBoard event file ({scan.problem or 'no records'}).")
    rows: list[tuple[str, int, float, float]] = []
    version, latest = 0.0, None
    problem = scan.problem
    for number, record in enumerate(scan.records, 1):
        try:
            event = event_pb2.Event.FromString(record)
        except DecodeError:
            problem = f"damaged at record {number}: its checksum matches but it is not an event"
            break
        if event.HasField("file_version"):  # "brain.Event:2"
            version = _file_version(event.file_version)
        if version >= 2:  # TensorBoard's rule for current files: only a logged restart drops data
            if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
                rows = [r for r in rows if r[1] < event.step]
        elif latest is not None and event.step < latest and event.HasField("summary"):  # older files: step went back
            tags = {v.tag for v in event.summary.value}
            rows = [r for r in rows if r[1] < event.step or r[0] not in tags]
        else:
            latest = event.step
        for value in event.summary.value:
            number_value = _scalar(value)
            if number_value is not None:
                rows.append((value.tag, int(event.step), float(event.wall_time), number_value))
    return rows, problem and f"{source}: {problem}; read the {len(rows):,} values before it"
