"""Causal LMs (issue 22): a tiny Llama and a tiny GPT-2 from configs, loaded into their model processes,
checked against transformers and Captum (known answers, no hub)."""
from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from causal_models import one_thread, reference_attentions, write_hf_gpt2, write_hf_llama  # noqa: E402, F401 - one_thread: a fixture
from transformers import AutoModelForCausalLM  # noqa: E402

from explain.cli import main  # noqa: E402
from explain.errors import IncompatibleInput, UnsafeFile  # noqa: E402
from explain.generation.attention import causal_attention  # noqa: E402
from explain.generation.attribution import attribute_generation  # noqa: E402
from explain.generation.continuation import force_continuations  # noqa: E402
from explain.generation.greedy import generate_greedy  # noqa: E402
from explain.generation.logit_lens import logit_lens  # noqa: E402
from explain.generation.prompts import encode_texts  # noqa: E402
from explain.loading.loader import load_model  # noqa: E402
from explain.output.methods import compatible_methods, get_method  # noqa: E402

PROMPTS = ["the cat sat on", "two plus two is four and"]
NEW = 5
STEPS = 16


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: every test here on one thread


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def lm(request, tmp_path_factory):
    """(kind, folder, loaded model in its model process, transformers' own model, prompts, greedy texts)."""
    folder = tmp_path_factory.mktemp(request.param) / request.param
    folder.mkdir()
    (write_hf_llama if request.param == "llama" else write_hf_gpt2)(folder)
    model = load_model(folder)
    reference = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    prompts = encode_texts(PROMPTS, model.spec)
    texts = generate_greedy(model, prompts, NEW)
    return request.param, folder, model, reference, prompts, texts


@pytest.fixture(scope="module")
def attributions(lm):
    return attribute_generation(lm[2], lm[5], "integrated_gradients", STEPS, "pad", tolerance=0)  # fixed, as Captum


def test_a_causal_lm_loads_into_its_model_process(lm):
    kind, _folder, model, _ref, prompts, _texts = lm
    assert model.format == "huggingface" and model.process is not None  # the server holds no graph
    assert model.spec.task == "causal_lm" and model.spec.class_names == []
    assert model.architecture == ("LlamaForCausalLM" if kind == "llama" else "GPT2LMHeadModel")
    assert (model.spec.chat_template is not None) == (kind == "llama")  # kept as data
    if kind == "llama":
        assert all(p[0] == 1 for p in prompts)  # the tokenizer's post-processor put <s> first


def test_greedy_generation_equals_transformers_generate(lm):
    _kind, _folder, _model, ref, prompts, texts = lm
    for prompt, text in zip(prompts, texts):
        ids = torch.as_tensor(prompt)[None]
        with torch.no_grad():
            out = ref.generate(ids, do_sample=False, max_new_tokens=NEW, output_scores=True,
                               return_dict_in_generate=True, pad_token_id=ref.config.eos_token_id)
        want = out.sequences[0, ids.shape[1]:]
        assert text.generated_ids.tolist() == want.tolist()
        logp = torch.stack([torch.log_softmax(s[0].float(), -1)[t] for s, t in zip(out.scores, want)])
        np.testing.assert_allclose(text.logprobs, logp.numpy(), atol=1e-5)


def test_teacher_forcing_the_greedy_continuation_gives_its_logprobs(lm):
    _kind, _folder, model, _ref, prompts, texts = lm
    forced = force_continuations(model, prompts, [t.generated_ids for t in texts])
    for got, want in zip(forced, texts):
        assert got.forced and got.generated_ids.tolist() == want.generated_ids.tolist()
        np.testing.assert_allclose(got.logprobs, want.logprobs, atol=1e-5)


class IdsTokenizer:
    """A tokenizer for Captum whose texts are token ids written out ("1 86 74"), so Captum sees exactly our ids."""

    def encode(self, text, return_tensors=None, add_special_tokens=True):
        ids = [int(v) for v in text.split()]
        return torch.tensor([ids]) if return_tensors == "pt" else ids

    def decode(self, ids, **_kwargs):
        return " ".join(str(int(i)) for i in torch.as_tensor(ids).reshape(-1))

    def __call__(self, text, return_offsets_mapping=False, add_special_tokens=True, **_kwargs):
        spans = [m.span() for m in re.finditer(r"\S+", text)]
        return {"input_ids": [int(text[a:b]) for a, b in spans], "offset_mapping": spans}

    def convert_ids_to_tokens(self, ids):
        return [str(int(i)) for i in ids]


def _captum_ig(ref, input_ids, target_ids, pad_id):
    from captum.attr import LayerIntegratedGradients, LLMGradientAttribution, TextTokenInput

    tokenizer = IdsTokenizer()
    llm = LLMGradientAttribution(LayerIntegratedGradients(ref, ref.get_input_embeddings()), tokenizer)
    text = TextTokenInput(tokenizer.decode(input_ids), tokenizer, baselines=int(pad_id))  # absent tokens read pad
    result = llm.attribute(text, target=torch.as_tensor(target_ids), n_steps=STEPS)
    return result.token_attr.detach().numpy()  # [targets, prompt tokens]


def test_integrated_gradients_with_the_pad_baseline_equal_captums_llm_attribution(lm, attributions):
    """Row 0 against Captum's own generation target; row t against Captum with the text before token t as its prompt
    (our reference pads every earlier position, generated ones too)."""
    _kind, _folder, model, ref, _prompts, texts = lm
    pad_id = ref.config.pad_token_id if ref.config.pad_token_id is not None else ref.config.eos_token_id
    worst = 0.0
    for text, attr in zip(texts, attributions):
        p, ids = len(text.prompt_ids), text.input_ids
        whole = _captum_ig(ref, text.prompt_ids, text.generated_ids, pad_id)
        np.testing.assert_allclose(attr.values[0, :p], whole[0], atol=2e-5, rtol=1e-4)
        for t in (1, len(text.generated_ids) - 1):
            one = _captum_ig(ref, ids[: p + t], ids[p + t: p + t + 1], pad_id)
            np.testing.assert_allclose(attr.values[t, : p + t], one[0], atol=2e-5, rtol=1e-4)
            worst = max(worst, float(np.abs(attr.values[t, : p + t] - one[0]).max()))
    assert worst < 2e-5


def test_integrated_gradients_are_complete_and_causal(lm, attributions):
    _kind, _folder, _model, _ref, _prompts, texts = lm
    for text, attr in zip(texts, attributions):
        p, t_count = len(text.prompt_ids), len(text.generated_ids)
        assert attr.values.shape == (t_count, p + t_count)
        assert all(not attr.values[t, p + t:].any() for t in range(t_count))  # nothing at or after the token
        np.testing.assert_allclose(attr.logprobs, text.logprobs, atol=1e-5)  # no cache, same numbers
        gap = attr.values.sum(1) - (attr.logprobs - attr.baseline_logprobs)
        np.testing.assert_allclose(np.abs(gap), attr.completeness_error, atol=1e-5)
        assert attr.completeness_error.max() < 0.05


def test_saliency_and_input_x_gradient_equal_autograd(lm):
    _kind, _folder, model, ref, _prompts, texts = lm
    text = texts[0]
    p, ids = len(text.prompt_ids), torch.as_tensor(text.input_ids)
    t = 2
    emb = ref.get_input_embeddings()(ids[: p + t])[None].detach().requires_grad_(True)
    logp = torch.log_softmax(ref(inputs_embeds=emb).logits[0, -1], -1)[ids[p + t]]
    (grad,) = torch.autograd.grad(logp, emb)
    saliency = attribute_generation(model, texts[:1], "saliency")[0]
    ixg = attribute_generation(model, texts[:1], "input_x_gradient")[0]
    np.testing.assert_allclose(saliency.values[t, : p + t], grad[0].abs().sum(-1).numpy(), atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(ixg.values[t, : p + t], (grad[0] * emb[0]).sum(-1).detach().numpy(), atol=1e-6, rtol=1e-4)
    assert np.isnan(saliency.completeness_error).all() and saliency.params == {}


def test_batch_size_does_not_change_the_attribution(lm, attributions):
    _kind, _folder, model, _ref, _prompts, texts = lm
    small = attribute_generation(model, texts[:1], "integrated_gradients", STEPS, "pad", batch_size=3, tolerance=0)[0]
    np.testing.assert_allclose(small.values, attributions[0].values, atol=1e-6)


def test_attention_equals_output_attentions(lm):
    _kind, _folder, model, ref, prompts, _texts = lm
    maps = causal_attention(model, prompts)
    longest = max(map(len, prompts))
    want = reference_attentions(ref, prompts)  # [layers, N, heads, L, L]
    assert maps.weights.shape == (2, 2, 4, longest, longest)  # [layers, N, heads, L, L]
    np.testing.assert_allclose(maps.weights, want, atol=1e-6)
    for i, p in enumerate(prompts):
        np.testing.assert_allclose(maps.weights[:, i, :, : len(p)].sum(-1), 1.0, atol=1e-5)


def test_logit_lens_last_layer_is_the_models_prediction(lm):
    _kind, _folder, model, ref, prompts, _texts = lm
    lens = logit_lens(model, prompts, top_k=3)
    assert lens.top_ids.shape == (2, 3, max(map(len, prompts)), 3) and lens.notes == []
    for i, p in enumerate(prompts):
        with torch.no_grad():
            out = ref(torch.as_tensor(p)[None], output_hidden_states=True)
        probs = torch.softmax(out.logits[0], -1)
        top = probs.topk(3, -1)
        np.testing.assert_array_equal(lens.top_ids[i, -1, : len(p)], top.indices.numpy())
        np.testing.assert_allclose(lens.top_probs[i, -1, : len(p)], top.values.numpy(), atol=1e-6)
        norm = ref.model.norm if hasattr(ref, "model") else ref.transformer.ln_f
        first = torch.softmax(ref.get_output_embeddings()(norm(out.hidden_states[1]))[0], -1).topk(3, -1)
        np.testing.assert_array_equal(lens.top_ids[i, 1, : len(p)], first.indices.numpy())
        assert (lens.top_ids[i, :, len(p):] == -1).all()


def test_classifier_methods_say_they_cannot_explain_a_causal_lm(lm):
    model = lm[2]
    assert compatible_methods(model) == []
    with pytest.raises(IncompatibleInput, match="causal language model"):
        get_method("integrated_gradients").explain(model, np.zeros((1, 64), np.int64))


def test_remote_code_is_refused(lm, tmp_path, capsys):
    target = tmp_path / "remote"
    shutil.copytree(lm[1], target)
    cfg = json.loads((target / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilLM"}
    (target / "config.json").write_text(json.dumps(cfg))
    (target / "modeling_evil.py").write_text("raise SystemExit('GLASSBOX-MARKER ran')\n")
    with pytest.raises(UnsafeFile, match="remote code"):
        load_model(target)
    assert main(["generate", str(target), "--prompts", str(_prompt_file(tmp_path)), "--out", str(tmp_path / "g.npz")]) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "remote code" in err and "GLASSBOX-MARKER" not in err


def _prompt_file(directory):
    path = directory / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


def test_cli_generate_logit_lens_and_attention(lm, attributions, tmp_path, capsys):
    kind, folder, model, _ref, _prompts, texts = lm
    if kind != "llama":
        pytest.skip("the command line is checked once, on the Llama")
    prompts = _prompt_file(tmp_path)
    out = tmp_path / "g.npz"
    assert main(["generate", str(folder), "--prompts", str(prompts), "--max-new-tokens", str(NEW),
                 "--steps", str(STEPS), "--tolerance", "0", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["method"] == "integrated_gradients"
    assert printed["params"] == {"steps": STEPS, "baseline": "pad", "tolerance": 0.0} and "per_token" not in printed
    assert len(printed["texts"]) == 2 and printed["max_completeness_error"] < 0.05
    g = np.load(out)
    longest = max(t.input_ids.size for t in texts)
    assert g["values"].shape == (2, NEW, longest) and g["input_ids"].shape == (2, longest)
    for i, (text, attr) in enumerate(zip(texts, attributions)):
        p = len(text.prompt_ids)
        assert g["prompt_length"][i] == p and g["generated_ids"][i].tolist() == text.generated_ids.tolist()
        np.testing.assert_allclose(g["values"][i, :, : attr.values.shape[1]], attr.values, atol=1e-6)
        np.testing.assert_allclose(g["logprobs"][i], text.logprobs, atol=1e-5)

    targets = tmp_path / "targets.txt"
    targets.write_text(" on the mat\n four\n")
    assert main(["generate", str(folder), "--prompts", str(prompts), "--targets", str(targets), "--method",
                 "input_x_gradient", "--out", str(tmp_path / "f.npz")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["forced"] and printed["texts"] == [" on the mat", " four"]  # each line as it follows its prompt
    assert printed["completeness_error"][1] == [None] * len(printed["tokens"][1])

    assert main(["logit-lens", str(folder), "--prompts", str(prompts), "--out", str(tmp_path / "l.npz")]) == 0
    assert json.loads(capsys.readouterr().out)["shape"][:2] == [2, 3]
    assert main(["attention", str(folder), "--prompts", str(prompts), "--out", str(tmp_path / "a.npz")]) == 0
    assert json.loads(capsys.readouterr().out)["shape"][:3] == [2, 2, 4]
    assert main(["generate", str(folder), "--prompts", str(prompts), "--method", "saliency", "--steps", "4",
                 "--out", str(tmp_path / "x.npz")]) == 2
    assert "takes no --steps" in capsys.readouterr().err


def test_a_zip_of_sharded_weights_loads_the_same_model(lm, tmp_path):
    """A user's zip whose weights are safetensors shards (model.safetensors.index.json) generates the same tokens."""
    import zipfile

    kind, folder, _model, ref, prompts, texts = lm
    if kind != "gpt2":
        pytest.skip("checked once, on the GPT-2")
    sharded = tmp_path / "sharded"
    ref.save_pretrained(sharded, max_shard_size="40KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    shutil.copy(folder / "tokenizer.json", sharded / "tokenizer.json")
    archive = tmp_path / "gpt2.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(sharded.iterdir()):
            zf.write(path, f"gpt2/{path.name}")
    again = load_model(archive)
    assert again.spec.is_causal_lm and again.architecture == "GPT2LMHeadModel"
    got = generate_greedy(again, prompts, NEW)
    assert [g.generated_ids.tolist() for g in got] == [t.generated_ids.tolist() for t in texts]


@pytest.mark.parametrize("page", ["output", "overview", "structure", "dataset"])
def test_a_classifier_page_says_in_one_line_that_it_cannot_show_a_causal_lm(lm, page, tmp_path):
    import hashlib
    import zipfile
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    from explain.spec import CAUSAL_LM_NOTE
    from ui.state import UploadedBlob

    kind, folder = lm[0], lm[1]
    if kind != "llama":
        pytest.skip("checked once, on the Llama")
    archive = tmp_path / "llama.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f.name)
    data = archive.read_bytes()
    texts = "\n".join(PROMPTS).encode()
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app.py"), default_timeout=300)
    at.session_state["gb_source"] = "upload"
    at.session_state["gb_model_upload"] = UploadedBlob(archive.name, data, hashlib.sha256(data).hexdigest())
    at.session_state["gb_input_uploads"] = [UploadedBlob("texts.txt", texts, hashlib.sha256(texts).hexdigest())]
    at.switch_page(f"pages/views/{page}.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert [i.value for i in at.main.info if "causal language model" in i.value] == [CAUSAL_LM_NOTE]
