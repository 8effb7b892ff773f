"""The Generate page (issue 22): a tiny Llama uploaded as a zip, generated from and explained in the page,
checked against transformers' greedy ``generate`` and `explain.generation`'s own attribution (AppTest)."""
from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from causal_models import one_thread, write_hf_llama  # noqa: E402, F401 - one_thread: a fixture
from streamlit.testing.v1 import AppTest  # noqa: E402

from ui.state import UploadedBlob  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "the cat sat on"
NEW = 4
STEPS = 8


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: every test here on one thread


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """(zip bytes, folder, the prompt's ids, transformers' greedy continuation ids), built once."""
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("generate_page")
    folder = write_hf_llama(root / "llama")
    archive = root / "llama.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f.name)
    prompt = Tokenizer.from_file(str(folder / "tokenizer.json")).encode(PROMPT).ids  # <s> first
    reference = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        out = reference.generate(torch.as_tensor([prompt]), do_sample=False, max_new_tokens=NEW,
                                 pad_token_id=reference.config.eos_token_id)
    return archive.read_bytes(), folder, prompt, out[0, len(prompt):].tolist()


def _array(value) -> np.ndarray:
    """A plotly JSON array: a list (null = NaN), or a typed array (``{"dtype", "bdata", "shape"}``)."""
    if isinstance(value, dict):
        import base64

        shape = tuple(int(d) for d in str(value["shape"]).split(","))
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"]).reshape(shape).astype(float)
    return np.asarray(value, dtype=float)


def _app(data: bytes | None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    if data is not None:
        at.session_state["gb_source"] = "upload"
        at.session_state["gb_model_upload"] = UploadedBlob("llama.zip", data, hashlib.sha256(data).hexdigest())
    at.switch_page("pages/views/generate.py")
    return at.run()


def _clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_the_generate_page_shows_the_greedy_text_its_attribution_and_the_lens(llama):
    from tokenizers import Tokenizer

    from explain.generation.attribution import attribute_generation
    from explain.generation.greedy import generate_greedy
    from explain.loading.loader import load_model

    data, folder, prompt, want_ids = llama
    at = _app(data)
    _clean(at)
    at.text_area(key="gb_gen_prompt").input(PROMPT)
    at.number_input(key="gb_gen_max_new").set_value(NEW)
    at.selectbox(key="gb_gen_method").set_value("integrated_gradients")
    at.number_input(key="gb_gen_steps").set_value(STEPS).run()  # the prompt enables the button
    at.button(key="gb_gen_run").click().run()
    _clean(at)

    # the generated text: transformers' greedy generate, decoded by the model's tokenizer
    want_text = Tokenizer.from_file(str(folder / "tokenizer.json")).decode(want_ids, skip_special_tokens=False)
    assert [c.value for c in at.code] == [want_text]

    # the heatmap: explain.generation's attribution of the same text, the upper triangle empty
    model = load_model(folder)
    texts = generate_greedy(model, [np.asarray(prompt)], NEW)
    assert texts[0].generated_ids.tolist() == want_ids
    want = attribute_generation(model, texts, "integrated_gradients", STEPS, "pad")[0]
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    assert len(charts) == 2  # the matrix, then the selected step's attention
    z = _array(charts[0]["data"][0]["z"])  # [T, P + T]
    p = len(prompt)
    assert z.shape == (NEW, p + NEW)
    upper = np.arange(p + NEW)[None] >= (p + np.arange(NEW))[:, None]
    assert np.isnan(z[upper]).all() and np.isfinite(z[~upper]).all()
    np.testing.assert_allclose(z[~upper], want.values[~upper], rtol=1e-4, atol=1e-5)

    # the selected token: the prompt highlighted, its completeness error, the lens whose last row is the model's pick
    captions = " ".join(c.value.replace("\\", "") for c in at.caption)
    assert "completeness error" in captions and "Completeness error per token" in captions
    assert len(at.get("html")) == 1
    lens = at.main.dataframe[-1].value
    assert lens["layer"].tolist()[0] == "embeddings" and lens["layer"].tolist()[-1] == "output"
    at.selectbox(key="gb_gen_token").set_value(NEW - 1).run()  # the last token: the lens at its position
    _clean(at)
    lens = at.main.dataframe[-1].value
    from explain.inputs.text import display_tokens

    assert lens["top-1"].tolist()[-1] == display_tokens([want_ids[-1]], model.spec)[0]  # greedy = the lens's last layer

    # the selected step's attention: 2 layers x 4 heads, then the rollout, over the positions it reads
    assert "Selected step: attention and logit lens" in [h.value for h in at.subheader]
    step = _array(json.loads(at.get("plotly_chart")[1].proto.spec)["data"][0]["z"])
    assert step.shape == (2 * 4 + 1, p + NEW - 1)  # the query predicting the last token: position p + NEW - 2
    np.testing.assert_allclose(step.sum(1), 1.0, atol=1e-5)  # each head's row and the rollout's

    # another text: its selection starts at its first token, set through the state (the browser's box shows it)
    at.text_area(key="gb_gen_prompt").input("the dog").run()
    at.button(key="gb_gen_run").click().run()
    _clean(at)
    assert at.selectbox(key="gb_gen_token").value == 0 and at.session_state["gb_gen_step"] == 0


def test_a_classifier_sample_says_in_one_line_that_the_page_needs_a_causal_lm():
    at = _app(None)  # the default sample: an image classifier
    _clean(at)
    infos = [i.value for i in at.main.info]
    assert len(infos) == 1 and "causal language model" in infos[0] and "*ForCausalLM" in infos[0]
    assert not at.get("plotly_chart") and not at.main.button


def test_the_figure_leaves_what_a_token_cannot_read_empty_and_keeps_repeated_tokens_apart():
    from explain.viz.generation import generation_figure, logit_lens_rows

    values = np.arange(1, 9, dtype=float).reshape(2, 4)  # P = 2 prompt tokens, T = 2 generated
    fig = generation_figure(values, 2, ["a", "a", "b", "b"], title="t")
    z = np.asarray(fig.data[0].z, dtype=float)
    assert np.isnan(z[0, 2:]).all() and np.isnan(z[1, 3]) and z[1, 2] == 7.0 and z[0, 1] == 2.0
    assert list(fig.layout.xaxis.ticktext) == ["a", "a", "b", "b"] and list(fig.layout.yaxis.ticktext) == ["b", "b"]
    assert (fig.data[0].zmin, fig.data[0].zmax) == (-7.0, 7.0)  # symmetric about zero over what is shown
    top_ids = np.array([[[3, 4]], [[5, 6]]])  # [layers + 1, L = 1, k = 2]
    rows = logit_lens_rows(top_ids, np.array([[[0.5, 0.25]], [[0.75, 0.125]]]), 0, lambda ids: [f"t{i}" for i in ids])
    assert [(r["layer"], r["top-1"], r["p"]) for r in rows] == [("embeddings", "t3", 0.5), ("output", "t5", 0.75)]


def _sample_app() -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.session_state["gb_source"] = "sample"
    at.session_state["gb_sample"] = "keycopy"
    at.switch_page("pages/views/generate.py")
    return at.run()


def test_the_causal_lm_sample_opens_already_explained_and_an_empty_prompt_says_what_to_do():
    from explain.generation.explained import FIRST_VIEW_FILE, read_explained
    from sample_models import keycopy, sample_dir

    view = read_explained(sample_dir("keycopy") / FIRST_VIEW_FILE)
    at = _sample_app()
    _clean(at)
    assert at.text_area(key="gb_gen_prompt").value == keycopy.DEFAULT_PROMPT
    assert [c.value for c in at.code] == ["blue . </s>"]  # no button pressed: the saved first view
    assert any("first view" in c.value for c in at.caption)
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    assert len(charts) == 2
    z = _array(charts[0]["data"][0]["z"])
    p, t = view.attribution.prompt_length, len(view.attribution.generated_ids)
    assert z.shape == (t, p + t) and int(np.nanargmax(z[0])) == keycopy.KEY_POSITION  # "blue" comes from the key
    step = _array(charts[1]["data"][0]["z"])  # the answer step: (layer, head) rows, then the rollout
    assert "Selected step: attention and logit lens" in [h.value for h in at.subheader]
    assert step.shape[1] == p and int(np.argmax(step[-1])) == keycopy.KEY_POSITION  # the rollout peaks on the key
    np.testing.assert_allclose(z[0, :p], view.attribution.values[0, :p], rtol=1e-5)
    table = at.main.dataframe[0].value  # the quality table, before the lens
    assert table["metric"].tolist() == ["Comprehensiveness (AOPC)", "Sufficiency (AOPC)", "Deletion AUC", "Insertion AUC"]
    comp = table.set_index("metric").loc["Comprehensiveness (AOPC)"]
    assert comp["this method"] == pytest.approx(view.quality["comprehensiveness"].mean) and comp["this method"] > comp["random"]

    at.text_area(key="gb_gen_prompt").input("   ").run()  # an empty prompt: one line saying what to do
    _clean(at)
    assert [i.value for i in at.main.info] == ["Write a prompt above: the model continues it and each new token is explained."]
    assert not at.main.button and not at.get("plotly_chart")


@pytest.mark.parametrize("page", ["overview", "output", "structure", "dataset", "queue"])
def test_the_causal_lm_sample_on_a_classifier_page_is_one_line_saying_so(page):
    from explain.spec import CAUSAL_LM_NOTE

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.session_state["gb_source"] = "sample"
    at.session_state["gb_sample"] = "keycopy"
    at.switch_page(f"pages/views/{page}.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    said = [m.value.replace("\\", "") for m in (*at.main.info, *at.main.error)]
    assert len([m for m in said if CAUSAL_LM_NOTE[:40] in m]) == 1, said
