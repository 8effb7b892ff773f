"""Several targets per backward (issue 22): a chunk of the (generated token x step) grid runs one forward
per step and one batched backward for all its tokens; the numbers equal the one-row-at-a-time computation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from causal_models import one_thread, write_hf_gpt2, write_hf_llama  # noqa: E402, F401 - one_thread: a fixture

from explain.generation.attribution import attribute_generation, target_logprob_grid, token_gradients  # noqa: E402
from explain.generation.greedy import generate_greedy  # noqa: E402
from explain.generation.prompts import encode_texts  # noqa: E402
from explain.loading.huggingface import folder_as_zip, load_huggingface_parts  # noqa: E402
from explain.model import LoadedModel  # noqa: E402

PROMPTS = ["the cat sat on", "two plus two is four and"]
NEW = 6
STEPS = 8

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def lm(request, tmp_path_factory):
    """(model loaded in this process, greedy texts): the library's functions called directly."""
    folder = tmp_path_factory.mktemp(request.param) / request.param
    folder.mkdir()
    (write_hf_llama if request.param == "llama" else write_hf_gpt2)(folder)
    parts = load_huggingface_parts(folder_as_zip(folder)[0])
    model = LoadedModel(module=parts.module, format="huggingface", sha256="test", spec=parts.embedded_spec)
    texts = generate_greedy(model, encode_texts(PROMPTS, model.spec), NEW)
    return model, texts


@pytest.mark.parametrize("method", ["integrated_gradients", "saliency", "input_x_gradient"])
def test_batched_targets_equal_one_row_at_a_time(lm, method):
    model, texts = lm
    batched = attribute_generation(model, texts, method, STEPS, "pad", tolerance=0)  # the asked steps' grid alone
    single = attribute_generation(model, texts, method, STEPS, "pad", batch_size=1, tolerance=0)
    steps = STEPS if method == "integrated_gradients" else 1
    for text, many, one in zip(texts, batched, single):
        rows = len(text.generated_ids) * steps
        assert many.notes[0] == f"grid in chunks of {rows} rows"  # the whole grid in one chunk: one backward
        assert one.notes[0] == "grid in chunks of 1 row"
        np.testing.assert_allclose(many.values, one.values, atol=1e-6, rtol=1e-6)  # float32 sums in another order
        np.testing.assert_allclose(many.completeness_error, one.completeness_error, atol=1e-5, rtol=1e-5, equal_nan=True)


def test_a_chunk_that_splits_a_token_s_steps_gives_the_same_values(lm):
    """Chunks of 5 rows of an 8-step grid: tokens cut in the middle of their paths, two tokens in one chunk."""
    model, texts = lm
    whole = attribute_generation(model, texts[:1], "integrated_gradients", STEPS, "pad")[0]
    split = attribute_generation(model, texts[:1], "integrated_gradients", STEPS, "pad", batch_size=5)[0]
    np.testing.assert_allclose(split.values, whole.values, atol=1e-6, rtol=0)
    np.testing.assert_allclose(split.completeness_error, whole.completeness_error, atol=1e-5, rtol=1e-5)


def test_token_gradients_are_each_targets_own_gradient(lm):
    """`token_gradients` (on the CPU J plain backwards over one graph, on a GPU one batched backward) = J separate
    autograd.grad calls, and = the batched backward (``is_grads_batched``, a GPU's way) up to float32 rounding (a
    batched backward may take another BLAS kernel: 5e-7 on values ~0.03 seen on one CPU)."""
    model, texts = lm
    net, text = model.module.model, texts[1]
    p, ids = len(text.prompt_ids), torch.as_tensor(text.input_ids)
    x = net.get_input_embeddings()(ids[:-1]).detach()  # [L, D]
    points = torch.stack([0.5 * x, x]).requires_grad_(True)  # [2, L, D]
    positions = p - 1 + torch.arange(NEW)
    logp = target_logprob_grid(net, points, positions, ids[p:])  # [2, T]
    picks = torch.eye(NEW)[:, None, :].expand(NEW, 2, NEW)  # token j at both points
    ones = [torch.autograd.grad(logp[:, j].sum(), points, retain_graph=True)[0] for j in (0, 3, NEW - 1)]
    (batched,) = torch.autograd.grad(logp, points, picks, retain_graph=True, is_grads_batched=True)  # [T, 2, L, D]
    grads = token_gradients(logp, points, picks)  # [T, 2, L, D]
    torch.testing.assert_close(grads, batched, atol=1e-6, rtol=1e-5)
    for j, one in zip((0, 3, NEW - 1), ones):
        torch.testing.assert_close(grads[j], one, atol=1e-6, rtol=1e-5)
        assert not grads[j, :, p + j:].any()  # causal: nothing at or after the token's own position
    whole = torch.log_softmax(net(inputs_embeds=x[None]).logits[0].float(), -1)  # [L, V]
    torch.testing.assert_close(logp[1], whole[positions, ids[p:]], atol=1e-6, rtol=0)


def test_the_default_steps_keep_the_sample_s_first_view_complete():
    """The Generate page opens keycopy on its first view, computed with the page's defaults (the shipped view is
    checked fresh by test_generation_sample): every token's completeness error < 0.05 (32 steps left 0.9)."""
    from explain.generation.attribution import DEFAULT_STEPS
    from explain.generation.explained import FIRST_VIEW_FILE, read_explained
    from sample_models import sample_dir

    view = read_explained(sample_dir("keycopy") / FIRST_VIEW_FILE)
    assert view.settings["steps"] == view.attribution.params["steps"] == DEFAULT_STEPS == 128
    assert len(view.attribution.completeness_error) == 3 and view.attribution.completeness_error.max() < 0.05
