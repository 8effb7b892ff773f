"""Training histories: read loss/metric logs of any common shape into one table.

Readers cover Lightning's ``CSVLogger`` (sparse rows: train and validation
values logged on different rows), Keras' ``CSVLogger``, any epoch/step table,
JSON lines, JSON (a Keras ``history.history`` dict, a list of records, a
Hugging Face ``trainer_state.json``), TensorBoard event files and folders of
them, MLflow metric files ("timestamp value step" lines) and run folders, and the
``history`` entry of a checkpoint dict (loaded weights-only).

Everything becomes a `TrainingHistory`: a pandas frame with x columns
(``epoch``, ``step``, ``wall_time`` where known) and one float column per
series, plus ``roles`` mapping ``train_loss`` / ``val_loss`` /
``train_metric`` / ``val_metric`` / ``lr`` to column names.

Convention: a missing cell (nothing logged there) is NaN; a value that *was*
logged as NaN is stored as ``+inf`` so diagnosis can tell "not logged" from
"the loss became NaN".
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from explain.errors import CorruptFile, IncompatibleInput
from explain.loading.source import read_folder, read_source
from explain.training import formats as formats
from explain.training.downsampling import MAX_ROWS, downsample_rows
from explain.training.formats import load_checkpoint_dict
from explain.training.restarts import drop_superseded

ROLES: tuple[str, ...] = ("train_loss", "val_loss", "train_metric", "val_metric", "lr")
X_COLUMNS: tuple[str, ...] = ("epoch", "step", "wall_time")

_X_ALIASES = {
    "epoch": {"epoch", "epochs", "trainer/epoch", "train/epoch"},
    "step": {"step", "steps", "global_step", "iteration", "iterations", "iter", "it", "_step",
             "trainer/global_step", "train/global_step"},
    "wall_time": {"wall_time", "walltime", "time", "timestamp", "_timestamp", "_runtime", "elapsed"},
}
_VAL_TOKENS = {"val", "valid", "validation", "eval", "evaluation", "test", "dev", "holdout"}
_LOSS_TOKENS = {"loss", "nll", "objective", "cost"}
_METRIC_TOKENS = ("accuracy", "acc", "f1", "auroc", "auc", "top1", "iou", "dice", "precision", "recall",
                  "map", "r2", "bleu", "score", "mae", "rmse", "mse", "error", "err", "perplexity", "ppl")
_NAN_STRINGS = {"nan", "-nan", "+nan"}
_BUCKET_BOUNDS = ("__MIN", "__MAX")
LOG_HINT = ("Give the run's history as a table with a header row (CSV, JSON lines), TensorBoard event files or an "
            "MLflow run; console output is not read.")
_EMPTY_STRINGS = {"", "none", "null"}


@dataclass
class TrainingHistory:
    """Logged curves of one training run (or several files merged).

    Attributes:
        frame: one row per logged record. x columns (``epoch``, ``step``,
            ``wall_time`` in seconds since the first record) where known, then
            one float column per series. NaN = not logged; +inf = logged
            non-finite (NaN or inf).
        roles: role (see :data:`ROLES`) -> column name or None. Editable
            through `with_roles`.
        sources: where the data came from (file names).
        name: a display name (the run).
        warnings: one line each about what was read only in part (a damaged
            file, rows averaged for size); the page and the CLI show them.
    """

    frame: pd.DataFrame
    roles: dict[str, str | None] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    name: str = "run"
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for role in ROLES:
            self.roles.setdefault(role, None)

    # -- columns ---------------------------------------------------------
    @property
    def x_columns(self) -> list[str]:
        """The x columns present, in :data:`X_COLUMNS` order."""
        return [c for c in X_COLUMNS if c in self.frame.columns]

    @property
    def series_columns(self) -> list[str]:
        """Every logged series (all columns but the x columns)."""
        return [c for c in self.frame.columns if c not in X_COLUMNS]

    @property
    def default_x(self) -> str:
        """``epoch`` when logged, else ``step``."""
        return "epoch" if "epoch" in self.frame.columns else "step"

    def series_lengths(self) -> dict[str, int]:
        """Series name -> number of logged values (non-finite ones included)."""
        return {c: int(self.frame[c].notna().sum()) for c in self.series_columns}

    def with_roles(self, **roles: str | None) -> TrainingHistory:
        """A copy with some roles re-assigned (None clears a role).

        Raises:
            IncompatibleInput: an unknown role or a column that is not logged.
        """
        new = dict(self.roles)
        for role, column in roles.items():
            if role not in ROLES:
                raise IncompatibleInput(f"Unknown role {role!r}.", f"Use one of {', '.join(ROLES)}.")
            if column is not None and column not in self.series_columns:
                raise IncompatibleInput(f"No series named {column!r} in this history.")
            new[role] = column
        return replace(self, roles=new)

    # -- views -------------------------------------------------------------
    def series(self, column: str, x: str | None = None) -> pd.Series:
        """One series against ``x`` with unlogged rows dropped.

        Several values at the same x (per-step values viewed per epoch) are
        averaged; a non-finite value among them keeps the point non-finite.
        """
        x = x or self.default_x
        if x not in self.frame.columns:
            raise IncompatibleInput(f"This history has no {x!r} column.", f"Use one of {', '.join(self.x_columns)}.")
        data = self.frame[[x, column]].dropna()
        return data.groupby(x, sort=True)[column].mean().rename(column)

    def by_epoch(self) -> pd.DataFrame:
        """Every series averaged per epoch (per step when no epoch is logged).

        Returns:
            frame indexed by ``default_x`` (sorted), one column per series.
        """
        x = self.default_x
        if x not in self.frame.columns:
            return pd.DataFrame(columns=self.series_columns)
        cols = self.series_columns
        return self.frame.dropna(subset=[x]).groupby(x, sort=True)[cols].mean()

    def x_positions(self, values: Iterable[float], source: str, target: str) -> list[float]:
        """Map x values (e.g. epochs of a finding) to another x column.

        The last ``target`` value logged within each ``source`` value is used
        (the end of the epoch); values that cannot be mapped are dropped.
        """
        values = list(values)
        if source == target:
            return [float(v) for v in values]
        if source not in self.frame.columns or target not in self.frame.columns:
            return []
        table = self.frame[[source, target]].dropna().groupby(source)[target].max()
        return [float(table[v]) for v in values if v in table.index]


# -- role heuristics -------------------------------------------------------
def _tokens(name: str) -> list[str]:
    return [t for t in re.split(r"[^a-z0-9]+", name.lower()) if t]


def _column_kind(name: str) -> tuple[str, str] | None:
    """(split, kind) of a column name: split train|val, kind loss|metric|lr."""
    lower = name.lower()
    toks = _tokens(name)
    if (
        lower.startswith("lr-") or lower.startswith("lr_") or lower.startswith("lr/") or "lr" in toks
        or "learning_rate" in lower or ("learning" in toks and "rate" in toks) or lower in ("lr", "learningrate")
    ):
        return ("train", "lr")
    split = "val" if any(t in _VAL_TOKENS or t.startswith("val") for t in toks) else "train"
    if any(t in _LOSS_TOKENS for t in toks):
        return (split, "loss")
    if any(t.startswith(m) for t in toks for m in _METRIC_TOKENS):
        return (split, "metric")
    return None


def _preference(name: str, kind: str) -> tuple:
    """Sort key: lower is a better pick for a role among candidates."""
    toks = _tokens(name)
    metric_rank = 0
    if kind == "metric":
        metric_rank = next((i for i, m in enumerate(_METRIC_TOKENS) if any(t.startswith(m) for t in toks)), 99)
    return ("step" in toks, "epoch" not in toks, metric_rank, len(toks), len(name))


def guess_roles(columns: Iterable[str]) -> dict[str, str | None]:
    """Map roles to columns by name: ``val_loss``, ``valid/loss``, ``loss/val``,
    ``eval_loss``, ``lr``, ``learning_rate``, ``lr-Adam``, ``acc``, ``f1``, ...

    Returns:
        role -> column (None when no column fits).
    """
    candidates: dict[str, list[str]] = {r: [] for r in ROLES}
    for col in columns:
        if col in X_COLUMNS:
            continue
        kind = _column_kind(col)
        if kind is None:
            continue
        split, what = kind
        role = "lr" if what == "lr" else f"{split}_{what}"
        candidates[role].append(col)
    roles: dict[str, str | None] = {}
    for role, cols in candidates.items():
        what = "metric" if role.endswith("metric") else role.split("_")[-1]
        roles[role] = min(cols, key=lambda c: _preference(c, what)) if cols else None
    return roles


# -- building frames ---------------------------------------------------------
def _numeric(col: pd.Series) -> pd.Series | None:
    """Floats from a column of strings/objects; None when it is not numeric."""
    if pd.api.types.is_bool_dtype(col):
        return col.astype(float)
    if pd.api.types.is_numeric_dtype(col):
        return col.astype(float)
    text = col.map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).strip())
    lower = text.str.lower()
    empty = lower.isin(_EMPTY_STRINGS)
    nan_logged = lower.isin(_NAN_STRINGS)
    values = pd.to_numeric(text.where(~empty & ~nan_logged, None), errors="coerce")
    bad = values.isna() & ~empty & ~nan_logged
    if bad.any():
        return None
    values = values.astype(float)
    values[nan_logged] = np.inf
    return values


def _tidy(raw: pd.DataFrame, step_is_epoch: bool = False, *, source: str,
          warnings: list[str] | None = None) -> TrainingHistory:
    """Split x columns from series, coerce numbers, guess roles; average very long logs down."""
    if raw.empty or raw.shape[1] == 0:
        raise CorruptFile(f"{source}: no rows found.")
    out: dict[str, pd.Series] = {}
    taken: dict[str, str] = {}
    names = {str(c).strip() for c in raw.columns}
    for col in raw.columns:
        name = str(col).strip()
        if name.endswith(_BUCKET_BOUNDS) and name[:-5] in names:
            continue  # W&B's chart export: the min / max of each sampled bucket beside its value
        values = _numeric(raw[col])
        if values is None:
            continue  # text column (run names, dates): not a curve
        x_kind = next((k for k, names in _X_ALIASES.items() if name.lower() in names), None)
        if x_kind and x_kind not in taken:
            taken[x_kind] = name
            out[x_kind] = values.replace([np.inf, -np.inf], np.nan)
        elif x_kind:
            continue
        else:
            if values.notna().sum() == 0:
                continue
            out[name] = values
    series = [c for c in out if c not in X_COLUMNS]
    if not series:
        columns = ", ".join(map(str, raw.columns))
        raise IncompatibleInput(f"{source}: no numeric series found (columns: {columns[:120]}).", LOG_HINT)
    frame = pd.DataFrame({**{x: out[x] for x in X_COLUMNS if x in out}, **{c: out[c] for c in series}})
    if not frame.index.equals(pd.RangeIndex(len(frame))):
        frame = frame.reset_index(drop=True)
    if step_is_epoch and "step" in frame and "epoch" not in frame:
        frame = frame.rename(columns={"step": "epoch"})
    frame, restart = drop_superseded(frame, source)  # a resumed run's rows replace the earlier session's
    if "epoch" not in frame and "step" not in frame:
        frame.insert(0, "epoch", np.arange(len(frame), dtype=float))
    if "wall_time" in frame:
        wt = frame["wall_time"]
        if wt.notna().any():
            frame["wall_time"] = wt - wt.min()
    order = [c for c in X_COLUMNS if c in frame] + series
    frame, note = downsample_rows(frame if list(frame.columns) == order else frame[order], MAX_ROWS, source)
    name = Path(source).stem or "run"
    warnings = list(warnings or []) + [n for n in (restart, note) if n]
    return TrainingHistory(frame=frame, roles=guess_roles(series), sources=[source], name=name, warnings=warnings)


def history_from_table(table: pd.DataFrame, name: str) -> TrainingHistory:
    """A per-epoch table read back as a history (a saved Training run's: its x column and series;
    roles guessed from the names, as a log's are)."""
    history = _tidy(table, source=name)
    history.name = name
    return history


def read_checkpoint_history(data: bytes, source: str = "checkpoint") -> TrainingHistory:
    """The ``history`` stored in a checkpoint dict, loaded weights-only; for a Hugging Face
    checkpoint (a zip), the ``log_history`` of its Trainer's ``trainer_state.json``.

    Raises:
        UnsafeFile: the file needs code execution to load.
        CorruptFile: not a torch checkpoint.
        IncompatibleInput: a checkpoint without a history.
    """
    if data[:4] == b"PK\x03\x04":
        hf = _hf_trainer_state(data, source)
        if hf is not None:
            return _tidy(formats.checkpoint_history_frame(hf, source), source=source)
    # a weights-only pickle may name one object many times (its memo) and expand a tensor without storing it:
    # the history is refused past a value a byte before anything walks, copies or tables it
    return _tidy(formats.checkpoint_history_frame(load_checkpoint_dict(data, source), source, len(data)),
                 source=source)


def _hf_trainer_state(data: bytes, source: str) -> dict | None:
    """A Hugging Face checkpoint zip's ``trainer_state.json`` (None for a zip that is no Hugging Face model).

    Raises:
        IncompatibleInput: a Hugging Face checkpoint without a Trainer state (no history stored).
    """
    from explain.loading.huggingface import MAX_JSON_BYTES, is_hf_archive
    from explain.loading.source import find_member, open_archive

    try:
        archive = open_archive(data, source)
    except CorruptFile:
        return None
    if not is_hf_archive(archive.names):
        return None
    member = find_member(archive.names, "trainer_state.json")
    if member is None:
        raise IncompatibleInput(f"{source}: a Hugging Face checkpoint without trainer_state.json stores no "
                                "training history.", "Upload the training log (or the Trainer's output folder, zipped).")
    state = formats.load_json(archive.read(member, MAX_JSON_BYTES).decode("utf-8", errors="replace"), source)
    if not isinstance(state, dict):
        raise CorruptFile(f"{source}: trainer_state.json is not a JSON object.")
    return state


@dataclass(frozen=True)
class EventFolder:
    """A log folder as data (what a job carries to a worker): the path as the user gave it and its
    log files, relative to it: a TensorBoard folder's event files (sub-folders name the runs, as on
    disk), or an MLflow run's metric files (``metrics/<name>``)."""

    path: str
    files: tuple[tuple[str, bytes], ...]

    @property
    def is_mlflow(self) -> bool:
        return bool(self.files) and all(rel.startswith("metrics/") for rel, _ in self.files)

    @classmethod
    def read(cls, path: str | os.PathLike) -> EventFolder:
        root = Path(path)
        if (root / "metrics").is_dir() and not any(root.rglob("*tfevents*")):  # an MLflow run
            found = read_folder(root / "metrics")
            return cls(str(path), tuple(((Path("metrics") / p.relative_to(root / "metrics")).as_posix(), data)
                                        for p, data in found))
        found = read_folder(root, lambda p: "tfevents" in p.name)
        return cls(str(path), tuple((p.relative_to(root).as_posix(), data) for p, data in found))


def _empty_folder(path: Path) -> IncompatibleInput:
    """What to give instead of a folder that holds no log Glassbox reads (an MLflow experiment: its runs)."""
    runs = sorted(p.parent for p in path.rglob("metrics") if p.is_dir()) if path.is_dir() else []
    if runs:
        names = ", ".join(str(r.relative_to(path)) for r in runs[:3]) + (", ..." if len(runs) > 3 else "")
        return IncompatibleInput(f"{path} holds {len(runs)} MLflow run(s) ({names}), not one run.",
                                 "Give each run's folder (the one with metrics/ inside) as a log of its own.")
    return IncompatibleInput(f"{path}: the folder holds no TensorBoard event files (events.out.tfevents.*) "
                             "and no MLflow run (metrics/).")


# -- entry points ---------------------------------------------------------------
def read_history(source: str | os.PathLike | bytes | tuple[str, bytes] | EventFolder,
                 filename: str | None = None) -> TrainingHistory:
    """Read one log: a file path, a folder of TensorBoard event files or an MLflow run's folder (or an
    `EventFolder`), bytes or a ``(name, bytes)`` upload (an MLflow metric file too).

    Every file is read with `explain.loading.source.read_source` (the upload cap).

    Args:
        source: path, raw bytes (an upload) or a ``(name, bytes)`` pair.
        filename: the upload's name (decides the format with the bytes' start).

    Raises:
        TooLarge: a file over the upload cap.
        CorruptFile: missing, empty, truncated or not the format it claims.
        IncompatibleInput: well-formed but holds no curves.
        UnsafeFile: a checkpoint that would need code execution.
    """
    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        source = EventFolder.read(source)
    if isinstance(source, EventFolder):
        path = Path(source.path)
        files = [(path / rel, data) for rel, data in source.files]
        if not files:
            raise _empty_folder(path)
        if source.is_mlflow:
            return _tidy(formats.parse_mlflow_run(list(source.files), str(path)), source=str(path))
        records = formats.event_folder_records(files, path)
        frame, step_is_epoch, warnings = formats.parse_event_files(records, str(path))
        history = _tidy(frame, step_is_epoch, source=str(path), warnings=warnings)
        runs = sorted({prefix.split("/")[0] for prefix, _, _ in records if prefix})
        if len(runs) > 1 and not all(set(_tokens(r)) & (_VAL_TOKENS | {"train", "training"}) for r in runs):
            shown = ", ".join(runs[:4]) + (", ..." if len(runs) > 4 else "")
            history.warnings.append(f"{path} holds {len(runs)} runs ({shown}), read as one: the findings are about "
                                    "the series the roles name; give each run's folder to diagnose each run.")
        return history
    data, name = read_source(source, filename, default_name="upload")
    kind = formats.sniff(data, name)
    if kind == "tensorboard":
        frame, step_is_epoch, warnings = formats.parse_event_files([("", name, data)], name)
        return _tidy(frame, step_is_epoch, source=name, warnings=warnings)
    if kind == "checkpoint":
        return read_checkpoint_history(data, name)
    if kind == "json":
        return _tidy(formats.parse_json(data, name), source=name)
    if kind == "mlflow":
        return _tidy(formats.parse_mlflow_metric(data, name), source=name)
    return _tidy(formats.parse_csv(data, name), source=name)


def read_histories(sources: Iterable[str | os.PathLike | tuple[str, bytes]]) -> list[TrainingHistory]:
    """Read several logs; ``(filename, bytes)`` pairs stand for uploads."""
    return [read_history(src) for src in sources]


def merge_histories(histories: list[TrainingHistory], name: str | None = None) -> TrainingHistory:
    """One history from several files logged by the same run.

    Rows are stacked on the shared x (epoch when every file logs it, else
    step). A series name that several files log at the same x is suffixed with
    the file's name so no value is silently averaged with another run's.
    """
    if not histories:
        raise IncompatibleInput("No training logs given.")
    if len(histories) == 1:
        return histories[0]
    x = "epoch" if all("epoch" in h.frame for h in histories) else "step"
    if not all(x in h.frame for h in histories):
        raise IncompatibleInput("These logs share no x axis (neither epoch nor step in every file).")
    frames: list[pd.DataFrame] = []
    seen: dict[str, set] = {}
    for h in histories:
        frame = h.frame.copy()
        renames = {}
        for col in h.series_columns:
            xs = set(frame.loc[frame[col].notna(), x].tolist())
            if col in seen and seen[col] & xs:
                renames[col] = f"{col} ({h.name})"
            seen.setdefault(renames.get(col, col), set()).update(xs)
        frames.append(frame.rename(columns=renames))
    merged = pd.concat(frames, ignore_index=True, sort=False)
    if x == "step" and "epoch" in merged:  # some files log no epoch: an epoch axis would drop their rows
        merged = merged.drop(columns="epoch")
    merged = merged.sort_values(x, kind="stable").reset_index(drop=True)
    xs = [c for c in X_COLUMNS if c in merged]
    merged = merged[xs + [c for c in merged.columns if c not in xs]]
    series = [c for c in merged.columns if c not in X_COLUMNS]
    roles = guess_roles(series)
    sources = [s for h in histories for s in h.sources]
    warnings = [w for h in histories for w in h.warnings]
    return TrainingHistory(merged, roles, sources, name or " + ".join(h.name for h in histories), warnings)


#: how several uploaded logs are read: as runs compared side by side, or as the files of one run.
LOG_MODES = ("runs", "merge")


def default_log_mode(histories: Sequence[TrainingHistory]) -> str:
    """``"runs"`` for logs that record the same series (two runs to compare, the usual case);
    ``"merge"`` when no series is in two of them (e.g. train and validation losses written to
    separate files: parts of one run). The page offers the other reading too."""
    if len(histories) < 2:
        return "merge"
    columns = [set(h.series_columns) for h in histories]
    shared = any(columns[i] & columns[j] for i in range(len(columns)) for j in range(i + 1, len(columns)))
    return "runs" if shared else "merge"


def smooth_ema(values: np.ndarray | pd.Series, weight: float) -> np.ndarray:
    """TensorBoard's debiased exponential moving average.

    Non-finite values pass through unchanged and do not enter the average.

    Args:
        values: [N] the raw series.
        weight: 0 (no smoothing) .. <1 (heavy smoothing), TensorBoard's slider.
    """
    y = np.asarray(values, dtype=np.float64)
    if not 0.0 <= weight < 1.0:
        raise IncompatibleInput(f"Smoothing must be in [0, 1), got {weight}.")
    out = np.empty_like(y)
    last, count = 0.0, 0
    for i, v in enumerate(y):
        if not np.isfinite(v):
            out[i] = v
            continue
        last = last * weight + (1.0 - weight) * v
        count += 1
        out[i] = last / (1.0 - weight**count) if weight > 0 else v
    return out
