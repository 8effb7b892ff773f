"""Run kinds as one registry (issue 21): `explain.workspace.run_kinds.RUN_KINDS` names each saved run
kind's writer and reader, `ui.run_view.DRAWERS` its drawer under the same names; every kind a runner
or a page writes is registered, and the API answers an Output run through its reader, not raw keys."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
from fastapi.testclient import TestClient

from explain.finding import Finding
from explain.service.api import create_app
from explain.service.worker import stop_embedded
from explain.workspace import Actor, open_workspace
from explain.workspace.records import saved_snapshot, snapshot_record
from explain.workspace.run_kinds import RUN_KINDS, read_run, run_kind
from explain.workspace.runs import PAGES, RunInfo, SavedRun
from sample_models import sample_inputs, sample_registry_files

ROOT = Path(__file__).resolve().parent.parent
OP = Actor("cli:tester", operator=True)


def written_kinds() -> set[str]:
    """Every run kind the library's writers and the pages name: ``RunRecord(page="...")`` and the
    kind a page saves (``render_save_run("...")`` / ``snapshot_record("...")``)."""
    found: set[str] = set()
    for path in [*ROOT.glob("explain/**/*.py"), *ROOT.glob("ui/*.py"), *ROOT.glob("pages/**/*.py")]:
        text = path.read_text()
        found |= set(re.findall(r'\bpage="(\w+)"', text))
        found |= set(re.findall(r'(?:render_save_run|snapshot_record)\(\s*"(\w+)"', text))
    return found


def test_every_written_kind_is_registered_and_drawn():
    from explain.service.runners import RUNNERS
    from ui.run_view import DRAWERS

    kinds = written_kinds()
    assert {"output", "dataset", "report", "structure", "training", "overview"} <= kinds  # the scan saw them
    assert kinds <= set(RUN_KINDS)
    assert set(DRAWERS) == set(RUN_KINDS)
    # each job kind's runner saves a registered kind
    assert set(RUNNERS) == {"explain", "dataset", "report", "importance", "drift", "compare", "generate"}
    assert set(PAGES) == set(RUN_KINDS)  # every registered kind can be saved
    for kind in RUN_KINDS.values():
        assert callable(kind.write) and callable(kind.read) and run_kind(kind.name) is kind


def test_a_snapshot_run_reads_back_what_its_page_showed():
    finding = Finding("overfitting", "warning", "validation loss rises", [3.0], {"gap": 0.25})
    record = snapshot_record("training", "m", 1, "Training", None, {"History": pd.DataFrame({"epoch": [1, 2]})},
                             [finding], ["a note"])
    run = _saved(record)
    snapshot = read_run(run)
    assert snapshot.findings == saved_snapshot(run).findings
    assert snapshot.findings == [finding] and snapshot.notes == ["a note"]
    assert snapshot.tables["History"].equals(pd.DataFrame({"epoch": [1, 2]}))


def test_the_callers_read_a_run_through_its_kind_never_its_raw_keys():
    """The pages, the drawers, the API and the CLI decode no ``SavedRun.results`` key themselves: each
    kind's reader in its own module does (``runs show`` lists the stored arrays' shapes, no values)."""
    raw = re.compile(r"\.results(\[\s*[\"f]|\.get\(|\.items\(|\.keys\()")
    found = []
    for path in [ROOT / "app.py", *ROOT.glob("ui/*.py"), *ROOT.glob("pages/**/*.py"),
                 *ROOT.glob("explain/service/*.py"), *ROOT.glob("explain/cli/*.py")]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if raw.search(line) and "list(v.shape)" not in line:
                found.append(f"{path.relative_to(ROOT)}:{n}")
    assert found == []


def _saved(record) -> SavedRun:
    """``record`` as the run store gives it back (its summary through JSON)."""
    from dataclasses import fields

    values = {f.name: None for f in fields(RunInfo)}
    values.update(id="r1", page=record.page, model=record.model, version=record.version, title=record.title,
                  summary=json.loads(json.dumps(record.summary)), params={}, environment={})
    return SavedRun(RunInfo(**values), dict(record.inputs), dict(record.results))


def test_the_api_answers_an_output_run_through_its_reader(tmp_path):
    ws = open_workspace(f"sqlite:///{tmp_path / 'glassbox.db'}", home=tmp_path / "home")
    ws.seed(sample_registry_files())
    token = ws.users.add_token(OP, "editor", "editor")
    try:
        client = TestClient(create_app(ws, worker=True), raise_server_exceptions=False)
        rows = sample_inputs("cancer")["inputs"][:3]
        r = client.post("/v1/models/cancer:explain", headers={"Authorization": f"Bearer {token}"},
                        json={"instances": rows.tolist(), "parameters": {"method": "saliency", "target": [1, 0, 1]}})
        assert r.status_code == 200, r.text
        body = r.json()
        (attr,) = read_run(ws.runs.open(OP, body["run"]))
        np.testing.assert_array_equal(np.array([e["values"] for e in body["explanations"]]), attr.values)
        assert [e["target"] for e in body["explanations"]] == attr.target.tolist() == [1, 0, 1]
    finally:
        stop_embedded(ws)
        ws.close()
