"""A new user's own models in the real browser, every page: right on the first try (issue 20).

Three models Glassbox never saw, each through the sidebar's uploaders, then every Explain page
opened from the navigation: no exception element anywhere, and the predictions the page shows
equal what the model's own library computes on the same pictures or texts.

- a Hugging Face ResNet whose ``preprocessor_config.json`` is not the default (64 px, its own
  mean / std): the page must feed it 64 px exactly as transformers' image processor does;
- a Hugging Face RoBERTa with a byte-level BPE tokenizer: tokens read as words (no ``Ġ``);
- a TorchScript CNN with no spec, given one through the spec form (shape, ImageNet mean / std).
"""
from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch
from foreign_models import write_hf_resnet, write_hf_roberta, write_ts_colour_net
from PIL import Image

from tests.conftest import SCREENSHOTS, open_upload_mode, wait_for_app, wait_for_page_body

pytestmark = pytest.mark.browser

PAGES = ("Overview", "Output", "Dataset", "Structure", "Training")
HEADINGS = {"Overview": "Overview", "Output": "Output explanations", "Dataset": "Dataset explanations",
            "Structure": "Structure", "Training": "Training"}
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
TEXTS = ["the movie was very good", "not a great film at all"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("own_models")
    rng = np.random.default_rng(7)
    pictures = []
    for i, (w, h) in enumerate(((120, 90), (70, 100))):
        path = root / f"photo{i}.png"
        Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8")).save(path)
        pictures.append(path)
    resnet = write_hf_resnet(root / "my-resnet")
    archive = root / "my-resnet.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in resnet.iterdir():
            zf.write(f, f"my-resnet/{f.name}")
    roberta = write_hf_roberta(root / "my-roberta")
    roberta_zip = root / "my-roberta.zip"
    with zipfile.ZipFile(roberta_zip, "w") as zf:
        for f in roberta.iterdir():
            zf.write(f, f"my-roberta/{f.name}")
    texts = root / "reviews.txt"
    texts.write_text("\n".join(TEXTS) + "\n")
    return {"pictures": pictures, "resnet": resnet, "resnet_zip": archive, "roberta": roberta,
            "roberta_zip": roberta_zip, "texts": texts, "colournet": write_ts_colour_net(root)}


def _shown(probs: np.ndarray, names: list[str]) -> list[str]:
    """What the Output page writes for each input's prediction: ``name (p %)``."""
    return [f"{names[int(p.argmax())]} ({p.max():.1%})" for p in probs]


def _visit_every_page(page, sidebar, name: str) -> dict[str, str]:
    """Open each Explain page from the navigation; no exception element on any. Returns each page's text."""
    texts = {}
    main = page.locator('[data-testid="stMain"]')
    for title in PAGES:
        sidebar.locator('[data-testid="stSidebarNav"]').get_by_role("link", name=title, exact=True).click()
        page.locator('[data-testid="stMain"] h1', has_text=HEADINGS[title]).wait_for(timeout=240_000)
        wait_for_page_body(page, HEADINGS[title])
        if title == "Output":  # the explanation is a job: its maps come when it is done
            page.get_by_text("completeness error").first.wait_for(timeout=240_000)
            wait_for_app(page, 240_000)
        exceptions = page.locator('[data-testid="stException"]')
        assert exceptions.count() == 0, (title, exceptions.first.inner_text()[:800])
        page.screenshot(path=str(SCREENSHOTS / f"own_{name}_{title.lower()}.png"), full_page=True)
        texts[title] = main.inner_text()
        tabs = main.get_by_role("tab")
        for i in range(1, tabs.count()):  # every tab of the page (a hidden tab's text is not in inner_text)
            tabs.nth(i).click()
            wait_for_app(page, 240_000)
            assert exceptions.count() == 0, (title, tabs.nth(i).inner_text(), exceptions.first.inner_text()[:800])
            texts[title] += "\n" + main.inner_text()
    return texts


def _upload(page, app_url, model_file, inputs: list):
    sidebar, uploader = open_upload_mode(page, app_url)
    uploader.filter(has_text="Inputs").locator('input[type="file"]').set_input_files([str(p) for p in inputs])
    page.get_by_text("Inputs ready").first.wait_for(timeout=120_000)
    wait_for_app(page)
    uploader.filter(has_text="Checkpoint").locator('input[type="file"]').set_input_files(str(model_file))
    sidebar.get_by_text(model_file.name).first.wait_for(timeout=120_000)
    wait_for_app(page, 240_000)
    return sidebar


def test_a_hf_cnn_with_its_own_processor_size(files, app_url, browser_page):
    from transformers import AutoImageProcessor, ResNetForImageClassification

    page = browser_page
    SCREENSHOTS.mkdir(exist_ok=True)
    sidebar = _upload(page, app_url, files["resnet_zip"], files["pictures"])
    page.get_by_text("completeness error").first.wait_for(timeout=240_000)
    processor = AutoImageProcessor.from_pretrained(files["resnet"])
    hf = ResNetForImageClassification.from_pretrained(files["resnet"]).eval()
    pixels = processor([Image.open(p) for p in files["pictures"]], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        probs = hf(pixels).logits.softmax(-1).numpy()
    texts = _visit_every_page(page, sidebar, "hf_resnet")
    for shown in _shown(probs, ["cat", "dog", "car"]):
        assert shown in texts["Output"], (shown, texts["Output"][:1500])
    assert "huggingface · image · 2 inputs" in texts["Output"]
    assert "no attention layers" in texts["Structure"]


def test_a_hf_text_model_with_a_byte_level_bpe_tokenizer(files, app_url, browser_page):
    from transformers import RobertaForSequenceClassification

    from explain import load_model, read_inputs

    page = browser_page
    sidebar = _upload(page, app_url, files["roberta_zip"], [files["texts"]])
    page.get_by_text("completeness error").first.wait_for(timeout=240_000)
    spec = load_model(files["roberta"]).spec
    ids = torch.as_tensor(read_inputs(files["texts"], spec).array)
    reference = RobertaForSequenceClassification.from_pretrained(files["roberta"], attn_implementation="eager").eval()
    with torch.no_grad():
        probs = reference(input_ids=ids, attention_mask=(ids != 1).long()).logits.softmax(-1).numpy()
    texts = _visit_every_page(page, sidebar, "hf_roberta")
    for shown in _shown(probs, ["neg", "pos"]):
        assert shown in texts["Output"], (shown, texts["Output"][:3000])
    everything = " ".join(texts.values())
    assert "Ġ" not in everything and "movie" in texts["Output"]


def test_a_torchscript_image_model_given_its_spec_through_the_form(files, app_url, browser_page):
    page = browser_page
    sidebar = _upload(page, app_url, files["colournet"], files["pictures"])
    main = page.locator('[data-testid="stMain"]')
    main.get_by_role("textbox", name="Input shape (one sample, no batch dim)").fill("3, 16, 16")
    main.get_by_role("textbox", name="Class names (optional)").fill("red, green, blue")
    main.locator('[data-testid="stSelectbox"]', has_text="Normalisation").click()
    page.get_by_role("option", name="ImageNet", exact=False).click()
    main.get_by_role("button", name="Use this spec").click()
    page.get_by_text("completeness error").first.wait_for(timeout=240_000)
    module = torch.jit.load(str(files["colournet"])).eval()  # the test trusts its own file
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in IMAGENET)
    pixels = torch.stack([(torch.from_numpy(np.asarray(Image.open(p).convert("RGB").resize((16, 16), Image.BILINEAR),
                                                       np.float32) / 255.0).permute(2, 0, 1) - mean) / std
                          for p in files["pictures"]])
    with torch.no_grad():
        probs = module(pixels).softmax(-1).numpy()
    texts = _visit_every_page(page, sidebar, "ts_colournet")
    for shown in _shown(probs, ["red", "green", "blue"]):
        assert shown in texts["Output"], (shown, texts["Output"][:1500])
    assert "torchscript · image · 2 inputs" in texts["Output"]


def test_expected_probabilities_are_not_all_one_class(files):
    """The fixtures make predictions worth comparing: not every picture in one class at ~100 %."""
    from explain import load_model, read_inputs

    model = load_model(files["resnet"])
    batch = read_inputs([str(p) for p in files["pictures"]], model.spec)
    assert model.predict_proba(batch.array).max() < 0.99
