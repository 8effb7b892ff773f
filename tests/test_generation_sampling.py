"""How a causal LM's tokens are produced (issue 22): prompts of different lengths generated in one left-padded
batch equal each generated alone, and sampling with a seed reproduces itself and transformers' ``generate``
(tiny Llama and GPT-2 built from configs, no hub)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from causal_models import one_thread, write_hf_gpt2, write_hf_llama  # noqa: E402, F401 - one_thread: a fixture

from explain.cli import main  # noqa: E402
from explain.errors import UsageError  # noqa: E402
from explain.generation.greedy import generate_greedy  # noqa: E402
from explain.generation.prompts import encode_texts  # noqa: E402
from explain.generation.sampling import Sampling, filter_logits, generate_sampled  # noqa: E402
from explain.loading.loader import load_model  # noqa: E402

PROMPTS = ["the", "two plus two is four and the sun is", "a dog ran", "she reads a book at night and"]
NEW = 6

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def lm(request, tmp_path_factory):
    """(kind, folder, model in its process, transformers' model, prompts)."""
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp(request.param) / request.param
    (write_hf_llama if request.param == "llama" else write_hf_gpt2)(folder)
    model = load_model(folder)
    ref = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    return request.param, folder, model, ref, encode_texts(PROMPTS, model.spec)


def test_a_left_padded_batch_equals_each_prompt_alone(lm):
    _kind, _folder, model, _ref, prompts = lm
    assert len({len(p) for p in prompts}) == len(prompts)  # every length differs: padding at every row but one
    together = generate_greedy(model, prompts, NEW)
    alone = generate_greedy(model, prompts, NEW, batch_size=1)
    pairs = generate_greedy(model, prompts, NEW, batch_size=3)  # a full batch, then a batch of one
    for a, b, c in zip(together, alone, pairs):
        assert a.generated_ids.tolist() == b.generated_ids.tolist() == c.generated_ids.tolist()
        assert a.prompt_ids.tolist() == b.prompt_ids.tolist()
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)
        np.testing.assert_allclose(c.logprobs, b.logprobs, atol=1e-5)


def test_a_prompt_stops_at_end_of_sequence_while_its_batch_goes_on(lm, tmp_path):
    """The end-of-sequence id made the token prompt 1 generates second: it stops there, the others go on."""
    import shutil

    kind, folder, model, ref, prompts = lm
    if kind != "llama":
        pytest.skip("checked once, on the Llama")
    plain = generate_greedy(model, prompts, NEW, batch_size=1)
    eos = int(plain[1].generated_ids[1])
    copy = tmp_path / "eos"
    shutil.copytree(folder, copy)
    for name in ("config.json", "generation_config.json"):
        if (copy / name).is_file():
            cfg = json.loads((copy / name).read_text())
            cfg["eos_token_id"] = eos
            (copy / name).write_text(json.dumps(cfg))
    stopped = generate_greedy(load_model(copy), prompts, NEW)
    with torch.no_grad():
        want = ref.generate(torch.as_tensor(prompts[1])[None], do_sample=False, max_new_tokens=NEW, eos_token_id=eos,
                            pad_token_id=eos)[0, len(prompts[1]):].tolist()
    assert stopped[1].generated_ids.tolist() == want == plain[1].generated_ids[: want.index(eos) + 1].tolist()
    for got, full in zip(stopped, plain):
        ids = full.generated_ids.tolist()
        cut = ids.index(eos) + 1 if eos in ids else len(ids)
        assert got.generated_ids.tolist() == ids[:cut]
        np.testing.assert_allclose(got.logprobs, full.logprobs[:cut], atol=1e-5)
    assert max(len(t.generated_ids) for t in stopped) == NEW  # the batch went on after prompt 1 stopped


def test_the_same_seed_draws_the_same_tokens_and_temperature_zero_is_greedy(lm):
    _kind, _folder, model, _ref, prompts = lm
    hot = Sampling(temperature=1.5, top_k=20, top_p=0.9, seed=7)
    first = generate_sampled(model, prompts, NEW, hot)
    again = generate_sampled(model, prompts, NEW, hot)
    assert [t.generated_ids.tolist() for t in first] == [t.generated_ids.tolist() for t in again]
    other = generate_sampled(model, prompts, NEW, Sampling(temperature=1.5, top_k=20, top_p=0.9, seed=8))
    assert [t.generated_ids.tolist() for t in other] != [t.generated_ids.tolist() for t in first]
    alone = generate_sampled(model, prompts[2:3], NEW, Sampling(temperature=1.5, top_k=20, top_p=0.9, seed=9))
    assert alone[0].generated_ids.tolist() == first[2].generated_ids.tolist()  # prompt i draws with seed + i
    greedy = generate_greedy(model, prompts, NEW)
    cold = generate_sampled(model, prompts, NEW, Sampling(temperature=0, seed=3))
    assert [t.generated_ids.tolist() for t in cold] == [t.generated_ids.tolist() for t in greedy]


@pytest.mark.parametrize("settings", [dict(temperature=1.0, top_k=0, top_p=1.0), dict(temperature=0.7, top_k=5, top_p=0.8)])
def test_sampling_equals_transformers_generate_under_the_same_seed(lm, settings):
    _kind, _folder, model, ref, prompts = lm
    for seed in (0, 1, 2):
        got = generate_sampled(model, prompts[1:2], NEW, Sampling(seed=seed, **settings))[0]
        torch.manual_seed(seed)
        with torch.no_grad():
            out = ref.generate(torch.as_tensor(prompts[1])[None], do_sample=True, max_new_tokens=NEW, output_scores=True,
                               return_dict_in_generate=True, pad_token_id=ref.config.eos_token_id, **settings)
        assert got.generated_ids.tolist() == out.sequences[0, len(prompts[1]):].tolist()


def test_the_filter_is_transformers_warpers_and_draws_only_from_what_it_keeps():
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0)) * 3
    s = Sampling(temperature=0.6, top_k=10, top_p=0.7)
    want = TopPLogitsWarper(0.7)(None, TopKLogitsWarper(10)(None, TemperatureLogitsWarper(0.6)(None, logits)))
    got = filter_logits(logits, s)
    assert torch.equal(torch.isinf(got), torch.isinf(want)) and torch.allclose(got[~torch.isinf(got)], want[~torch.isinf(want)])
    kept = ~torch.isinf(got)
    assert (kept.sum(-1) <= 10).all() and (kept.sum(-1) >= 1).all()
    probs = torch.softmax(logits / 0.6, -1)
    for row in range(3):  # what is kept: the most likely tokens whose mass first exceeds 0.7 (within the top 10)
        order = probs[row].argsort(descending=True)
        n = int(kept[row].sum())
        assert set(order[:n].tolist()) == set(torch.nonzero(kept[row])[:, 0].tolist())
    with pytest.raises(UsageError, match="top_p"):
        Sampling(top_p=0)
    with pytest.raises(UsageError, match="temperature"):
        Sampling(temperature=-1)


def test_cli_generate_sample(lm, tmp_path, capsys):
    kind, folder, model, _ref, prompts = lm
    if kind != "llama":
        pytest.skip("the command line is checked once, on the Llama")
    file = tmp_path / "p.txt"
    file.write_text("\n".join(PROMPTS) + "\n")
    args = ["generate", str(folder), "--prompts", str(file), "--max-new-tokens", str(NEW), "--method", "saliency",
            "--sample", "--temperature", "1.2", "--top-k", "30", "--seed", "5"]
    assert main(args + ["--out", str(tmp_path / "a.npz")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["sampling"] == {"temperature": 1.2, "top_k": 30, "top_p": 1.0, "seed": 5}
    want = generate_sampled(model, prompts, NEW, Sampling(temperature=1.2, top_k=30, seed=5))
    g = np.load(tmp_path / "a.npz")
    for i, text in enumerate(want):
        assert g["generated_ids"][i, : g["generated_length"][i]].tolist() == text.generated_ids.tolist()
    assert main(["generate", str(folder), "--prompts", str(file), "--seed", "3", "--out", str(tmp_path / "b.npz")]) == 2
    assert "--seed only apply with --sample" in capsys.readouterr().err
