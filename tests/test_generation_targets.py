"""What a generated token is explained against (issue 22): a contrastive target (log p(A) - log p(B)) and
occlusion by token, word or sentence, on a tiny Llama built from a config (known answers: the difference of
two attributions, autograd, IG completeness, Captum's FeatureAblation)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from causal_models import one_thread, write_hf_llama  # noqa: E402, F401 - one_thread: a fixture

from explain.cli import main  # noqa: E402
from explain.errors import UsageError  # noqa: E402
from explain.generation.attribution import attribute_generation  # noqa: E402
from explain.generation.continuation import force_continuations  # noqa: E402
from explain.generation.contrastive import attribute_contrast, single_tokens  # noqa: E402
from explain.generation.greedy import generate_greedy  # noqa: E402
from explain.generation.prompts import encode_texts  # noqa: E402
from explain.loading.loader import load_model  # noqa: E402

PROMPTS = ["the cat sat. on the", "two plus two is four and"]
NEW = 3
STEPS = 16
STEP = 1  # the contrasted token: the second after the prompt

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """(folder, model in its process, transformers' model, prompts, greedy texts, alternatives)."""
    from transformers import AutoModelForCausalLM

    folder = write_hf_llama(tmp_path_factory.mktemp("targets") / "llama")
    model = load_model(folder)
    ref = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    prompts = encode_texts(PROMPTS, model.spec)
    texts = generate_greedy(model, prompts, NEW)
    alternatives = [int(t.generated_ids[STEP] + 7) % 90 + 3 for t in texts]  # another ordinary token
    return folder, model, ref, prompts, texts, alternatives


def _with_alternative(model, texts, alternatives):
    """The texts with the contrasted token replaced by its alternative, teacher-forced."""
    prompts = [t.prompt_ids for t in texts]
    conts = [np.r_[t.generated_ids[:STEP], b] for t, b in zip(texts, alternatives)]
    return force_continuations(model, prompts, conts)


@pytest.mark.parametrize("method", ["integrated_gradients", "input_x_gradient"])
def test_a_contrast_of_a_linear_method_is_the_difference_of_two_attributions(llama, method):
    _folder, model, _ref, _prompts, texts, alternatives = llama
    steps = STEPS if method == "integrated_gradients" else 1
    a = attribute_generation(model, texts, method, steps, "pad")
    b = attribute_generation(model, _with_alternative(model, texts, alternatives), method, steps, "pad")
    found = attribute_contrast(model, texts, alternatives, STEP, method, steps, "pad")
    for text, ra, rb, c in zip(texts, a, b, found):
        n = len(text.prompt_ids) + STEP
        assert c.token == text.generated_ids[STEP] and c.values.shape == (n,)
        np.testing.assert_allclose(c.values, ra.values[STEP, :n] - rb.values[STEP, :n], atol=2e-5, rtol=1e-4)
        assert c.difference == pytest.approx(float(ra.logprobs[STEP] - rb.logprobs[STEP]), abs=1e-5)
        if method == "integrated_gradients":  # complete for the difference, against the same reference
            assert c.baseline_difference == pytest.approx(float(ra.baseline_logprobs[STEP] - rb.baseline_logprobs[STEP]), abs=1e-5)
            gap = abs(float(c.values.astype(np.float64).sum()) - (c.difference - c.baseline_difference))
            assert c.completeness_error == pytest.approx(gap, abs=1e-6) and c.completeness_error < 0.05
        else:
            assert np.isnan(c.completeness_error)


def test_saliency_of_a_contrast_is_the_gradient_of_the_difference(llama):
    _folder, model, ref, _prompts, texts, alternatives = llama
    c = attribute_contrast(model, texts[:1], alternatives[:1], STEP, "saliency")[0]
    emb = ref.get_input_embeddings()(torch.as_tensor(c.context_ids))[None].detach().requires_grad_(True)
    logp = torch.log_softmax(ref(inputs_embeds=emb).logits[0, -1], -1)
    (grad,) = torch.autograd.grad(logp[c.token] - logp[c.alternative], emb)
    np.testing.assert_allclose(c.values, grad[0].abs().sum(-1).numpy(), atol=1e-5, rtol=1e-4)
    a = attribute_generation(model, texts[:1], "saliency")[0]
    assert not np.allclose(c.values, a.values[STEP, : c.values.size])  # not the token's own saliency
    assert c.difference == pytest.approx(float(logp[c.token] - logp[c.alternative]), abs=1e-5)


def test_a_contrast_refuses_bad_alternatives_in_one_line(llama):
    _folder, model, _ref, _prompts, texts, alternatives = llama
    with pytest.raises(UsageError, match="the token itself"):
        attribute_contrast(model, texts[:1], [int(texts[0].generated_ids[STEP])], STEP)
    with pytest.raises(UsageError, match="step 9"):
        attribute_contrast(model, texts[:1], alternatives[:1], 9)
    with pytest.raises(UsageError, match="is 2 tokens"):
        single_tokens([np.array([5]), np.array([5, 6])])


def test_cli_generate_contrast(llama, tmp_path, capsys):
    folder, model, _ref, _prompts, texts, alternatives = llama
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    alts = tmp_path / "b.npy"
    np.save(alts, np.asarray(alternatives, np.int64)[:, None])
    out = tmp_path / "g.npz"
    assert main(["generate", str(folder), "--prompts", str(prompts), "--max-new-tokens", str(NEW), "--steps", str(STEPS),
                 "--contrast", str(alts), "--contrast-step", str(STEP), "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    want = attribute_contrast(model, texts, alternatives, STEP, "integrated_gradients", STEPS, "pad")
    g = np.load(out)
    assert g["contrast_ids"].tolist() == [[c.token, c.alternative] for c in want]
    for i, c in enumerate(want):
        np.testing.assert_allclose(g["contrast_values"][i, : c.values.size], c.values, atol=1e-6)
        assert not g["contrast_values"][i, c.values.size:].any()
        assert printed["contrast"][i]["step"] == STEP and printed["contrast"][i]["completeness_error"] < 0.05
    words = tmp_path / "words.txt"
    words.write_text("the cat sat\nfour\n")
    assert main(["generate", str(folder), "--prompts", str(prompts), "--max-new-tokens", "2",
                 "--contrast", str(words), "--out", str(tmp_path / "x.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Alternative 1 is" in err


@pytest.mark.parametrize("granularity", ["token", "word", "sentence"])
def test_occlusion_equals_captums_feature_ablation(llama, granularity):
    from captum.attr import FeatureAblation

    from explain.generation.granularity import group_spans, position_groups
    from explain.generation.occlusion import occlude_generation

    _folder, model, ref, _prompts, texts, _alternatives = llama
    pad = ref.config.pad_token_id if ref.config.pad_token_id is not None else ref.config.eos_token_id
    found = occlude_generation(model, texts, granularity, "pad")
    worst = 0.0
    for text, attr in zip(texts, found):
        p, ids = len(text.prompt_ids), torch.as_tensor(text.input_ids)
        spans = group_spans(text.input_ids, model.spec, granularity)
        assert attr.method == "occlusion" and attr.params == {"granularity": granularity, "baseline": "pad"}
        np.testing.assert_allclose(attr.logprobs, text.logprobs, atol=1e-5)
        for t in range(len(text.generated_ids)):
            n, target = p + t, int(ids[p + t])

            def forward(batch, target=target):
                with torch.no_grad():
                    return torch.log_softmax(ref(input_ids=batch).logits[:, -1].float(), -1)[:, target]

            mask = torch.as_tensor(position_groups(spans, len(ids))[:n])[None]  # [1, n]: the groups, cut at n
            want = FeatureAblation(forward).attribute(ids[None, :n], baselines=int(pad), feature_mask=mask)[0]
            np.testing.assert_allclose(attr.values[t, :n], want.numpy(), atol=1e-5)
            assert not attr.values[t, n:].any()
            worst = max(worst, float(np.abs(attr.values[t, :n] - want.numpy()).max()))
    assert worst < 1e-5
    if granularity == "sentence":  # the prompt's first sentence is one group: one value at all its positions
        first = group_spans(texts[0].input_ids, model.spec, "sentence")[1]
        assert len(set(found[0].values[0, first[0]:first[1]].tolist())) == 1 and first[1] - first[0] > 1


def test_cli_generate_occlusion_by_word(llama, tmp_path, capsys):
    from explain.generation.granularity import group_spans, shared_group_values
    from explain.generation.occlusion import occlude_generation

    folder, model, _ref, _prompts, texts, _alternatives = llama
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "o.npz"
    assert main(["generate", str(folder), "--prompts", str(prompts), "--max-new-tokens", str(NEW), "--method", "occlusion",
                 "--granularity", "word", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["method"] == "occlusion" and printed["params"] == {"granularity": "word", "baseline": "pad"}
    g = np.load(out)
    want = occlude_generation(model, texts, "word", "pad")
    for i, (text, attr) in enumerate(zip(texts, want)):
        np.testing.assert_allclose(g["values"][i, :, : text.input_ids.size], attr.values, atol=1e-6)
        spans = group_spans(text.input_ids, model.spec, "word")
        np.testing.assert_allclose(g["group_values"][i, :, : len(spans)], shared_group_values(attr.values, spans), atol=1e-6)
    assert main(["generate", str(folder), "--prompts", str(prompts), "--method", "occlusion", "--baseline", "zero",
                 "--out", str(tmp_path / "z.npz")]) == 2
    assert "not 'zero'" in capsys.readouterr().err


@pytest.mark.parametrize("granularity", ["token", "sentence"])
def test_occlusion_of_a_contrast_is_the_difference_of_two_occlusions(llama, granularity):
    from explain.generation.occlusion import contrast_texts, occlude_generation

    _folder, model, _ref, _prompts, texts, alternatives = llama
    a = occlude_generation(model, texts, granularity, "pad")
    b = occlude_generation(model, _with_alternative(model, texts, alternatives), granularity, "pad")
    found = contrast_texts(model, texts, alternatives, STEP, "occlusion", granularity=granularity)
    for text, ra, rb, c in zip(texts, a, b, found):
        n = len(text.prompt_ids) + STEP
        assert c.method == "occlusion" and c.params == {"granularity": granularity, "baseline": "pad"}
        np.testing.assert_allclose(c.values, ra.values[STEP, :n] - rb.values[STEP, :n], atol=1e-5)
        assert c.difference == pytest.approx(float(ra.logprobs[STEP] - rb.logprobs[STEP]), abs=1e-5)
        assert np.isnan(c.completeness_error)


def test_a_continuation_with_a_token_of_no_finite_log_probability_is_refused_in_one_line(llama):
    """A token the model masks (its logit -inf at every position, as a hook on the head sets it) in a given
    continuation is refused by teacher forcing in one line naming it, not attributed as NaN; a continuation
    without it keeps finite log-probabilities, renormalised without the masked token (log p - log(1 - p_masked)).
    NaN logits (every log-probability NaN) are refused at the first token."""
    import dataclasses

    from explain.generation.prompts import token_strings
    from explain.loading.huggingface import HFClassifier

    _folder, model, ref, prompts, texts, _alternatives = llama
    local = dataclasses.replace(model, module=HFClassifier(ref, "text", task="causal_lm"), process=None)  # the hook here
    masked = int(texts[0].generated_ids[0] + 5) % 90 + 3  # an ordinary token, not the greedy one
    first = texts[0].generated_ids[:2]  # [2]
    seq = torch.as_tensor(np.r_[prompts[0], first[:1]])[None]  # [1, P + 1]
    with torch.no_grad():
        logp = torch.log_softmax(ref(input_ids=seq).logits[0, -2:].double(), -1)  # [2, V], unmasked
    want = logp.gather(1, torch.as_tensor(first)[:, None])[:, 0] - torch.log1p(-logp[:, masked].exp())  # [2]

    def refused(value: float, continuations: list) -> tuple[str, list]:
        def mask(_module, _args, logits):  # [N, L, V] -> the masked token's logit set to value
            return logits.index_fill(-1, torch.tensor([masked]), value)

        handle = ref.lm_head.register_forward_hook(mask)
        try:
            kept = force_continuations(local, prompts[:1], [first]) if value == float("-inf") else []
            with pytest.raises(UsageError) as caught:
                force_continuations(local, prompts, continuations)
        finally:
            handle.remove()
        assert "\n" not in str(caught.value)
        return str(caught.value), kept

    line, kept = refused(float("-inf"), [first, np.r_[texts[1].generated_ids[:1], masked]])
    token = token_strings([masked], model.spec)[0]
    assert line.startswith(f"Token 2 of continuation 2 ({token!r}) has log-probability -inf: the model never gives it")
    np.testing.assert_allclose(kept[0].logprobs, want.numpy(), atol=1e-5)
    line, _ = refused(float("nan"), [first, first])
    token = token_strings(first[:1], model.spec)[0]
    assert line.startswith(f"Token 1 of continuation 1 ({token!r}) has log-probability NaN: the model's logits there")
