"""A causal LM exported with ``torch.export`` (token ids [N, L] -> logits [N, L, V]) and saved as ``.pt2``,
loaded the way a user brings it: no spec, its ``tokenizer.json`` beside it (issue 22). Known answers: the
Hugging Face folder it came from, on the same weights (`tests/causal_models.py`)."""
from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("transformers")

from causal_models import one_thread, write_hf_gpt2, write_hf_llama  # noqa: E402, F401 - one_thread: a fixture
from transformers import AutoModelForCausalLM  # noqa: E402

from explain.cli import main  # noqa: E402
from explain.errors import GlassboxError, IncompatibleInput, one_line  # noqa: E402
from explain.generation.attribution import attribute_generation  # noqa: E402
from explain.generation.greedy import generate_greedy  # noqa: E402
from explain.generation.occlusion import attribute_texts  # noqa: E402
from explain.generation.prompts import encode_texts  # noqa: E402
from explain.loading.export_lm import (  # noqa: E402
    NO_EMBEDDING,
    NO_HIDDEN_STATES,
    NO_HIDDEN_STATES_HINT,
    NO_TOKENIZER,
    NO_TOKENIZER_HINT,
)
from explain.loading.loader import load_model  # noqa: E402

PROMPTS = ["the cat sat on", "two plus two is four and"]
NEW = 5
STEPS = 16

pytestmark = pytest.mark.usefixtures("one_thread")


class Logits(nn.Module):
    """What a user exports: ids [N, L] -> the model's logits [N, L, V]."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=ids, use_cache=False).logits


def export_lm(lm: nn.Module, path, max_length: int = 64, **save) -> None:
    """``lm`` exported for any batch and any length 1 .. max_length, saved to ``path``."""
    dims = ({0: torch.export.Dim("batch", max=64), 1: torch.export.Dim("length", min=1, max=max_length)},)
    program = torch.export.export(Logits(lm), (torch.ones(2, 5, dtype=torch.long),), dynamic_shapes=dims)
    torch.export.save(program, path, **save)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def pair(request, tmp_path_factory):
    """(kind, the Hugging Face folder's model, the .pt2's model, transformers' model, prompts)."""
    root = tmp_path_factory.mktemp(request.param)
    folder = root / "hf"
    folder.mkdir()
    (write_hf_llama if request.param == "llama" else write_hf_gpt2)(folder)
    reference = AutoModelForCausalLM.from_pretrained(folder).eval()
    user = root / "user"
    user.mkdir()
    export_lm(reference, user / "lm.pt2")
    shutil.copy(folder / "tokenizer.json", user / "tokenizer.json")  # beside it, as the user keeps it
    exported = load_model(user / "lm.pt2")
    prompts = encode_texts(PROMPTS, exported.spec)
    return request.param, load_model(folder), exported, reference, prompts, user


def test_a_pt2_causal_lm_loads_with_its_tokenizer_beside_it(pair):
    _kind, folder_model, model, _ref, prompts, _user = pair
    assert model.format == "export" and model.process is not None and model.spec.is_causal_lm
    assert model.extra["spec_source"] == "signature" and model.spec.input_shape == (64,)
    folder_prompts = encode_texts(PROMPTS, folder_model.spec)
    assert [p.tolist() for p in prompts] == [p.tolist() for p in folder_prompts]


def test_greedy_generation_of_the_pt2_equals_transformers_generate(pair):
    _kind, _folder_model, model, ref, prompts, _user = pair
    texts = generate_greedy(model, prompts, NEW)
    for prompt, text in zip(prompts, texts):
        ids = torch.as_tensor(prompt)[None]
        with torch.no_grad():
            out = ref.generate(ids, do_sample=False, max_new_tokens=NEW, output_scores=True,
                               return_dict_in_generate=True, pad_token_id=ref.config.eos_token_id)
        want = out.sequences[0, ids.shape[1]:]
        assert text.generated_ids.tolist() == want.tolist()
        logp = torch.stack([torch.log_softmax(s[0].float(), -1)[t] for s, t in zip(out.scores, want)])
        np.testing.assert_allclose(text.logprobs, logp.numpy(), atol=1e-5)


def test_integrated_gradients_of_the_pt2_equal_the_folders(pair):
    """IG with the pad baseline through the program's embedding lookup = the folder's IG on the same weights."""
    _kind, folder_model, model, _ref, prompts, _user = pair
    texts = generate_greedy(folder_model, prompts, NEW)
    ours = attribute_generation(model, texts, "integrated_gradients", STEPS, "pad")
    theirs = attribute_generation(folder_model, texts, "integrated_gradients", STEPS, "pad")
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a.values, b.values, atol=1e-5)
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)
        np.testing.assert_allclose(a.baseline_logprobs, b.baseline_logprobs, atol=1e-5)
        gap = np.abs(a.values.sum(-1) - (a.logprobs - a.baseline_logprobs))  # completeness, as the folder's
        np.testing.assert_allclose(gap, a.completeness_error, atol=1e-5)
        assert float(a.completeness_error.max()) < 0.05


def test_the_command_line_generates_from_a_pt2(pair, tmp_path, capsys):
    kind, _folder_model, model, _ref, prompts, user = pair
    if kind != "llama":
        pytest.skip("the command line is checked once, on the Llama")
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "g.npz"
    assert main(["generate", str(user / "lm.pt2"), "--prompts", str(tmp_path / "prompts.txt"), "--max-new-tokens",
                 str(NEW), "--steps", str(STEPS), "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    texts = generate_greedy(model, prompts, NEW)
    assert [t.generated_ids.tolist() for t in texts] == [row[row >= 0].tolist() for row in np.load(out)["generated_ids"]]
    assert printed["method"] == "integrated_gradients" and printed["max_completeness_error"] < 0.05


class ClampedLogits(Logits):
    """The ids clamped before the model: they feed an op besides the embedding lookup (no embeddings to
    attribute to)."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=ids.clamp(min=0), use_cache=False).logits


@pytest.fixture(scope="module")
def carried(tmp_path_factory):
    """A Llama .pt2 for lengths up to 12 carrying its tokenizer (extra/tokenizer.json), ids clamped first."""
    root = tmp_path_factory.mktemp("carried")
    write_hf_llama(root / "hf")
    reference = AutoModelForCausalLM.from_pretrained(root / "hf").eval()
    dims = ({0: torch.export.Dim("batch", max=64), 1: torch.export.Dim("length", min=1, max=12)},)
    program = torch.export.export(ClampedLogits(reference), (torch.ones(2, 5, dtype=torch.long),), dynamic_shapes=dims)
    (root / "alone").mkdir()
    torch.export.save(program, root / "alone" / "lm.pt2",
                      extra_files={"tokenizer.json": (root / "hf" / "tokenizer.json").read_text()})
    return load_model(root / "alone" / "lm.pt2"), reference, root


def test_a_pt2_carrying_its_tokenizer_is_bounded_by_its_length_range(carried):
    model, reference, _root = carried
    assert model.spec.is_causal_lm and model.spec.input_shape == (12,)
    prompt = encode_texts(["the cat"], model.spec)
    new = 12 - len(prompt[0])  # 12 in all: the program's longest
    text = generate_greedy(model, prompt, new)[0]
    with torch.no_grad():
        want = reference.generate(torch.as_tensor(prompt[0])[None], do_sample=False, max_new_tokens=new,
                                  pad_token_id=reference.config.eos_token_id)[0, len(prompt[0]):]
    assert new >= 3 and text.generated_ids.tolist() == want.tolist()
    with pytest.raises(GlassboxError) as caught:
        generate_greedy(model, prompt, new + 1)
    assert "exceeds the model's 12 positions" in str(caught.value) and "\n" not in str(caught.value)


def test_without_an_embedding_lookup_gradients_are_refused_and_occlusion_runs(carried):
    model, _reference, _root = carried
    text = generate_greedy(model, encode_texts(["the cat"], model.spec), 2)
    with pytest.raises(IncompatibleInput) as caught:
        attribute_generation(model, text, "integrated_gradients", STEPS, "pad")
    assert str(caught.value).startswith(NO_EMBEDDING) and "\n" not in str(caught.value)
    occluded = attribute_texts(model, text, "occlusion")[0]
    assert occluded.values.shape == (2, len(text[0].input_ids)) and np.isfinite(occluded.values).all()
    assert np.abs(occluded.values[0, : len(text[0].prompt_ids)]).max() > 0


def test_a_pt2_without_a_tokenizer_asks_for_one_in_one_line(carried):
    _model, _reference, root = carried
    (root / "bare").mkdir()
    with zipfile.ZipFile(root / "alone" / "lm.pt2") as src, zipfile.ZipFile(root / "bare" / "lm.pt2", "w") as dst:
        for info in src.infolist():  # the same program without extra/tokenizer.json
            if not info.filename.endswith("extra/tokenizer.json"):
                dst.writestr(info, src.read(info))
    with pytest.raises(IncompatibleInput) as caught:
        load_model(root / "bare" / "lm.pt2")
    assert str(caught.value).startswith(NO_TOKENIZER) and "tokenizer.json" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_keycopy_sample_exported_to_pt2_still_puts_the_attribution_on_the_key(tmp_path):
    """The sample's Llama exported as a user would (ids -> logits) and loaded with its tokenizer.json beside it:
    greedy answers the key and integrated gradients put the largest share on it (ground truth: position 1)."""
    from sample_models import keycopy, sample_file

    with zipfile.ZipFile(sample_file("keycopy")) as zf:
        zf.extractall(tmp_path / "hf")
    export_lm(AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval(), tmp_path / "keycopy.pt2")
    shutil.copy(tmp_path / "hf" / "tokenizer.json", tmp_path / "tokenizer.json")
    model = load_model(tmp_path / "keycopy.pt2")
    prompts, answers = keycopy.make_prompts(20, 23)  # the test seed: never trained on
    texts = generate_greedy(model, encode_texts(prompts, model.spec), 1)
    got = [keycopy.VOCABULARY[int(t.generated_ids[0])] for t in texts]
    assert np.mean([g == a for g, a in zip(got, answers)]) >= 0.9
    attrs = attribute_generation(model, texts, "integrated_gradients", 32, "pad")
    on_key = np.mean([int(np.argmax(a.values[0])) == keycopy.KEY_POSITION for a in attrs])
    assert on_key >= 0.9


def test_deeplift_on_the_pt2_runs_its_exact_rules_and_equals_the_folders(pair):
    """DeepLIFT on the program from its embedding lookup on (head and final norm inside) = DeepLIFT on the
    folder's captured decoder and head, and adds up to each token's log-probability change."""
    _kind, folder_model, model, _ref, prompts, _user = pair
    texts = generate_greedy(folder_model, prompts[:1], 3)
    ours = attribute_generation(model, texts, "deeplift", baseline="pad")[0]
    theirs = attribute_generation(folder_model, texts, "deeplift", baseline="pad")[0]
    np.testing.assert_allclose(ours.values, theirs.values, atol=1e-4)
    assert float(ours.completeness_error.max()) < 1e-4
    assert any(".pt2 program" in note for note in ours.notes)


class MaskedLogits(Logits):
    """ids [N, L] and an attention mask [N, L] -> logits [N, L, V]."""

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=ids, attention_mask=mask, use_cache=False).logits


def test_a_static_pt2_with_a_mask_input_is_padded_on_the_right(pair, tmp_path):
    """Exported for batch 1 and 12 tokens, with a mask input: shorter texts are padded on the right (a causal
    LM's earlier positions never read them) and masked, so greedy and IG equal the folder's."""
    kind, folder_model, _model, ref, _prompts, user = pair
    if kind != "llama":
        pytest.skip("static shapes are checked once, on the Llama")
    example = (torch.ones(1, 12, dtype=torch.long), torch.ones(1, 12, dtype=torch.long))
    torch.export.save(torch.export.export(MaskedLogits(ref), example), tmp_path / "static.pt2")
    shutil.copy(user / "tokenizer.json", tmp_path / "tokenizer.json")
    model = load_model(tmp_path / "static.pt2")
    assert model.spec.input_shape == (12,) and model.fixed_batch_size == 1
    prompts = encode_texts(["the cat"], model.spec)
    texts = generate_greedy(model, prompts, 12 - len(prompts[0]))
    assert [t.generated_ids.tolist() for t in texts] == [t.generated_ids.tolist() for t in
                                                         generate_greedy(folder_model, prompts, 12 - len(prompts[0]))]
    ours = attribute_generation(model, texts, "integrated_gradients", STEPS, "pad")[0]
    theirs = attribute_generation(folder_model, texts, "integrated_gradients", STEPS, "pad")[0]
    np.testing.assert_allclose(ours.values, theirs.values, atol=1e-5)
    with pytest.raises(IncompatibleInput, match="fixed batch or length"):
        attribute_generation(model, texts, "deeplift", baseline="pad")


def test_the_generate_pages_pipeline_explains_a_pt2_with_its_lens_out_of_reach(pair):
    """explain_prompt (the Generate page's one pipeline): generation, attribution and quality of the .pt2; its
    logit lens has no layers, and says in one line why (a .pt2 gives logits only)."""
    from explain.generation.explained import explain_prompt, settings_of

    kind, _folder_model, model, _ref, _prompts, _user = pair
    if kind != "llama":
        pytest.skip("the page's pipeline is checked once, on the Llama")
    view = explain_prompt(model, settings_of(PROMPTS[0], max_new_tokens=3, steps=STEPS))
    assert len(view.text.generated_ids) == 3 and view.attribution.values.shape[0] == 3
    assert float(np.nanmax(view.attribution.completeness_error)) < 0.05 and view.quality
    assert view.lens.top_ids.shape[:2] == (1, 0) and view.lens.notes == [f"{NO_HIDDEN_STATES} {NO_HIDDEN_STATES_HINT}"]


def test_the_generate_page_on_a_pt2_says_in_one_line_why_no_lens_nor_attention_and_saves_its_run(pair, home):
    """A user's .pt2 (its tokenizer carried inside) on the Generate page: the selected step's attention and logit
    lens, out of reach, are one info line (no error box, no empty table); Save as a run keeps the selected step and
    its contrast with that line (no failed job), and the run's drawer and report section say it the same way."""
    import hashlib
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    from explain.generation.job import saved_generation
    from explain.report.generation import build_generation_section
    from explain.workspace import Actor
    from ui.state import UploadedBlob

    kind, _folder_model, model, _ref, _prompts, user = pair
    if kind != "llama":
        pytest.skip("the page is checked once, on the Llama")
    line = f"{NO_HIDDEN_STATES} {NO_HIDDEN_STATES_HINT}"
    app = str(Path(__file__).resolve().parent.parent / "app.py")
    bare = (user / "lm.pt2").read_bytes()  # its tokenizer only beside it on disk: an upload comes without
    at = AppTest.from_file(app, default_timeout=300)
    at.session_state["gb_source"] = "upload"
    at.session_state["gb_model_upload"] = UploadedBlob("lm.pt2", bare, hashlib.sha256(bare).hexdigest())
    at.switch_page("pages/views/generate.py").run()
    assert [e.value.replace("\\", "") for e in at.main.error] == [f"lm.pt2 does not load: {NO_TOKENIZER}"]
    assert [i.value.replace("\\", "") for i in at.main.info] == [NO_TOKENIZER_HINT]  # where it goes; no spec form
    assert not at.main.button and not at.exception
    carrying = user / "carrying.pt2"  # the user's .pt2 with its tokenizer saved into it, as the page needs it
    shutil.copy(user / "lm.pt2", carrying)
    with zipfile.ZipFile(carrying, "a") as zf:
        zf.writestr(zf.namelist()[0].split("/")[0] + "/extra/tokenizer.json", (user / "tokenizer.json").read_text())
    data = carrying.read_bytes()
    at = AppTest.from_file(app, default_timeout=300)
    at.session_state["gb_source"] = "upload"
    at.session_state["gb_model_upload"] = UploadedBlob("lm.pt2", data, hashlib.sha256(data).hexdigest())
    at.switch_page("pages/views/generate.py").run()
    at.text_area(key="gb_gen_prompt").set_value(PROMPTS[0])
    at.number_input(key="gb_gen_max_new").set_value(2)
    at.selectbox(key="gb_gen_method").set_value("saliency")
    at.checkbox(key="gb_gen_quality").set_value(False).run()
    at.button(key="gb_gen_run").click().run()
    at.selectbox(key="gb_gen_token").set_value(1)
    at.text_input(key="gb_gen_contrast").input("the").run()  # three tokens of its tiny vocabulary: a warning says so
    assert [w.value.replace("\\", "") for w in at.main.warning] == [
        "“the” is 3 tokens for this model (t · h · e); a contrast compares the token with one other token."]
    at.text_input(key="gb_gen_contrast").input("a").run()  # one token

    def clean(app_test):
        assert not app_test.exception and not app_test.error, [e.value for e in [*app_test.exception, *app_test.error]]

    clean(at)
    assert [i.value.replace("\\", "") for i in at.main.info] == [line]
    assert len(at.get("plotly_chart")) == 1 and not at.main.dataframe  # the matrix; no attention, no empty lens
    at.button(key="gb_gen_save").click().run()
    clean(at)
    run_id = [c.value for c in at.code if "?run=" in c.value][0].rsplit("=", 1)[1]
    _, ws = home
    run = ws.runs.open(Actor("cli:tester", operator=True), run_id)
    assert run.info.title == "saliency on 2 tokens after 1 prompt of lm"  # one prompt: no "1 prompts"
    views = saved_generation(run).views[0]
    assert not views.has_layers and views.selected == 1 and views.notes == [line]
    c = views.contrast  # log p(token) - log p("a") at step 1, as transformers' model gives them
    with torch.no_grad():
        logp = torch.log_softmax(_ref(torch.as_tensor([c.context_ids])).logits[0, -1].float(), -1)
    assert c.step == 1 and c.alternative == encode_texts(["a"], model.spec, special_tokens=False)[0][0]
    assert c.difference == pytest.approx(float(logp[c.token] - logp[c.alternative]), abs=1e-4)

    opened = AppTest.from_file(app, default_timeout=300)
    opened.query_params["run"] = run_id
    opened.run()
    clean(opened)
    assert sum(c.value.replace("\\", "") == line for c in opened.caption) == 1
    assert len(opened.get("plotly_chart")) == 1 and not opened.main.dataframe  # the matrix only
    section = build_generation_section(saved_generation(run), run.spec)
    assert len(section.figures) == 1 and "embeddings" not in section.body and line in section.body.replace("&#x27;", "'")


def test_the_report_and_structure_page_of_a_pt2_show_its_layers_and_say_why_no_attention(pair):
    """A .pt2 causal LM's report: its layer table and FLOPs read from the program itself (no raw AttributeError of
    a graph the LM wrapper has not), its attention one line (a .pt2 gives logits only); the Structure page too."""
    import hashlib
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    from explain.report.sections import build_report
    from explain.spec import CAUSAL_LM_NOTE
    from explain.structure.attention import attention_unavailable_reason
    from explain.structure.measures import make_flop_counter
    from ui.state import UploadedBlob

    kind, _folder_model, model, ref, _prompts, user = pair
    if kind != "llama":
        pytest.skip("the report and page are checked once, on the Llama")
    line = f"{NO_HIDDEN_STATES} {NO_HIDDEN_STATES_HINT}"
    report = build_report(model, None, methods=(), quality=[])
    assert report.failed_sections == []
    html = report.to_html()
    assert "AttributeError" not in html and "no attribute" not in html
    structure = report.section("Structure").data
    assert structure["total_flops"] > 0 and structure["total_parameters"] == model.parameter_count()
    layers = [row["layer"].strip() for row in structure["layers"]]
    assert {"lm.model.embed_tokens", "lm.model.layers.0.self_attn", "lm.lm_head"} <= set(layers)  # by the model's names
    with make_flop_counter() as counter, torch.no_grad():  # the layer table's counter on transformers' model
        ref(input_ids=torch.ones(1, model.spec.input_shape[0], dtype=torch.long))  # one input
    assert structure["total_flops"] == counter.get_total_flops() == 4_468_736  # the program's, per input
    assert report.section("Model card").data["flops"] == structure["total_flops"]
    assert "Attention" not in report.section_titles  # as for a model without attention: the section is left out
    carrying = user / "structure.pt2"  # an upload carries its tokenizer inside
    shutil.copy(user / "lm.pt2", carrying)
    with zipfile.ZipFile(carrying, "a") as zf:
        zf.writestr(zf.namelist()[0].split("/")[0] + "/extra/tokenizer.json", (user / "tokenizer.json").read_text())
    data = carrying.read_bytes()
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app.py"), default_timeout=240)
    at.session_state["gb_source"] = "upload"
    at.session_state["gb_model_upload"] = UploadedBlob("lm.pt2", data, hashlib.sha256(data).hexdigest())
    at.switch_page("pages/views/structure.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    # the page, as for any causal LM, says in one line where its views are: no exception, no error box
    assert [i.value for i in at.main.info] == [CAUSAL_LM_NOTE] and not at.main.dataframe
    assert attention_unavailable_reason(model) == line  # what the report and the page's Attention tab say


def test_a_pt2_causal_lm_takes_its_tokenizer_json_given_as_its_spec(pair, tmp_path, capsys):
    """The app's uploader has nothing beside the .pt2: the user's tokenizer.json given where a spec goes (the
    sidebar's Spec upload through the model cache, ``--spec``) is its tokenizer, as the file beside it is; the refusal without it says so."""
    kind, _folder_model, beside, _ref, prompts, user = pair
    if kind != "llama":
        pytest.skip("one causal LM is enough")
    tokenizer = user / "tokenizer.json"
    (tmp_path / "lm.pt2").write_bytes((user / "lm.pt2").read_bytes())  # alone: no tokenizer.json beside it
    with pytest.raises(IncompatibleInput, match="as the spec") as caught:
        load_model((user / "lm.pt2").read_bytes(), filename="lm.pt2")  # an upload's bytes
    assert str(caught.value).startswith(NO_TOKENIZER) and "\n" not in str(caught.value)
    assert one_line(caught.value).endswith("extra_files={'tokenizer.json': text}).")  # whole: the CLI's line cuts at 300
    from explain.service.models import ModelStore  # the app's way in: the cache keys the spec by its JSON

    model = ModelStore().open((user / "lm.pt2").read_bytes(), spec=tokenizer.read_bytes(), filename="lm.pt2")
    assert model.spec.is_causal_lm and model.spec.tokenizer == beside.spec.tokenizer
    assert model.extra["spec_source"] == "signature" and model.spec.input_shape == (64,)
    assert [p.tolist() for p in encode_texts(PROMPTS, model.spec)] == [p.tolist() for p in prompts]
    assert main(["inspect", str(tmp_path / "lm.pt2"), "--spec", str(tokenizer)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["format"], out["modality"], out["spec_source"]) == ("export", "text", "signature")


def test_a_tokenizer_json_as_the_spec_of_another_model_is_one_line(tmp_path):
    folder = write_hf_gpt2(tmp_path / "gpt2")
    with pytest.raises(IncompatibleInput, match=r"^The spec given for \S+ is a tokenizer.json, which only a "
                       r"causal-LM .pt2 without a spec of its own takes as its spec\."):
        load_model(folder, spec=(folder / "tokenizer.json").read_bytes())
