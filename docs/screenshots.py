"""Regenerate the README screenshots: `python docs/screenshots.py` (needs Debian's chromium).

Starts `streamlit run app.py`, opens each page on the bundled samples in headless Chromium and
saves docs/screenshots/<name>.png (each kept under 300 KB: PNG palette-quantised when larger).
Look at them before committing: they are what a new user sees first.
"""
from __future__ import annotations

import io
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

from tests.conftest import CHROMIUM, CHROMIUM_ARGS, start_streamlit, stop_streamlit, wait_for_app  # noqa: E402
from tests.training_curves import healthy, overfitting, to_csv  # noqa: E402

OUT = ROOT / "docs" / "screenshots"
MAX_BYTES = 300_000
WIDTH = 1400


def shoot(page, name: str, height: int) -> None:
    page.set_viewport_size({"width": WIDTH, "height": height})  # Streamlit scrolls inside its own container
    wait_for_app(page)
    page.wait_for_timeout(2000)  # plotly draws after the script finishes
    assert page.locator('[data-testid="stException"]').count() == 0, f"{name}: the page shows an exception"
    png = page.screenshot()
    if len(png) > MAX_BYTES:  # screenshots are mostly flat colour: 256 colours lose nothing visible
        image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
        buf = io.BytesIO()
        image.save(buf, format="PNG", optimize=True)
        png = buf.getvalue()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.png").write_bytes(png)
    print(f"wrote {OUT / f'{name}.png'} ({len(png) // 1000} KB)")


def pick_sample(page, label: str) -> None:
    page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').first.click()
    page.get_by_role("option", name=label).click()
    wait_for_app(page)


def shoot_report(browser) -> None:
    """The HTML report of the shapes sample: its output section and its checkpoint evolution."""
    import tempfile

    from explain.report.sections import build_report
    from sample_models import load_sample, sample_dir, sample_inputs

    root = Path(sample_dir("shapes"))
    report = build_report(load_sample("shapes"), sample_inputs("shapes")["inputs"], logs=[root / "train_log.csv"],
                          checkpoints=sorted((root / "checkpoints").glob("*.pt")),
                          method_params={"integrated_gradients": {"steps": 32}})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "report.html"
        report.save(path)
        page = browser.new_page(viewport={"width": 1200, "height": 1000})
        page.goto(path.as_uri())
        page.wait_for_timeout(3000)
        for section, name in (("#output-integrated-gradients", "report-output"),
                              ("#checkpoint-evolution", "report-evolution")):
            box = page.locator(section).bounding_box()  # a full-page clip: no resize, so plotly keeps its layout
            png = page.screenshot(full_page=True, clip={"x": 0, "y": box["y"] - 10, "width": 1200,
                                                        "height": min(box["height"] + 20, 1600)})
            (OUT / f"{name}.png").write_bytes(png)
            print(f"wrote {OUT / f'{name}.png'} ({len(png) // 1000} KB)")
        page.close()


def shoot_own_model(browser, url: str) -> None:
    """A user's own Hugging Face ResNet (zipped folder, its own 64 px processor) and two photos of other
    sizes: the Output page with each photo beside the model's input after preprocessing."""
    import tempfile
    import zipfile

    from PIL import ImageDraw

    from tests.conftest import open_upload_mode
    from tests.foreign_models import write_hf_resnet

    tmp = Path(tempfile.mkdtemp(prefix="glassbox-own-"))
    folder = write_hf_resnet(tmp / "my-resnet")
    archive = tmp / "my-resnet.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in folder.iterdir():
            zf.write(f, f"my-resnet/{f.name}")
    photos = []
    for i, (w, h, colour) in enumerate(((160, 110, (220, 80, 60)), (90, 140, (60, 120, 220)))):
        img = Image.new("RGB", (w, h), (235, 225, 200))
        ImageDraw.Draw(img).ellipse((w * 0.2, h * 0.25, w * 0.7, h * 0.75), fill=colour)
        photos.append(tmp / f"photo{i}.png")
        img.save(photos[-1])
    page = browser.new_page(viewport={"width": WIDTH, "height": 1000})
    page.set_default_timeout(180_000)
    sidebar, uploader = open_upload_mode(page, url)
    uploader.filter(has_text="Inputs").locator('input[type="file"]').set_input_files([str(p) for p in photos])
    page.get_by_text("Inputs ready").first.wait_for()
    wait_for_app(page)
    uploader.filter(has_text="Checkpoint").locator('input[type="file"]').set_input_files(str(archive))
    page.get_by_text("completeness error").first.wait_for()
    wait_for_app(page)
    page.get_by_text("Inputs after preprocessing").click()
    page.get_by_text("as uploaded").first.wait_for()
    shoot(page, "output-own-model", 1300)
    page.close()


def main() -> None:
    import tempfile

    # an empty throwaway workspace, like the tests': never the user's ~/.glassbox
    proc, url = start_streamlit({"GLASSBOX_HOME": tempfile.mkdtemp(prefix="glassbox-screens-")})
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": WIDTH, "height": 1000})
            page.set_default_timeout(180_000)

            page.goto(url)
            page.get_by_text("completeness error").first.wait_for()
            page.get_by_text("best_epoch").first.wait_for()
            # the torch-free first paint (ui/first_paint) draws the map and curves first; the settled page
            # adds the Structure column's layer table
            page.get_by_text("The Structure page's table").first.wait_for()
            wait_for_app(page)
            shoot(page, "overview", 1000)

            page.goto(url + "/output")
            page.get_by_text("completeness error").first.wait_for()
            wait_for_app(page)
            methods = page.locator('[data-testid="stMultiSelect"]').first
            for _ in range(4):  # a rerun landing while the list is open drops the click: pick again
                methods.click()
                page.get_by_role("option", name="grad_cam", exact=True).click()
                page.keyboard.press("Escape")
                wait_for_app(page)
                if methods.get_by_text("grad_cam", exact=True).count():
                    break
            page.get_by_text("Agreement between methods").wait_for()
            wait_for_app(page)
            shoot(page, "output", 1150)

            page.get_by_text("side by side", exact=True).click()
            wait_for_app(page)
            shoot(page, "output-side-by-side", 900)

            pick_sample(page, "Sentiment — text transformer")
            page.locator(".gb-legend").first.wait_for()  # the token highlights' legend
            wait_for_app(page)
            shoot(page, "output-text", 900)

            page.goto(url + "/structure")
            wait_for_app(page)
            pick_sample(page, "Sentiment — text transformer")
            page.get_by_text("sentiment · ").first.wait_for()
            page.get_by_role("tab", name="Attention").click()
            page.get_by_text("Attention rollout across layers").first.wait_for()
            wait_for_app(page)
            shoot(page, "structure-attention", 1150)

            page.goto(url + "/training")
            wait_for_app(page)
            pick_sample(page, "Shapes — image, residual CNN")
            page.locator(".js-plotly-plot").first.wait_for()
            shoot(page, "training", 1150)

            # two runs uploaded: side by side, findings per run
            page.get_by_text("Your training logs and checkpoints").click()
            uploader = page.locator('[data-testid="stFileUploader"]').filter(has_text="Training logs")
            uploader.locator('input[type="file"]').set_input_files([
                {"name": "run-a.csv", "mimeType": "text/csv", "buffer": to_csv(healthy(0))},
                {"name": "run-b.csv", "mimeType": "text/csv", "buffer": to_csv(overfitting(1))},
            ])
            page.get_by_text("Findings · run-b").first.wait_for()
            wait_for_app(page)
            page.get_by_text("Your training logs and checkpoints").click()  # fold the uploader away
            wait_for_app(page)
            shoot(page, "training-runs", 1250)

            # the causal-LM sample: the Generate page opens on its saved first view
            page.goto(url + "/generate")
            wait_for_app(page)
            pick_sample(page, "Key copy — causal LM (Generate page)")
            page.get_by_text("Selected step: attention and logit lens").wait_for()
            page.set_viewport_size({"width": WIDTH, "height": 1300})
            page.get_by_text("Generated text", exact=True).scroll_into_view_if_needed()
            shoot(page, "generate", 1300)

            # a version against itself on the Compare page
            page.goto(url + "/compare?a=cancer%40v1&b=cancer%40v1")
            wait_for_app(page)
            page.get_by_role("button", name="Compare").click()
            page.locator('[data-testid="stMain"] .js-plotly-plot').first.wait_for()
            wait_for_app(page)
            shoot(page, "compare", 2100)  # the form, then outputs and explanations
            shoot_own_model(browser, url)
            shoot_report(browser)
            browser.close()
    finally:
        stop_streamlit(proc)


if __name__ == "__main__":
    main()
