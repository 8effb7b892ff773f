"""Re-run of any saved run a job makes (issue 21: "Re-run of any saved run reproduces it"), from one place:
`explain.workspace.run_kinds.rerun_request` builds the job again from the run, `rerun_differences` says how
the fresh run differs; ``runs rerun ID`` and the Saved runs page's Re-run both go through it. Each kind's run
is saved by its job, re-run through the CLI function on the same device and equals it (max |difference| <=
1e-6), and the fresh run names the one it repeats; a report or a page's snapshot is refused in one line.

One workspace for the module (the cancer sample, 3 to 6 inputs, 8 integration steps; the keycopy LM)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from explain.errors import UsageError
from explain.service.client import finished_run, run_here, submit
from explain.workspace import Actor, RunRecord
from explain.workspace.run_kinds import RUN_KINDS, rerun_refusal, rerun_request
from sample_models import load_sample, sample_dir, sample_file, sample_inputs

ROOT = Path(__file__).resolve().parent.parent
OP = Actor("cli:tester", operator=True)
STEPS = 8
BASE = np.full((1, 30), 0.25, np.float32)  # a dataset run's given baseline (an array parameter) [1, 30]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """The app's, the CLI's and the tests' workspace (GLASSBOX_HOME for the whole module)."""
    from explain.service.worker import stop_embedded
    from explain.workspace import open_workspace
    from sample_models import sample_registry_files

    home = tmp_path_factory.mktemp("rerun_kinds")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GLASSBOX_HOME", str(home))
        mp.delenv("GLASSBOX_DATABASE_URL", raising=False)
        mp.delenv("GLASSBOX_EXTERNAL_WORKER", raising=False)
        workspace = open_workspace(url=f"sqlite:///{home}/glassbox.db", home=home)
        workspace.seed(sample_registry_files())
        yield workspace
        stop_embedded(workspace)
        workspace.close()


@pytest.fixture(scope="module")
def cancer():
    return load_sample("cancer"), sample_inputs("cancer")["inputs"][:6]


def _saved(ws, kind, model, params, arrays, title):
    """The run of a ``kind`` job, run here as a worker would."""
    job = submit(ws, OP, kind, params, title=title, inputs=arrays, priority="interactive")
    return finished_run(ws, OP, run_here(ws, job.id, loaded=model))


def _rerun(ws, saved) -> dict:
    """``runs rerun ID``'s answer (the CLI's function), checked for what every kind shares."""
    from explain.cli.runs import rerun

    out = rerun(ws, OP, saved.info.id)
    assert out["rerun_of"] == saved.info.id and out["run"] != saved.info.id
    fresh = ws.runs.info(OP, out["run"])
    assert fresh.page == saved.info.page and fresh.summary["rerun_of"] == saved.info.id
    assert fresh.title.startswith(f"Re-run of {saved.info.id}: ")
    assert 0 <= out["max_abs_difference"] <= 1e-6, out
    assert out["max_abs_difference"] == max(r["max_abs_difference"] for r in out["per_result"].values())
    return out


@pytest.fixture(scope="module")
def dataset_run(ws, cancer):
    """A dataset run of 6 labelled rows in shards of 4, explained for each row's label from a given baseline."""
    from explain.dataset.job import dataset_job
    from explain.dataset.reading import Dataset

    model, x = cancer
    labels = np.asarray([0, 1, 1, 0, 1, 0])
    data = Dataset("six.csv", model.spec, [f"six.csv:{i}" for i in range(6)], labels, lambda a, b: x[a:b])
    return _saved(ws, "dataset", model, *dataset_job(model, "cancer", 1, data, "integrated_gradients",
                                                     {"steps": STEPS, "baseline": "file", "baseline_array": BASE},
                                                     "label", shard_rows=4))


def test_a_dataset_run_is_rerun_as_a_dataset_job_and_equals_it(ws, dataset_run):
    kind, params, arrays, _ = rerun_request(dataset_run, lambda: pytest.fail("a dataset re-run loads no model here"))
    assert kind == "dataset" and params["rerun_of"] == dataset_run.info.id
    assert (params["method"], params["target"], params["shard_rows"], params["params"]["steps"]) == (
        "integrated_gradients", "label", 4, STEPS)
    assert arrays["item_names"].tolist() == [f"six.csv:{i}" for i in range(6)]
    np.testing.assert_array_equal(arrays["labels"], [0, 1, 1, 0, 1, 0])
    np.testing.assert_array_equal(arrays["param/baseline_array"], BASE)  # kept in the run, given again
    assert params["params"]["baseline"] == "file"
    out = _rerun(ws, dataset_run)
    (row,) = out["per_result"].values()
    assert list(out["per_result"]) == ["integrated_gradients"] and row["same_targets"] is True
    assert row["now_completeness_error"] == pytest.approx(row["saved_completeness_error"], abs=1e-9)
    fresh = ws.runs.open(OP, out["run"])
    np.testing.assert_array_equal(fresh.results["targets"], dataset_run.results["targets"])


def test_a_dataset_rerun_computes_each_row_with_its_recorded_steps_whatever_the_budget(ws, cancer, monkeypatch):
    """2 steps asked, tolerance 7e-3, shards of 2 (errors at 2 steps: 1.1e-3, 6.6e-3, 1.6e-2, 3.2e-3, 5.6e-3, 6.1e-2):
    rows 2 and 5 raise to the budget's 8 steps, the others (and the whole first shard) keep 2. The re-run, with
    raising now forbidden (budget 1x, 0 seconds), computes each row with its recorded steps and equals the run."""
    from explain.dataset.job import dataset_job
    from explain.dataset.reading import Dataset
    from explain.output.methods import get_method

    model, x = cancer
    data = Dataset("six.csv", model.spec, [f"six.csv:{i}" for i in range(6)], None, lambda a, b: x[a:b])
    saved = _saved(ws, "dataset", model, *dataset_job(model, "cancer", 1, data, "integrated_gradients",
                                                      {"steps": 2, "tolerance": 7e-3}, None, shard_rows=2))
    assert saved.results["per_input/steps"].tolist() == [2, 2, 8, 2, 2, 8]  # every row, raised or not
    assert saved.info.params["integrated_gradients"]["step_raising"]["raised"] == 2
    monkeypatch.setenv("GLASSBOX_IG_STEP_BUDGET", "1")
    monkeypatch.setenv("GLASSBOX_IG_STEP_SECONDS", "0")
    _, _, arrays, _ = rerun_request(saved, lambda: model)
    assert arrays["per_input/steps"].tolist() == [2, 2, 8, 2, 2, 8]  # in dataset order
    unraised = get_method("integrated_gradients").explain(model, x, use_cache=False, steps=2, tolerance=7e-3)
    assert "per_input" not in unraised.params  # raising again under this budget would give 2 steps everywhere:
    assert np.abs(unraised.values[[2, 5]] - saved.results["values"][[2, 5]]).max() > 1e-4  # other maps
    out = _rerun(ws, saved)  # <= 1e-6
    assert out["per_result"]["integrated_gradients"]["now_completeness_error"] == pytest.approx(
        saved.info.summary["max_completeness_error"], abs=1e-9)
    assert ws.runs.open(OP, out["run"]).results["per_input/steps"].tolist() == [2, 2, 8, 2, 2, 8]


def test_a_comparison_is_rerun_afresh_and_equals_it(ws, cancer, monkeypatch):
    """Version 2: the cancer sample with one weight changed; both versions explained again, not from the cache."""
    import safetensors.torch

    from explain.compare.job import compare_job
    from explain.output.cache import ATTRIBUTION_CACHE

    model, x = cancer
    data = sample_file("cancer").read_bytes()
    tensors = safetensors.torch.load(data)
    first = sorted(tensors)[0]
    tensors[first] = tensors[first] * 1.25
    meta = _metadata(data)
    v2 = ws.registry.register(OP, "cancer", safetensors.torch.save(tensors, metadata=meta), "cancer.safetensors")
    model_b = _load(ws, "cancer", v2.version)
    saved = _saved(ws, "compare", model, *compare_job(model, model_b, "cancer@v1", f"cancer@v{v2.version}", x[:3],
                                                      "integrated_gradients", {"steps": STEPS}))
    assert np.abs(saved.results["values_a"] - saved.results["values_b"]).max() > 1e-4  # two versions that differ
    asked = []
    real_get = ATTRIBUTION_CACHE.get
    monkeypatch.setattr(ATTRIBUTION_CACHE, "get", lambda key: asked.append(key) or real_get(key))
    out = _rerun(ws, saved)
    assert asked == []  # computed afresh: the cache was never asked
    assert set(out["per_result"]) == {"probs_a", "probs_b", "values_a", "values_b", "rank_correlation"}
    assert all(r["same_targets"] is True for r in out["per_result"].values())


def _metadata(data: bytes) -> dict[str, str] | None:
    """The header metadata of a safetensors file (its spec)."""
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + size]).get("__metadata__")


def _load(ws, name: str, version: int):
    from explain.service.models import ModelCache

    return ModelCache(ws).get(OP, name, version)


def test_an_importance_run_is_rerun_and_equals_it_layer_by_layer(ws, cancer):
    from explain.output.importance_job import importance_job

    model, x = cancer
    saved = _saved(ws, "importance", model, *importance_job(model, "cancer", 1, x[:4], depth=1, steps=STEPS))
    out = _rerun(ws, saved)
    assert list(out["per_result"]) == saved.info.summary["layers"] and len(out["per_result"]) >= 2
    fresh = ws.runs.open(OP, out["run"])
    assert fresh.info.params["steps"] == STEPS and fresh.info.summary["depth"] == 1


def test_a_drift_run_keeps_its_checkpoints_and_is_rerun_per_checkpoint(ws, cancer):
    from explain.training.drift_job import drift_job, drift_record, saved_drift

    model, x = cancer
    files = [(p.name, p.read_bytes()) for p in sorted((sample_dir("cancer") / "checkpoints").glob("*.pt"))]
    saved = _saved(ws, "drift", model, *drift_job(model, "cancer", 1, files[::-1], x[:3], steps=STEPS))
    assert saved.info.params["checkpoints"] == [name for name, _ in files[::-1]]  # as given; run in training order
    assert saved.inputs["checkpoint/0"].tobytes() == files[-1][1]
    out = _rerun(ws, saved)
    assert list(out["per_result"]) == saved_drift(saved).labels
    # a drift run saved before runs kept their checkpoints: refused in one line
    old = ws.runs.save(OP, drift_record("cancer", 1, model, x[:3], STEPS, saved_drift(saved)))
    with pytest.raises(UsageError, match="before drift runs kept their checkpoints"):
        rerun_request(ws.runs.open(OP, old.id), lambda: model)


def test_a_generation_run_is_rerun_through_the_cli_per_prompt(ws):
    """Two prompts, two new tokens, 8 steps without raising them (test_generation_job re-runs raised steps)."""
    pytest.importorskip("transformers")
    from explain.generation.job import generation_job
    from explain.service.client import register_model
    from sample_models import keycopy

    model = load_sample("keycopy")
    version = register_model(ws, OP, model, sample_file("keycopy").read_bytes(), "keycopy.zip", "keycopy")
    prompts = keycopy.make_prompts(2, 31)[0]
    saved = _saved(ws, "generate", model, *generation_job(model, version.name, version.version, prompts,
                                                          max_new_tokens=2, steps=STEPS, tolerance=0.0))
    out = _rerun(ws, saved)
    assert list(out["per_result"]) == ["1", "2"]
    assert all(r["same_tokens"] is True for r in out["per_result"].values())


def test_a_report_or_snapshot_run_is_refused_in_one_line(ws, capsys):
    from explain.cli import main
    from explain.workspace.records import snapshot_record

    snapshot = ws.runs.save(OP, snapshot_record("structure", "cancer", 1, "Layers", None, {}))
    report = ws.runs.save(OP, RunRecord(page="report", model="cancer", version=1, title="Report",
                                        results={"html": np.frombuffer(b"<html></html>", dtype=np.uint8)}))
    assert {k for k, kind in RUN_KINDS.items() if kind.rerun is None} == {"report", "structure", "training", "overview"}
    for run_id, why in ((snapshot.id, "records no computation"), (report.id, '"Build report"')):
        assert main(["runs", "rerun", run_id]) == 2  # UsageError (explain.errors.CODES)
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and run_id in err and why in err, err
        assert rerun_refusal(ws.runs.open(OP, run_id)) in err


def test_the_saved_runs_page_reruns_a_dataset_run_as_a_dataset_job(ws, dataset_run):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=240)
    at.query_params["run"] = dataset_run.info.id
    at.run()
    assert not at.exception, at.exception
    at.button(key="gb_rerun").click().run()
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    (job,) = [j for j in ws.jobs.list(OP) if j.params.get("rerun_of") == dataset_run.info.id and j.owner == "local"]
    assert job.kind == "dataset" and job.params["method"] == "integrated_gradients" and job.params["target"] == "label"
    diff = [d.value for d in at.dataframe if "max |difference|" in d.value.columns][0]
    assert diff["method"].tolist() == ["integrated_gradients"] and diff["max |difference|"].iloc[0] <= 1e-6
