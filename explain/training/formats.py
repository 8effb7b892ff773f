"""File formats of training logs, parsed into raw pandas tables.

`explain.training.history` turns these tables into a `TrainingHistory` (x columns,
numeric series, roles). Checkpoints are only ever loaded weights-only.
"""
from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from explain.errors import CorruptFile, IncompatibleInput, one_line
from explain.loading.source import describe_content, more_values_than_bytes, weights_only_load
from explain.training.event_records import read_scalar_events

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".tar")
CHECKPOINT_HINT = "Save plain tensors, numbers, lists and dicts (e.g. the state_dict and a history list)."
CHECKPOINT_HISTORY_KEYS = ("history", "log_history", "training_history", "train_history", "train_log")


_VISIBLE = re.compile(r"\S")


def _text(data: bytes, source: str) -> str:
    """A log file's text (UTF-8, BOM dropped); binary or empty files are refused."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise CorruptFile(f"{source}: not a text file (not UTF-8).") from None
    if _VISIBLE.search(text) is None:  # (no str.strip() copy of a 200 MB log)
        raise CorruptFile(f"{source}: the file is empty.")
    return text


_SEPARATORS = ",\t;|"
#: cells that mean "nothing logged here" (NaN later); "nan" text keeps its column as text for history._numeric,
#: which marks a logged NaN as +inf.
_MISSING = ["", "none", "None", "NONE", "null", "Null", "NULL"]


def _separator(text: str) -> str:
    """The separator of a CSV/TSV table, sniffed from its first lines (a comma when it cannot tell)."""
    head = "\n".join(text[:65536].splitlines()[:50])
    try:
        return csv.Sniffer().sniff(head, delimiters=_SEPARATORS).delimiter
    except csv.Error:
        return ","


def parse_csv(data: bytes, source: str) -> pd.DataFrame:
    """A CSV/TSV table (separator sniffed); numeric columns as floats, others as text; empty cells NaN.

    pandas' C parser reads a 200 MB log in about 2 s (its Python engine with every
    cell as a string took over a minute).
    """
    sep = _separator(_text(data, source))  # (checks UTF-8; the parser reads the bytes, not a 4x larger StringIO)
    try:
        raw = pd.read_csv(io.BytesIO(data), sep=sep, encoding="utf-8-sig", engine="c", keep_default_na=False,
                          na_values=_MISSING, skipinitialspace=True, low_memory=False)
    except (pd.errors.ParserError, csv.Error, ValueError) as exc:
        raise CorruptFile(f"{source}: not a readable CSV table ({one_line(exc, typed=False)}).") from None
    for col in raw.columns:
        if pd.api.types.is_bool_dtype(raw[col]):  # True/False flags are not curves
            raw[col] = raw[col].astype(str)
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


#: keys only W&B's ``wandb-summary.json`` (a run's last values) carries
_WANDB_SUMMARY_KEYS = ("_wandb", "_runtime", "_timestamp")


def frame_from_json(obj: Any, source: str) -> pd.DataFrame:
    obj = mark_nan(obj)
    if isinstance(obj, dict) and any(k in obj for k in _WANDB_SUMMARY_KEYS) and not any(
            isinstance(v, list) for v in obj.values()):
        raise IncompatibleInput(f"{source} is a W&B run summary: its last values, not its history.",
                                "Export the history: the chart's menu > Download CSV, or "
                                "wandb.Api().run(PATH).history().to_csv(...).")
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


#: how deep a training log's JSON may nest (a trainer state is 4 deep); deeper is refused before it is walked.
MAX_JSON_DEPTH = 32


def _too_deep(where: str) -> CorruptFile:
    return CorruptFile(f"{where} nests JSON more than {MAX_JSON_DEPTH} levels deep: not a training log.")


def load_json(text: str, where: str) -> Any:
    """``json.loads`` that refuses documents nested deeper than :data:`MAX_JSON_DEPTH`."""
    try:
        obj = json.loads(text)
    except RecursionError:  # the decoder itself ran out of stack ([[[[...]]]] 100 000 deep)
        raise _too_deep(where) from None
    check_depth(obj, where)
    return obj


def _values_in(value: Any) -> int:
    """How many values one item holds: a tensor's or an array's elements (an expanded, stride-0 tensor
    holds 10^9 from 4 bytes), else 1."""
    numel = getattr(value, "numel", None)  # a torch tensor (formats imports no torch)
    if callable(numel):
        return int(numel())
    size = getattr(value, "size", None)  # a numpy array or scalar
    return size if isinstance(size, int) else 1


def check_depth(obj: Any, where: str, max_values: int | None = None) -> None:
    """Refuse containers nested deeper than :data:`MAX_JSON_DEPTH`, and, ``max_values`` given, an object
    holding more values than that (each tensor counts its elements; shared entries count each time they
    are met: a pickle's memo lets a few bytes name one record a million times). Checked without
    recursion, stopping at the first excess, so a refusal costs at most ``max_values`` steps.

    Raises:
        CorruptFile: nested too deeply, or more than ``max_values`` values.
    """
    stack = [(obj, 1)]
    count = 0
    while stack:
        value, depth = stack.pop()
        count += _values_in(value)
        if max_values is not None and count > max_values:
            raise more_values_than_bytes(where, max_values)
        if isinstance(value, (dict, list, tuple)):
            if depth > MAX_JSON_DEPTH:
                raise _too_deep(where)
            stack.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))


def parse_json(data: bytes, source: str) -> pd.DataFrame:
    """One JSON document (records, dict of lists, trainer state) or JSON lines.

    Raises:
        CorruptFile: not JSON, or nested deeper than :data:`MAX_JSON_DEPTH`.
        IncompatibleInput: JSON that holds no history.
    """
    text = _text(data, source)
    try:
        return frame_from_json(load_json(text, source), source)
    except json.JSONDecodeError:
        pass  # JSON lines, or not JSON at all
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = load_json(line, f"{source}: line {number}")
        except json.JSONDecodeError as exc:
            raise CorruptFile(f"{source}: line {number} is not valid JSON ({exc.msg}).") from None
        if not isinstance(record, dict):
            raise IncompatibleInput(f"{source}: line {number} is not a JSON object.")
        records.append(record)
    return _records_frame(mark_nan(records), source)


def parse_event_files(files: list[tuple[str, str, bytes]], source: str) -> tuple[pd.DataFrame, bool, list[str]]:
    """Scalars of event files as a wide table by step; True when the steps are epochs; damage warnings.

    Args:
        files: (tag prefix, file name, bytes) per event file; files in a run's sub-folder carry
            the folder as prefix (``train/epoch_loss``), others "".
        source: the file or folder, for messages.

    Raises:
        CorruptFile: no scalar curves in any file (or no file readable at all).
    """
    rows, warnings = [], []
    for prefix, name, data in files:
        events, problem = read_scalar_events(data, name)
        if problem:
            warnings.append(problem)
        for tag, step, wall, value in events:
            rows.append((f"{prefix}/{tag}" if prefix else tag, step, wall, value if np.isfinite(value) else np.inf))
    if not rows:
        raise CorruptFile(f"{source}: no scalar curves found in the TensorBoard event file(s)."
                          + (f" {warnings[0]}." if warnings else ""))
    long = pd.DataFrame(rows, columns=["tag", "step", "wall_time", "value"])
    back = long.groupby("tag", sort=False)["step"].diff() < 0  # a writer started again from an earlier step
    if back.any():
        first = long.loc[back.idxmax()]
        warnings.append(f"{source}: training restarted at step {first['step']} ({first['tag']} went back from a later "
                        f"step); where both sessions logged a step, the resumed run's value is used.")
    wide = long.pivot_table(index="step", columns="tag", values="value", aggfunc="last", dropna=False)
    wide.columns = [str(c) for c in wide.columns]
    wide.insert(0, "wall_time", long.groupby("step")["wall_time"].min())
    wide = wide.reset_index()
    tags = [c for c in wide.columns if c not in ("step", "wall_time")]
    step_is_epoch = all(Path(t).name.startswith("epoch_") for t in tags)  # Keras' TensorBoard callback
    return wide, step_is_epoch, warnings


def event_folder_records(files: list[tuple[Path, bytes]], root: Path) -> list[tuple[str, str, bytes]]:
    """(tag prefix, file name, bytes) of event files read from ``root``: the sub-folder is the prefix."""
    return [(p.parent.relative_to(root).as_posix() if p.parent != root else "", str(p), data) for p, data in files]


def load_checkpoint_dict(data: bytes, source: str = "checkpoint") -> dict[str, Any]:
    """``torch.load(..., weights_only=True)`` of a checkpoint that must be a dict."""
    what = describe_content(data)
    if what is not None:  # the sidebar's wording for the same file (`describe_content`)
        raise CorruptFile(f"{source} is {what}, not a torch checkpoint.",
                          "Upload a file saved with torch.save (.pt/.pth/.ckpt); a log as CSV, JSON or TensorBoard events.")
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


def checkpoint_history_frame(obj: dict[str, Any], source: str, max_values: int | None = None) -> pd.DataFrame:
    """The history entry of a loaded checkpoint dict as a table; ``max_values``: the most values it may
    hold (`check_depth`; a torch.save file's byte count: every value it stores costs at least a byte).

    Raises:
        IncompatibleInput: a checkpoint without a history.
        CorruptFile: a history nested too deep or holding more than ``max_values`` values.
    """
    key = next((k for k in CHECKPOINT_HISTORY_KEYS if k in obj), None)
    if key is None:
        raise IncompatibleInput(
            f"{source}: the checkpoint has no training history.",
            f"Expected one of the keys {', '.join(CHECKPOINT_HISTORY_KEYS)}.",
        )
    check_depth(obj[key], f"{source}: the history", max_values)
    return frame_from_json(plain(obj[key]), source)


#: a line of an MLflow metric file (``mlruns/<experiment>/<run>/metrics/<name>``): "timestamp value step"
#: (timestamp in ms; files of MLflow before 1.0 have no step).
_MLFLOW_LINE = re.compile(rb"^\d{9,} +[-+0-9.eEinfaINFA]+( +-?\d+)?\r?$")


def is_mlflow_metric(data: bytes) -> bool:
    """True when the first lines read as an MLflow metric file's "timestamp value step" lines."""
    lines = [line for line in data[:4096].split(b"\n")[:20] if line.strip()]
    if len(data) > 4096 and len(lines) == 20:
        lines = lines[:-1]  # the cut may split the last line read
    return bool(lines) and all(_MLFLOW_LINE.match(line) for line in lines)


def parse_mlflow_metric(data: bytes, source: str) -> pd.DataFrame:
    """An MLflow metric file as a table: ``step``, ``wall_time`` (seconds) and one series named by the file.

    MLflow writes a logged NaN as ``nan`` (kept as text for ``history._numeric``, which marks it +inf).
    """
    name = Path(source).name
    text = _text(data, source)
    bad = f"{source}: not an MLflow metric file (expected 'timestamp value step' on every line)"
    try:  # pandas' C parser: a 200 MB file's lines never become Python lists of strings
        table = pd.read_csv(io.StringIO(text), sep=r"\s+", header=None, names=["t", "v", "s"], engine="c",
                            dtype={"t": "float64", "v": str, "s": "float64"}, keep_default_na=False,
                            na_values={"s": [""]})  # the value's text as written ("nan": history._numeric)
    except (ValueError, pd.errors.ParserError) as exc:  # a field that is no number, a 4th field
        raise CorruptFile(f"{bad}: {one_line(exc, 120, typed=False)}.") from None
    times, steps = table["t"].to_numpy(), table["s"].to_numpy()  # [N] ms, [N] (NaN: no step)
    if not np.isfinite(times).all() or table["v"].isna().any() or (table["v"] == "").any():  # a line of one field
        raise CorruptFile(f"{bad}.")
    frame = pd.DataFrame({"wall_time": times / 1000.0, name: table["v"]})
    if not np.isnan(steps).any():  # MLflow before 1.0 wrote no step
        if not (np.isfinite(steps).all() and (steps == np.round(steps)).all() and (np.abs(steps) < 2**53).all()):
            raise CorruptFile(f"{bad}: a step is not a whole number below 2**53.")
        frame.insert(0, "step", steps.astype(np.int64))
    return frame


def parse_mlflow_run(files: list[tuple[str, bytes]], source: str) -> pd.DataFrame:
    """An MLflow run's metric files (paths under ``metrics/``, a name with ``/`` nests folders) as one
    table: one row per (step, metric) value, so each metric keeps its own steps."""
    frames = []
    for rel, data in files:
        frame = parse_mlflow_metric(data, rel)
        frames.append(frame.rename(columns={Path(rel).name: rel.split("metrics/", 1)[-1]}))
    if not frames:
        raise IncompatibleInput(f"{source}: the MLflow run has no metric files under metrics/.")
    stacked = pd.concat(frames, ignore_index=True, sort=False)
    if "step" not in stacked or stacked["step"].isna().any():
        return stacked  # MLflow < 1.0 logged no steps: one row per value
    return stacked.groupby("step", sort=True).last().reset_index()  # one row per step


def sniff(data: bytes, name: str) -> str:
    """``tensorboard`` | ``checkpoint`` | ``json`` | ``mlflow`` | ``csv`` from the name and the first bytes."""
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
    if is_mlflow_metric(data):
        return "mlflow"
    return "csv"
