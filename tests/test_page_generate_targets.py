"""The Generate page's controls for issue 22's targets and generation settings (AppTest): a chat through the
template, sampled with a seed, explained by occlusion by word; then a contrast ("rather than") at a token.
Known answers: `explain.generation`'s own sampling, occlusion and contrast on the same tiny Llama."""
from __future__ import annotations

import hashlib
import json
import zipfile
from html import escape
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")

from causal_models import one_thread, write_hf_llama  # noqa: E402, F401 - one_thread: a fixture
from streamlit.testing.v1 import AppTest  # noqa: E402

from ui.state import UploadedBlob  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "the cat sat. on the"
NEW = 3

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    root = tmp_path_factory.mktemp("generate_targets")
    folder = write_hf_llama(root / "llama")
    archive = root / "llama.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f.name)
    return archive.read_bytes(), folder


def _z(chart) -> np.ndarray:
    value = json.loads(chart.proto.spec)["data"][0]["z"]
    if isinstance(value, dict):
        import base64

        shape = tuple(int(d) for d in str(value["shape"]).split(","))
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"]).reshape(shape).astype(float)
    return np.asarray(value, dtype=float)


def _clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_a_sampled_chat_explained_by_occlusion_by_word_then_a_contrast(llama):
    from explain.generation.chat import render_chat
    from explain.generation.contrastive import attribute_contrast
    from explain.generation.granularity import group_labels, group_spans, shared_group_values
    from explain.generation.occlusion import occlude_generation
    from explain.generation.prompts import decode_ids, encode_texts
    from explain.generation.sampling import Sampling, generate_sampled
    from explain.loading.loader import load_model

    data, folder = llama
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.session_state["gb_source"] = "upload"
    at.session_state["gb_model_upload"] = UploadedBlob("llama.zip", data, hashlib.sha256(data).hexdigest())
    at.switch_page("pages/views/generate.py")
    at.run()
    _clean(at)
    at.text_area(key="gb_gen_prompt").input(PROMPT)
    at.checkbox(key="gb_gen_chat").check()
    at.checkbox(key="gb_gen_quality").uncheck()
    at.number_input(key="gb_gen_max_new").set_value(NEW)
    at.selectbox(key="gb_gen_method").set_value("occlusion")
    at.selectbox(key="gb_gen_granularity").set_value("word")
    at.toggle(key="gb_gen_sample").set_value(True).run()
    at.number_input(key="gb_gen_temperature").set_value(1.5)
    at.number_input(key="gb_gen_seed").set_value(4).run()
    at.button(key="gb_gen_run").click().run()
    _clean(at)

    model = load_model(folder)
    prompt = encode_texts(render_chat(model, [[{"role": "user", "content": PROMPT}]]), model.spec, special_tokens=False)
    text = generate_sampled(model, prompt, NEW, Sampling(temperature=1.5, seed=4))[0]
    assert [c.value for c in at.code] == [decode_ids(text.generated_ids, model.spec)]
    captions = " ".join(c.value.replace("\\", "") for c in at.caption)
    assert "Sampled continuation (seed 4)" in captions and "occlusion" in captions
    want = occlude_generation(model, [text], "word", "pad")[0]
    spans = group_spans(text.input_ids, model.spec, "word")
    z = _z(at.get("plotly_chart")[0])  # [T, G]: the matrix's columns are the text's words
    p = len(text.prompt_ids)
    assert z.shape == (NEW, len(spans)) and len(spans) < len(text.input_ids)
    seen = spans[None, :, 0] < (p + np.arange(NEW))[:, None]  # a word a token reads (begun before it)
    assert (np.isfinite(z) == seen).all()
    np.testing.assert_allclose(z[seen], shared_group_values(want.values, spans)[seen], atol=1e-5)
    html = at.get("html")[0].proto.body
    words = group_spans(text.input_ids[:p], model.spec, "word")  # the first token's context: the prompt, by word
    labels = group_labels(text.input_ids[:p], model.spec, words)
    assert len(labels) < p and all(escape(label) in html for label in labels)
    assert "by word" in html

    # a contrast at the chosen token: a gradient method, then "rather than"
    at.selectbox(key="gb_gen_method").set_value("input_x_gradient")
    at.selectbox(key="gb_gen_granularity").set_value("token").run()
    at.button(key="gb_gen_run").click().run()
    _clean(at)
    other = " dog" if text.generated_ids[0] != encode_texts([" dog"], model.spec, special_tokens=False)[0][0] else " cat"
    alternative = encode_texts([other], model.spec, special_tokens=False)[0]
    if len(alternative) != 1:
        other, alternative = "a", encode_texts(["a"], model.spec, special_tokens=False)[0]
    at.text_input(key="gb_gen_contrast").input(other).run()
    _clean(at)
    found = attribute_contrast(model, [text], [int(alternative[0])], 0, "input_x_gradient")[0]
    captions = " ".join(c.value.replace("\\", "") for c in at.caption)
    assert f"= {found.difference:.4f}" in captions
    assert len(at.get("html")) == 2  # the token's own attribution, then the contrast's


def test_the_matrix_by_group_masks_the_groups_a_token_cannot_read():
    from explain.viz.generation import generation_figure

    grouped = np.array([[1.0, 2.0, 0.0], [3.0, -1.0, 0.5]])  # [T = 2, G = 3]
    labels = ["<s>", "a", "b", "c", "x", "y"]  # P = 4 prompt tokens, then 2 generated
    fig = generation_figure(grouped, 4, labels, groups=(["<s>", "a b c", "x y"], np.array([0, 1, 4])))
    z = np.asarray(fig.data[0].z, dtype=float)
    np.testing.assert_array_equal(np.isnan(z), [[False, False, True], [False, False, False]])  # "x y" starts at 4
    assert list(fig.layout.xaxis.ticktext) == ["&lt;s&gt;", "a b c", "x y"]  # plotly reads HTML and list(fig.layout.yaxis.ticktext) == ["x", "y"]
    assert fig.layout.shapes[0].x0 == 1.5  # the prompt | generated line after the prompt's two groups
    assert fig.data[0].customdata[1][2] == "y ← x y (generated 2)"


def test_a_chat_of_several_turns_from_the_pages_editor(llama):
    """Rows of role + text before the prompt: the page explains the chat transformers' apply_chat_template encodes."""
    from transformers import AutoTokenizer

    from explain.generation.greedy import generate_greedy
    from explain.generation.prompts import decode_ids
    from explain.loading.loader import load_model

    data, folder = llama
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.session_state["gb_source"] = "upload"
    at.session_state["gb_model_upload"] = UploadedBlob("llama.zip", data, hashlib.sha256(data).hexdigest())
    at.switch_page("pages/views/generate.py").run()
    _clean(at)
    at.text_area(key="gb_gen_prompt").input("c")
    at.checkbox(key="gb_gen_quality").uncheck()
    at.number_input(key="gb_gen_max_new").set_value(1)
    at.selectbox(key="gb_gen_method").set_value("saliency")
    at.checkbox(key="gb_gen_chat").check().run()
    at.number_input(key="gb_gen_turns").set_value(3).run()
    for i, (role, text) in enumerate([("system", "a"), ("assistant", "b"), ("user", "")]):  # an empty row is left out
        at.selectbox(key=f"gb_gen_turn_role_{i}").set_value(role)
        at.text_input(key=f"gb_gen_turn_text_{i}").input(text)
    at.run()
    at.button(key="gb_gen_run").click().run()
    _clean(at)
    chat = [{"role": "system", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    want = AutoTokenizer.from_pretrained(folder).apply_chat_template(chat, tokenize=True, add_generation_prompt=True,
                                                                      return_dict=False)
    want = list(want["input_ids"] if isinstance(want, dict) else want)
    model = load_model(folder)
    text = generate_greedy(model, [np.asarray(want)], 1)[0]
    assert [c.value for c in at.code] == [decode_ids(text.generated_ids, model.spec)]
    assert _z(at.get("plotly_chart")[0]).shape == (1, len(want) + 1)  # the matrix reads the whole rendered chat


def _place(at: AppTest, node) -> tuple[int, ...]:
    """Where ``node`` is drawn: its indices from the page's root down (the delta path the browser keys it by)."""
    def walk(block, path):
        for i, child in block.children.items():
            if child is node:
                return (*path, i)
            if isinstance(getattr(child, "children", None), dict):
                found = walk(child, (*path, i))
                if found:
                    return found
        return None

    return walk(at._tree, ())


SETTINGS_KEYS = (("number_input", "gb_gen_max_new"), ("number_input", "gb_gen_top_p"), ("number_input", "gb_gen_seed"),
                 ("checkbox", "gb_gen_quality"), ("button", "gb_gen_run"), ("button", "gb_gen_save"))


def test_every_element_keeps_its_place_whether_a_chat_is_ticked_or_a_run_computed(llama):
    """The browser keeps a run's elements by place until the rerun draws that place, so an element drawn only
    sometimes (the chat's rows, Generate's progress bar) moved the ones after it: ticking Chat drew the 4-column
    row where the 6-column one was, and its old Top-p / Seed stayed there, greyed, until the run ended."""
    data, _folder = llama
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.session_state["gb_source"] = "upload"
    at.session_state["gb_model_upload"] = UploadedBlob("llama.zip", data, hashlib.sha256(data).hexdigest())
    at.switch_page("pages/views/generate.py").run()
    at.text_area(key="gb_gen_prompt").input(PROMPT)
    at.checkbox(key="gb_gen_quality").uncheck()
    at.number_input(key="gb_gen_max_new").set_value(1)
    at.selectbox(key="gb_gen_method").set_value("saliency").run()
    _clean(at)

    def places():
        return [_place(at, getattr(at, kind)(key=key)) for kind, key in SETTINGS_KEYS]

    plain = places()
    at.checkbox(key="gb_gen_chat").check().run()
    assert places() == plain
    at.number_input(key="gb_gen_turns").set_value(2).run()
    assert places() == plain
    at.button(key="gb_gen_run").click().run()
    _clean(at)
    computed = places(), _place(at, at.get("plotly_chart")[0]), _place(at, at.selectbox(key="gb_gen_token"))
    assert computed[0] == plain
    at.run()  # the next run shows the kept result, with no progress bar
    assert (places(), _place(at, at.get("plotly_chart")[0]), _place(at, at.selectbox(key="gb_gen_token"))) == computed
