"""CSV files for tabular specs (used by `explain.inputs.reading`)."""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from explain.errors import CorruptFile, IncompatibleInput
from explain.spec import InputSpec

LABEL_COLUMNS = ("label", "labels", "target", "y", "class")


@dataclass
class CsvRows:
    """features [N, F] float32 (standardised), raw rows for display, labels [N] or None, row names."""

    features: np.ndarray
    display: list[dict[str, float]]
    labels: np.ndarray | None
    names: list[str]


def feature_names(spec: InputSpec) -> list[str]:
    """The spec's feature names, or ``feature 0``... when it has none."""
    return list(spec.feature_names or [f"feature {i}" for i in range(spec.input_shape[0])])


def parse_csv(data: bytes, spec: InputSpec, name: str) -> CsvRows:
    """Rows of a CSV as model-ready features: columns matched by name, standardised.

    With the spec's ``feature_names`` the header must name them all (any order,
    extra columns ignored); a headerless file of numbers of the right width is
    taken in model order. A ``label`` / ``target`` / ``y`` / ``class`` column
    becomes the labels.
    """
    import pandas as pd

    n_features = spec.input_shape[0]
    sep = "\t" if name.lower().endswith(".tsv") else ","
    try:
        df = pd.read_csv(io.BytesIO(data), sep=sep)
    except Exception as exc:  # pandas' parser errors have many types
        raise CorruptFile(f"{name} is not a readable CSV file ({str(exc).splitlines()[0][:150]}).") from None
    if _header_is_numeric(df.columns):
        df = pd.read_csv(io.BytesIO(data), header=None, sep=sep)
        if df.shape[1] != n_features:
            raise IncompatibleInput(f"{name} has {df.shape[1]} columns and no header; the model takes {n_features} features.")
        df.columns = feature_names(spec)
    label_col = next((c for c in df.columns if str(c).strip().lower() in LABEL_COLUMNS), None)
    if spec.feature_names:
        missing = [f for f in spec.feature_names if f not in df.columns]
        if missing:
            more = f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""
            raise IncompatibleInput(f"{name} lacks column(s) {', '.join(missing[:5])}{more}.",
                                    "Column names must match the spec's feature_names.")
        columns = list(spec.feature_names)
    else:
        columns = [c for c in df.columns if c != label_col]
        if len(columns) != n_features:
            raise IncompatibleInput(f"{name} has {len(columns)} feature columns; the model takes {n_features}.")
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
    display = [{n: float(v) for n, v in zip(feature_names(spec), row)} for row in raw]
    labels = None
    if label_col is not None:
        lab = pd.to_numeric(df[label_col], errors="coerce")
        if lab.notna().all() and (lab % 1 == 0).all():
            labels = lab.to_numpy().astype(np.int64)
        elif spec.class_names and df[label_col].isin(spec.class_names).all():
            labels = df[label_col].map({c: i for i, c in enumerate(spec.class_names)}).to_numpy().astype(np.int64)
    return CsvRows(x, display, labels, [f"{name}:{i + 1}" for i in range(len(x))])


def _header_is_numeric(columns: Any) -> bool:
    try:
        [float(c) for c in columns]
    except (TypeError, ValueError):
        return False
    return True


