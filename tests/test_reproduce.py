"""Runs reproduce (issue 21): integrated gradients' tolerance raises the steps of one input only,
the record says which input used which steps, and Re-run, a report built from the run and
``runs rerun`` recompute each input with what it used; a saved run opens from its stored spec,
without loading its model; the Output page's model is loaded once, not again by the worker.

One workspace for the module (the cancer sample, 4 inputs, a tolerance between the two largest
completeness errors at 4 steps, so exactly one input needs more)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from explain.errors import UsageError
from explain.output.methods import get_method
from explain.params import select_per_input
from explain.workspace import Actor

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
OP = Actor("cli:tester", operator=True)
IG = get_method("integrated_gradients")
STEPS = 4


@pytest.fixture(scope="module")
def case():
    """(model, inputs [4, 30], tolerance, the one input above it at `STEPS` steps)."""
    from sample_models import load_sample, sample_inputs

    model, x = load_sample("cancer"), sample_inputs("cancer")["inputs"][:4]
    coarse = IG.explain(model, x, steps=STEPS, tolerance=0.0, use_cache=False).completeness_error
    top = np.sort(coarse)[-2:]
    return model, x, float(top.mean()), int(np.argmax(coarse))


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """The app's, the CLI's and the tests' workspace (GLASSBOX_HOME for the whole module)."""
    from explain.workspace import open_workspace
    from sample_models import sample_registry_files

    home = tmp_path_factory.mktemp("reproduce")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GLASSBOX_HOME", str(home))
        mp.delenv("GLASSBOX_DATABASE_URL", raising=False)
        mp.delenv("GLASSBOX_EXTERNAL_WORKER", raising=False)
        workspace = open_workspace(url=f"sqlite:///{home}/glassbox.db", home=home)
        workspace.seed(sample_registry_files())
        yield workspace
        workspace.close()


@pytest.fixture(scope="module")
def saved(ws, case):
    """The Output run of that explanation, saved by its job as the Output page's is."""
    from explain.service.client import run_here
    from explain.service.runners import explain_methods_job

    model, x, tol, _ = case
    params, arrays, title = explain_methods_job(model, "cancer", 1, x,
                                                [("integrated_gradients", {"steps": STEPS, "tolerance": tol})], None)
    job = run_here(ws, ws.jobs.submit(OP, "explain", params, title=title, inputs=arrays).id, loaded=model)
    return ws.runs.open(OP, job.run)


def test_ig_records_the_steps_each_input_used_and_its_record_reproduces_them(case):
    model, x, tol, raised = case
    attr = IG.explain(model, x, steps=STEPS, tolerance=tol, use_cache=False)
    used = attr.params["per_input"]["steps"]
    assert attr.params["steps"] == STEPS  # as asked; what each input used beside it
    assert [i for i, s in enumerate(used) if s != STEPS] == [raised] and used[raised] > STEPS
    assert np.all(attr.completeness_error <= tol), attr.completeness_error
    again = IG.explain(model, x, use_cache=False, **attr.params)  # the record handed back
    assert np.abs(again.values - attr.values).max() <= 1e-6
    np.testing.assert_allclose(again.completeness_error, attr.completeness_error, rtol=0, atol=1e-9)
    # the same record, less what the tolerance did (step_raising): reproducing it raised nothing
    assert again.params == {k: v for k, v in attr.params.items() if k != "step_raising"}
    assert attr.params["step_raising"]["raised"] == 1 and any("as recorded per input" in n for n in again.notes)
    part = IG.explain(model, x[raised:], use_cache=False, **select_per_input(attr.params, slice(raised, None)))
    assert np.abs(part.values - attr.values[raised:]).max() <= 1e-6  # a report's first rows, the same way
    uniform = IG.explain(model, x, use_cache=False, steps=used[raised], tolerance=0.0)
    assert "per_input" not in uniform.params  # every input used the asked steps: nothing per input
    with pytest.raises(UsageError, match="3 values for 4 inputs"):
        IG.explain(model, x, per_input={"steps": used[:3]}, steps=STEPS)
    with pytest.raises(UsageError, match="no per-input values"):
        get_method("saliency").explain(model, x, per_input={"steps": used})


def test_the_run_records_each_inputs_steps_and_rerun_reproduces_it(ws, case, saved):
    from explain.service.client import run_here
    from explain.service.runners import rerun_job
    from explain.workspace.records import output_attributions, output_differences

    model, _, tol, raised = case
    params = saved.info.params["integrated_gradients"]
    assert params["steps"] == STEPS and params["tolerance"] == tol
    assert params["per_input"]["steps"][raised] > STEPS and params["per_input"]["steps"].count(STEPS) == 3
    job_params, arrays, title = rerun_job(model, saved)
    job = run_here(ws, ws.jobs.submit(OP, "explain", job_params, title=title, inputs=arrays).id, loaded=model)
    fresh = ws.runs.open(OP, job.run)
    (row,) = output_differences(saved, fresh)
    assert row["max |difference|"] <= 1e-6 and row["same targets"], row
    before, after = output_attributions(saved)[0], output_attributions(fresh)[0]
    np.testing.assert_allclose(after.completeness_error, before.completeness_error, rtol=0, atol=1e-9)
    assert fresh.info.params["integrated_gradients"]["per_input"] == params["per_input"]


def test_a_report_built_from_the_run_shows_the_runs_completeness_errors(ws, case, saved):
    """As the Saved runs page asks for it (`ui.run_view.submit_run_report`): the run's inputs, methods
    and recorded parameters through `report_job`, built as `run_report_job` builds it."""
    from explain.output.methods.base import completeness_caption
    from explain.report.job import report_job
    from explain.report.sections import build_report
    from explain.workspace.records import output_attributions

    model, x, _, raised = case
    info = saved.info
    params, arrays, _ = report_job(model, info.model, info.version, saved.inputs["inputs"],
                                   methods=info.summary["methods"],
                                   method_params={m: info.params[m] for m in info.summary["methods"]}, quality=[])
    report = build_report(model, arrays["inputs"], methods=params["methods"], method_params=params["method_params"],
                          max_inputs=len(x), quality=params["quality"])
    section = next(s for s in report.sections if s.title.startswith("Output: "))
    rows = section.data["inputs"]  # rounded to 6 significant digits in the report's data
    run_attr = output_attributions(saved)[0]
    np.testing.assert_allclose([r["completeness_error"] for r in rows], run_attr.completeness_error, rtol=1e-5)
    assert [r["completeness"] for r in rows] == [completeness_caption(run_attr, i)[0] for i in range(len(x))]
    assert section.data["params"]["per_input"] == info.params["integrated_gradients"]["per_input"]
    reproducibility = next(s for s in report.sections if s.title == "Reproducibility")
    recorded = reproducibility.data["params"]["method_params"]["integrated_gradients"]
    assert recorded["per_input"]["steps"][raised] > STEPS and recorded["steps"] == STEPS
    assert "what each input used" in reproducibility.body


def test_cli_runs_rerun_prints_the_difference_as_json(ws, saved, capsys):
    from explain.cli import main

    assert main(["runs", "rerun", saved.info.id]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rerun_of"] == saved.info.id and out["run"] != saved.info.id
    assert 0 <= out["max_abs_difference"] <= 1e-6
    ig = out["per_result"]["integrated_gradients"]
    assert ig["max_abs_difference"] == out["max_abs_difference"] and ig["same_targets"] is True
    assert ig["now_completeness_error"] == pytest.approx(ig["saved_completeness_error"], abs=1e-9)
    assert ws.runs.info(OP, out["run"]).summary["rerun_of"] == saved.info.id
    assert main(["runs", "rerun", "no-such-run"]) == 2  # NotFound: one line, no traceback
    assert "no-such-run" in capsys.readouterr().err


def _refuse_loading(monkeypatch, sha256: str) -> None:
    """Every reference to `load_model` fails on the file ``sha256`` (the run's model version); the
    sidebar's current model (a sample of its own) still loads. ``run_model`` (Re-run's) fails."""
    import sys

    import explain.loading.loader as loader
    import ui.run_view as run_view
    from explain.digest import digest_bytes

    original = loader.load_model

    def guarded(source, *args, **kwargs):
        if isinstance(source, (bytes, bytearray, str, Path)):
            data = bytes(source) if isinstance(source, (bytes, bytearray)) else Path(source).read_bytes()
            assert digest_bytes(data) != sha256, "the run's model was loaded"
        return original(source, *args, **kwargs)

    for module in list(sys.modules.values()):
        if getattr(module, "load_model", None) is original:
            monkeypatch.setattr(module, "load_model", guarded)
    monkeypatch.setattr(run_view, "run_model", lambda *_: pytest.fail("run_model: the run's model was loaded"))


def test_a_saved_run_opens_from_its_spec_without_loading_the_model(ws, case, saved, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from explain.workspace.records import output_attributions

    model, _, _, raised = case
    assert saved.spec is not None and saved.spec.to_dict() == model.spec.to_dict()
    _refuse_loading(monkeypatch, saved.info.sha256)
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["run"] = saved.info.id
    at.run()
    assert not at.exception, at.exception
    assert not [e.value for e in at.error], [e.value for e in at.error]
    error = output_attributions(saved)[0].completeness_error[raised]
    captions = [c.value for c in at.caption]
    assert any(f"completeness error {error:.1e}" in c for c in captions), captions  # the run page's numbers
    assert sum("completeness error" in c for c in captions) == len(saved.info.summary["shown"])  # every map


def test_the_output_page_loads_its_model_once_not_again_in_the_worker(ws):
    from streamlit.testing.v1 import AppTest

    import explain.service.models as models

    at = AppTest.from_file(APP, default_timeout=300).run()
    store = models.shared_models()
    loaded = store.loads  # the sidebar's sample, loaded by the page through the one cache
    at.switch_page("pages/views/output.py").run()
    assert not at.exception, at.exception
    run_id = [c.value for c in at.code if "?run=" in c.value][0].rsplit("=", 1)[1]
    assert ws.runs.info(OP, run_id).page == "output"
    assert store.loads == loaded  # the worker ran the job on the page's model
