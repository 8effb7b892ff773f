"""The selected step of a generation (issue 22): attention rollout of a causal LM and its figure.

Known answers: a hand-computed rollout; rows that sum to 1 and read no later position on a tiny
Llama (padding changing nothing); on the keycopy sample the answer step's rollout and last-layer
attention peak on the key token, the one its task says decides the answer.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("transformers")

from causal_models import one_thread, write_hf_llama  # noqa: E402, F401 - one_thread: a fixture

from explain.generation.attention import causal_attention, causal_rollout, text_attention  # noqa: E402
from explain.generation.greedy import generate_greedy  # noqa: E402
from explain.generation.prompts import encode_texts  # noqa: E402
from explain.loading.huggingface import folder_as_zip, load_huggingface_parts  # noqa: E402
from explain.model import LoadedModel  # noqa: E402
from explain.viz.generation import step_attention_figure  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

#: One layer, two heads over three positions: an identity head and one that looks back.
HEADS = np.array([[[1, 0, 0], [0, 1, 0], [0, 0, 1]],
                  [[1, 0, 0], [1, 0, 0], [0.5, 0.5, 0]]], dtype=np.float64)
#: 0.5 I + 0.5 (mean of the heads), by hand; its rows already sum to 1.
ONE_LAYER = np.array([[1, 0, 0], [0.25, 0.75, 0], [0.125, 0.125, 0.75]])


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """(a tiny Llama loaded in this process, its greedy texts of two prompts)."""
    folder = write_hf_llama(tmp_path_factory.mktemp("rollout") / "llama")
    parts = load_huggingface_parts(folder_as_zip(folder)[0])
    model = LoadedModel(module=parts.module, format="huggingface", sha256="test", spec=parts.embedded_spec)
    return model, generate_greedy(model, encode_texts(["the cat sat on", "two plus two is four and"], model.spec), 4)


def test_rollout_of_one_layer_equals_the_hand_computation():
    np.testing.assert_allclose(causal_rollout(HEADS[None, None])[0], ONE_LAYER, atol=1e-12)
    two = causal_rollout(np.stack([HEADS, HEADS])[:, None])[0]  # two such layers: ONE_LAYER @ ONE_LAYER
    np.testing.assert_allclose(two[2], [0.25, 0.1875, 0.5625], atol=1e-12)  # 0.125 r0 + 0.125 r1 + 0.75 r2, by hand
    identity = np.broadcast_to(np.eye(3), (2, 1, 2, 3, 3))  # attention to itself only: the rollout is I
    np.testing.assert_allclose(causal_rollout(identity)[0], np.eye(3), atol=1e-12)


def test_rollout_rows_sum_to_one_and_are_causal(llama):
    model, texts = llama
    for text in texts:
        maps = text_attention(model, text.input_ids)
        length = len(text.input_ids) - 1  # the last generated token is never read
        assert maps.weights.shape == (2, 1, 4, length, length)
        roll = causal_rollout(maps.weights)[0]  # [L, L]
        np.testing.assert_allclose(roll.sum(-1), 1.0, atol=1e-9)
        assert not np.triu(roll, 1).any() and (np.diag(roll) >= 0.5 ** 2).all()  # each layer keeps half itself


def test_padding_changes_no_real_row_of_the_rollout(llama):
    model, texts = llama
    prompts = [t.input_ids[:-1] for t in texts]
    lengths = [len(p) for p in prompts]
    padded = causal_rollout(causal_attention(model, prompts).weights, lengths)  # [2, L_max, L_max]
    for n, prompt in enumerate(prompts):
        alone = causal_rollout(causal_attention(model, [prompt]).weights)[0]
        np.testing.assert_allclose(padded[n, : lengths[n], : lengths[n]], alone, atol=1e-6)
        assert not padded[n, lengths[n]:].any() and not padded[n, :, lengths[n]:].any()


def test_the_step_figure_draws_each_head_s_row_and_the_rollout(llama):
    model, texts = llama
    text = texts[0]
    maps = text_attention(model, text.input_ids)
    weights, roll = maps.weights[:, 0], causal_rollout(maps.weights)[0]
    q = len(text.prompt_ids) + 1  # the position that predicts generated token 2
    tokens = [f"t{i}" for i in range(len(text.input_ids))]
    fig = json.loads(step_attention_figure(weights, roll, q, tokens).to_json())
    z = _array(fig["data"][0]["z"])
    assert z.shape == (2 * 4 + 1, q + 1)  # (layer, head) rows, then the rollout; keys 0 .. q
    np.testing.assert_allclose(z[5], weights[1, 1, q, : q + 1], atol=1e-6)  # layer 1, head 1
    np.testing.assert_allclose(z[-1], roll[q, : q + 1], atol=1e-6)
    assert fig["layout"]["yaxis"]["ticktext"][-1] == "rollout" and fig["layout"]["yaxis"]["ticktext"][5] == "L1 H1"


def _array(value) -> np.ndarray:
    """A plotly JSON array: a list, or a typed array (``{"dtype", "bdata", "shape"}``)."""
    if not isinstance(value, dict):
        return np.asarray(value, dtype=float)
    import base64

    shape = tuple(int(d) for d in str(value["shape"]).split(","))
    return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"]).reshape(shape).astype(float)


def test_keycopy_answer_step_attends_to_the_key():
    """The answer is the key token (position 1): the rollout and the last layer's mean head peak there."""
    from sample_models import keycopy, load_sample

    model = load_sample("keycopy")
    prompts, _answers = keycopy.make_prompts(10, 23)  # held-out seed
    for text in generate_greedy(model, encode_texts(prompts, model.spec), 1):
        maps = text_attention(model, text.input_ids)
        q = len(text.prompt_ids) - 1  # the position that predicts the answer
        roll = causal_rollout(maps.weights)[0]
        assert int(np.argmax(roll[q, : q + 1])) == keycopy.KEY_POSITION, np.round(roll[q], 3)
        assert int(np.argmax(maps.weights[-1, 0, :, q].mean(0))) == keycopy.KEY_POSITION
