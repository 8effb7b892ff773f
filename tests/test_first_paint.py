"""The app's first paint imports no torch (issue 21, no waiting): on a fresh process `ui.first_paint` draws the
Overview's title, the sidebar's sample choice, the sample's training curves and its saved first view (the
prediction and the attribution map with its caption), and the script run ends there (torch, captum and shap not
imported); the curves and the map are the Overview's own figures (the settled page draws the same map, same z
and colour limits); a background import of the pages' glue follows once the browser says it drew the preview's
charts, and the next run is the page itself; nothing
is drawn while the workspace has accounts (read without SQLAlchemy in an SQLite workspace)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter: the app's first script run (AppTest), the sample changed in the preview, then
# the background import and the run after it, and the first sample again on the page; the Overview's own
# figures are made last, for comparison.
SCRIPT = r'''
import json, sys
from streamlit.testing.v1 import AppTest
import ui.first_paint as fp

HEAVY = ("torch", "captum", "shap")


def charts(at):
    return {c.proto.id.rsplit("-", 1)[-1]: json.loads(c.proto.spec) for c in at.get("plotly_chart")}


def drawn_signals(node):
    """The data of each browser component saying the preview's charts are drawn (`ui.first_paint._DRAWN_JS`)."""
    found = []
    for child in getattr(node, "children", {}).values():
        proto = getattr(child, "proto", None)
        if getattr(proto, "component_name", "") == "glassbox_first_paint_drawn":
            found.append(json.loads(proto.json))
        found += drawn_signals(child)
    return found


if sys.argv[1] == "broken":  # the row above the columns fails to draw
    def broken(*args):
        raise RuntimeError("no row")
    fp._draw_first_view = broken
if sys.argv[1] == "accounts":
    from explain.workspace import Actor, open_workspace
    open_workspace().users.add(Actor("cli:tester", operator=True), "alice", "admin")
at = AppTest.from_file(ROOT + "/app.py", default_timeout=300)
at.run()
assert not at.exception, at.exception
first = {"heavy": [m for m in HEAVY if m in sys.modules], "sqlalchemy": "sqlalchemy" in sys.modules,
         "pandas": "pandas" in sys.modules,
         "titles": [t.value for t in at.title],
         "charts": charts(at), "sidebar": [h.value for h in at.sidebar.header],
         "captions": [c.value for c in at.caption], "markdown": [m.value for m in at.markdown],
         "selects": [(s.label, s.disabled) for s in at.main.selectbox], "drawn": drawn_signals(at._tree)}
found = {"first": first}
if sys.argv[1] == "none":
    first["sample"] = at.sidebar.selectbox(key="gb_sample_select").value
    at.run()  # the preview's clock ticks (a rerun runs it too): no import starts before the browser says it drew
    # chosen in the preview: that run is the clock's tick too
    at.sidebar.selectbox(key="gb_sample_select").select("cancer").run()
    assert not at.exception, at.exception
    found["changed"] = {"charts": charts(at), "heavy": [m for m in HEAVY if m in sys.modules],
                        "captions": [c.value for c in at.caption], "markdown": [m.value for m in at.markdown],
                        "warming": fp._warming is not None, "drawn": drawn_signals(at._tree)}
    fp.start_warm_up()  # what the browser's word that the preview's charts are drawn does
    assert fp.wait_ready(600)
    at.run()
    assert not at.exception, at.exception
    found["page"] = {"heavy": [m for m in HEAVY if m in sys.modules], "titles": [t.value for t in at.title],
                     "sample": at.sidebar.selectbox(key="gb_sample_select").value,
                     "captions": [c.value for c in at.caption], "markdown": [m.value for m in at.markdown],
                     "charts": charts(at)}
    at.sidebar.selectbox(key="gb_sample_select").select("shapes").run()
    assert not at.exception, at.exception
    found["shapes_page"] = {"charts": charts(at), "captions": [c.value for c in at.caption],
                            "markdown": [m.value for m in at.markdown],
                            "selects": [(s.label, s.disabled) for s in at.main.selectbox]}
from explain.report import overview
found["overview"] = {name: json.loads(overview.training_figure(overview.training_overview(
    [ROOT + f"/sample_models/{name}/train_log.csv"], [])).to_json()) for name in ("shapes", "cancer")}
print(json.dumps(found))
'''


def run_first_paint(tmp_path, mode: str) -> dict:
    env = {**os.environ, "GLASSBOX_HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    env.pop("GLASSBOX_DATABASE_URL", None)
    code = f"ROOT = {str(ROOT)!r}\n" + SCRIPT
    out = subprocess.run([sys.executable, "-c", code, mode], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def same_figure(spec: dict, fig: dict) -> bool:
    return spec["data"] == fig["data"] and spec["layout"] == fig["layout"]


def map_caption(captions: list[str]) -> str:
    return next(c for c in captions if "completeness error" in c)


def test_the_first_run_imports_no_torch_and_draws_the_samples_figures(tmp_path):
    found = run_first_paint(tmp_path, "none")
    first, changed, page, shapes_page = found["first"], found["changed"], found["page"], found["shapes_page"]
    assert first["heavy"] == []  # the first script run imported neither torch nor captum nor shap
    assert first["sqlalchemy"] is False  # nor the workspace's database layer (`explain.workspace.peek`)
    assert first["pandas"] is False  # nor pandas: the curves shipped beside the sample (`explain.report.first_curves`)
    assert first["titles"] == ["Overview"] and first["sidebar"] == ["Model"] and first["sample"] == "shapes"
    # the sample's curves (the Overview's own training figure) and its first view's map, with its caption
    assert set(first["charts"]) == {"ov_curves_first_paint", "ov_map"}
    assert same_figure(first["charts"]["ov_curves_first_paint"], found["overview"]["shapes"])
    assert "**triangle** (100.0%) · true: triangle" in first["markdown"]  # input #0's prediction, as the page says it
    # the settled page draws the same map in the same place: the same figure, z data and colour limits
    preview_map, page_map = first["charts"]["ov_map"], shapes_page["charts"]["ov_map"]
    assert [d["type"] for d in preview_map["data"]] == ["image", "heatmap"]
    heat, page_heat = preview_map["data"][1], page_map["data"][1]
    assert heat["z"] == page_heat["z"] and (heat["zmin"], heat["zmax"]) == (page_heat["zmin"], page_heat["zmax"])
    assert heat["zmax"] == -heat["zmin"] > 0
    assert same_figure(preview_map, page_map)
    assert map_caption(first["captions"]) == map_caption(shapes_page["captions"])
    assert "**triangle** (100.0%) · true: triangle" in shapes_page["markdown"]
    # what stands above the map and the curves on the page stands there in the preview, disabled until the page
    assert first["selects"] == [["Input", True], ["Method", True], ["Explain with", True]]
    assert [s for s in shapes_page["selects"] if s[0] != "Layer"] == [["Input", False], ["Method", False],
                                                                      ["Explain with", False]]
    # another sample chosen in the preview: its own curves and map, still the preview (that run may start the
    # background import, as a browser's tick would: the preview was drawn)
    assert changed["heavy"] == [] and set(changed["charts"]) == {"ov_curves_first_paint", "ov_map"}
    # the import waits for the browser's word that the preview's two charts are drawn, not for the clock's ticks
    assert changed["warming"] is False
    assert first["drawn"] == changed["drawn"] == [{"charts": 2, "wait_ms": 10_000, "poll_ms": 500}]
    assert same_figure(changed["charts"]["ov_curves_first_paint"], found["overview"]["cancer"])
    # after the background import the run is the page itself: the model loaded, its map read back
    assert "torch" in page["heavy"] and page["titles"] == ["Overview"] and page["sample"] == "cancer"
    assert any(same_figure(c, found["overview"]["cancer"]) for c in page["charts"].values())
    assert same_figure(changed["charts"]["ov_map"], page["charts"]["ov_map"])  # the tabular bars, as the preview's
    assert map_caption(changed["captions"]) == map_caption(page["captions"])
    prediction = [m for m in page["markdown"] if "malignant" in m or "benign" in m]  # the cancer model's prediction
    assert prediction and prediction[0] in changed["markdown"]


def test_a_preview_whose_row_fails_keeps_its_charts_and_sidebar(tmp_path):
    """The sidebar is drawn last (its widgets' code fetched after Plotly's), yet a failing part of the preview
    does not take it away."""
    first = run_first_paint(tmp_path, "broken")["first"]
    assert first["heavy"] == [] and first["titles"] == ["Overview"] and first["sidebar"] == ["Model"]
    assert set(first["charts"]) == {"ov_curves_first_paint", "ov_map"}
    assert first["selects"] == [["Explain with", True]]  # the row's Input / Method did not draw


def test_nothing_is_drawn_before_sign_in(tmp_path):
    found = run_first_paint(tmp_path, "accounts")
    assert found["first"]["titles"] == ["Sign in to Glassbox"] or found["first"]["titles"] == []
    assert found["first"]["charts"] == {} and not any("completeness" in c for c in found["first"]["captions"])
    assert found["first"]["sidebar"] == []


@pytest.mark.parametrize("name", ["shapes", "cancer", "sentiment"])
def test_the_shipped_curves_are_the_logs_curves_now(name):
    """What the first paint reads beside a sample is what the Overview draws from its log today (else rebuild:
    `sample_models.train.write_first_curves`), without the template of the process that built it."""
    from explain.report.first_curves import FIRST_CURVES_FILE, compute_curves, read_shipped_curves
    from sample_models import sample_dir

    log_file, shipped = sample_dir(name) / "train_log.csv", sample_dir(name) / FIRST_CURVES_FILE
    figure, findings = read_shipped_curves(log_file, shipped)
    fresh, fresh_findings = compute_curves(log_file)
    assert figure == fresh and "template" not in figure["layout"]
    assert [f.to_dict() for f in findings] == [f.to_dict() for f in fresh_findings]
    assert [f.kind for f in findings] == [f.kind for f in fresh_findings] != []


def test_shipped_curves_of_another_log_are_not_read(tmp_path):
    """A log edited after its curves were shipped, or a file that is no record, reads as None: the first paint
    computes the curves from the log itself (`ui.first_paint.sample_curves`)."""
    from explain.report.first_curves import FIRST_CURVES_FILE, read_shipped_curves, write_first_curves
    from sample_models import sample_dir

    log_file, shipped = tmp_path / "train_log.csv", tmp_path / FIRST_CURVES_FILE
    log_file.write_bytes((sample_dir("cancer") / "train_log.csv").read_bytes())
    write_first_curves(log_file, shipped)
    figure, findings = read_shipped_curves(log_file, shipped)
    assert figure["data"] and figure["layout"]["height"] == 420
    log_file.write_bytes(log_file.read_bytes() + b"\r\n")  # the same rows, other bytes
    assert read_shipped_curves(log_file, shipped) is None
    for text in ("", "[]", '{"log_sha256": 1}', "{"):
        shipped.write_text(text)
        assert read_shipped_curves(log_file, shipped) is None
    assert read_shipped_curves(log_file, tmp_path / "absent.json") is None
