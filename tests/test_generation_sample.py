"""The shipped causal-LM sample ``keycopy`` (issue 22): ground truth for generation and its explanations.

The answer of ``key C . <noun phrases, other colours among them> is`` is C, the token at position 1,
so the tests know where an attribution must land. Uses the committed files (no retraining): the
zip is loaded as a user's folder is, in its own model process.
"""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

pytest.importorskip("transformers")

from causal_models import one_thread  # noqa: E402, F401 - a fixture

from explain.generation.attention import causal_attention  # noqa: E402
from explain.generation.attribution import attribute_generation  # noqa: E402
from explain.generation.explained import FIRST_VIEW_FILE, explain_prompt, read_explained, settings_of  # noqa: E402
from explain.generation.greedy import generate_greedy  # noqa: E402
from explain.generation.prompts import encode_texts  # noqa: E402
from explain.generation.quality import generation_quality  # noqa: E402
from sample_models import ALL_SAMPLES, SAMPLE_NAMES, keycopy, load_sample, sample_dir, sample_file  # noqa: E402

N_HELD_OUT = 100

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sample():
    """(model, held-out prompts' ids, answer ids, greedy texts of one token)."""
    model = load_sample("keycopy")
    prompts, answers = keycopy.make_prompts(N_HELD_OUT, 23)  # the test seed: never trained on (seeds 21, 22)
    ids = encode_texts(prompts, model.spec)
    texts = generate_greedy(model, ids, 1)
    return model, ids, np.array([keycopy.VOCABULARY.index(a) for a in answers]), texts


@pytest.fixture(scope="module")
def ig(sample):
    return attribute_generation(sample[0], sample[3], "integrated_gradients", 32, "pad")


def test_the_sample_is_a_hugging_face_folder_loaded_like_a_users(sample):
    model = sample[0]
    assert "keycopy" in ALL_SAMPLES and "keycopy" not in SAMPLE_NAMES  # the classifier views leave it out
    with zipfile.ZipFile(sample_file("keycopy")) as zf:
        names = set(zf.namelist())
        config = json.loads(zf.read("config.json"))
        tok_config = json.loads(zf.read("tokenizer_config.json"))
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert config["architectures"] == ["LlamaForCausalLM"] and config["num_hidden_layers"] == 2
    assert "chat_template" in tok_config and model.spec.chat_template == tok_config["chat_template"]
    assert model.format == "huggingface" and model.process is not None and model.spec.task == "causal_lm"
    assert len(model.spec.vocabulary) == len(keycopy.VOCABULARY) < 40


def test_greedy_generation_answers_the_key_on_held_out_prompts(sample):
    _model, ids, answers, texts = sample
    assert all(t.prompt_ids.tolist() == i.tolist() for t, i in zip(texts, ids))
    accuracy = float(np.mean([t.generated_ids[0] for t in texts] == answers))
    print(f"keycopy greedy accuracy {accuracy:.3f} on {len(texts)} held-out prompts")
    assert accuracy >= 0.95


def test_integrated_gradients_put_the_largest_share_on_the_key(sample, ig):
    on_key = np.mean([int(np.argmax(a.values[0])) == keycopy.KEY_POSITION for a in ig])
    share = np.mean([a.values[0, keycopy.KEY_POSITION] / a.values[0].sum() for a in ig])
    print(f"IG argmax on the key for {on_key:.2f} of prompts; mean share {share:.2f}")
    assert on_key >= 0.9
    assert all(np.isfinite(a.completeness_error).all() for a in ig)


def test_a_last_layer_head_attends_to_the_key(sample):
    _model, ids, _answers, _texts = sample
    maps = causal_attention(sample[0], ids)
    last = maps.weights[-1]  # [N, heads, L, L]
    lengths = [len(i) for i in ids]
    # at the position that predicts the answer (the prompt's last), where each head looks most
    looks = np.stack([last[n, :, lengths[n] - 1, : lengths[n]].argmax(-1) for n in range(len(ids))])  # [N, heads]
    rates = (looks == keycopy.KEY_POSITION).mean(0)  # [heads]
    print(f"last-layer heads attend most to the key in {np.round(rates, 2)} of prompts")
    assert rates.max() >= 0.9


def test_integrated_gradients_are_more_comprehensive_and_sufficient_than_random(sample, ig):
    judged = [generation_quality(sample[0], a) for a in ig[:30]]
    mean = {name: (np.mean([q[name].per_input for q in judged]), np.mean([q[name].random_baseline for q in judged]))
            for name in judged[0]}
    print({k: (round(float(a), 3), round(float(b), 3)) for k, (a, b) in mean.items()})
    assert mean["comprehensiveness"][0] > mean["comprehensiveness"][1] + 0.2
    assert mean["sufficiency"][0] < mean["sufficiency"][1] - 0.2
    assert mean["deletion"][0] < mean["deletion"][1] and mean["insertion"][0] > mean["insertion"][1]


def test_the_shipped_first_view_is_the_default_prompt_explained_by_these_weights(sample):
    model = sample[0]
    view = read_explained(sample_dir("keycopy") / FIRST_VIEW_FILE)
    assert view.settings == settings_of(keycopy.DEFAULT_PROMPT) and view.model_sha256 == model.sha256
    fresh = explain_prompt(model, view.settings)
    assert fresh.text.generated_ids.tolist() == view.text.generated_ids.tolist()
    assert keycopy.VOCABULARY[view.text.generated_ids[0]] == "blue"
    np.testing.assert_allclose(view.attribution.values, fresh.attribution.values, rtol=1e-4, atol=1e-5)
    assert set(view.quality) == set(fresh.quality) == {"comprehensiveness", "sufficiency", "deletion", "insertion"}
    for name, result in view.quality.items():
        np.testing.assert_allclose(result.per_input, fresh.quality[name].per_input, rtol=1e-4, atol=1e-6)


def test_cli_generate_with_quality_prints_the_means_of_the_token_metrics(sample, ig, tmp_path, capsys):
    from explain.cli import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(keycopy.make_prompts(N_HELD_OUT, 23)[0][:4]) + "\n")
    assert main(["generate", "keycopy", "--prompts", str(prompts), "--max-new-tokens", "1", "--quality",
                 "--out", str(tmp_path / "g.npz")]) == 0
    printed = json.loads(capsys.readouterr().out)
    judged = [generation_quality(sample[0], a) for a in ig[:4]]  # the same prompts, steps and baseline
    for name in ("comprehensiveness", "sufficiency", "deletion", "insertion"):
        want = np.mean([q[name].per_input for q in judged])
        chance = np.mean([q[name].random_baseline for q in judged])
        assert printed["quality"][name] == pytest.approx(want, abs=1e-5)
        assert printed["quality_random"][name] == pytest.approx(chance, abs=1e-5)
    assert printed["quality"]["comprehensiveness"] > printed["quality_random"]["comprehensiveness"]


def test_training_is_deterministic_and_the_zip_the_same_bytes(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(keycopy, "EPOCHS", 1)
    monkeypatch.setattr(keycopy, "STEPS_PER_EPOCH", 3)
    tok = keycopy.build_tokenizer()
    first, history = keycopy.train(tok, tmp_path)
    second, _ = keycopy.train(tok, tmp_path)
    assert len(history) == 1 and (tmp_path / "train_log.csv").read_text().startswith("epoch,train_loss,val_loss")
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    assert keycopy.folder_zip(first, tok) == keycopy.folder_zip(second, tok)
