"""File formats of training logs, parsed into raw pandas tables.

`explain.history` turns these tables into a `TrainingHistory` (x columns,
numeric series, roles). Checkpoints are only ever loaded weights-only.
"""
from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import CorruptFile, IncompatibleInput
from .loading_common import weights_only_load

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".tar")
CHECKPOINT_HINT = "Save plain tensors, numbers, lists and dicts (e.g. the state_dict and a history list)."
CHECKPOINT_HISTORY_KEYS = ("history", "log_history", "training_history", "train_history", "train_log")


def _text(data: bytes, source: str) -> str:
    """A log file's text (UTF-8, BOM dropped); binary or empty files are refused."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise CorruptFile(f"{source}: not a text file (not UTF-8).") from None
    if not text.strip():
        raise CorruptFile(f"{source}: the file is empty.")
    return text


def parse_csv(data: bytes, source: str) -> pd.DataFrame:
    """A CSV/TSV table (separator sniffed) as strings; empty cells stay empty."""
    text = _text(data, source)
    try:
        raw = pd.read_csv(io.StringIO(text), sep=None, engine="python", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, csv.Error, ValueError) as exc:
        raise CorruptFile(f"{source}: not a readable CSV table ({str(exc).splitlines()[0]}).") from None
    return raw


def _records_frame(records: list[Any], source: str) -> pd.DataFrame:
    if not records or not all(isinstance(r, dict) for r in records):
        raise IncompatibleInput(f"{source}: expected a list of JSON objects (one per epoch or step).")
    return pd.json_normalize(records, sep="/")


def mark_nan(obj: Any) -> Any:
    """A logged float NaN -> +inf (see the module docstring); None stays missing."""
    if isinstance(obj, dict):
        return {k: mark_nan(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [mark_nan(v) for v in obj]
    if isinstance(obj, float) and np.isnan(obj):
        return np.inf
    return obj


def frame_from_json(obj: Any, source: str) -> pd.DataFrame:
    obj = mark_nan(obj)
    if isinstance(obj, dict):
        for key in CHECKPOINT_HISTORY_KEYS:
            if key in obj and isinstance(obj[key], (list, dict)):
                return frame_from_json(obj[key], source)
        lists = {k: v for k, v in obj.items() if isinstance(v, list)}
        if lists:
            n = max(len(v) for v in lists.values())
            return pd.DataFrame({k: list(v) + [None] * (n - len(v)) for k, v in lists.items()})
        return _records_frame([obj], source)
    if isinstance(obj, list):
        return _records_frame(obj, source)
    raise IncompatibleInput(f"{source}: JSON holds no training history (a {type(obj).__name__}).")


def parse_json(data: bytes, source: str) -> pd.DataFrame:
    """One JSON document (records, dict of lists, trainer state) or JSON lines."""
    text = _text(data, source)
    try:
        return frame_from_json(json.loads(text), source)
    except json.JSONDecodeError:
        pass  # JSON lines, or not JSON at all
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorruptFile(f"{source}: line {number} is not valid JSON ({exc.msg}).") from None
        if not isinstance(record, dict):
            raise IncompatibleInput(f"{source}: line {number} is not a JSON object.")
        records.append(record)
    return _records_frame(mark_nan(records), source)


def _scalar_events(path: str) -> list[tuple[str, int, float, float]]:
    """(tag, step, wall_time, value) of every scalar in one event file."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    acc = EventAccumulator(path, size_guidance={"scalars": 0, "tensors": 0})
    try:
        acc.Reload()
    except Exception as exc:  # data loss, truncated record, bad CRC
        raise CorruptFile(f"{Path(path).name}: unreadable TensorBoard event file ({exc}).") from None
    tags = acc.Tags()
    rows = [(tag, e.step, e.wall_time, e.value) for tag in tags.get("scalars", []) for e in acc.Scalars(tag)]
    for tag in tags.get("tensors", []):  # TF2 writes scalars as rank-0 tensors
        for e in acc.Tensors(tag):
            arr = tensor_util.make_ndarray(e.tensor_proto)
            if arr.size == 1 and np.issubdtype(arr.dtype, np.number):
                rows.append((tag, e.step, e.wall_time, float(arr.reshape(()))))
    return rows


def parse_event_files(files: list[Path], root: Path, source: str) -> tuple[pd.DataFrame, bool]:
    """Scalars of event files as a wide table by step; True when the steps are epochs.

    Tags of files in sub-folders are prefixed with the folder (``train/epoch_loss``).
    """
    rows = []
    for path in files:
        rel = path.parent.relative_to(root).as_posix() if path.parent != root else ""
        for tag, step, wall, value in _scalar_events(str(path)):
            name = f"{rel}/{tag}" if rel else tag
            rows.append((name, step, wall, value if np.isfinite(value) else np.inf))
    if not rows:
        raise CorruptFile(f"{source}: no scalar curves found in the TensorBoard event file(s).")
    long = pd.DataFrame(rows, columns=["tag", "step", "wall_time", "value"])
    wide = long.pivot_table(index="step", columns="tag", values="value", aggfunc="last", dropna=False)
    wide.columns = [str(c) for c in wide.columns]
    wide.insert(0, "wall_time", long.groupby("step")["wall_time"].min())
    wide = wide.reset_index()
    tags = [c for c in wide.columns if c not in ("step", "wall_time")]
    step_is_epoch = all(Path(t).name.startswith("epoch_") for t in tags)  # Keras' TensorBoard callback
    return wide, step_is_epoch


def parse_tensorboard_bytes(data: bytes, source: str) -> tuple[pd.DataFrame, bool]:
    """`parse_event_files` for an uploaded event file."""
    name = Path(source).name if "tfevents" in Path(source).name else "events.out.tfevents.upload"
    with tempfile.TemporaryDirectory(prefix="glassbox-tb-") as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        return parse_event_files([path], Path(tmp), source)


def load_checkpoint_dict(data: bytes, source: str = "checkpoint") -> dict[str, Any]:
    """``torch.load(..., weights_only=True)`` of a checkpoint that must be a dict."""
    try:
        obj = weights_only_load(data, f"checkpoint {source}", CHECKPOINT_HINT)
    except CorruptFile as exc:  # zip errors, truncation, not a torch file at all
        raise CorruptFile(f"{source}: not a readable torch checkpoint ({exc.reason})") from None
    if not isinstance(obj, dict):
        raise IncompatibleInput(f"{source}: the checkpoint is a {type(obj).__name__}, not a dict.")
    return obj


def plain(obj: Any) -> Any:
    """Tensors and numpy scalars inside a history -> Python floats."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if hasattr(obj, "tolist"):
        return plain(obj.tolist())
    return obj


def checkpoint_history_frame(obj: dict[str, Any], source: str) -> pd.DataFrame:
    """The history entry of a loaded checkpoint dict as a table.

    Raises:
        IncompatibleInput: a checkpoint without a history.
    """
    key = next((k for k in CHECKPOINT_HISTORY_KEYS if k in obj), None)
    if key is None:
        raise IncompatibleInput(
            f"{source}: the checkpoint has no training history.",
            f"Expected one of the keys {', '.join(CHECKPOINT_HISTORY_KEYS)}.",
        )
    return frame_from_json(plain(obj[key]), source)


def sniff(data: bytes, name: str) -> str:
    """``tensorboard`` | ``checkpoint`` | ``json`` | ``csv`` from the name and the first bytes."""
    lower = name.lower()
    if "tfevents" in lower:
        return "tensorboard"
    if data[:4] == b"PK\x03\x04" or lower.endswith(CHECKPOINT_SUFFIXES):
        return "checkpoint"
    if lower.endswith((".json", ".jsonl", ".ndjson")):
        return "json"
    if lower.endswith((".csv", ".tsv")):
        return "csv"
    head = data[:2048].lstrip()
    if head[:1] in (b"{", b"["):
        return "json"
    if b"\x00" in head[:64]:
        return "tensorboard"  # binary records: try the event-file reader
    return "csv"
