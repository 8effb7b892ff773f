"""The app's first paint imports no torch (issue 21, no waiting): `ui.first_paint` draws the Overview's
title and the sample's training curves before `app.py` imports the pages' glue (which imports torch),
the curves are the Overview's own figure, and nothing is drawn while the workspace has accounts."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter: the first paint (AppTest, a script that runs `first_paint` and imports
# torch inside the block as app.py's imports do), then the Overview's own figure, for comparison.
SCRIPT = r'''
import json, sys
from streamlit.testing.v1 import AppTest
import ui.first_paint as fp

seen = {}
original = fp.sample_curves
def recorded(name):  # the first figure: was torch imported when it was made?
    curves = original(name)
    seen.update(torch=("torch" in sys.modules), curves=curves[0].to_json())
    return curves
fp.sample_curves = recorded

if sys.argv[1] == "accounts":
    from explain.workspace import Actor, open_workspace
    open_workspace().users.add(Actor("cli:tester", operator=True), "alice", "admin")
at = AppTest.from_file(ROOT + "/app.py", default_timeout=300)
at.run()
assert not at.exception, at.exception
from explain.report import overview
runs = overview.training_overview([ROOT + "/sample_models/shapes/train_log.csv"], [])
charts = at.get("plotly_chart")
print(json.dumps({"torch_at_curves": seen.get("torch"),
                  "same": "curves" in seen and json.loads(seen["curves"]) == json.loads(overview.training_figure(runs).to_json()),
                  "titles": [t.value for t in at.title], "charts": len(charts),
                  "torch_after": "torch" in sys.modules}))
'''


def run_first_paint(tmp_path, mode: str) -> dict:
    env = {**os.environ, "GLASSBOX_HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    env.pop("GLASSBOX_DATABASE_URL", None)
    code = f"ROOT = {str(ROOT)!r}\n" + SCRIPT
    out = subprocess.run([sys.executable, "-c", code, mode], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_first_figure_is_drawn_before_torch_and_is_the_overviews(tmp_path):
    found = run_first_paint(tmp_path, "none")
    assert found["torch_at_curves"] is False  # the curves were drawn with no torch imported
    assert found["same"]  # the Overview's own training figure (explain.report.overview.training_figure)
    assert found["torch_after"] is True  # then the page ran as always: the model loaded
    assert found["titles"] == ["Overview"]  # the settled page is the page: the preview is gone


def test_nothing_is_drawn_before_sign_in(tmp_path):
    found = run_first_paint(tmp_path, "accounts")
    assert found["torch_at_curves"] is None  # no preview: the sign-in gate comes first
    assert found["titles"] == ["Sign in to Glassbox"] or found["titles"] == []
    assert found["charts"] == 0
