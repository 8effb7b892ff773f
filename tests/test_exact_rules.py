"""Exact DeepLift / DeepSHAP rules on transformer blocks (issue 11).

Known answers: the two-factor Shapley split of a product, and additivity --
Σ values = f(x) - E[f(b)] -- on the bundled sentiment transformer, an
``nn.TransformerEncoder`` and a tiny Hugging Face BERT built from a config,
in every format they load as. ``shap_deep`` still equals SHAP where SHAP
works (tests/test_shap_deep.py).
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from explain.model import LoadedModel
from explain.output.methods import get_method
from explain.spec import InputSpec

warnings.filterwarnings("ignore", category=UserWarning)
warnings.filterwarnings("ignore", category=FutureWarning)
SHAP_DEEP, DEEPLIFT = get_method("shap_deep"), get_method("deeplift")


def _loaded(module, spec: InputSpec, fmt: str = "safetensors", **kw) -> LoadedModel:
    return LoadedModel(module=module, format=fmt, sha256=f"test-{id(module)}-{fmt}", spec=spec, **kw)


def _formats(module: nn.Module, spec: InputSpec, example: torch.Tensor) -> dict[str, LoadedModel]:
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
    return {
        "eager": _loaded(module, spec),
        "torchscript": _loaded(torch.jit.script(module), spec, "torchscript"),
        "pt2": _loaded(program.module(), spec, "export", exported_program=program),
    }


def _gap(result) -> float:
    """Largest |Σ values - (f(x) - E f(b))| over the inputs (absolute)."""
    total = result.values.reshape(len(result.values), -1).sum(1)
    return float(np.abs(total - (result.output - result.base_value)).max())


# --------------------------------------------------------------------------
# the rules themselves
# --------------------------------------------------------------------------
class _Product(nn.Module):
    def forward(self, x):  # [N, 2] -> [N, 1]
        return (x[:, :1] * x[:, 1:]).reshape(-1, 1)


def test_product_is_split_as_shapley_of_the_two_factors():
    x = np.array([[2.0, 3.0], [-1.0, 4.0]], np.float32)
    ref = np.array([[1.0, 1.0], [0.0, 0.0]], np.float32)
    result = DEEPLIFT.explain(_loaded(_Product(), InputSpec("tabular", (2,))), x, use_cache=False,
                              baseline="file", baseline_array=ref, target=0)
    # Δa · mean(b) and mean(a) · Δb
    want = np.array([[1 * (3 + 1) / 2, (2 + 1) / 2 * 2], [-1 * 4 / 2, -1 / 2 * 4]])
    np.testing.assert_allclose(result.values, want, atol=1e-6)
    assert _gap(result) <= 1e-6 and not any("no exact" in n for n in result.notes)


class _NormMLP(nn.Module):
    """LayerNorm + GELU + SiLU residual MLP with a gate and a division (the issue's 0.11 case)."""

    def __init__(self):
        super().__init__()
        self.inp, self.norm = nn.Linear(6, 16), nn.LayerNorm(16)
        self.up, self.gate, self.down = nn.Linear(16, 32), nn.Linear(16, 32), nn.Linear(32, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x):  # [N, 6] -> [N, 3]
        h = self.inp(x)
        y = self.norm(h)
        h = h + self.down(nn.functional.gelu(self.up(y)) * nn.functional.silu(self.gate(y)))
        h = h / (1 + h.pow(2).mean(-1, keepdim=True)).sqrt()
        return self.head(torch.softmax(h, -1) * h)


def test_layer_norm_gelu_silu_gate_division_add_up_in_every_format():
    torch.manual_seed(0)
    module = _NormMLP().eval()
    x = 2 * torch.randn(10, 6, generator=torch.Generator().manual_seed(1))
    models = _formats(module, InputSpec("tabular", (6,)), x[:2])
    results = {fmt: SHAP_DEEP.explain(m, x[:4].numpy(), use_cache=False, background=x[4:].numpy())
               for fmt, m in models.items()}
    for fmt, result in results.items():
        assert _gap(result) <= 1e-4, fmt
        assert not any("no exact" in n for n in result.notes), result.notes
        assert np.abs(result.values - results["eager"].values).max() <= 1e-4
    assert np.abs(results["eager"].output - results["eager"].base_value).max() > 0.03  # a real change explained


# --------------------------------------------------------------------------
# transformer encoders
# --------------------------------------------------------------------------
def test_sentiment_sample_adds_up_in_every_format():
    from sample_models import load_sample, sample_inputs

    x = sample_inputs("sentiment")["inputs"][:6]
    for fmt in ("safetensors", "torchscript", "export"):
        model = load_sample("sentiment", fmt)
        against_inputs = SHAP_DEEP.explain(model, x[:3], use_cache=False, background=x[3:])
        against_padding = SHAP_DEEP.explain(model, x[:3], use_cache=False, background_kind="zeros")
        paired = DEEPLIFT.explain(model, x[:3], use_cache=False)
        for result in (against_inputs, against_padding, paired):
            assert result.values.shape == (3, 16)
            assert _gap(result) <= 1e-3, (fmt, result.method, _gap(result))
            assert not any("no exact" in n for n in result.notes), result.notes
            assert np.abs(result.output - result.base_value).max() > 0.1


class _Encoder(nn.Module):
    """nn.TransformerEncoder (GELU, post-norm and pre-norm layers) over float sequences [N, 1, L, D]."""

    def __init__(self):
        super().__init__()
        post = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True, activation="gelu")
        pre = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True, norm_first=True)
        self.post = nn.TransformerEncoder(post, 1, enable_nested_tensor=False)
        self.pre = nn.TransformerEncoder(pre, 1, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, x):  # [N, 1, L, D] -> [N, 3]
        return self.head(self.pre(self.post(x[:, 0])).mean(1))


def test_transformer_encoder_adds_up_in_every_format():
    torch.manual_seed(2)
    module = _Encoder().eval()
    x = 1.5 * torch.randn(9, 1, 5, 16, generator=torch.Generator().manual_seed(3))
    models = _formats(module, InputSpec("image", (1, 5, 16)), x[:2])
    results = {fmt: SHAP_DEEP.explain(m, x[:3].numpy(), use_cache=False, background=x[3:].numpy())
               for fmt, m in models.items()}
    for fmt, result in results.items():
        assert _gap(result) <= 1e-3, (fmt, _gap(result))
        assert not any("no exact" in n for n in result.notes), result.notes
        assert np.abs(result.values - results["eager"].values).max() <= 1e-4
    assert np.abs(results["eager"].output - results["eager"].base_value).max() > 0.05


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    pytest.importorskip("transformers")
    from transformers import BertConfig, BertForSequenceClassification

    from explain.loading.loader import load_model

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"the a good bad movie was great awful not very".split()]
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=32, pad_token_id=0,
                     initializer_range=0.3,  # logits that move with the text
                     id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
    path = tmp_path_factory.mktemp("hf") / "bert"
    BertForSequenceClassification(cfg).eval().save_pretrained(path)
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    ids = np.zeros((5, 32), dtype=np.int64)
    for row, tokens in enumerate([[2, 5, 7, 9, 13, 3], [2, 6, 8, 3], [2, 5, 6, 7, 8, 9, 10, 3], [2, 11, 3], [2, 12, 14, 3]]):
        ids[row, : len(tokens)] = tokens
    return load_model(path), ids


def test_hugging_face_bert_adds_up(bert):
    model, ids = bert
    against_inputs = SHAP_DEEP.explain(model, ids[:2], use_cache=False, background=ids[2:])
    against_padding = SHAP_DEEP.explain(model, ids[:2], use_cache=False, background_kind="zeros")
    paired = DEEPLIFT.explain(model, ids[:2], use_cache=False)
    for result in (against_inputs, against_padding, paired):
        assert result.values.shape == (2, 32)
        assert _gap(result) <= 1e-3, (result.method, _gap(result))
        assert not any("no exact" in n for n in result.notes), result.notes
        assert np.abs(result.output - result.base_value).max() > 0.1
        assert np.abs(result.values[:, 8:]).max() <= 1e-6  # padding in every row: no share
    # the padding masks' share goes to the tokens that open them: the values stay bounded
    assert np.abs(against_padding.values).max() < 10 * np.abs(against_padding.output - against_padding.base_value).max()
