"""The Training page as a user's uploads change it: checkpoints added in two picks start one drift job,
for the set chosen, and a "Saved as run" link goes once the uploads it describes are gone (AppTest)."""
from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from explain.workspace import Actor

ROOT = Path(__file__).resolve().parent.parent
PAGE = str(ROOT / "pages" / "views" / "training.py")
CKPTS = sorted((ROOT / "sample_models" / "shapes" / "checkpoints").glob("*.pt"))
LOG = ROOT / "sample_models" / "shapes" / "train_log.csv"


def _upload(at: AppTest, label: str, paths) -> AppTest:
    uploader = next(u for u in at.get("file_uploader") if u.label.startswith(label))
    uploader.set_value([(p.name, p.read_bytes(), "application/octet-stream") for p in paths])
    return at.run()


def _drift_jobs(ws) -> list:
    return [j for j in ws.jobs.list(Actor.local()) if j.kind == "drift"]


def test_checkpoints_added_in_two_picks_queue_one_drift_job_for_the_final_set(home):
    _, ws = home
    at = AppTest.from_file(PAGE, default_timeout=240).run()
    assert not at.exception, at.exception
    assert len(_drift_jobs(ws)) == 1  # the sample's own checkpoints: drawn at once, as before
    _upload(at, "Checkpoints", CKPTS[:2])  # the first pick
    assert not at.exception, at.exception
    _upload(at, "Checkpoints", CKPTS[:3])  # the second pick adds a third file
    assert not at.exception, at.exception
    assert len(_drift_jobs(ws)) == 1  # no partial set started a job
    start = next(b for b in at.button if b.key == "gb_drift_start")
    assert start.label == "Explain the 3 checkpoints"
    at.number_input(key="gb_drift_n").set_value(1)
    at.select_slider(key="gb_drift_steps").set_value(8)
    at.run()
    next(b for b in at.button if b.key == "gb_drift_start").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    drift = _drift_jobs(ws)
    assert len(drift) == 2 and drift[0].params["checkpoints"] == [p.name for p in CKPTS[:3]]
    assert at.get("plotly_chart")[-1].proto.id.endswith("-gb_drift_maps")
    at.run()  # a rerun follows the same job: no second one
    assert len(_drift_jobs(ws)) == 2 and not [b for b in at.button if b.key == "gb_drift_start"]


def _links(at: AppTest) -> list[str]:
    return [c.value for c in at.code if "?run=" in c.value]


def test_saved_as_run_link_goes_once_the_uploads_it_describes_are_gone(home):
    import training_curves as curves

    _, ws = home
    at = AppTest.from_file(PAGE, default_timeout=240).run()
    logs = next(u for u in at.get("file_uploader") if u.label == "Training logs")
    logs.set_value([("healthy.csv", curves.to_csv(curves.healthy(0)), "text/csv")])
    at.run()
    next(b for b in at.button if b.label == "Save run").click().run()
    assert not at.exception, at.exception
    run = ws.runs.list(Actor.local(), model="shapes")[0]
    assert _links(at) == [f"http://localhost:8501/?run={run.id}"]
    at.run()  # the same uploads: the link stays
    assert len(_links(at)) == 1
    logs = next(u for u in at.get("file_uploader") if u.label == "Training logs")
    logs.set_value([("overfit.csv", curves.to_csv(curves.overfitting(1)), "text/csv")])
    at.run()
    assert not at.exception, at.exception
    assert _links(at) == []  # the run holds healthy.csv, which is no longer on the page
    assert [b for b in at.button if b.label == "Save run"]
