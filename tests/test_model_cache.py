"""One model cache per process (issue 21): the pages, a saved run's Re-run and the app's worker
share `explain.service.models.shared_models`, keyed by file sha256 + spec."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from explain.loading import loader
from explain.service.models import ModelCache, shared_models, spec_key
from explain.spec import InputSpec
from explain.workspace import Actor

ROOT = Path(__file__).resolve().parent.parent
VIEWS = ROOT / "pages" / "views"
OP = Actor("cli:tester", operator=True)


@pytest.fixture
def counted(monkeypatch):
    """Every `load_model` call of this process, counted; the store emptied first."""
    calls: list[str] = []
    real = loader.load_model

    def counting(*args, **kwargs):
        calls.append(kwargs.get("filename") or str(args[0])[:40])
        return real(*args, **kwargs)

    monkeypatch.setattr(loader, "load_model", counting)
    shared_models().clear()
    return calls


def _page(name: str, **state) -> AppTest:
    at = AppTest.from_file(str(VIEWS / f"{name}.py"), default_timeout=240)
    at.session_state["gb_sample"] = "cancer"
    at.session_state["gb_source"] = "sample"
    for key, value in state.items():
        at.session_state[key] = value
    return at


def test_two_pages_a_saved_run_and_their_jobs_load_the_model_once(counted):
    output = _page("output")
    output.run()
    assert not output.exception and not output.error, [e.value for e in output.error]
    run_id = next(c.value for c in output.caption if "Saved as run" in c.value).split("`")[1]

    overview = _page("overview")
    overview.run()
    assert not overview.exception and not overview.error, [e.value for e in overview.error]

    runs = _page("runs")
    runs.query_params["run"] = run_id
    runs.run()
    runs.button[[b.label for b in runs.button].index("Re-run")].click().run()
    assert not runs.exception and not runs.error, [e.value for e in runs.error]
    assert len(runs.dataframe) >= 1  # the re-run's differences: the worker ran it on the cached copy

    assert counted == ["cancer.safetensors"]  # the Output page's load; its job, the Overview, the Re-run reused it
    assert shared_models().loads == 1


def test_a_registry_version_with_a_stored_spec_finds_the_pages_copy(home, counted):
    """A version registered with the spec the file lacks (an upload whose spec came from its inputs)
    is found under that spec: the worker gets the page's copy, not a second load."""
    from sample_models import sample_file

    _, ws = home
    data = sample_file("cancer").read_bytes()
    store = shared_models()
    page_copy = store.open(data, filename="cancer.safetensors", sample_input=np.zeros((1, 30), np.float32))
    info = ws.registry.register(OP, "cancer-upload", data, "cancer.safetensors",
                                spec_json=page_copy.spec.to_json().encode())
    assert ModelCache(ws).load(OP, info) is page_copy
    assert store.loads == 1 and len(counted) == 1
    # another spec is another model: loaded, and kept beside the first
    other = InputSpec.from_json(page_copy.spec.to_json())
    other.class_names = ["a", "b"]
    assert spec_key(other) != spec_key(page_copy.spec)
    assert store.open(data, filename="cancer.safetensors", spec=other) is not page_copy
    assert store.loads == 2
