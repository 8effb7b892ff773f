"""A new user's own causal LMs, family by family (issue 22): Qwen2, Qwen3, Mistral, Phi-3, Gemma 2, Gemma 3,
GPT-NeoX and OPT, each saved as its user would (`causal_families`: sharded safetensors, weights-only
``pytorch_model.bin``, zips with and without a folder inside; tied and untied heads; byte-level BPE,
sentencepiece-like Unigram and chat tokenizers), through the command line, checked against transformers
and Captum: greedy = ``generate``, integrated gradients with the pad baseline = Captum's
``LLMGradientAttribution(LayerIntegratedGradients)`` and complete, DeepLIFT / SHAP add up within 1e-4,
``attention`` = ``output_attentions`` (eager), the logit lens's last layer = the model's prediction."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from causal_families import FAMILIES, reference_model, write_family  # noqa: E402
from causal_models import one_thread, reference_attentions  # noqa: E402, F401 - a fixture

from explain.cli import main  # noqa: E402
from explain.generation.attribution import attribute_generation  # noqa: E402
from explain.generation.greedy import generate_greedy  # noqa: E402
from explain.generation.prompts import encode_texts  # noqa: E402
from explain.loading.loader import load_model  # noqa: E402

warnings.filterwarnings("ignore", category=UserWarning)
PROMPTS = ["the cat sat on", "two plus two is four and"]
NEW, STEPS = 4, 16
TOLERANCE = 1e-4  # DeepLIFT / SHAP additivity, float32
ARCHITECTURES = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "mistral": "MistralForCausalLM",
                 "phi3": "Phi3ForCausalLM", "gemma2": "Gemma2ForCausalLM", "gemma3": "Gemma3ForCausalLM",
                 "gpt_neox": "GPTNeoXForCausalLM", "opt": "OPTForCausalLM"}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=FAMILIES)
def lm(request, tmp_path_factory):
    """(family, path handed over, loaded model, transformers' own model (eager), prompt ids, greedy texts, work dir)."""
    home = tmp_path_factory.mktemp(request.param)
    path = write_family(home, request.param)
    model = load_model(path)
    prompts = encode_texts(PROMPTS, model.spec)
    (home / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return request.param, path, model, reference_model(home, request.param), prompts, generate_greedy(model, prompts, NEW), home


@pytest.fixture(scope="module")
def cli_generate(lm):
    """``python -m explain generate`` with integrated gradients, the pad baseline and fixed steps (as Captum): (printed, G.npz)."""
    family, path, _model, _ref, _prompts, _texts, home = lm
    out = home / "g.npz"
    code = main(["generate", str(path), "--prompts", str(home / "prompts.txt"), "--max-new-tokens", str(NEW),
                 "--steps", str(STEPS), "--baseline", "pad", "--tolerance", "0", "--out", str(out)])
    assert code == 0, family
    return out, dict(np.load(out))


def _pad_id(ref) -> int:
    return ref.config.pad_token_id if ref.config.pad_token_id is not None else ref.config.eos_token_id


def test_the_users_model_loads_as_a_causal_lm_in_its_model_process(lm):
    family, path, model, ref, _prompts, _texts, _home = lm
    assert model.format == "huggingface" and model.process is not None  # the server holds no graph
    assert model.spec.task == "causal_lm" and model.architecture == ARCHITECTURES[family]
    assert (model.spec.chat_template is not None) == family.startswith("qwen")  # tokenizer_config.json / .jinja
    assert len(model.spec.vocabulary) == ref.config.vocab_size <= 500


def test_greedy_generation_equals_transformers_generate(lm):
    _family, _path, _model, ref, prompts, texts, _home = lm
    for prompt, text in zip(prompts, texts):
        ids = torch.as_tensor(prompt)[None]
        with torch.no_grad():
            out = ref.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=NEW,
                               output_scores=True, return_dict_in_generate=True, pad_token_id=_pad_id(ref))
        want = out.sequences[0, ids.shape[1]:]
        assert text.generated_ids.tolist() == want.tolist()
        logp = torch.stack([torch.log_softmax(s[0].float(), -1)[t] for s, t in zip(out.scores, want)])
        np.testing.assert_allclose(text.logprobs, logp.numpy(), atol=1e-5)


def _captum_ig(ref, input_ids, target_ids, pad_id):
    from captum.attr import LayerIntegratedGradients, LLMGradientAttribution, TextTokenInput
    from test_generation import IdsTokenizer

    tokenizer = IdsTokenizer()
    llm = LLMGradientAttribution(LayerIntegratedGradients(ref, ref.get_input_embeddings()), tokenizer)
    text = TextTokenInput(tokenizer.decode(input_ids), tokenizer, baselines=int(pad_id))
    result = llm.attribute(text, target=torch.as_tensor(target_ids), n_steps=STEPS)
    return result.token_attr.detach().numpy()  # [targets, prompt tokens]


def test_cli_generate_equals_captums_llm_attribution_and_is_complete(lm, cli_generate):
    """G.npz's values: row 0 against Captum's own generation target, the last row against Captum with the text
    before it as the prompt; every row adds up to its log-probability change."""
    _family, _path, _model, ref, _prompts, texts, _home = lm
    _out, g = cli_generate
    for i, text in enumerate(texts):
        p, t_count, ids = len(text.prompt_ids), len(text.generated_ids), text.input_ids
        assert g["prompt_length"][i] == p and g["generated_length"][i] == t_count  # an end-of-sequence stops a text
        assert g["generated_ids"][i, :t_count].tolist() == text.generated_ids.tolist()
        np.testing.assert_allclose(g["logprobs"][i, :t_count], text.logprobs, atol=1e-5)
        values = g["values"][i]  # [T, L]
        whole = _captum_ig(ref, text.prompt_ids, text.generated_ids, _pad_id(ref))
        np.testing.assert_allclose(values[0, :p], whole[0], atol=2e-5, rtol=1e-4)
        t = t_count - 1
        one = _captum_ig(ref, ids[: p + t], ids[p + t: p + t + 1], _pad_id(ref))
        np.testing.assert_allclose(values[t, : p + t], one[0], atol=2e-5, rtol=1e-4)
        assert all(not values[s, p + s:].any() for s in range(t_count))  # nothing at or after the token


def test_integrated_gradients_are_complete(lm):
    _family, _path, model, _ref, _prompts, texts, _home = lm
    for attr in attribute_generation(model, texts, "integrated_gradients", baseline="pad"):
        gap = attr.values.sum(1) - (attr.logprobs - attr.baseline_logprobs)
        np.testing.assert_allclose(np.abs(gap), attr.completeness_error, atol=1e-5)
        assert attr.completeness_error.max() <= 0.01  # the default tolerance, steps raised where needed


@pytest.mark.parametrize("method", ["deeplift", "deep_shap"])
def test_deeplift_and_shap_add_up(lm, method):
    _family, _path, model, _ref, _prompts, texts, _home = lm
    for text, attr in zip(texts, attribute_generation(model, texts, method)):
        gap = np.abs(attr.values.sum(1) - (attr.logprobs.astype(np.float64) - attr.baseline_logprobs))
        assert gap.max() <= TOLERANCE and attr.completeness_error.max() <= TOLERANCE
        np.testing.assert_allclose(attr.logprobs, text.logprobs, atol=1e-5)
        assert np.abs(attr.values).max() > 1e-3  # not trivially zero


def test_cli_attention_equals_output_attentions(lm):
    _family, path, _model, ref, prompts, _texts, home = lm
    out = home / "a.npz"
    assert main(["attention", str(path), "--prompts", str(home / "prompts.txt"), "--out", str(out)]) == 0
    maps = np.load(out)["attention"]
    longest = max(map(len, prompts))
    want = reference_attentions(ref, prompts)  # [layers, N, heads, L, L]
    assert maps.shape == (2, 2, 4, longest, longest)  # [layers, N, heads, L, L]
    for i, p in enumerate(prompts):  # the padded rows are the page's own (masked), not compared
        np.testing.assert_allclose(maps[:, i, :, : len(p), : len(p)], want[:, i, :, : len(p), : len(p)], atol=1e-6)


def test_cli_logit_lens_last_layer_is_the_models_prediction(lm):
    _family, path, _model, ref, prompts, _texts, home = lm
    out = home / "l.npz"
    assert main(["logit-lens", str(path), "--prompts", str(home / "prompts.txt"), "--out", str(out)]) == 0
    lens = np.load(out)
    assert lens["top_ids"].shape[:2] == (2, 3)  # [N, layers + 1, L, k]
    k = lens["top_ids"].shape[-1]
    for i, p in enumerate(prompts):
        with torch.no_grad():
            top = torch.softmax(ref(torch.as_tensor(p)[None]).logits[0].float(), -1).topk(k, -1)
        np.testing.assert_array_equal(lens["top_ids"][i, -1, : len(p)], top.indices.numpy())
        np.testing.assert_allclose(lens["top_probs"][i, -1, : len(p)], top.values.numpy(), atol=1e-6)


def test_a_chat_renders_and_encodes_as_transformers_apply_chat_template(lm):
    """The template (tokenizer_config.json's, or chat_template.jinja) rendered in the model's process, its added
    special tokens (<|im_start|>) each one id, as transformers' tokenizer encodes the chat."""
    family, path, model, _ref, _prompts, _texts, _home = lm
    if not family.startswith("qwen"):
        pytest.skip("the Qwen folders carry a chat template")
    from transformers import PreTrainedTokenizerFast

    from explain.generation.chat import render_chat
    from explain.generation.prompts import encode_texts as encode

    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the cat sat on"}]
    rendered = render_chat(model, [chat])
    template = ((path / "chat_template.jinja").read_text() if family == "qwen3"
                else json.loads((path / "tokenizer_config.json").read_text())["chat_template"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"), chat_template=template)
    assert rendered == [tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)]
    ids = encode(rendered, model.spec, special_tokens=False)[0]
    want = tokenizer.apply_chat_template(chat, tokenize=True, add_generation_prompt=True)
    want = want["input_ids"] if isinstance(want, dict) or hasattr(want, "keys") else want
    assert ids.tolist() == list(want)
    assert ids.tolist().count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == 3


def test_post_generate_answers_the_librarys_numbers_for_a_users_zip(lm, tmp_path):
    """``POST /v1/models/{name}:generate`` once, on the Phi-3 zip: the texts and attributions the library gives."""
    family, path, model, _ref, _prompts, texts, _home = lm
    if family != "phi3":
        pytest.skip("the API is checked once, on the Phi-3 zip")
    from fastapi.testclient import TestClient

    from explain.service.api import create_app
    from explain.service.client import register_model
    from explain.service.worker import stop_embedded
    from explain.workspace import Actor, open_workspace

    op = Actor("cli:tester", operator=True)
    ws = open_workspace(f"sqlite:///{tmp_path / 'glassbox.db'}", home=tmp_path / "home")
    try:
        register_model(ws, op, model, path.read_bytes(), path.name, "phi3")
        client = TestClient(create_app(ws, worker=True), raise_server_exceptions=False)
        editor = {"Authorization": f"Bearer {ws.users.add_token(op, 'editor', 'editor')}"}
        response = client.post("/v1/models/phi3:generate", headers=editor,
                               json={"prompts": PROMPTS, "parameters": {"max_new_tokens": NEW, "steps": STEPS}})
        assert response.status_code == 200, response.text
        body = response.json()
        want = attribute_generation(model, texts, "integrated_gradients", STEPS, "pad")
        assert body["generated_ids"] == [w.generated_ids.tolist() for w in want]
        for got, w in zip(body["attributions"], want):
            np.testing.assert_allclose(np.asarray(got, dtype=np.float32), w.values, atol=1e-6)  # [T, P + T]
        assert ws.runs.info(op, body["run"]).page == "generation"
    finally:
        stop_embedded(ws)
        ws.close()


def test_a_config_without_architectures_loads_its_causal_lm_and_a_classifiers_still_classifies(lm, tmp_path):
    """A config.json from ``config.save_pretrained`` beside ``torch.save``d weights names no architectures: its
    weights say what it is. (It was read as a classifier and refused in a line about that classifier's head: a
    tied Gemma 2's 'config.json builds 19,840 parameters, but the weights hold 19,776 values'.)"""
    import shutil

    from transformers import AutoModelForSequenceClassification

    family, path, model, _ref, prompts, texts, home = lm
    if family != "qwen3":
        pytest.skip("checked once, on the Qwen3 folder (a weights-only pytorch_model.bin)")
    bare = tmp_path / "bare"
    shutil.copytree(path, bare)
    cfg = json.loads((bare / "config.json").read_text())
    del cfg["architectures"]
    (bare / "config.json").write_text(json.dumps(cfg))
    again = load_model(bare)
    assert again.spec.is_causal_lm and again.architecture == "Qwen3ForCausalLM"
    assert [t.generated_ids.tolist() for t in generate_greedy(again, prompts, NEW)] == [
        t.generated_ids.tolist() for t in texts]

    classifier = tmp_path / "classifier"  # the same config with a classifier's weights (score, no lm_head)
    torch.manual_seed(0)
    head = AutoModelForSequenceClassification.from_config(reference_model(home, family).config)
    head.save_pretrained(classifier)
    cfg = json.loads((classifier / "config.json").read_text())
    del cfg["architectures"]  # save_pretrained writes the class's name
    (classifier / "config.json").write_text(json.dumps(cfg))
    shutil.copy(path / "tokenizer.json", classifier / "tokenizer.json")
    assert not load_model(classifier).spec.is_causal_lm
