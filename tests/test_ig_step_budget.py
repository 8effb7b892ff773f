"""Integrated gradients' completeness tolerance raises steps only within the operator's budget
(``GLASSBOX_IG_STEP_BUDGET``: a multiple of the asked steps; ``GLASSBOX_IG_STEP_SECONDS``), records
what it did (``step_raising``, ``per_input``) and says so in one line (`step_raising_text`), which a
re-run ignores as a parameter."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from explain.attribution import step_raising_text
from explain.model import LoadedModel
from explain.output.methods import get_method
from explain.spec import InputSpec

pytest_plugins = ["tests.workspace_db"]

IG = get_method("integrated_gradients")


class Wiggle(nn.Module):
    """logits [N, 2] = [Σ sin(400 x), 0]: along the path from 0 to x the gradient swings ~400 x / π
    times, so a few quadrature points are far from complete and each doubling helps only a little."""

    def forward(self, x):  # [N, 4] -> [N, 2]
        wave = torch.sin(400 * x).sum(dim=1, keepdim=True)
        return torch.cat([wave, torch.zeros_like(wave)], dim=1)


@pytest.fixture(scope="module")
def wiggle():
    spec = InputSpec("tabular", (4,), class_names=["wave", "flat"], feature_names=list("abcd"))
    x = np.array([[0.9, -0.7, 0.8, 0.6], [0.001, 0.002, -0.001, 0.0005]], dtype=np.float32)  # [2, 4]
    return LoadedModel(Wiggle(), "safetensors", "wiggle", spec), x


def _ig(model, x, **params):
    return IG.explain(model, x, target=0, use_cache=False, baseline="zero", **params)


def test_the_default_budget_stops_raising_at_four_times_the_asked_steps(wiggle, monkeypatch):
    monkeypatch.delenv("GLASSBOX_IG_STEP_BUDGET", raising=False)
    model, x = wiggle
    out = _ig(model, x, steps=8, tolerance=1e-4)
    did = out.params["step_raising"]
    assert out.params["steps"] == 8 and did["requested"] == 8 and did["limit"] == 32
    assert out.params["per_input"]["steps"] == [32, 8]  # the wide input raised to the limit, the small one met it
    assert did["stopped_by"] == "steps" and did["raised"] == 1 and did["most_used"] == 32
    assert did["max_error"] == pytest.approx(float(out.completeness_error.max())) and did["max_error"] > 1e-4
    assert step_raising_text(out.params) == (
        f"Steps: 8 asked; the completeness tolerance raised 1 input(s), up to 32; stopped by the step "
        f"budget (32 steps at most), largest completeness error left {did['max_error']:.2g}.")


def test_a_larger_budget_goes_further_and_meets_the_tolerance(wiggle, monkeypatch):
    monkeypatch.setenv("GLASSBOX_IG_STEP_BUDGET", "64")
    model, x = wiggle
    out = _ig(model, x, steps=8, tolerance=1e-4)
    did = out.params["step_raising"]
    assert did["limit"] == 512 and did["stopped_by"] is None
    assert 32 < max(out.params["per_input"]["steps"]) <= 512
    assert np.all(out.completeness_error <= 1e-4)
    assert step_raising_text(out.params) == (
        f"Steps: 8 asked; the completeness tolerance raised 1 input(s), up to {did['most_used']}.")


def test_the_time_budget_stops_it_before_any_raising(wiggle, monkeypatch):
    monkeypatch.setenv("GLASSBOX_IG_STEP_SECONDS", "1e-9")
    model, x = wiggle
    out = _ig(model, x, steps=8, tolerance=1e-4)
    did = out.params["step_raising"]
    assert did["stopped_by"] == "seconds" and did["raised"] == 0 and "per_input" not in out.params
    assert step_raising_text(out.params).startswith("Steps: 8 asked; stopped by the time budget (1e-09 s of raising)")


def test_a_rerun_with_the_recorded_params_reproduces_the_run(wiggle):
    model, x = wiggle
    out = _ig(model, x, steps=8, tolerance=1e-4)
    again = IG.explain(model, x, target=0, use_cache=False, per_input=out.params["per_input"],
                       **{k: v for k, v in out.params.items() if k != "per_input"})  # step_raising is ignored
    np.testing.assert_array_equal(again.values, out.values)
    assert "step_raising" not in again.params


def test_nothing_is_said_when_the_asked_steps_were_enough(wiggle):
    model, x = wiggle
    out = _ig(model, x[1:], steps=8, tolerance=1e-2)
    assert "step_raising" not in out.params and step_raising_text(out.params) is None


def test_the_raised_rounds_report_progress(wiggle):
    model, x = wiggle
    seen = []
    _ig(model, x, steps=8, tolerance=1e-4, batch_size=4, progress=lambda d, t: seen.append((d, t)))
    assert (16, 16) in seen  # the asked pass: 2 inputs x 8 steps
    assert seen[-1] == (16 + 16 + 32, 16 + 16 + 32)  # then one input at 16, then at 32 steps


def test_an_explain_jobs_run_records_the_raising_and_the_output_page_line_reads_it(workspace):
    from explain.service.runners import explain_job
    from explain.service.worker import Worker
    from explain.workspace import Actor
    from explain.workspace.records import output_attributions
    from sample_models import load_sample, sample_inputs, sample_registry_files

    op = Actor("cli:tester", operator=True)
    workspace.seed(sample_registry_files())
    workspace.users.add(op, "alice", "admin")
    x = sample_inputs("cancer")["inputs"][:2]
    params, arrays, title = explain_job(load_sample("cancer"), "cancer", 1, x,
                                        {"method": "integrated_gradients", "steps": 2, "tolerance": 1e-9})
    workspace.jobs.submit(Actor("alice"), "explain", params, title=title, inputs=arrays, priority="interactive")
    done = Worker(workspace).run_once()
    (attr,) = output_attributions(workspace.runs.open(op, done.run))
    did = attr.params["step_raising"]
    assert did["requested"] == 2 and did["limit"] == 8 and did["stopped_by"] == "steps"
    assert attr.params["per_input"]["steps"] == [8, 8]
    assert step_raising_text(attr.params).startswith(
        "Steps: 2 asked; the completeness tolerance raised 2 input(s), up to 8; stopped by the step budget")


def test_merge_step_raising_over_a_runs_parts():
    from explain.attribution import merge_step_raising

    a = {"requested": 8, "limit": 32, "seconds_limit": 60.0, "most_used": 16, "raised": 2, "stopped_by": None,
         "max_error": 0.001}
    b = {**a, "most_used": 32, "raised": 1, "stopped_by": "steps", "max_error": 0.2}
    assert merge_step_raising([None, None]) is None
    assert merge_step_raising([a, None, b]) == {**a, "most_used": 32, "raised": 3, "stopped_by": "steps",
                                                "max_error": 0.2}


def test_a_dataset_run_records_the_raising_of_every_shard(workspace):
    from explain.dataset.job import dataset_job
    from explain.dataset.reading import Dataset
    from explain.service.worker import Worker
    from explain.workspace import Actor
    from sample_models import load_sample, sample_inputs, sample_registry_files

    op = Actor("cli:tester", operator=True)
    workspace.seed(sample_registry_files())
    workspace.users.add(op, "alice", "admin")
    model, x = load_sample("cancer"), sample_inputs("cancer")["inputs"][:6]
    data = Dataset("rows", model.spec, [f"r{i}" for i in range(6)], None, lambda a, b: x[a:b])
    params, arrays, title = dataset_job(model, "cancer", 1, data, "integrated_gradients",
                                        {"steps": 2, "tolerance": 1e-9}, None, shard_rows=3)
    workspace.jobs.submit(Actor("alice"), "dataset", params, title=title, inputs=arrays)
    run = workspace.runs.open(op, Worker(workspace).run_once().run)
    did = run.info.params["integrated_gradients"]["step_raising"]
    assert did["raised"] == 6 and did["most_used"] == 8 and did["stopped_by"] == "steps"  # both shards
    assert run.results["per_input/steps"].tolist() == [8] * 6
    assert did["max_error"] == pytest.approx(float(run.results["completeness_error"].max()))
