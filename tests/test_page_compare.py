"""AppTest of the Compare page: ``?a=NAME@vN&b=...`` picks the versions, Compare runs a ``compare``
job, the page draws its saved ``comparison`` run and links to it; known answers for a pruned copy."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from streamlit.testing.v1 import AppTest

from explain.loading.loader import load_model
from explain.workspace import Actor
from sample_models import sample_file, sample_inputs
from ui.compare_view import default_refs

ROOT = Path(__file__).resolve().parent.parent
OP = Actor("cli:tester", operator=True)


def pruned_sample(name: str) -> tuple[bytes, int]:
    """The sample's weights with the smaller half of each weight matrix zeroed; how many were zeroed."""
    raw = sample_file(name).read_bytes()
    tensors = load_safetensors(raw)
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])  # the spec travels in the metadata
    zeroed = 0
    for key, t in tensors.items():
        if t.dim() == 2 and t.is_floating_point():
            flat = t.clone().view(-1)
            k = flat.numel() // 2
            flat[flat.abs().argsort()[:k]] = 0.0
            tensors[key], zeroed = flat.view(t.shape), zeroed + k
    return save_safetensors(tensors, metadata=header.get("__metadata__")), zeroed


def test_link_with_only_a_compares_with_production():
    assert default_refs("cancer@v3", None) == ("cancer@v3", "cancer@production")
    assert default_refs("cancer@staging", "cancer@v1") == ("cancer@staging", "cancer@v1")
    assert default_refs(None, None) == (None, None)


def test_compare_page_runs_the_job_and_draws_the_saved_comparison(home):
    _, ws = home
    data, zeroed = pruned_sample("cancer")
    ws.registry.register(OP, "cancer", data, "cancer.safetensors")  # cancer@v2
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.query_params["a"], at.query_params["b"] = "cancer@v1", "cancer@v2"
    at.run()
    at.switch_page("pages/views/compare.py").run()
    assert not at.exception, at.exception
    assert at.selectbox(key="gb_compare_A").value == "cancer@v1"
    assert at.selectbox(key="gb_compare_B").value == "cancer@v2"
    at.number_input(key="gb_compare_steps").set_value(8).run()
    at.button(key="gb_compare_go").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    run_id = [c.value for c in at.code if "?run=" in c.value][0].rsplit("=", 1)[1]
    info = ws.runs.info(OP, run_id)
    assert (info.page, info.params["a"], info.params["b"]) == ("comparison", "cancer@v1", "cancer@v2")

    x = sample_inputs("cancer")["inputs"][:16]
    a = load_model(sample_file("cancer").read_bytes(), filename="cancer.safetensors")
    b = load_model(data, filename="cancer.safetensors")
    pa, pb = a.predict_logits(x).argmax(1), b.predict_logits(x).argmax(1)
    s = info.summary
    assert s["outputs"]["flipped"] == np.flatnonzero(pa != pb).tolist()
    assert s["outputs"]["agreement"] == float((pa == pb).mean())
    params = sum(p.numel() for p in a.module.parameters())
    assert s["structure"]["nonzero_parameters"] == [params, params - zeroed]
    assert len(s["attributions"]["rank_correlation"]) == 16
    assert any(f"Agreement {(pa == pb).mean():.1%}" in m.value for m in at.success)
    assert [h.value for h in at.subheader][-4:] == ["Outputs", "Explanations", "Structure", "Training"]

    opened = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    opened.query_params["run"] = run_id
    opened.run()
    assert not opened.exception, opened.exception
    assert "Structure" in [h.value for h in opened.subheader]  # the drawer redraws the saved run


def test_a_link_with_only_a_says_when_no_version_holds_production(home):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.query_params["a"] = "cancer@v1"
    at.run()
    at.switch_page("pages/views/compare.py").run()
    assert not at.exception, at.exception
    assert at.selectbox(key="gb_compare_A").value == "cancer@v1"
    shown = [w.value.replace("\\", "") for w in at.warning]  # as the page escapes it for markdown
    assert any(w.startswith("cancer@production: Model 'cancer' has no version 'production'") for w in shown), shown
    at.radio(key="gb_compare_source").set_value("Uploaded files").run()  # two uploads instead
    assert not at.exception, at.exception
    assert any("Upload both model files" in i.value for i in at.info)
