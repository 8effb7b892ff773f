"""Attention capture for eager, TorchScript and .pt2 models, and the numbers derived from it."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from explain.errors import IncompatibleInput
from explain.inputs.text import real_length
from explain.loading.architectures import build_architecture
from explain.model import LoadedModel
from explain.spec import InputSpec
from explain.structure.attention import attention_unavailable_reason, capture_attention
from explain.structure.attention_export import rewrite_attention_graph
from explain.structure.attention_summary import (
    attention_to_tokens,
    compute_rollout,
    label_tokens,
    pool_attention,
    summarise_heads,
)
from tests.conftest import in_process

ROOT = Path(__file__).resolve().parent.parent
SPEC = InputSpec("text", (16,), dtype="int64", vocabulary=[f"w{i}" for i in range(64)])


def _ids(seed: int = 0, n: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(3, 60, (n, 16), generator=g)  # the sentiment vocabulary has 60 tokens
    x[:, 0] = 2  # <cls>
    x[0, 9:] = 0  # padding
    x[1, 5:] = 0
    return x


def reference_attention(model: nn.Module, ids: torch.Tensor) -> np.ndarray:
    """[layer, batch, head, q, k] by calling each layer's attention with need_weights=True directly."""
    pad = ids == model.pad_id
    h = model.embedding(ids) + model.pos_embedding[:, : ids.shape[1]]
    out = []
    with torch.no_grad():
        for layer in model.encoder.layers:
            a = layer.norm1(h) if layer.norm_first else h
            _, w = layer.self_attn(a, a, a, key_padding_mask=pad, need_weights=True, average_attn_weights=False)
            out.append(w)
            h = layer(h, src_key_padding_mask=pad)
    return torch.stack(out).numpy()


SENTIMENT = ROOT / "sample_models" / "sentiment"
FILES = {"safetensors": "model.safetensors", "torchscript": "model.torchscript.pt", "export": "model.pt2",
         "static": "model_static.pt2"}


@pytest.fixture(scope="module")
def text_model():
    """The sentiment sample as eager module plus every shipped format, loaded as a user's files are."""
    from explain.loading.loader import load_model

    models = {fmt: load_model(SENTIMENT / file) for fmt, file in FILES.items()}
    return models["safetensors"].module, models


@pytest.fixture(scope="module")
def sentiment_inputs() -> np.ndarray:
    with np.load(SENTIMENT / "samples.npz", allow_pickle=False) as z:
        return z["inputs"]


@pytest.mark.parametrize("fmt", list(FILES))
def test_captured_attention_equals_need_weights(text_model, sentiment_inputs, fmt):
    model, models = text_model
    x = torch.from_numpy(sentiment_inputs[:6])
    maps = capture_attention(models[fmt], x.numpy())
    ref = reference_attention(model, x)
    n_layers, heads = len(model.encoder.layers), model.encoder.layers[0].self_attn.num_heads
    assert heads >= 2 and maps.weights.shape == (n_layers, 6, heads, 16, 16) == ref.shape
    assert maps.layer_names == [f"encoder.layers.{i}.self_attn" for i in range(n_layers)]
    np.testing.assert_allclose(maps.weights.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(maps.weights, ref, atol=1e-5)
    pad = (x == 0).numpy()  # [N, L]
    assert np.all(maps.weights.transpose(1, 0, 2, 3, 4)[pad[:, None, None, None, :].repeat(16, 3)
                  .repeat(heads, 2).repeat(n_layers, 1)] == 0)  # padded keys get nothing


def test_cls_attends_to_sentiment_words(text_model, sentiment_inputs):
    """The classifying position (<cls>, position 0) looks at the sentiment words: measured per key,
    averaged over the shipped inputs, in the last layer (head mean) and in the rollout."""
    from sample_models.data import SENTIMENT_WORDS, VOCABULARY

    _, models = text_model
    words = {i for i, tok in enumerate(VOCABULARY) if tok in SENTIMENT_WORDS}
    maps = capture_attention(models["safetensors"], sentiment_inputs)
    on_words, elsewhere = attention_to_tokens(maps.weights[-1].mean(axis=1), sentiment_inputs, words)
    assert on_words > 2 * elsewhere, (on_words, elsewhere)  # measured: 0.34 vs 0.067
    on_words, elsewhere = attention_to_tokens(compute_rollout(maps.weights), sentiment_inputs, words)
    assert on_words > 2 * elsewhere, (on_words, elsewhere)  # measured: 0.22 vs 0.055


def test_torchscript_with_grad_uses_the_sdpa_path_and_agrees(text_model):
    model, models = text_model
    x = _ids(2)
    with torch.enable_grad():  # the scripted encoder then skips its fused fast path
        maps = capture_attention(models["torchscript"], x.numpy())
    np.testing.assert_allclose(maps.weights, reference_attention(model, x), atol=1e-5)


def test_frozen_torchscript_fast_path_gives_attention_and_flops(text_model):
    """Frozen weights make the scripted encoder take its fused kernel even with grad on:
    attention is recomputed from the kernel's inputs and its FLOPs are counted."""
    from explain.structure.layers import build_layer_table

    model, _ = text_model
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(model), buf)
    buf.seek(0)
    frozen = torch.jit.load(buf)
    for p in frozen.parameters():
        p.requires_grad_(False)
    lm = LoadedModel(frozen, "torchscript", "x", SPEC)
    x = _ids(6)
    np.testing.assert_allclose(capture_attention(lm, x.numpy()).weights, reference_attention(model, x), atol=1e-5)
    eager = build_layer_table(LoadedModel(model, "safetensors", "x", SPEC), x).total_flops
    assert build_layer_table(lm, x).total_flops == eager


def test_pre_norm_fast_path_attention(text_model):
    """The fused kernel of a norm_first encoder normalises before the projections."""
    torch.manual_seed(1)
    model = build_architecture("text_transformer", {"norm_first": True}).eval()
    frozen = torch.jit.script(model)
    for p in frozen.parameters():
        p.requires_grad_(False)
    x = _ids(7)
    maps = capture_attention(LoadedModel(frozen, "torchscript", "x", SPEC), x.numpy())
    np.testing.assert_allclose(maps.weights, reference_attention(model, x), atol=1e-5)


def test_rewritten_export_graph_keeps_the_outputs(text_model):
    model, models = text_model
    rewritten = rewrite_attention_graph(in_process(models["export"]).module)  # as inside its model process
    assert rewritten.kinds == ["sdpa", "sdpa"] and rewritten.num_outputs == 1
    x = _ids(3)
    with torch.no_grad():
        out = rewritten.module(x)
        np.testing.assert_allclose(out[0].numpy(), model(x).numpy(), atol=1e-5)
    assert len(out) == 3


def test_hooks_removed_and_fast_path_restored_after_an_error(text_model):
    model, models = text_model
    bad = _ids()
    bad[0, 3] = 999  # out of the vocabulary: the embedding raises mid-forward
    with pytest.raises(IncompatibleInput, match="raised"):
        capture_attention(models["safetensors"], bad.numpy())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert torch.backends.mha.get_fastpath_enabled()
    assert capture_attention(models["safetensors"], _ids().numpy()).num_layers == 2  # still works


class _ExplicitAttention(nn.Module):
    """Hand-written single-head attention returning (output, weights)."""

    def __init__(self, d: int = 8):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x):  # [N, L, D]
        scores = self.q(x) @ self.k(x).transpose(-2, -1) / 8 ** 0.5  # [N, L, L]
        w = torch.softmax(scores, dim=-1)
        return w @ self.v(x), w


class _TinyCustom(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.att1, self.att2 = _ExplicitAttention(), _ExplicitAttention()
        self.head = nn.Linear(8, 2)

    def forward(self, ids):
        h = self.emb(ids)
        h = h + self.att1(h)[0]
        h = h + self.att2(h)[0]
        return self.head(h[:, 0])


def test_custom_attention_modules_eager_and_export():
    torch.manual_seed(0)
    model = _TinyCustom().eval()
    spec = InputSpec("text", (6,), dtype="int64")
    x = torch.randint(1, 20, (3, 6))
    with torch.no_grad():
        h = model.emb(x)
        w1 = model.att1(h)[1]
        w2 = model.att2(h + model.att1(h)[0])[1]
    ref = torch.stack([w1, w2]).unsqueeze(2).numpy()  # [layer, batch, 1 head, q, k]
    eager = capture_attention(LoadedModel(model, "safetensors", "x", spec), x.numpy())
    assert eager.layer_names == ["att1", "att2"]
    np.testing.assert_allclose(eager.weights, ref, atol=1e-6)
    ep = torch.export.export(model, (x,))
    exported = capture_attention(LoadedModel(ep.module(), "export", "x", spec), x.numpy())
    assert exported.layer_names == ["att1", "att2"]
    np.testing.assert_allclose(exported.weights, ref, atol=1e-6)


def test_models_without_attention_are_refused_with_a_reason():
    mlp = build_architecture("tabular_mlp").eval()
    lm = LoadedModel(mlp, "safetensors", "x", InputSpec("tabular", (30,)))
    assert "no attention" in attention_unavailable_reason(lm)
    with pytest.raises(IncompatibleInput, match="no attention"):
        capture_attention(lm, np.zeros((2, 30), np.float32))
    ep = torch.export.export(mlp, (torch.zeros(2, 30),))
    lm2 = LoadedModel(ep.module(), "export", "x", InputSpec("tabular", (30,)))
    assert "no attention" in attention_unavailable_reason(lm2)
    with pytest.raises(IncompatibleInput, match="no attention"):
        capture_attention(lm2, np.zeros((2, 30), np.float32))


def test_fixed_batch_export_runs_in_chunks(text_model, sentiment_inputs):
    model, models = text_model
    assert models["static"].fixed_batch_size == 1
    x = torch.from_numpy(sentiment_inputs[:3])
    maps = capture_attention(models["static"], x.numpy())
    assert maps.weights.shape[1] == 3
    np.testing.assert_allclose(maps.weights, reference_attention(model, x), atol=1e-5)


# -- derived numbers ---------------------------------------------------------------
def test_head_summary_known_answers():
    n = 4
    uniform = np.full((1, 1, 1, n, n), 1 / n)
    onehot = np.zeros((1, 1, 1, n, n))
    onehot[..., 0] = 1.0
    rows = summarise_heads(np.concatenate([uniform, onehot], axis=2), ["L0"])
    assert rows[0]["entropy"] == pytest.approx(np.log(n)) and rows[0]["normalised_entropy"] == pytest.approx(1.0)
    assert rows[0]["max_weight"] == pytest.approx(1 / n) and rows[0]["first_token_weight"] == pytest.approx(1 / n)
    assert rows[1]["entropy"] == pytest.approx(0.0, abs=1e-9) and rows[1]["first_token_weight"] == 1.0
    # padding queries are ignored: only the first 2 rows count
    w = uniform.copy()
    w[..., 2:, :] = onehot[..., 2:, :]
    assert summarise_heads(w, ["L0"], lengths=np.array([2]))[0]["entropy"] == pytest.approx(np.log(n))


def test_rollout_and_pooling():
    rng = np.random.default_rng(0)
    w = rng.random((3, 2, 2, 5, 5))
    w /= w.sum(-1, keepdims=True)
    roll = compute_rollout(w)
    assert roll.shape == (2, 5, 5)
    np.testing.assert_allclose(roll.sum(-1), 1.0)
    identity = np.broadcast_to(np.eye(5), (1, 1, 1, 5, 5))
    np.testing.assert_allclose(compute_rollout(identity)[0], np.eye(5))

    long = rng.random((300, 300))
    long /= long.sum(-1, keepdims=True)
    pooled, labels = pool_attention(long, [f"t{i}" for i in range(300)], max_tokens=128)
    assert pooled.shape == (100, 100) and len(labels) == 100  # blocks of 3
    np.testing.assert_allclose(pooled.sum(-1), 1.0)
    assert labels[0] == "t0…t2 (3)"
    assert np.isclose(pooled[0, 0], long[0:3, 0:3].sum(1).mean())


def test_token_helpers():
    assert label_tokens(SPEC, np.array([2, 5, 5, 0])) == ["w2", "w5", "w5·2", "w0"]
    assert real_length(np.array([2, 7, 9, 0, 0])) == 3
    w = np.zeros((1, 4, 4))
    w[0, 0] = [0.1, 0.6, 0.3, 0.0]
    ids = np.array([[2, 10, 11, 0]])
    assert attention_to_tokens(w, ids, {10}) == (pytest.approx(0.6), pytest.approx(0.3))


# -- CLI -------------------------------------------------------------------------------
def _run_cli(capsys, *args: str) -> tuple[int, str, str]:
    from explain.cli import main

    code = main(["attention", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_writes_attention_and_refuses_models_without(tmp_path, text_model, sentiment_inputs, capsys):
    model, _ = text_model
    out = tmp_path / "att.npz"
    code, stdout, stderr = _run_cli(capsys, str(SENTIMENT / "model.pt2"), "--inputs", str(SENTIMENT / "samples.npz"),
                                    "--out", str(out))
    assert code == 0, stderr
    result = json.loads(stdout)
    heads = model.encoder.layers[0].self_attn.num_heads
    assert (result["layers"], result["heads"], result["tokens"]) == (len(model.encoder.layers), heads, 16)
    with np.load(out, allow_pickle=False) as z:
        assert z["attention"].shape == (result["layers"], len(sentiment_inputs), heads, 16, 16)
        assert list(z["layer_names"]) == result["layer_names"]
        ref = reference_attention(model, torch.from_numpy(sentiment_inputs))
        np.testing.assert_allclose(z["attention"], ref, atol=1e-5)

    cancer = ROOT / "sample_models" / "cancer"
    code, stdout, stderr = _run_cli(capsys, str(cancer / "model.safetensors"), "--inputs", str(cancer / "samples.npz"),
                                    "--out", str(tmp_path / "no.npz"))
    assert code == 3
    assert stdout == "" and len(stderr.strip().splitlines()) == 1 and "no attention" in stderr
    assert not (tmp_path / "no.npz").exists()


# --------------------------------------------------------------------------
# image models: the tokens are patches of the image (issue 20, item 2)
# --------------------------------------------------------------------------
@pytest.mark.parametrize("tokens,shape,want", [
    (197, (3, 224, 224), (14, 14, 1)),  # ViT-B/16: [CLS] + 14 x 14 patches
    (5, (3, 16, 16), (2, 2, 1)),  # the tiny test ViT: [CLS] + 2 x 2
    (196, (3, 224, 224), (14, 14, 0)),  # patches only (mean-pooled)
    (198, (3, 224, 224), (14, 14, 2)),  # DeiT: [CLS] + distillation token
    (9, (3, 32, 16), (4, 2, 1)),  # a 2:1 image: 4 rows of 2 patches
])
def test_patch_grid_splits_tokens_into_leading_tokens_and_the_image_grid(tokens, shape, want):
    from explain.structure.attention import patch_grid

    grid = patch_grid(tokens, shape)
    assert (grid.rows, grid.cols, grid.extra) == want and grid.num_tokens == tokens


def test_patch_grid_is_none_when_no_split_fits_the_image():
    from explain.structure.attention import patch_grid

    assert patch_grid(3, (3, 16, 16)) is None  # 2 or 3 patches: no square grid
    assert patch_grid(23, (3, 16, 16)) is None  # 22, 23, 21 or 18 patches: none square
    assert patch_grid(65, (3, 16, 32)) is None  # 64 patches, but 8 x 8 is not 1:2


def test_patch_labels_name_patches_by_row_and_column():
    from explain.structure.attention import PatchGrid

    assert PatchGrid(2, 3, 1).labels() == ["[CLS]", "(0, 0)", "(0, 1)", "(0, 2)", "(1, 0)", "(1, 1)", "(1, 2)"]
    assert PatchGrid(1, 2, 2).labels() == ["[token 0]", "[token 1]", "(0, 0)", "(0, 1)"]
    assert PatchGrid(1, 1, 0).labels() == ["(0, 0)"]


def test_image_rollout_puts_cls_share_on_its_patch_square():
    """One layer where [CLS] attends only to patch (1, 0): with the residual half, the rollout row
    of [CLS] is 0.5 on itself and 0.5 on that patch, which covers the lower-left 8 x 8 pixels."""
    from explain.structure.attention import PatchGrid, image_rollout

    grid = PatchGrid(2, 2, 1)
    att = np.eye(5)[None, None].repeat(2, axis=1)  # [layer, head, q, k]: every token on itself
    att[0, :, 0] = 0
    att[0, :, 0, 3] = 1.0  # [CLS] -> patch (1, 0) (token 3) in both heads
    patches, heat = image_rollout(att, grid, 16, 16)
    np.testing.assert_allclose(patches, [[0, 0], [0.5, 0]])
    assert heat.shape == (16, 16)
    np.testing.assert_allclose(heat[8:, :8], 0.5)
    assert heat[:8].sum() == 0 and heat[:, 8:].sum() == 0
    # the rollout of compute_rollout, without [CLS], reshaped
    want = compute_rollout(att[:, None])[0, 0, 1:].reshape(2, 2)
    np.testing.assert_allclose(patches, want)


def test_image_rollout_without_cls_uses_the_mean_row():
    from explain.structure.attention import PatchGrid, image_rollout

    att = np.full((1, 1, 4, 4), 0.25)
    patches, heat = image_rollout(att, PatchGrid(2, 2, 0), 4, 4)
    np.testing.assert_allclose(patches, 0.25)
    np.testing.assert_allclose(heat, 0.25)
    with pytest.raises(ValueError, match="does not fit"):
        image_rollout(att, PatchGrid(2, 2, 1), 4, 4)
