"""The Overview page: three linked panes per sample, layer and checkpoint links, the report = the CLI's."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from explain.finding import sort_findings
from explain.report.document import find_chromium
from explain.training.checkpoints import read_checkpoints
from explain.training.findings import diagnose
from explain.training.history import read_history
from tests.conftest import wait_for_app
from ui.text import escape_markdown

ROOT = Path(__file__).resolve().parent.parent
PAGE = str(ROOT / "pages" / "views" / "overview.py")


def _run(sample: str) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=240)
    at.session_state["gb_sample"] = sample
    at.session_state["gb_source"] = "sample"
    at.run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    return at


def _captions(at: AppTest) -> str:
    return " ".join(c.value for c in at.caption)


def _sample_files(sample: str) -> tuple[list[str], list[str]]:
    from sample_models import sample_dir

    root = Path(sample_dir(sample))
    return [str(root / "train_log.csv")], sorted(str(p) for p in (root / "checkpoints").glob("*.pt"))


@pytest.mark.parametrize("sample", ["shapes", "cancer", "sentiment"])
def test_overview_shows_output_structure_and_training_side_by_side(sample):
    at = _run(sample)
    assert [s.value for s in at.subheader][:3] == ["Output", "Structure", "Training"]
    assert re.search(r"completeness error [0-9.e+-]+", _captions(at))
    assert len(at.dataframe) == 1 and len(at.dataframe[0].value) >= 3  # the layer summary
    charts = at.get("plotly_chart")
    # image/tabular: attribution + curves; text: tokens are HTML, plus the attention map
    assert len(charts) >= 2
    # findings next to the curves: the library's, worst first (explain.finding.sort_findings)
    logs, checkpoints = _sample_files(sample)
    expected = sort_findings(diagnose(read_history(logs[0])))
    shown = [re.match(r"\S+ \*\*(\w+)\*\* — ", m.value) for m in at.markdown]
    assert [m.group(1) for m in shown if m] == [f.kind for f in expected] and expected
    # the checkpoints in the library's training order and with its labels, the final model first
    options = at.selectbox(key="gb_ov_ckpt").options
    assert options[0] == "final model"
    assert options[1:] == [c.label for c in read_checkpoints(checkpoints)]


def test_choosing_a_layer_shows_its_attribution_with_exact_completeness():
    at = _run("shapes")
    at.selectbox(key="gb_ov_layer").set_value("layer3").run()
    assert not at.exception and not at.error
    caption = next(c.value for c in at.caption if "Σ over the layer" in c.value)
    total, delta = (float(v) for v in re.findall(r"(?:layer|baseline\)) (-?[0-9.e+-]+)", caption)[:2])
    # after layer3 the network is avgpool + linear, so layer IG is exact: Σ = f(x) − f(0)
    assert total == pytest.approx(delta, rel=1e-3)
    assert float(re.search(r"completeness error ([0-9.e+-]+)", caption).group(1)) < 1e-3


def test_choosing_a_checkpoint_re_explains_with_its_weights():
    from explain.training.checkpoints import read_checkpoint
    from explain.training.evolution import model_at
    from sample_models import load_sample, sample_inputs

    at = _run("cancer")
    first = _sample_files("cancer")[1][0]
    at.selectbox(key="gb_ov_ckpt").set_value(first).run()
    assert not at.exception and not at.error
    line = next(m.value for m in at.markdown if "weights:" in m.value)
    assert escape_markdown(Path(first).stem) in line  # a file name: shown literally
    x = sample_inputs("cancer")["inputs"][:1]
    probs = model_at(read_checkpoint(first), load_sample("cancer")).predict_proba(x)[0]
    assert f"({probs.max():.1%})" in line  # the prediction shown is the checkpoint's


def test_page_report_equals_the_cli_report(tmp_path, capsys):
    from explain.cli import main
    from explain.report.document import drop_volatile, read_report_data
    from explain.report.job import report_html
    from explain.workspace import Actor, open_workspace
    from sample_models import sample_dir

    at = _run("cancer")
    at.button(key="gb_ov_build").click().run()
    assert not at.exception and not at.error
    key, job_id = at.session_state["gb_ov_report_job"]  # built by a job, saved as a report run
    ws = open_workspace()
    job = ws.jobs.get(Actor.local(), job_id)
    run = ws.runs.open(Actor.local(), job.run)
    assert (job.kind, job.status, run.info.page, run.info.summary["failed"]) == ("report", "done", "report", {})
    assert len(at.get("download_button")) == 1
    assert any(f"?run={run.info.id}" in c.value for c in at.code)
    page = read_report_data(report_html(run).decode("utf-8"))

    logs, checkpoints = _sample_files("cancer")
    code = main(["report", "cancer", "--inputs", str(Path(sample_dir("cancer")) / "samples.npz"), "--logs", *logs,
                 "--checkpoints", *checkpoints, "--out", str(tmp_path / "cli.html")])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["failed"] == {}
    cli = read_report_data((tmp_path / "cli.html").read_text())
    assert list(page["sections"]) == list(cli["sections"]) == out["sections"]
    assert {"Model card", "Structure", "Training", "Checkpoint evolution", "Environment"} <= set(out["sections"])
    assert drop_volatile(page["sections"]) == drop_volatile(cli["sections"])


@pytest.mark.browser
def test_browser_overview_shows_three_panes(app_url, browser_page):
    page = browser_page
    page.goto(app_url)  # the default page lives at /
    wait_for_app(page)
    page.get_by_text("completeness error").first.wait_for(timeout=180_000)
    for pane in ("Output", "Structure", "Training"):
        assert page.get_by_role("heading", name=pane, exact=True).first.is_visible()
    page.get_by_text("best_epoch").first.wait_for(timeout=60_000)
    assert page.locator('[data-testid="stException"]').count() == 0
    assert page.get_by_text("Page not found").count() == 0
    page.get_by_role("button", name="Build report (HTML)").wait_for()
    assert page.console_errors == []


def test_only_attributable_layers_are_offered_and_the_others_say_why():
    """bn1 feeds an in-place ReLU (Captum would fail on it): not offered, with the reason shown."""
    from explain.output.layer_attribution import CHANGED_IN_PLACE, IN_PLACE, classify_layers, explain_layer
    from sample_models import load_sample, sample_inputs

    model, x = load_sample("shapes"), sample_inputs("shapes")["inputs"][:1]
    choices = classify_layers(model, x)
    assert choices.skipped["bn1"] == CHANGED_IN_PLACE and choices.skipped["relu"] == IN_PLACE
    assert "layer3" in choices.attributable and "bn1" not in choices.attributable
    for layer in choices.attributable:  # every offered layer really attributes
        assert np.isfinite(explain_layer(model, x, layer, steps=2).values).all()
    at = _run("shapes")
    assert "bn1" not in at.selectbox(key="gb_ov_layer").options
    assert any(c.value.startswith("Not offered") and "bn1" in c.value for c in at.caption)  # escaped text


def test_training_files_uploaded_for_the_model_replace_the_samples_in_overview_and_report(tmp_path):
    """Logs and checkpoints given on the Training page (kept by ui.state) feed the Overview and its report."""
    from sample_models import load_sample, sample_dir

    lines = (Path(sample_dir("shapes")) / "train_log.csv").read_text().splitlines()
    short = tmp_path / "my_run.csv"
    short.write_text("\n".join(lines[:6]) + "\n")  # header + the first 5 epochs
    ckpts = sorted(str(p) for p in (Path(sample_dir("shapes")) / "checkpoints").glob("*.pt"))[:2]
    at = AppTest.from_file(PAGE, default_timeout=240)
    at.session_state["gb_sample"] = "shapes"
    at.session_state["gb_source"] = "sample"
    at.session_state["gb_training_uploads"] = {load_sample("shapes").sha256: ([str(short)], ckpts)}
    at.run()
    assert not at.exception and not at.error
    best = next(m.value for m in at.markdown if "best_epoch" in m.value)
    assert "of 5" in best  # the uploaded 5-epoch log, not the sample's 10 epochs
    assert at.selectbox(key="gb_ov_ckpt").options == ["final model", "epoch 1", "epoch 4"]  # the two uploaded


@pytest.mark.skipif(find_chromium() is None, reason="chromium not installed")
def test_report_downloads_as_pdf_printed_by_chromium():
    at = _run("cancer")
    at.button(key="gb_ov_build").click().run()
    at.button(key="gb_ov_make_pdf").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    key, pdf = at.session_state["gb_report_pdf"]
    assert key == at.session_state["gb_ov_report_job"][0] and pdf[:5] == b"%PDF-" and len(pdf) > 10_000
    assert len(at.get("download_button")) == 2  # HTML and PDF


def test_without_chromium_the_pdf_is_not_offered_and_the_page_says_why(monkeypatch):
    import explain.report.document as document

    monkeypatch.setattr(document, "CHROMIUM_CANDIDATES", ())
    at = _run("cancer")
    at.button(key="gb_ov_build").click().run()
    assert not at.exception and not at.error
    assert len(at.get("download_button")) == 1  # the HTML still downloads
    assert not [b for b in at.button if b.key == "gb_ov_make_pdf"]
    assert any(document.NO_CHROMIUM in c.value and "print it from a browser" in c.value for c in at.caption)


def test_two_logs_of_one_series_are_two_runs_with_findings_each(tmp_path):
    """As on the Training page and in the report: two runs' curves, and each run's findings under its name."""
    from sample_models import load_sample, sample_dir

    lines = (Path(sample_dir("shapes")) / "train_log.csv").read_text().splitlines()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = tmp_path / "a" / "train_log.csv", tmp_path / "b" / "train_log.csv"
    first.write_text("\n".join(lines) + "\n")
    second.write_text("\n".join(lines[:6]) + "\n")
    at = AppTest.from_file(PAGE, default_timeout=240)
    at.session_state["gb_sample"] = "shapes"
    at.session_state["gb_source"] = "sample"
    at.session_state["gb_training_uploads"] = {load_sample("shapes").sha256: ([str(first), str(second)], [])}
    at.run()
    assert not at.exception and not at.error
    headings = [m.value.replace("\\", "") for m in at.markdown if m.value.startswith("**Findings · ")]
    assert [h.split(" · ")[1].split("**")[0] for h in headings] == ["train_log", "train_log #2"], headings
    groups = {t.get("legendgroup") for c in at.get("plotly_chart") for t in json.loads(c.proto.spec).get("data", [])}
    assert {"run 0", "run 1"} <= groups, groups  # one legend group per run
