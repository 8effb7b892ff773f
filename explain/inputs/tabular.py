"""CSV files for tabular specs (used by `explain.inputs.reading`)."""
from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from explain.errors import CorruptFile, IncompatibleInput, one_line
from explain.spec import InputSpec

#: column names (case and spaces aside) read as the labels of a CSV's rows, not as a feature.
LABEL_COLUMNS = ("label", "labels", "target", "targets", "y", "class", "classes", "outcome", "ground_truth")


@dataclass
class CsvRows:
    """features [N, F] float32 (standardised), raw rows for display, labels [N] or None, row names.

    ``feature_names``: the features' display names (the spec's, else the header's, in model
    order; also the keys of ``display``); ``notes``: what was left out or assumed, one line each.
    """

    features: np.ndarray
    display: list[dict[str, float]]
    labels: np.ndarray | None
    names: list[str]
    feature_names: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def feature_names(spec: InputSpec, rows: Sequence[Any] | None = None) -> list[str]:
    """The features' display names: the spec's; else a CSV header's; else ``feature 0``...

    Args:
        spec: the model's spec.
        rows: a batch's display rows (`explain.inputs.reading.InputBatch.display`): when the spec
            names no features, the first row's keys (a CSV's header, `parse_csv`) name them.
    """
    if spec.feature_names:
        return list(spec.feature_names)
    n = spec.input_shape[0]
    first = rows[0] if rows else None
    if isinstance(first, dict) and len(first) == n:
        return [str(k) for k in first]
    return [f"feature {i}" for i in range(n)]


def is_label_column(column: Any) -> bool:
    """A column named like the labels (`LABEL_COLUMNS`: ``Label``, ``target``, ``Outcome``...)."""
    return _label_key(column) in LABEL_COLUMNS


def _label_key(column: Any) -> str:
    return _norm(column).replace(" ", "_").replace("-", "_")


def _best_label(columns: list[Any]) -> Any:
    """Of several label-named columns, the one `LABEL_COLUMNS` lists first (``label`` before ``y``)."""
    return min(columns, key=lambda c: LABEL_COLUMNS.index(_label_key(c))) if columns else None


def parse_csv(data: bytes, spec: InputSpec, name: str) -> CsvRows:
    """Rows of a CSV as model-ready features: columns matched by name, standardised.

    With the spec's ``feature_names`` the header must name them all (any order, case and
    spaces aside; extra columns ignored with a note, a label-named one taken as the labels).
    Without them, the header's columns are the features in file order and their names the
    features' display names; a header with one column more than the model's features, one
    of them named like a label (`LABEL_COLUMNS`), has that column taken as the labels. A
    headerless file of numbers of the right width is taken in model order.
    """
    import pandas as pd

    n_features = spec.input_shape[0]
    sep = "\t" if name.lower().endswith(".tsv") else ","
    try:
        df = pd.read_csv(io.BytesIO(data), sep=sep)
    except Exception as exc:  # pandas' parser errors have many types
        raise CorruptFile(f"{name} is not a readable CSV file ({one_line(exc, 150, typed=False)}).") from None
    notes: list[str] = []
    if _header_is_numeric(df.columns):
        df = pd.read_csv(io.BytesIO(data), header=None, sep=sep)
        if df.shape[1] != n_features:
            raise IncompatibleInput(f"{name} has {df.shape[1]} columns and no header; the model takes {n_features} features.",
                                    "Add a header naming the columns (a label column named 'label' is taken as the labels).")
        df.columns = feature_names(spec)
        columns, label_col, names = list(df.columns), None, feature_names(spec)
    elif spec.feature_names:
        columns, label_col = _columns_named_by_spec(df.columns, list(spec.feature_names), name, notes)
        names = list(spec.feature_names)
    else:
        columns, label_col = _columns_from_header(df.columns, n_features, name, notes)
        names = [str(c) for c in columns]
    values = df[columns].apply(pd.to_numeric, errors="coerce")
    for col in columns:
        bad = values[col].isna() & df[col].notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise IncompatibleInput(f"{name}: column {col!r} has a non-numeric value in row {row + 1} ({df[col].iloc[row]!r}).")
    raw = values.to_numpy(np.float64)
    if not np.isfinite(raw).all():
        row, col = np.argwhere(~np.isfinite(raw))[0]
        raise IncompatibleInput(f"{name}: missing, NaN or infinite value in row {row + 1}, column {columns[col]!r}.")
    if raw.shape[0] == 0:
        raise IncompatibleInput(f"{name} has no data rows.")
    x = raw.astype(np.float32)
    if spec.mean and spec.std:
        std = np.asarray(spec.std, np.float32)
        x = (x - np.asarray(spec.mean, np.float32)) / np.where(std == 0, 1.0, std)
    display = [{n: float(v) for n, v in zip(names, row)} for row in raw]
    labels = None
    if label_col is not None:
        lab = pd.to_numeric(df[label_col], errors="coerce")
        if lab.notna().all() and (lab % 1 == 0).all():
            labels = lab.to_numpy().astype(np.int64)
        elif spec.class_names and df[label_col].isin(spec.class_names).all():
            labels = df[label_col].map({c: i for i, c in enumerate(spec.class_names)}).to_numpy().astype(np.int64)
        else:
            notes.append(f"column {label_col!r} is not read as labels: its values are not whole numbers or class names.")
    return CsvRows(x, display, labels, [f"{name}:{i + 1}" for i in range(len(x))], names, notes)


def _columns_named_by_spec(header: Any, wanted: list[str], name: str, notes: list[str]) -> tuple[list[Any], Any]:
    """The header's column for each of the spec's features (exact name, else the one equal but for case and
    spaces), and the label column; other columns are left out with a note."""
    columns = list(header)
    by_norm: dict[str, list[Any]] = {}
    for c in columns:
        by_norm.setdefault(_norm(c), []).append(c)
    chosen, missing = [], []
    for f in wanted:
        if f in columns:
            chosen.append(f)
        elif len(by_norm.get(_norm(f), [])) == 1:
            chosen.append(by_norm[_norm(f)][0])
        else:
            missing.append(f)
    if missing:
        more = f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""
        unused = [str(c) for c in columns if c not in chosen]
        has = f"; its other columns are {_list(unused)}" if unused else ""
        raise IncompatibleInput(
            f"{name} lacks column(s) {', '.join(missing[:5])}{more} of the spec's {len(wanted)} features{has}.",
            "Name the columns as the spec's feature_names (any order; other columns are ignored), "
            "or leave the header out to give the columns in model order.")
    label_col = _best_label([c for c in columns if c not in chosen and is_label_column(c)])
    ignored = [str(c) for c in columns if c not in chosen and c != label_col]
    if ignored:
        notes.append(f"column(s) {_list(ignored)} ignored: the spec's features do not name them.")
    return chosen, label_col


def _columns_from_header(header: Any, n_features: int, name: str, notes: list[str]) -> tuple[list[Any], Any]:
    """The features (file order) and label column of a header when the spec names no features."""
    columns = list(header)
    labelled = [c for c in columns if is_label_column(c)]
    if len(columns) == n_features:
        if labelled:
            notes.append(f"column(s) {_list([str(c) for c in labelled])} read as feature(s): "
                         f"the model takes {n_features} features and the file has {n_features} columns.")
        return columns, None
    if len(columns) == n_features + 1 and labelled:
        label_col = _best_label(labelled)
        return [c for c in columns if c != label_col], label_col
    if len(columns) == n_features + 1:
        raise IncompatibleInput(
            f"{name} has {len(columns)} columns ({_list([str(c) for c in columns])}); the model takes {n_features} features, "
            "and no column is named like a label.",
            f"Name the label column one of {', '.join(LABEL_COLUMNS[:5])} (it becomes the rows' labels), or drop it.")
    label = f", one of them the label column {_best_label(labelled)!r}" if labelled else ""
    raise IncompatibleInput(
        f"{name} has {len(columns)} columns{label}; the model takes {n_features} features.",
        "Give one column per feature (plus an optional label column), or a spec whose feature_names pick them.")


def _norm(column: Any) -> str:
    return " ".join(str(column).split()).casefold()


def _list(items: list[str], limit: int = 6) -> str:
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _header_is_numeric(columns: Any) -> bool:
    try:
        [float(c) for c in columns]
    except (TypeError, ValueError):
        return False
    return True


