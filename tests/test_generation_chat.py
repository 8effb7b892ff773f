"""A chat as a prompt (issue 22): messages rendered through the model's chat template exactly as transformers'
``apply_chat_template`` renders and encodes them, in a Jinja sandbox that refuses a template reaching for
Python's internals with one line."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("transformers")

from causal_models import one_thread, write_hf_llama  # noqa: E402, F401 - one_thread: a fixture

from explain.cli import main  # noqa: E402
from explain.errors import IncompatibleInput, TooLarge, UnsafeFile  # noqa: E402
from explain.generation.chat import _compile, _render, read_chats, render_chat  # noqa: E402
from explain.generation.greedy import generate_greedy  # noqa: E402
from explain.generation.prompts import encode_texts  # noqa: E402
from explain.loading.loader import load_model  # noqa: E402

TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}\n"
            "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
CHATS = [[{"role": "system", "content": "be brief"}, {"role": "user", "content": "the cat sat on"}],
         [{"role": "user", "content": "two plus two is"}]]
MALICIOUS = {
    "__class__": "{{ messages.__class__.__mro__[1].__subclasses__() }}",
    "__globals__": "{{ raise_exception.__globals__['os'] }}",
    "mutation": "{% set _ = messages.append({'role': 'x', 'content': 'y'}) %}{{ messages }}",
    "cycler": "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """(folder with a chat_template.jinja beside tokenizer_config.json's template, model, transformers' tokenizer)."""
    from transformers import AutoTokenizer

    folder = write_hf_llama(tmp_path_factory.mktemp("chat") / "llama")
    (folder / "chat_template.jinja").write_text(TEMPLATE)
    return folder, load_model(folder), AutoTokenizer.from_pretrained(folder)


def test_a_chat_renders_and_encodes_as_transformers_apply_chat_template(llama):
    _folder, model, tokenizer = llama
    assert model.spec.chat_template == TEMPLATE  # chat_template.jinja wins over tokenizer_config.json's
    texts = render_chat(model, CHATS)
    for chat, text in zip(CHATS, texts):
        assert text == tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert texts[1] == "<s><|user|>two plus two is</s>\n<|assistant|>"
    ids = encode_texts(texts, model.spec, special_tokens=False)
    for chat, got in zip(CHATS, ids):
        want = tokenizer.apply_chat_template(chat, tokenize=True, add_generation_prompt=True, return_dict=False)
        want = want["input_ids"] if isinstance(want, dict) else want
        assert got.tolist() == list(want)
        assert got.tolist().count(1) == 1  # one <s>: the template's, the post-processor's not added again
    assert render_chat(model, CHATS[1:], add_generation_prompt=False)[0] == "<s><|user|>two plus two is</s>\n"


@pytest.mark.parametrize("name", sorted(MALICIOUS))
def test_a_template_reaching_for_python_internals_is_refused(name):
    with pytest.raises(UnsafeFile, match="chat template was refused") as caught:
        _render(_compile(MALICIOUS[name]), {"messages": CHATS[0], "add_generation_prompt": True})
    assert len(str(caught.value).splitlines()) == 1


def test_a_format_string_reaching_for_internals_renders_nothing_of_them():
    assert _render(_compile("{{ '{0.__class__}'.format(messages) }}"), {"messages": CHATS[0]}) == ""


def test_bad_templates_and_chats_say_what_is_wrong():
    with pytest.raises(TooLarge, match="over 200,000 characters"):
        _render(_compile("{% for i in range(100000) %}{{ 'xxxxx' }}{% endfor %}"), {"messages": []})
    with pytest.raises(IncompatibleInput, match="refused the messages: only user"):
        _render(_compile("{{ raise_exception('only user') }}"), {"messages": []})
    with pytest.raises(IncompatibleInput, match="Message 1 of chat 1"):
        from explain.generation.chat import check_messages

        check_messages([{"role": "user"}], "Chat 1")


def test_cli_generate_chat(llama, tmp_path, capsys):
    import shutil

    folder, model, _tokenizer = llama
    chats = tmp_path / "chats.json"
    chats.write_text(json.dumps(CHATS))
    out = tmp_path / "g.npz"
    assert main(["generate", str(folder), "--prompts", str(chats), "--chat", "--max-new-tokens", "3", "--method",
                 "saliency", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    prompts = encode_texts(render_chat(model, CHATS), model.spec, special_tokens=False)
    g = np.load(out)
    for i, (prompt, text) in enumerate(zip(prompts, generate_greedy(model, prompts, 3))):
        assert g["prompt_length"][i] == len(prompt) and g["input_ids"][i, : len(prompt)].tolist() == prompt.tolist()
        assert g["generated_ids"][i, : g["generated_length"][i]].tolist() == text.generated_ids.tolist()
    assert printed["prompts"][1].startswith("<s>")
    assert read_chats(chats) == CHATS
    one = tmp_path / "one.json"
    one.write_text(json.dumps(CHATS[1]))
    assert read_chats(one) == CHATS[1:]

    evil = tmp_path / "evil"
    shutil.copytree(folder, evil)
    (evil / "chat_template.jinja").write_text(MALICIOUS["__globals__"])
    assert main(["generate", str(evil), "--prompts", str(chats), "--chat", "--out", str(tmp_path / "e.npz")]) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "chat template was refused" in err and "__globals__" in err


TURNS = [{"role": "system", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]


def _template_ids(tokenizer, chat) -> list[int]:
    want = tokenizer.apply_chat_template(chat, tokenize=True, add_generation_prompt=True, return_dict=False)
    return list(want["input_ids"] if isinstance(want, dict) else want)


def test_a_multi_turn_chat_job_request_and_page_settings_render_as_apply_chat_template(llama):
    """A chat of system / user / assistant turns reaches the model as transformers' apply_chat_template encodes
    it, whichever way it comes: a job's ``chats``, the API's ``messages`` (one chat or several, in the body or in
    ``parameters``), the Generate page's turns before its prompt; the single-message form stays as it was."""
    from explain.errors import UsageError
    from explain.generation.explained import chat_of, explain_prompt, settings_of
    from explain.generation.job import generation_job, generation_request, unpadded_ids

    _folder, model, tokenizer = llama
    want = _template_ids(tokenizer, TURNS)
    assert want.count(1) == 1 and len(want) > len(_template_ids(tokenizer, TURNS[-1:]))
    params, arrays, _ = generation_job(model, "llama", 1, [], chats=[TURNS, TURNS[-1:]], max_new_tokens=1,
                                       method="saliency")
    ids = unpadded_ids(arrays["prompt_ids"])
    assert ids[0].tolist() == want and ids[1].tolist() == _template_ids(tokenizer, TURNS[-1:])
    assert params["chat"] and params["chats"] == [TURNS, TURNS[-1:]]
    for parameters, body in (({"messages": TURNS}, None), ({"messages": [TURNS]}, None), ({}, TURNS)):
        _, arrays, _ = generation_request(model, "llama", 1, [], {"max_new_tokens": 1, **parameters}, messages=body)
        assert unpadded_ids(arrays["prompt_ids"])[0].tolist() == want
    _, old, _ = generation_job(model, "llama", 1, ["c"], chat=True, max_new_tokens=1)  # one user message
    assert unpadded_ids(old["prompt_ids"])[0].tolist() == _template_ids(tokenizer, TURNS[-1:])

    settings = settings_of("c", max_new_tokens=1, method="saliency", chat=True, turns=TURNS[:-1])
    assert chat_of(settings) == TURNS
    assert explain_prompt(model, settings, quality=False).text.prompt_ids.tolist() == want
    with pytest.raises(UsageError, match="prompts or messages, not both"):
        generation_request(model, "llama", 1, ["hi"], {"messages": TURNS})
    with pytest.raises(IncompatibleInput, match="Message 1 of chat 1 needs a string role"):
        generation_request(model, "llama", 1, [], {"messages": [{"role": "user", "content": 3}]})
    with pytest.raises(UsageError, match="parameters.messages must be a list"):
        generation_request(model, "llama", 1, [], {"messages": "hi"})
