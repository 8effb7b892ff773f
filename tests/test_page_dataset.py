"""The Dataset page: AppTest runs a whole dataset and reads the summaries it drew."""
from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

import sample_models
from explain.dataset.reading import read_dataset
from explain.output.methods import get_method
from tests.conftest import SCREENSHOTS, wait_for_app
from ui.state import UploadedBlob

ROOT = Path(__file__).resolve().parent.parent
PAGE = str(ROOT / "pages" / "views" / "dataset.py")


def _page(sample: str, uploads: list[UploadedBlob] | None = None) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.session_state["gb_sample"] = sample
    at.session_state["gb_source"] = "sample"
    if uploads:
        at.session_state["gb_ds_uploads"] = uploads
    at.run()
    assert not at.exception, at.exception
    return at


def test_dataset_page_explains_every_row_and_shows_mean_abs_per_feature():
    at = _page("cancer")
    at.selectbox(key="gb_ds_method").set_value("saliency")
    at.number_input(key="gb_ds_shard").set_value(10)
    at.button(key="gb_ds_run").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert any("Explained 32 rows with saliency" in s.value for s in at.success)
    assert any("32 of 32 rows · 4 of 4 shards" in c.value.replace("\\", "") for c in at.caption)
    model = sample_models.load_sample("cancer")
    x = sample_models.sample_inputs("cancer")["inputs"]
    expected = np.abs(get_method("saliency").explain(model, x, use_cache=False).values).mean(axis=0)
    table = at.dataframe[0].value.set_index("feature")["mean |attribution|"]
    np.testing.assert_allclose(table[list(model.spec.feature_names)].to_numpy(), expected, rtol=1e-5)
    assert at.get("download_button")  # the run as .npz
    link = [c.value for c in at.code if "?run=" in c.value][0]  # a batch job, saved as a run

    opened = AppTest.from_file(str(ROOT / "pages" / "views" / "runs.py"), default_timeout=180)
    opened.query_params["run"] = link.rsplit("=", 1)[1]
    opened.run()
    assert not opened.exception, opened.exception
    saved = opened.dataframe[0].value.set_index("feature")["mean |attribution|"]
    np.testing.assert_allclose(saved[list(model.spec.feature_names)].to_numpy(), expected, rtol=1e-5)
    assert any("32 of 32 rows · 4 of 4 shards" in c.value.replace("\\", "") for c in opened.caption)


def _image_zip() -> bytes:
    """circle/0..2.png and cross/0..2.png: 6 random 32x32 images in class folders."""
    archive = io.BytesIO()
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(archive, "w") as zf:
        for cls in ("circle", "cross"):
            for i in range(3):
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
                zf.writestr(f"{cls}/{i}.png", buf.getvalue())
    return archive.getvalue()


def test_dataset_page_uploaded_image_zip_gives_class_counts_per_label():
    spec = sample_models.load_sample("shapes").spec
    blob = UploadedBlob("shapes.zip", _image_zip(), "test")
    at = _page("shapes", [blob])
    assert any("6 rows, with labels" in c.value.replace("\\", "") for c in at.caption)  # captions are escaped
    at.selectbox(key="gb_ds_method").set_value("saliency")
    at.selectbox(key="gb_ds_target").set_value(1)  # each row's label
    at.number_input(key="gb_ds_shard").set_value(4)
    at.button(key="gb_ds_run").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    counts = at.dataframe[0].value.set_index("class")["rows"].to_dict()
    assert counts == {"circle": 3, "square": 0, "triangle": 0, "cross": 3}
    assert len(read_dataset(("shapes.zip", blob.data), spec)) == 6


def test_dataset_page_refuses_a_dataset_of_another_modality_in_one_line():
    at = _page("cancer", [UploadedBlob("notes.txt", b"hello\n", "t")])
    assert not at.exception, at.exception
    assert len(at.error) == 1
    assert "notes.txt is not an input format Glassbox reads for tabular models" in at.error[0].value.replace("\\", "")


def test_dataset_page_text_model_lists_top_tokens_per_class():
    at = _page("sentiment")
    at.selectbox(key="gb_ds_method").set_value("saliency").run()
    at.button(key="gb_ds_run").click().run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert set(table["class"]) <= {"negative", "positive"} and len(table) > 0
    assert "<pad>" not in set(table["token"])  # padding is never a top token
    for _, rows in table.groupby("class"):  # ranked: largest summed attribution first
        assert list(rows["summed attribution"]) == sorted(rows["summed attribution"], reverse=True)


@pytest.mark.browser
def test_browser_uploads_an_image_zip_and_explains_it_in_shards(app_url, browser_page, tmp_path):
    page = browser_page
    (tmp_path / "shapes.zip").write_bytes(_image_zip())
    page.goto(app_url + "/dataset")
    page.get_by_text("Explain the dataset").wait_for(timeout=120_000)
    wait_for_app(page)
    main = page.locator('[data-testid="stMain"]')
    main.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(tmp_path / "shapes.zip"))
    main.get_by_text(re.compile(r"6 rows, with labels")).wait_for(timeout=120_000)
    wait_for_app(page)
    shard = main.get_by_label("Rows per shard")
    shard.fill("2")
    shard.press("Enter")
    page.wait_for_timeout(1_000)  # the rerun that Enter starts may not show its status widget yet
    done = main.get_by_text("Explained 6 rows with integrated_gradients")
    for _ in range(3):  # a click that lands during a rerun is lost with the re-drawn button: click again
        wait_for_app(page)
        main.get_by_role("button", name="Explain the dataset").click()
        try:
            done.wait_for(timeout=120_000)
            break
        except Exception:
            continue
    done.wait_for(timeout=60_000)
    wait_for_app(page)
    assert main.get_by_text(re.compile(r"6 of 6 rows · 3 of 3 shards")).count() == 1
    main.locator(".js-plotly-plot").first.wait_for(timeout=60_000)  # the class-mean maps (drawn after the text)
    assert main.locator(".js-plotly-plot").count() >= 1
    assert page.locator('[data-testid="stException"]').count() == 0


@pytest.mark.browser
def test_browser_draws_partial_summaries_of_a_running_job_and_cancels_it(app_url, browser_page):
    """While the dataset job runs, the page shows its progress, the summary of the shards done so
    far (published by the worker) and Cancel; Cancel stops the job and nothing is saved."""
    from explain.workspace import Actor, open_workspace

    page = browser_page
    page.goto(app_url + "/dataset")
    page.get_by_text("Explain the dataset").wait_for(timeout=120_000)
    wait_for_app(page)
    main = page.locator('[data-testid="stMain"]')
    shard = main.get_by_label("Rows per shard")
    shard.fill("1")  # the sample's 32 images, one shard each
    shard.press("Enter")
    wait_for_app(page)
    main.get_by_text("Method parameters").click()  # enough work per shard that the job is still running
    steps = main.get_by_label("steps", exact=True)  # when the page is read and Cancel pressed, with
    steps.fill("512")  # several worker threads on a quiet machine
    steps.press("Enter")
    page.wait_for_timeout(1_000)
    live = main.get_by_text(re.compile(r"\d+ of 32 rows · \d+ of 32 shards"))
    for _ in range(3):  # a click that lands during a rerun is lost with the re-drawn button: click again
        wait_for_app(page)
        main.get_by_role("button", name="Explain the dataset").click()
        try:
            live.first.wait_for(timeout=120_000)
            break
        except Exception:
            continue
    bar = main.get_by_text(re.compile(r"Explaining 32 rows with integrated_gradients: \d+% \(job "))
    bar.first.wait_for(timeout=60_000)
    main.locator(".js-plotly-plot").first.wait_for(timeout=60_000)  # the partial class-mean maps
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "dataset_job_running.png"), full_page=True)
    ws = open_workspace()
    (job,) = [j for j in ws.jobs.list(Actor.local(), limit=5) if j.kind == "dataset" and j.status == "running"]
    job_id = job.id
    main.get_by_role("button", name="Cancel").click()
    main.get_by_text("The dataset run was cancelled.").wait_for(timeout=120_000)
    job = ws.jobs.get(Actor.local(), job_id)
    assert job.status == "cancelled" and job.run is None
    assert page.locator('[data-testid="stException"]').count() == 0
