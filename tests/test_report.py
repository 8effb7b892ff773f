"""The one-file HTML report: numbers with known answers, robustness, the CLI, a network-blocked browser."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from explain.cli import main
from explain.errors import UsageError
from explain.loading.architectures import build_architecture
from explain.model import LoadedModel
from explain.report.document import Report, Section, drop_volatile, find_chromium, read_report_data
from explain.report.sections import build_report
from explain.spec import InputSpec
from tests.conftest import CHROMIUM, SCREENSHOTS

FAST = {"integrated_gradients": {"steps": 8}}
EVIL = "</script><script>alert(1)</script>"


class Linear(nn.Module):
    """f(x) = W x + b: integrated gradients from a zero baseline is exactly W[target] * x."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0, -2.0, 0.5, 0.0], [0.0, 1.0, 1.0, 3.0], [-1.0, 0.0, 2.0, 1.0]]))
            self.fc.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))

    def forward(self, x):  # [N, 4] -> [N, 3]
        return self.fc(x)


def linear_model() -> LoadedModel:
    spec = InputSpec("tabular", (4,), class_names=["a", EVIL, "c"], feature_names=["f0", "f1", "f2", "f3"],
                     name="linear")
    return LoadedModel(module=Linear().eval(), format="safetensors", sha256="0" * 64, spec=spec, name="linear")


def image_model() -> LoadedModel:
    torch.manual_seed(0)
    module = build_architecture("shapes_resnet", {"widths": [4, 4, 4]}).eval()
    spec = InputSpec("image", (3, 32, 32), class_names=["circle", "square", "triangle", "cross"], name="tiny-shapes")
    return LoadedModel(module=module, format="safetensors", sha256="1" * 64, spec=spec, name="tiny-shapes",
                       architecture="shapes_resnet")


LINEAR_X = np.array([[1.0, 2.0, -1.0, 0.5], [0.0, 1.0, 2.0, -1.0], [3.0, 0.0, 1.0, 1.0]], dtype=np.float32)


# -- numbers ---------------------------------------------------------------------------
def test_output_section_numbers_are_exact_for_a_linear_model():
    model = linear_model()
    report = build_report(model, LINEAR_X, methods=["integrated_gradients"], method_params=FAST,
                          labels=np.array([0, 1, 2]))
    data = report.section("Output: Integrated gradients").data
    w = model.module.fc.weight.detach().numpy().astype(np.float64)
    b = model.module.fc.bias.detach().numpy().astype(np.float64)
    logits = LINEAR_X.astype(np.float64) @ w.T + b
    for i, row in enumerate(data["inputs"]):
        k = int(np.argmax(logits[i]))
        assert row["prediction"] == model.spec.class_names[k] and row["target"] == row["prediction"]
        assert row["target_logit"] == pytest.approx(logits[i, k], rel=1e-5)
        assert row["base_value"] == pytest.approx(b[k], rel=1e-5)  # f(0) = bias
        assert row["attribution_sum"] == pytest.approx(logits[i, k] - b[k], abs=1e-5)
        assert row["completeness_error"] < 1e-5
        for top in row["top_features"]:  # IG of a linear model: w_kj * x_j exactly
            j = int(top["feature"][1:])
            assert top["attribution"] == pytest.approx(w[k, j] * LINEAR_X[i, j], abs=1e-5)
    assert [r["label"] for r in data["inputs"]] == ["a", EVIL, "c"]
    assert data["params"]["steps"] == 8 and data["params"]["baseline"] == "zero"
    card = report.section("Model card").data
    assert card["parameters"] == 15 and card["input_shape"] == [4] and card["sha256"] == "0" * 64


def test_report_params_record_everything_needed_to_reproduce(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("epoch,train_loss,val_loss\n1,1.0,1.1\n2,0.5,0.9\n3,0.3,1.0\n")
    report = build_report(linear_model(), LINEAR_X, logs=[log], method_params=FAST, max_inputs=2)
    params = report.section("Reproducibility").data["params"]
    assert params["methods"] == ["integrated_gradients"]
    assert params["method_params"]["integrated_gradients"]["steps"] == 8
    assert params["inputs"]["count"] == 3 and params["inputs"]["explained"] == 2
    assert params["logs"][0]["name"] == "log.csv" and len(params["logs"][0]["sha256"]) == 64
    assert len(report.section("Output: Integrated gradients").data["inputs"]) == 2


def test_a_failing_part_becomes_a_one_line_section_and_the_rest_is_built(monkeypatch):
    import explain.report.sections as rs

    def boom(*args, **kwargs):
        raise RuntimeError("the method exploded\nwith a second line")

    monkeypatch.setattr(rs, "build_output_section", boom)
    report = build_report(linear_model(), LINEAR_X, method_params=FAST)
    failed = report.section("Output: Integrated gradients")
    assert failed.error == "RuntimeError: the method exploded"  # explain.errors.one_line: the telling line
    assert failed.data == {"error": failed.error}
    assert "Model card" in report.section_titles and "Environment" in report.section_titles
    assert report.section("Model card").error is None
    assert "This part could not be built." in report.to_html()


def test_unknown_method_or_parameter_is_a_usage_error_before_any_work():
    with pytest.raises(UsageError, match="Unknown method"):
        build_report(linear_model(), LINEAR_X, methods=["no_such_method"])
    with pytest.raises(UsageError, match="steps"):
        build_report(linear_model(), LINEAR_X, method_params={"integrated_gradients": {"steps": 0}})


def test_progress_reaches_the_total_and_can_cancel():
    from explain.errors import Cancelled

    seen = []
    build_report(linear_model(), LINEAR_X, method_params=FAST, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1][0] == seen[-1][1] and [d for d, _ in seen] == sorted(d for d, _ in seen)

    def cancel(done, total):
        raise Cancelled("stopped")

    with pytest.raises(Cancelled):
        build_report(linear_model(), LINEAR_X, method_params=FAST, progress=cancel)


# -- the HTML file ---------------------------------------------------------------------------
def test_html_is_self_contained_and_escapes_user_text():
    import plotly.offline

    html = build_report(linear_model(), LINEAR_X, method_params=FAST).to_html()
    assert html.count(plotly.offline.get_plotlyjs()) == 1  # plotly's library inlined exactly once
    ours = html.replace(plotly.offline.get_plotlyjs(), "")  # (its map tiles URLs are only used by map traces)
    assert "<link" not in ours and "@import" not in ours and "url(" not in ours
    assert not re.search(r"https?://", ours)
    assert EVIL not in html  # the hostile class name never appears unescaped
    data = read_report_data(html)
    assert data["sections"]["Model card"]["class_names"][1] == EVIL  # ...but the data keeps it exactly


def test_section_html_and_unique_anchors():
    report = Report("R <b>", [Section("Same", body="<p>x</p>"), Section("Same"), Section.failed("Bad", "why")])
    html = report.to_html()
    assert 'id="same"' in html and 'id="same-2"' in html and "R &lt;b&gt;" in html
    assert report.failed_sections == ["Bad"]


def test_pdf_needs_chromium(monkeypatch, tmp_path):
    import explain.report.document as rep

    monkeypatch.setattr(rep, "CHROMIUM_CANDIDATES", ())
    with pytest.raises(UsageError, match="needs Chromium"):
        Report("x").to_pdf(tmp_path / "r.pdf", chromium=str(tmp_path / "missing"))


@pytest.mark.browser
@pytest.mark.skipif(find_chromium(CHROMIUM) is None, reason="chromium not installed")
def test_pdf_is_printed(tmp_path):
    out = Report("x", [Section("A", body="<p>hello</p>")]).to_pdf(tmp_path / "r.pdf", chromium=CHROMIUM)
    assert out.read_bytes()[:5] == b"%PDF-"


@pytest.mark.browser
def test_report_opens_in_chromium_with_the_network_blocked(tmp_path, request, chromium):

    image = image_model()
    x = np.random.default_rng(0).random((3, 3, 32, 32)).astype(np.float32)
    log = tmp_path / "train_log.csv"
    log.write_text("epoch,train_loss,val_loss,val_acc\n" + "".join(
        f"{e},{1 / e:.4f},{0.5 + abs(e - 5) / 10:.4f},{0.5 + e / 40:.4f}\n" for e in range(1, 13)))
    report = build_report(image, x, logs=[log], method_params=FAST)
    path = report.save(tmp_path / "report.html")
    n_figs = sum(len(s.figures) for s in report.sections)
    assert n_figs >= 1  # the training curves at least: plotly has to draw

    context = chromium.new_context(viewport={"width": 1200, "height": 900})
    try:
        page = context.new_page()
        blocked, errors = [], []
        page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(
            ("file:", "data:", "about:")) else (blocked.append(route.request.url), route.abort()))
        page.on("requestfailed", lambda r: blocked.append(r.url))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(path.as_uri())
        page.wait_for_load_state("load")
        assert page.locator("section > h2").all_inner_texts() == report.section_titles
        assert page.locator("nav.toc li").count() == len(report.sections)
        assert page.locator(".plotly-graph-div .main-svg").count() >= n_figs
        assert page.locator("img.pix").count() == 6  # input + map per image, as data: URIs
        assert page.evaluate("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
        SCREENSHOTS.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{request.node.name}.png"), full_page=True)
        assert blocked == [] and errors == []
    finally:
        context.close()


# -- the CLI ---------------------------------------------------------------------------------
def _write_tabular_model(path: Path) -> LoadedModel:
    """A tabular_mlp safetensors file with its spec, as load_model reads it."""
    from safetensors.torch import save_file

    torch.manual_seed(1)
    config = {"in_features": 4, "hidden": [6], "num_classes": 3, "dropout": 0.0}
    module = build_architecture("tabular_mlp", config).eval()
    spec = InputSpec("tabular", (4,), class_names=["a", "b", "c"], feature_names=["f0", "f1", "f2", "f3"], name="mlp")
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path), metadata={
        "glassbox.architecture": "tabular_mlp", "glassbox.config": json.dumps(config), "glassbox.spec": spec.to_json()})
    from explain.loading.loader import load_model

    return load_model(path)


def _cli(capsys, *argv) -> tuple[int, dict | None, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else None), err


def test_cli_report_matches_build_report_number_for_number(tmp_path, capsys):
    model = _write_tabular_model(tmp_path / "mlp.safetensors")
    np.save(tmp_path / "x.npy", LINEAR_X)
    log = tmp_path / "log.csv"
    log.write_text("epoch,train_loss,val_loss\n" + "".join(f"{e},{1 / e:.4f},{1 / e + e / 50:.4f}\n" for e in range(1, 11)))
    code, out, err = _cli(capsys, "report", str(tmp_path / "mlp.safetensors"), "--inputs", str(tmp_path / "x.npy"),
                          "--logs", str(log), "--steps", "8", "--out", str(tmp_path / "cli.html"))
    assert code == 0, err
    assert out["out"] == str(tmp_path / "cli.html") and out["sections"][0] == "Model card"
    assert "Output: Integrated gradients" in out["sections"] and "Training" in out["sections"]
    cli = read_report_data((tmp_path / "cli.html").read_text())

    page = build_report(model, LINEAR_X, logs=[log], methods=("integrated_gradients",), method_params=FAST)
    same = read_report_data(page.to_html())
    assert list(cli["sections"]) == list(same["sections"]) == page.section_titles
    assert drop_volatile(cli["sections"]) == drop_volatile(same["sections"])
    assert cli["sections"]["Output: Integrated gradients"]["inputs"][0]["completeness_error"] < 0.1  # 8 steps through ReLUs


def test_cli_exit_codes(tmp_path, capsys):
    _write_tabular_model(tmp_path / "mlp.safetensors")
    model = str(tmp_path / "mlp.safetensors")
    (tmp_path / "bad.npy").write_bytes(b"not an array")
    np.save(tmp_path / "wrong.npy", np.zeros((2, 7), dtype=np.float32))
    html = str(tmp_path / "r.html")
    assert _cli(capsys, "report", model, "--inputs", str(tmp_path / "bad.npy"), "--out", html)[0] == 3
    assert _cli(capsys, "report", model, "--inputs", str(tmp_path / "wrong.npy"), "--out", html)[0] == 3
    (tmp_path / "fake.safetensors").write_bytes(b"\x00" * 40)
    assert _cli(capsys, "report", str(tmp_path / "fake.safetensors"), "--out", html)[0] == 3
    assert _cli(capsys, "report", model, "--methods", "nope", "--out", html)[0] == 2
    assert _cli(capsys, "report", model, "--out", str(tmp_path / "r.txt"))[0] == 2
    assert _cli(capsys, "report", model, "--logs", str(tmp_path / "missing.csv"), "--out", html)[0] == 2
    code, _, err = _cli(capsys, "report", model)
    assert code == 2 and "--out" in err
    assert not Path(html).exists()


def test_image_maps_in_the_report_are_over_a_grey_copy_with_a_legend():
    """The report's overlay is the page's: the map over the grey-scale input (`viz.overlay_pixels`),
    one symmetric colour limit for all inputs, a legend that says what red and blue mean."""
    import base64
    import io
    import re

    from PIL import Image

    from explain.viz import attribution as viz

    model = image_model()
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    section = build_report(model, x, methods=["saliency"]).section("Output: Saliency (gradient)")
    zmax = section.data["color_limit"]
    assert "red: supports the target · blue: against" in section.body
    assert f"−{zmax:.2g}" in section.body and f"+{zmax:.2g}" in section.body
    pngs = re.findall(r'src="data:image/png;base64,([^"]+)" alt="saliency map for input (\d)"', section.body)
    assert len(pngs) == 2
    from explain.output.methods import get_method

    attr = get_method("saliency").explain(model, x)
    images = viz.to_display_images(x, model.spec)
    maps = viz.image_maps(attr)
    for data, i in pngs:
        shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))
        assert (shown[::4, ::4] == viz.overlay_pixels(images[int(i)], maps[int(i)], zmax)).all()  # upscaled 4x
