"""A chat as a prompt: messages rendered through the model's own chat template, which is data.

A Hugging Face causal LM keeps its chat template in ``tokenizer_config.json`` (``chat_template``) or in a
``chat_template.jinja`` beside it (which wins, as in transformers); the loader keeps it in the spec as
text. It came with an upload, so it never runs as code: `render_chat` renders it in the model's
sandboxed process (`explain.loading.model_process.in_model_process`: time-bounded, expendable) with
Jinja's ``ImmutableSandboxedEnvironment`` (no attribute of Python's internals, ``__class__``,
``__globals__``, no mutation of the messages), its output capped at `MAX_CHAT_CHARS` and its time at
`MAX_CHAT_SECONDS`. The context is
transformers' own: ``messages``, ``add_generation_prompt``, ``bos_token`` / ``eos_token`` (the
model's), ``raise_exception``. The rendered text already holds the special tokens the template writes,
so it is encoded without the tokenizer's post-processor (`explain.generation.prompts.encode_texts` with
``special_tokens=False``), as ``apply_chat_template(tokenize=True)`` encodes it.
"""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from explain.errors import CorruptFile, IncompatibleInput, InputRefused, TooLarge, UnsafeFile, UsageError, one_line
from explain.loading.model_process import in_model_process
from explain.model import LoadedModel

#: The longest rendered chat (characters).
MAX_CHAT_CHARS = 200_000
#: The longest one call's chats may take to render, all together (seconds): a template that
#: loops without writing never
#: reaches the size check, and would hold the model's process for the whole model-call timeout.
MAX_CHAT_SECONDS = 5.0
#: The most messages in one chat, and chats in one file.
MAX_MESSAGES = 256
MAX_CHATS = 1000
MAX_CHAT_FILE_BYTES = 16 * 2**20


def check_messages(messages: Any, where: str = "The chat") -> list[dict[str, str]]:
    """``messages`` as a list of ``{"role": str, "content": str}``.

    Raises:
        IncompatibleInput: not a non-empty list of such messages, or more than `MAX_MESSAGES`.
    """
    if not isinstance(messages, list) or not messages:
        raise IncompatibleInput(f"{where} is not a list of messages.", 'Write [{"role": "user", "content": "..."}].')
    if len(messages) > MAX_MESSAGES:
        raise IncompatibleInput(f"{where} has {len(messages)} messages, over the {MAX_MESSAGES} read at once.")
    out = []
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise IncompatibleInput(f"Message {i + 1} of {where.lower()} needs a string role and content.")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def read_chats(path: str | Path) -> list[list[dict[str, str]]]:
    """The chats of a ``.json`` file: one chat (a list of messages) or a list of chats.

    Raises:
        UsageError: a missing file. CorruptFile: not JSON. IncompatibleInput / TooLarge: not chats, too many.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"No such chat file: {path}.")
    if path.stat().st_size > MAX_CHAT_FILE_BYTES:
        raise TooLarge(f"{path.name} is over {MAX_CHAT_FILE_BYTES // 2**20} MiB of chats.")
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFile(f"{path.name} is not JSON ({type(exc).__name__}).") from None
    chats = [data] if isinstance(data, list) and data and isinstance(data[0], dict) else data
    if not isinstance(chats, list) or not chats:
        raise IncompatibleInput(f"{path.name} holds no chat.", 'Write [{"role": "user", "content": "..."}] or a list of them.')
    if len(chats) > MAX_CHATS:
        raise IncompatibleInput(f"{path.name} holds {len(chats):,} chats, over the {MAX_CHATS:,} read at once.")
    return [check_messages(chat, f"Chat {i + 1}") for i, chat in enumerate(chats)]


@in_model_process
def render_chat(model: LoadedModel, chats: Sequence[list[dict[str, str]]], add_generation_prompt: bool = True) -> list[str]:
    """Each chat rendered through the model's chat template (`spec.chat_template`), sandboxed.

    Raises:
        IncompatibleInput: the model has no chat template, or the template fails on these messages.
        UnsafeFile: the template reaches for what the sandbox forbids. CorruptFile: not a Jinja template.
        TooLarge: a rendered chat over `MAX_CHAT_CHARS`.
    """
    template = model.spec.chat_template
    if not template:
        raise IncompatibleInput(f"{model.name} has no chat template.",
                                "Write the prompt as plain text, or add chat_template to tokenizer_config.json.")
    compiled = _compile(template)
    context = {"add_generation_prompt": bool(add_generation_prompt), **_special_tokens(model)}
    stop = time.monotonic() + MAX_CHAT_SECONDS  # one budget for every chat: 1000 prompts x 4.9 s is no way round it
    return [_render(compiled, {**context, "messages": check_messages(list(chat), f"Chat {i + 1}")}, stop)
            for i, chat in enumerate(chats)]


def _compile(template: str):
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise IncompatibleInput(f"The chat template refused the messages: {one_line(str(message), 200)}")

    def tojson(value: Any, indent: int | None = None) -> str:
        return json.dumps(value, ensure_ascii=False, indent=indent)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template)
    except TemplateError as exc:
        raise CorruptFile(f"The chat template is not a Jinja template: {one_line(exc, 200, typed=False)}") from None


def _render(compiled, context: dict[str, Any], stop: float | None = None) -> str:
    """``compiled`` rendered with ``context``; stopped at ``stop`` (`time.monotonic`; None: `MAX_CHAT_SECONDS` from now)."""
    from jinja2 import TemplateError
    from jinja2.exceptions import SecurityError

    parts, size = [], 0
    try:
        with _deadline(time.monotonic() + MAX_CHAT_SECONDS if stop is None else stop):
            for chunk in compiled.generate(**context):
                size += len(chunk)
                if size > MAX_CHAT_CHARS:
                    raise TooLarge(f"The chat template wrote over {MAX_CHAT_CHARS:,} characters.")
                parts.append(chunk)
    except SecurityError as exc:
        raise UnsafeFile(f"The chat template was refused: it reaches for {one_line(exc, 200, typed=False)}") from None
    except InputRefused:
        raise
    except MemoryError:
        raise TooLarge("The chat template needed more memory than it may use.") from None
    except TemplateError as exc:
        raise IncompatibleInput(f"The chat template failed on these messages: {one_line(exc, 200, typed=False)}") from None
    except (TypeError, ValueError, ArithmeticError, LookupError, RecursionError) as exc:
        raise IncompatibleInput(f"The chat template failed on these messages ({type(exc).__name__}).") from None
    return "".join(parts)


@contextmanager
def _deadline(stop: float):
    """Stop the template's own code (Jinja compiles it to Python named ``<template>``) once it has
    run until ``stop`` (`time.monotonic`): a line tracer on its frames only, in this thread, the previous
    tracer restored."""

    def line(frame, event, arg):
        if event == "line" and time.monotonic() > stop:
            raise TooLarge(f"The chat template ran over {MAX_CHAT_SECONDS:g} s.")
        return line

    def call(frame, event, arg):
        return line if frame.f_code.co_filename == "<template>" else None

    previous = sys.gettrace()
    sys.settrace(call)
    try:
        yield
    finally:
        sys.settrace(previous)


def _special_tokens(model: LoadedModel) -> dict[str, str]:
    """``bos_token`` / ``eos_token`` of the model (its config's ids, as the tokenizer writes them); "" if none."""
    from explain.generation.causal_lm import causal_lm, eos_ids
    from explain.generation.prompts import token_strings

    lm = causal_lm(model)
    bos = getattr(lm.config, "bos_token_id", None)
    eos = min(eos_ids(lm), default=None)
    return {name: token_strings([value], model.spec)[0] if isinstance(value, int) and value >= 0 else ""
            for name, value in (("bos_token", bos), ("eos_token", eos))}
