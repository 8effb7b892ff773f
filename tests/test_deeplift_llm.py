"""DeepLIFT and DeepLIFT-SHAP on causal LMs (issue 22): exact rules on every block of a decoder.

Known answers: summation to delta per generated token (Σ values[t] = log p(token | x) - log p(token |
reference), the reference's log-probability computed by transformers itself), SHAP's additivity
against the mean over its background, each block (RMSNorm, SiLU-gated MLP, rotary + grouped-query
attention with a causal mask, GPT-2's block) alone, Captum's DeepLift where its rules apply (a ReLU
MLP), and on the keycopy sample the key token gets the largest share.
"""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("transformers")

from causal_models import one_thread, write_hf_gpt2, write_hf_llama  # noqa: E402, F401 - one_thread: a fixture
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig  # noqa: E402
from transformers.models.gpt2.modeling_gpt2 import GPT2MLP, GPT2Block  # noqa: E402
from transformers.models.llama.modeling_llama import (  # noqa: E402
    LlamaAttention,
    LlamaMLP,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
)

from explain.cli import main  # noqa: E402
from explain.errors import UsageError  # noqa: E402
from explain.generation.attribution import METHODS, attribute_generation  # noqa: E402
from explain.generation.deeplift import RANDOM_REFERENCES, RANDOM_SEED  # noqa: E402
from explain.generation.greedy import generate_greedy  # noqa: E402
from explain.generation.prompts import encode_texts  # noqa: E402
from explain.loading.loader import load_model  # noqa: E402
from explain.model import LoadedModel  # noqa: E402
from explain.output.methods import get_method  # noqa: E402
from explain.spec import InputSpec  # noqa: E402

warnings.filterwarnings("ignore", category=UserWarning)
PROMPTS = ["the cat sat on", "two plus two is four and"]
NEW = 4
TOLERANCE = 1e-4  # float32

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def lm(request, tmp_path_factory):
    """(kind, folder, loaded model in its model process, transformers' own model, greedy texts)."""
    folder = tmp_path_factory.mktemp(request.param) / request.param
    folder.mkdir()
    (write_hf_llama if request.param == "llama" else write_hf_gpt2)(folder)
    model = load_model(folder)
    reference = AutoModelForCausalLM.from_pretrained(folder).eval()
    texts = generate_greedy(model, encode_texts(PROMPTS, model.spec), NEW)
    return request.param, folder, model, reference, texts


@pytest.fixture(scope="module")
def deeplift(lm):
    return attribute_generation(lm[2], lm[4], "deeplift", baseline="pad")


@pytest.fixture(scope="module")
def deep_shap(lm):
    return attribute_generation(lm[2], lm[4], "deep_shap")


def _logprobs(ref: nn.Module, embeds: torch.Tensor, text) -> np.ndarray:
    """transformers' log p(generated token t | embeds[:P + t]) for every t: [T] (embeds [L, D])."""
    p, targets = len(text.prompt_ids), torch.as_tensor(text.generated_ids)
    with torch.no_grad():
        logits = ref(inputs_embeds=embeds[None]).logits[0]  # [L, V]
    rows = torch.log_softmax(logits[p - 1: p - 1 + len(targets)].double(), -1)  # [T, V]
    return rows.gather(1, targets[:, None])[:, 0].numpy()


def _pad_id(ref: nn.Module) -> int:
    return ref.config.pad_token_id if ref.config.pad_token_id is not None else ref.config.eos_token_id


def test_the_methods_are_offered_for_a_generation():
    assert {"deeplift", "deep_shap"} <= set(METHODS)


def test_deeplift_adds_up_to_the_log_probability_change_of_every_generated_token(lm, deeplift):
    _kind, _folder, _model, ref, texts = lm
    for text, attr in zip(texts, deeplift):
        p, t_count = len(text.prompt_ids), len(text.generated_ids)
        length = p + t_count - 1
        assert attr.values.shape == (t_count, p + t_count) and attr.params == {"baseline": "pad"}
        assert all(not attr.values[t, p + t:].any() for t in range(t_count))  # nothing at or after the token
        np.testing.assert_allclose(attr.logprobs, text.logprobs, atol=1e-5)
        pad = ref.get_input_embeddings()(torch.full((length,), _pad_id(ref)))  # [L, D]
        np.testing.assert_allclose(attr.baseline_logprobs, _logprobs(ref, pad, text), atol=1e-5)  # transformers' own
        gap = np.abs(attr.values.sum(1) - (attr.logprobs.astype(np.float64) - attr.baseline_logprobs))
        assert gap.max() <= TOLERANCE and attr.completeness_error.max() <= TOLERANCE
        assert np.abs(attr.values).max() > 0.05  # not trivially zero


def test_deep_shap_adds_up_to_the_mean_over_its_background(lm, deep_shap):
    _kind, _folder, model, ref, texts = lm
    vocab = ref.get_input_embeddings().weight.shape[0]
    for text, attr in zip(texts, deep_shap):
        length = len(text.input_ids) - 1
        table = ref.get_input_embeddings()
        random_ids = torch.randint(0, vocab, (RANDOM_REFERENCES, length), generator=torch.Generator().manual_seed(RANDOM_SEED))
        ids = [torch.full((length,), _pad_id(ref))]
        if "unk" in attr.params["background"]:
            ids.append(torch.full((length,), model.spec.vocabulary.index("<unk>")))
        background = [_logprobs(ref, table(i), text) for i in [*ids, *random_ids]]  # [B] x [T]
        assert len(background) == len(ids) + RANDOM_REFERENCES
        np.testing.assert_allclose(attr.baseline_logprobs, np.mean(background, 0), atol=1e-5)
        gap = np.abs(attr.values.sum(1) - (attr.logprobs.astype(np.float64) - np.mean(background, 0)))
        assert gap.max() <= TOLERANCE and attr.completeness_error.max() <= TOLERANCE


def test_an_unknown_method_names_the_rule_methods(lm):
    with pytest.raises(UsageError, match="deeplift, deep_shap"):
        attribute_generation(lm[2], lm[4], "deep_lift")


# --------------------------------------------------------------------------
# each block alone: DeepLift over a flattened [L * D] input through the project's rule engine
# --------------------------------------------------------------------------
L, D = 5, 16
DEEPLIFT = get_method("deeplift")


class _Block(nn.Module):
    """[N, L * D] -> a block over L positions of width D -> a fixed readout [N, 3]."""

    def __init__(self, block: nn.Module, call):
        super().__init__()
        torch.manual_seed(1)
        self.block, self.call, self.readout = block.eval(), call, nn.Linear(L * D, 3)

    def forward(self, x):  # [N, L * D] -> [N, 3]
        h = self.call(self.block, x.reshape(x.shape[0], L, D))  # [N, L, D]
        return self.readout(h.reshape(x.shape[0], -1))


def _llama_config(**kw) -> LlamaConfig:
    return LlamaConfig(hidden_size=D, intermediate_size=2 * D, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=32, attn_implementation=kw.pop("attn", "sdpa"), **kw)


def _attend(rope: nn.Module):
    causal = torch.full((L, L), float("-inf")).triu(1)[None, None]  # [1, 1, L, L] additive causal mask

    def call(block, h):
        cos_sin = rope(h, torch.arange(L)[None].expand(h.shape[0], L))  # rotary: positions only
        return block(h, position_embeddings=cos_sin, attention_mask=causal)[0]

    return call


def _blocks() -> dict[str, _Block]:
    torch.manual_seed(0)
    eager, sdpa = _llama_config(attn="eager"), _llama_config()
    gpt2 = GPT2Config(n_embd=D, n_head=4, n_positions=32, attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0,
                      attn_implementation="sdpa")
    return {
        "rms_norm": _Block(LlamaRMSNorm(D), lambda b, h: b(h * 3.0)),
        "silu_gated_mlp": _Block(LlamaMLP(sdpa), lambda b, h: b(h)),
        "rotary_gqa_causal_attention_sdpa": _Block(LlamaAttention(sdpa, 0), _attend(LlamaRotaryEmbedding(sdpa))),
        "rotary_gqa_causal_attention_eager": _Block(LlamaAttention(eager, 0), _attend(LlamaRotaryEmbedding(eager))),
        "gpt2_layer_norm_gelu_block": _Block(GPT2Block(gpt2, 0), lambda b, h: _first(b(h))),
    }


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _deeplift(block: nn.Module, x: np.ndarray, ref: np.ndarray):
    model = LoadedModel(module=block, format="safetensors", sha256=f"test-{id(block)}", spec=InputSpec("tabular", (L * D,)))
    return DEEPLIFT.explain(model, x, target=0, use_cache=False, baseline="file", baseline_array=ref)


@pytest.mark.parametrize("name", list(_blocks()))
def test_each_transformer_block_alone_adds_up(name):
    block = _blocks()[name]
    rng = np.random.default_rng(0)
    x, ref = rng.normal(size=(3, L * D)).astype(np.float32), rng.normal(size=(3, L * D)).astype(np.float32)
    result = _deeplift(block, x, ref)
    with torch.no_grad():
        want = block(torch.as_tensor(x))[:, 0] - block(torch.as_tensor(ref))[:, 0]
    np.testing.assert_allclose(result.output - result.base_value, want.numpy(), atol=1e-5)
    gap = np.abs(result.values.sum(1) - want.numpy())
    print(f"{name}: largest |Σ values - Δf| {gap.max():.2e} (Δf up to {float(want.abs().max()):.2f})")
    assert gap.max() <= 1e-5 * (1 + float(want.abs().max()))
    assert not any("no exact" in n for n in result.notes)


def test_a_relu_mlp_block_equals_captums_deeplift():
    """Where Captum's module rules see every nonlinearity (GPT-2's MLP with an nn.ReLU), the values are Captum's."""
    from captum.attr import DeepLift

    torch.manual_seed(0)
    block = _Block(GPT2MLP(4 * D, GPT2Config(n_embd=D, activation_function="relu", resid_pdrop=0.0)), lambda b, h: b(h))
    assert isinstance(block.block.act, nn.ReLU)
    rng = np.random.default_rng(1)
    x, ref = rng.normal(size=(4, L * D)).astype(np.float32), rng.normal(size=(4, L * D)).astype(np.float32)
    ours = _deeplift(block, x, ref)
    theirs = DeepLift(block).attribute(torch.as_tensor(x), baselines=torch.as_tensor(ref), target=0)
    np.testing.assert_allclose(ours.values, theirs.detach().numpy(), atol=1e-5)


# --------------------------------------------------------------------------
# the command line and the keycopy sample
# --------------------------------------------------------------------------
def test_the_command_line_explains_with_deeplift(tmp_path, capsys):
    folder = write_hf_gpt2(tmp_path / "gpt2")
    (tmp_path / "p.txt").write_text("\n".join(PROMPTS))
    out = tmp_path / "g.npz"
    code = main(["generate", str(folder), "--prompts", str(tmp_path / "p.txt"), "--max-new-tokens", "2",
                 "--method", "deeplift", "--out", str(out)])
    printed = json.loads(capsys.readouterr().out)
    assert code == 0 and printed["method"] == "deeplift" and printed["max_completeness_error"] <= TOLERANCE
    with np.load(out) as saved:
        assert saved["values"].shape[:2] == (len(PROMPTS), 2)


def test_deeplift_puts_the_largest_share_on_the_key_of_the_keycopy_sample():
    from sample_models import keycopy, load_sample

    model = load_sample("keycopy")
    prompts, _answers = keycopy.make_prompts(60, 23)  # the test seed: never trained on
    texts = generate_greedy(model, encode_texts(prompts, model.spec), 1)
    attrs = attribute_generation(model, texts, "deeplift", baseline="pad")
    on_key = np.mean([int(np.argmax(a.values[0])) == keycopy.KEY_POSITION for a in attrs])
    print(f"DeepLIFT argmax on the key for {on_key:.2f} of {len(attrs)} prompts")
    assert on_key >= 0.9
    assert max(float(a.completeness_error.max()) for a in attrs) <= TOLERANCE


def test_the_generate_page_explains_with_deeplift(tmp_path):
    """The page lists deeplift, takes its baseline and shows the matrix `attribute_generation` computes,
    with the completeness errors (AppTest, a tiny Llama uploaded as a zip)."""
    import hashlib
    import zipfile
    from pathlib import Path

    from streamlit.testing.v1 import AppTest
    from test_page_generate import _array  # a plotly JSON array, typed or not

    from ui.state import UploadedBlob

    folder = write_hf_llama(tmp_path / "llama")
    with zipfile.ZipFile(tmp_path / "llama.zip", "w") as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f.name)
    data = (tmp_path / "llama.zip").read_bytes()
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app.py"), default_timeout=300)
    at.session_state["gb_source"] = "upload"
    at.session_state["gb_model_upload"] = UploadedBlob("llama.zip", data, hashlib.sha256(data).hexdigest())
    at.switch_page("pages/views/generate.py")
    at.run()
    assert {"deeplift", "deep shap"} <= set(at.selectbox(key="gb_gen_method").options)  # labels
    at.text_area(key="gb_gen_prompt").input(PROMPTS[0])
    at.number_input(key="gb_gen_max_new").set_value(2)
    at.selectbox(key="gb_gen_method").set_value("deeplift").run()
    assert not at.selectbox(key="gb_gen_baseline").disabled and at.number_input(key="gb_gen_steps").disabled
    at.checkbox(key="gb_gen_quality").uncheck()
    at.button(key="gb_gen_run").click().run()
    assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]

    model = load_model(folder)
    want = attribute_generation(model, generate_greedy(model, encode_texts(PROMPTS[:1], model.spec), 2),
                                "deeplift", baseline="pad")[0]
    z = _array(json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]["z"])  # [T, P + T]
    shown = np.isfinite(z)
    np.testing.assert_allclose(z[shown], want.values[shown], rtol=1e-4, atol=1e-5)
    captions = " ".join(c.value.replace("\\", "") for c in at.caption)
    assert "deeplift · baseline pad" in captions and "Completeness error per token" in captions


def test_chunks_of_one_row_give_the_same_values(lm, deep_shap):
    """Results do not depend on the engine's chunking (deep_shap: several rows per token, one chunk by default)."""
    one = attribute_generation(lm[2], lm[4][:1], "deep_shap", batch_size=1)[0]
    assert "grid in chunks of 1 row" in one.notes
    np.testing.assert_allclose(one.values, deep_shap[0].values, atol=1e-5)  # float32 rounding of other shapes
    np.testing.assert_allclose(one.baseline_logprobs, deep_shap[0].baseline_logprobs, atol=1e-5)


def test_a_bfloat16_model_runs_its_exact_rules_on_a_float32_copy_on_the_cpu(tmp_path):
    """It used to be refused (the rules need float32); on the CPU the rules now run on a float32 copy of the
    weights (`causal_lm.attribution_lm`), add up, and say so (on a GPU the refusal stands)."""
    folder = write_hf_llama(tmp_path / "llama")
    AutoModelForCausalLM.from_pretrained(folder).to(torch.bfloat16).save_pretrained(folder)
    model = load_model(folder)
    texts = generate_greedy(model, encode_texts(PROMPTS[:1], model.spec), 1)
    attr = attribute_generation(model, texts, "deeplift", device="cpu")[0]
    assert attr.params["dtype"] == "float32" and attr.params["weights_dtype"] == "bfloat16"
    assert float(attr.completeness_error.max()) <= TOLERANCE


# --------------------------------------------------------------------------
# the decoder families transformers ships, each from a tiny config
# --------------------------------------------------------------------------
def _family_config(name: str):
    import transformers

    common = dict(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=64)
    gqa = dict(num_key_value_heads=2, **common)
    return {
        "mistral": lambda: transformers.MistralConfig(**gqa),  # sliding-window attention
        "qwen2": lambda: transformers.Qwen2Config(**gqa),
        "qwen3": lambda: transformers.Qwen3Config(head_dim=8, **gqa),  # RMSNorm on q and k
        "gemma2": lambda: transformers.Gemma2Config(head_dim=8, **gqa),  # soft-capped attention and logits, type_as
        "phi3": lambda: transformers.Phi3Config(pad_token_id=0, **gqa),  # fused qkv and gate_up
        "phi": lambda: transformers.PhiConfig(**common),  # partial rotary, parallel attention + MLP, LayerNorm
        "opt": lambda: transformers.OPTConfig(vocab_size=50, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                                              num_attention_heads=4, word_embed_proj_dim=32, max_position_embeddings=64),
        "gpt_neox": lambda: transformers.GPTNeoXConfig(**common),
    }[name]()


@pytest.mark.parametrize("family", ["mistral", "qwen2", "qwen3", "gemma2", "phi3", "phi", "opt", "gpt_neox"])
def test_every_decoder_family_gets_exact_rules(family):
    """No op without an exact rule, the graph reproduces the model's log-probability, and the values add up."""
    from explain.generation.deeplift import FLAVOUR, decoder_graph, pair_logprobs
    from explain.output.aten_rules import plan_rules

    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(_family_config(family)).eval()
    with torch.no_grad():
        for p in lm.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    captured = decoder_graph(lm, 32)
    plan = plan_rules(captured.module.graph, False, FLAVOUR)
    assert plan.unruled == []
    table = lm.get_input_embeddings()
    with torch.no_grad():
        x, ref = table(torch.tensor([[3, 14, 15, 9, 26, 5]])).float(), table(torch.zeros(1, 6, dtype=torch.long)).float()
        own = torch.log_softmax(lm(inputs_embeds=x).logits[0, 5].float(), -1)[7]  # log p(7 | x) at position 5
        own_ref = torch.log_softmax(lm(inputs_embeds=ref).logits[0, 5].float(), -1)[7]
    with torch.enable_grad():
        logp, logp_ref, pairs = pair_logprobs(captured.module, plan, lm, x, ref, torch.tensor([5]), torch.tensor([7]))
        (grad,) = torch.autograd.grad(logp.sum(), pairs.attribution_leaf)  # [1, 6, D] multipliers
    values = (grad * (pairs.attribution_leaf.detach() - pairs.attribution_ref)).sum(-1)  # [1, 6]
    assert abs(float(logp - own)) <= 1e-5 and abs(float(logp_ref - own_ref)) <= 1e-5
    assert abs(float(values.sum()) - float(own - own_ref)) <= 1e-5


def test_a_pt2_causal_lm_loads_with_a_causal_spec_and_refuses_a_classifiers_in_one_line(tmp_path):
    """A .pt2 whose signature is token ids [N, L] -> logits [N, L, V] loads with a causal-LM spec
    (`explain.loading.export_lm`); a classifier's spec, which used to fail in the sandbox on the logits' shape,
    is refused in one line saying what to give instead."""
    from explain.errors import GlassboxError
    from explain.loading.export import CAUSAL_PT2

    folder = write_hf_llama(tmp_path / "llama")
    lm = AutoModelForCausalLM.from_pretrained(folder).eval()

    class Logits(nn.Module):
        def __init__(self):
            super().__init__()
            self.lm = lm

        def forward(self, ids):  # [N, L] -> [N, L, V]
            return self.lm(input_ids=ids, use_cache=False).logits

    dims = ({0: torch.export.Dim("batch"), 1: torch.export.Dim("length", min=2, max=32)},)
    program = torch.export.export(Logits(), (torch.ones(2, 5, dtype=torch.long),), dynamic_shapes=dims)
    torch.export.save(program, tmp_path / "lm.pt2")
    vocabulary = [f"t{i}" for i in range(lm.config.vocab_size)]
    for task in ("causal_lm", "classification"):
        spec = {"modality": "text", "input_shape": [8], "dtype": "int64", "task": task, "vocabulary": vocabulary,
                **({"class_names": ["a", "b"]} if task == "classification" else {})}
        (tmp_path / "spec.json").write_text(json.dumps(spec))
        if task == "causal_lm":
            assert load_model(tmp_path / "lm.pt2", tmp_path / "spec.json").spec.is_causal_lm
            continue
        with pytest.raises(GlassboxError) as caught:
            load_model(tmp_path / "lm.pt2", tmp_path / "spec.json")
        assert CAUSAL_PT2 in str(caught.value) and "\n" not in str(caught.value)
