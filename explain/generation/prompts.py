"""Prompts and continuations as token ids, and ids back as text, with the model's own tokenizer.

This is the server's side: the ``tokenizer.json`` in the spec is data (`tokenizers` reads it,
bounded by `explain.inputs.text`), so nothing here runs the model. Prompts are encoded
as transformers' tokenizer encodes them (its post-processor adds what the model expects
first, e.g. Llama's ``<s>``); continuations without special tokens, as Captum encodes a
target. A file of prompts is a ``.txt`` (one per non-empty line) or ``.npy`` / ``.npz``
(int token ids [N, L], each row a whole prompt).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from explain.errors import CorruptFile, IncompatibleInput, UsageError
from explain.inputs.text import UNK_TOKENS, _hf_tokenizer, raw_tokens, tokenizer_panics
from explain.loading.source import read_source
from explain.spec import InputSpec

#: The most prompts one file may hold.
MAX_PROMPTS = 1000


def _tokenizer(spec: InputSpec):
    if not spec.tokenizer:
        raise IncompatibleInput("This model has no tokenizer.json, so texts cannot be turned into its tokens.",
                                "Give token ids as .npy / .npz, or add tokenizer.json to the model's folder.")
    return _hf_tokenizer(spec.tokenizer)


def encode_texts(texts: Sequence[str], spec: InputSpec, special_tokens: bool = True) -> list[np.ndarray]:
    """One int64 array of token ids per text (``special_tokens``: the tokenizer's post-processor runs)."""
    tok = _tokenizer(spec)
    with tokenizer_panics():
        out = [np.asarray(tok.encode(text, add_special_tokens=special_tokens).ids, dtype=np.int64) for text in texts]
    for i, ids in enumerate(out):
        if ids.size == 0:
            raise IncompatibleInput(f"Text {i + 1} ({texts[i][:40]!r}) has no tokens.")
    return out


def unknown_token(spec: InputSpec) -> tuple[int, str] | None:
    """The tokenizer's unknown token (its id and string: what a word outside the vocabulary becomes), None when it
    has none (a byte-level BPE spells every text)."""
    tok = _tokenizer(spec)
    names = [getattr(tok.model, "unk_token", None), *UNK_TOKENS]  # the model's own (WordLevel, WordPiece, BPE) first
    for name in names:
        found = tok.token_to_id(name) if isinstance(name, str) else None
        if found is not None:
            return int(found), name
    return None


def decode_ids(ids: Sequence[int] | np.ndarray, spec: InputSpec) -> str:
    """The text of token ids (the tokenizer's decoder; without a tokenizer the tokens joined)."""
    ids = [int(i) for i in np.asarray(ids).reshape(-1) if int(i) >= 0]
    if spec.tokenizer:
        with tokenizer_panics():
            return _tokenizer(spec).decode(ids, skip_special_tokens=False)
    return " ".join(raw_tokens(ids, spec))


def token_strings(ids: Sequence[int] | np.ndarray, spec: InputSpec) -> list[str]:
    """The vocabulary's string of each id (``Ġgreat``, ``▁the``), aligned with the ids."""
    return raw_tokens([int(i) for i in np.asarray(ids).reshape(-1)], spec)


def read_token_lists(path: str | Path, spec: InputSpec, special_tokens: bool = True, what: str = "prompts",
                     keep_spaces: bool = False) -> list[np.ndarray]:
    """The prompts (or continuations) of a file: one int64 array per line of a ``.txt``, per row of an array.
    ``keep_spaces``: each line as written but its line end (a continuation's leading space is part of its first
    token: GPT-2's ``" four"`` is ``Ġfour``, not ``four``), else stripped; blank lines are skipped either way.

    Raises:
        UsageError: a missing file. CorruptFile / IncompatibleInput: not text or ids, no lines, ids
            outside the vocabulary, more than `MAX_PROMPTS`.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"No such {what} file: {path}.")
    data, name = read_source(path)
    if path.suffix.lower() in (".npy", ".npz"):
        from explain.inputs.reading import model_ready_array

        ids = np.asarray(model_ready_array(data, name))
        if ids.ndim == 1:
            ids = ids[None]
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise IncompatibleInput(f"{name} holds {ids.dtype} {list(ids.shape)}, not token ids [N, L].")
        rows = [row.astype(np.int64) for row in ids]
    else:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise CorruptFile(f"{name} is not UTF-8 text.") from None
        lines = [line if keep_spaces else line.strip() for line in text.splitlines() if line.strip()]
        if not lines:
            raise IncompatibleInput(f"{name} has no text lines.")
        rows = encode_texts(lines, spec, special_tokens)
    if len(rows) > MAX_PROMPTS:
        raise IncompatibleInput(f"{name} holds {len(rows):,} {what}, over the {MAX_PROMPTS:,} read at once.")
    vocab = len(spec.vocabulary or []) or None
    for i, row in enumerate(rows):
        if row.size == 0 or row.min() < 0 or (vocab and row.max() >= vocab):
            raise IncompatibleInput(f"{what.capitalize()[:-1]} {i + 1} of {name} has ids outside the vocabulary.")
    return rows
