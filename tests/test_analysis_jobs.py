"""Rank layers and checkpoint drift as jobs of the queue (issue 21, "views thin"): the run a job saves
holds the numbers the library computes (`compute_layer_importance`, `compute_checkpoint_drift`), read
back by its kind's reader, and the Structure / Training pages draw those runs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from explain.errors import UsageError
from explain.output.importance_job import importance_job, saved_importance
from explain.output.layer_importance import compute_layer_importance
from explain.service.client import finished_run, run_here, submit
from explain.training.checkpoints import read_checkpoints
from explain.training.drift_job import drift_job, saved_drift
from explain.training.evolution import compute_checkpoint_drift
from explain.workspace import Actor
from explain.workspace.run_kinds import read_run
from sample_models import load_sample, sample_dir, sample_inputs

ROOT = Path(__file__).resolve().parent.parent
OP = Actor("cli:tester", operator=True)


def _run_job(ws, kind, model, params, arrays, title):
    job = submit(ws, OP, kind, params, title=title, inputs=arrays, priority="interactive")
    return finished_run(ws, OP, run_here(ws, job.id, loaded=model))


def _checkpoint_files(sample: str) -> list[tuple[str, bytes]]:
    return [(p.name, p.read_bytes()) for p in sorted((sample_dir(sample) / "checkpoints").glob("*.pt"))]


def test_an_importance_run_holds_the_librarys_ranking(home):
    _, ws = home
    model, x = load_sample("cancer"), sample_inputs("cancer")["inputs"][:4]
    run = _run_job(ws, "importance", model, *importance_job(model, "cancer", 1, x, depth=1, steps=8))
    want = compute_layer_importance(model, x, depth=1, steps=8)
    got = saved_importance(run)
    assert run.info.page == "importance" and got.layers == want.layers and len(want.layers) >= 2
    np.testing.assert_allclose(got.magnitude, want.magnitude, rtol=1e-6)
    np.testing.assert_allclose(got.total, want.total, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(got.target, want.target)
    assert got.steps == 8 and read_run(run).layers == want.layers
    np.testing.assert_array_equal(run.inputs["inputs"], x)
    assert run.spec == model.spec  # drawn again without loading the model


def test_a_drift_run_holds_the_librarys_drift_in_training_order(home):
    _, ws = home
    model, x = load_sample("cancer"), sample_inputs("cancer")["inputs"][:3]
    files = _checkpoint_files("cancer")
    run = _run_job(ws, "drift", model, *drift_job(model, "cancer", 1, files[::-1], x, steps=8))  # any order given
    want = compute_checkpoint_drift(read_checkpoints(files), model, x, steps=8)
    got = saved_drift(run)
    assert got.labels == want.labels and got.epochs == want.epochs
    np.testing.assert_allclose(got.correlation, want.correlation, rtol=1e-6)
    np.testing.assert_allclose(got.values, want.values, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(got.target, want.target)
    np.testing.assert_allclose(got.correlation[-1], 1.0)  # the final checkpoint against itself
    assert run.info.summary["mean_correlation"] == pytest.approx(list(want.mean_correlation))


def test_drift_and_importance_requests_are_checked_before_they_are_queued():
    model, x = load_sample("cancer"), sample_inputs("cancer")["inputs"][:2]
    with pytest.raises(UsageError, match="two checkpoints"):
        drift_job(model, "cancer", 1, _checkpoint_files("cancer")[:1], x)
    with pytest.raises(UsageError):
        importance_job(model, "cancer", 1, x, depth=0)


def _chart(at: AppTest, key: str) -> list[dict]:
    chart = next(c for c in at.get("plotly_chart") if c.proto.id.endswith("-" + key))
    return json.loads(chart.proto.spec)["data"]


def test_the_structure_page_ranks_layers_as_a_job_and_draws_its_run():
    at = AppTest.from_file(str(ROOT / "pages" / "views" / "structure.py"), default_timeout=240)
    at.session_state["gb_sample"] = "cancer"
    at.session_state["gb_source"] = "sample"
    at.run()
    at.slider(key="gb_imp_steps").set_value(8)
    at.number_input(key="gb_imp_n").set_value(4)
    at.button(key="gb_imp_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    depth = at.slider(key="gb_imp_depth").value if at.slider(key="gb_imp_depth") else 1
    x = sample_inputs("cancer")["inputs"][:4]
    want = compute_layer_importance(load_sample("cancer"), x, depth=depth, steps=8)
    bars = _chart(at, "gb_imp_chart")[0]
    assert bars["y"] == want.layers[::-1]
    np.testing.assert_allclose(bars["x"], want.magnitude[::-1], rtol=1e-6)
    at.run()  # a rerun shows the same job's run again, without asking again
    assert _chart(at, "gb_imp_chart")[0]["y"] == want.layers[::-1]
    assert len(at.session_state["gb_imp_jobs"]) == 1
