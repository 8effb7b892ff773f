"""Red-team checks of chat templates (explain.generation.chat): a template is an upload's data, so
one that loops without writing anything must not hold the model's process (and its lock) for the
whole model-call timeout (600 s by default); it is stopped after `MAX_CHAT_SECONDS` in one line."""
from __future__ import annotations

import time

import pytest

from explain.errors import TooLarge
from explain.generation import chat
from explain.generation.chat import _compile, _render

LOOPS = {  # 10^10 iterations, nothing written: no output chunk ever reaches the size check
    "nested range": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}x",
    "one list, looped twice": "{% set r = range(100000) | list %}{% for i in r %}{% for j in r %}"
                              "{% endfor %}{% endfor %}x",
    "recursive macro over a list": "{% set r = range(100000) | list %}{% macro f(n) %}{% for i in r %}"
                                   "{% endfor %}{% if n %}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(100000) }}",
}


@pytest.mark.parametrize("name", sorted(LOOPS))
def test_a_template_that_loops_without_writing_is_stopped_in_time(name, monkeypatch):
    monkeypatch.setattr(chat, "MAX_CHAT_SECONDS", 0.3)
    started = time.monotonic()
    with pytest.raises(TooLarge, match=r"ran over 0.3 s") as caught:
        _render(_compile(LOOPS[name]), {"messages": [{"role": "user", "content": "hi"}]})
    assert time.monotonic() - started < 3.0
    assert len(str(caught.value).splitlines()) == 1


def test_an_ordinary_template_renders_as_before_and_leaves_the_tracer_alone():
    import sys

    before = sys.gettrace()
    template = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}<|assistant|>"
    out = _render(_compile(template), {"messages": [{"role": "user", "content": "two plus two is"}] * 3})
    assert out == "<|user|>two plus two is\n" * 3 + "<|assistant|>"
    assert sys.gettrace() is before


def test_every_chat_of_one_call_shares_one_time_budget():
    """render_chat gives all its chats one deadline: a template just under the limit per chat, over
    1000 prompts, would otherwise hold the model's process 1000 times as long. A chat rendered
    after that deadline stops at its first line, however ordinary its template."""
    with pytest.raises(TooLarge, match="ran over"):
        _render(_compile("{{ messages[0]['content'] }}"), {"messages": [{"role": "user", "content": "hi"}]},
                time.monotonic() - 1)
    assert _render(_compile("{{ messages[0]['content'] }}"), {"messages": [{"role": "user", "content": "hi"}]},
                   time.monotonic() + 5) == "hi"


def test_render_chat_stops_a_call_whose_chats_together_run_over(monkeypatch):
    """A clock that moves 0.01 s each time it is read, a 1 s budget: one chat of this template reads
    it 42 times (fits), the 5 chats of one call 206 times (do not); per chat they would all fit."""
    from types import SimpleNamespace

    clock = iter(range(10**6))
    monkeypatch.setattr(chat, "time", SimpleNamespace(monotonic=lambda: next(clock) * 0.01))
    monkeypatch.setattr(chat, "MAX_CHAT_SECONDS", 1.0)
    monkeypatch.setattr(chat, "_special_tokens", lambda model: {})
    model = SimpleNamespace(name="m", process=None, spec=SimpleNamespace(
        chat_template="{% for i in range(10) %}{% endfor %}{{ messages[0]['content'] }}"))
    assert chat.render_chat(model, [[{"role": "user", "content": "hi"}]]) == ["hi"]
    with pytest.raises(TooLarge, match="ran over 1 s"):
        chat.render_chat(model, [[{"role": "user", "content": "hi"}]] * 5)


def test_a_template_that_asks_for_too_much_memory_is_refused_in_one_line():
    """'a' * 10**15 (a petabyte): a bare MemoryError with an empty message before; the model's process
    (or, trusted, the server) is left as it was, since the allocation fails whole."""
    with pytest.raises(TooLarge, match="^The chat template needed more memory than it may use.$"):
        _render(_compile("{{ 'a' * 10**15 }}"), {"messages": []})
