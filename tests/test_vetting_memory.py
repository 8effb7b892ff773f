"""Vetting outcomes kept in the workspace: a graph vetted once (by file sha256, torch version and
vetting settings) is not vetted again by another process; refusals too; the library still works
without a workspace."""
from __future__ import annotations

import io

import pytest
import torch
from sqlalchemy import select
from torch import nn

from explain.errors import IncompatibleInput
from explain.loading import loader, vetting
from explain.loading.loader import load_model
from explain.spec import SPEC_FILENAME, InputSpec
from explain.workspace import open_workspace
from explain.workspace.schema import VettingResult

SPEC = InputSpec("tabular", (6,), class_names=["a", "b", "c"], name="kept")


def _script(module: nn.Module, spec: InputSpec = SPEC) -> bytes:
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buf, _extra_files={SPEC_FILENAME: spec.to_json()})
    return buf.getvalue()


def _new_process(monkeypatch) -> list[str]:
    """Forget what this process vetted (as a new process would) and count the sandbox runs from now on."""
    vetting._DONE.clear()
    loader._REFUSED.clear()
    runs: list[str] = []
    real = vetting.run_in_sandbox

    def counted(code, data, args, **kwargs):
        runs.append(args["spec"]["input_shape"] if args.get("spec") else None)
        return real(code, data, args, **kwargs)

    monkeypatch.setattr(vetting, "run_in_sandbox", counted)
    return runs


@pytest.fixture
def ws(tmp_path):
    workspace = open_workspace(f"sqlite:///{tmp_path / 'glassbox.db'}", home=tmp_path)
    yield workspace
    workspace.close()


def test_a_vetted_graph_is_not_vetted_again_in_another_process(ws, monkeypatch):
    monkeypatch.setenv("GLASSBOX_VETTED_BATCH", "8")
    torch.manual_seed(0)
    data = _script(nn.Sequential(nn.Linear(6, 3)))
    runs = _new_process(monkeypatch)
    first = load_model(data, filename="kept.pt", vetted=ws.vetting)
    assert runs and first.max_batch_rows == 8 and "remembered" not in first.extra["sandbox"]
    with ws.core.db.transaction() as s:
        (row,) = s.scalars(select(VettingResult)).all()
    assert (row.sha256, row.torch_version, row.ok, row.max_batch_rows) == (
        first.sha256, torch.__version__, True, 8)

    runs = _new_process(monkeypatch)
    again = load_model(data, filename="kept.pt", vetted=ws.vetting)
    assert runs == [] and again.max_batch_rows == 8 and again.extra["sandbox"]["remembered"] is True
    assert again.extra["sandbox"]["batch_sizes"] == first.extra["sandbox"]["batch_sizes"]

    monkeypatch.setenv("GLASSBOX_VETTED_BATCH", "4")  # other settings: vetted anew, kept beside
    runs = _new_process(monkeypatch)
    assert load_model(data, filename="kept.pt", vetted=ws.vetting).max_batch_rows == 4 and runs
    with ws.core.db.transaction() as s:
        assert len(s.scalars(select(VettingResult)).all()) == 2

    runs = _new_process(monkeypatch)  # no workspace: the library vets in this process, as before
    assert load_model(data, filename="kept.pt").max_batch_rows == 4 and runs


def test_a_refusal_is_kept_too(ws, monkeypatch):
    data = _script(nn.Sequential(nn.Linear(5, 3)))  # the spec says 6 features: fails at batch 1
    runs = _new_process(monkeypatch)
    with pytest.raises(IncompatibleInput) as first:
        load_model(data, filename="bad.pt", vetted=ws.vetting)
    assert runs
    runs = _new_process(monkeypatch)
    with pytest.raises(IncompatibleInput) as again:
        load_model(data, filename="bad.pt", vetted=ws.vetting)
    assert runs == [] and again.value.reason == first.value.reason
    with ws.core.db.transaction() as s:
        assert [r.ok for r in s.scalars(select(VettingResult))] == [False]


def test_a_memory_that_fails_is_no_failure_of_the_load(monkeypatch):
    class Broken:
        def get(self, *key):
            raise OSError("database is locked")

        def put(self, *key):
            raise OSError("database is locked")

    _new_process(monkeypatch)
    assert load_model(_script(nn.Sequential(nn.Linear(6, 3))), filename="b.pt", vetted=Broken()).max_batch_rows
