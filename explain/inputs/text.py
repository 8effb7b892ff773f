"""Text tokenisation for text specs: the vocabulary is the spec's, ids are positions in it.

By convention id 0 is ``<pad>`` and id 1 is ``<unk>``; ``cls_token`` (when
set) is prepended. Words are ``[\\w']+`` runs; punctuation marks are separate
tokens, kept only when the vocabulary has them. A Hugging Face ``tokenizer.json``
is size-capped before it is parsed and its ids checked against the vocabulary
size before anything is built from them (`tokenizer_vocab`).
"""
from __future__ import annotations

import functools
import re
from collections.abc import Sequence

import numpy as np

from explain import config
from explain.errors import CorruptFile, IncompatibleInput, TooLarge
from explain.spec import InputSpec

PAD_ID, UNK_ID = 0, 1
#: names a vocabulary gives its padding / unknown token, in order of preference.
PAD_TOKENS = ("<pad>", "[PAD]")
UNK_TOKENS = ("<unk>", "[UNK]")
_TOKEN = re.compile(r"[\w']+|[^\w\s]")
#: BERT's basic split: runs of letters / digits, every other non-space character alone.
_BERT_TOKEN = re.compile(r"[^\W_]+|\S")


def vocab_index(spec: InputSpec) -> dict[str, int]:
    """Token -> id for the spec's vocabulary (first occurrence wins).

    Raises:
        IncompatibleInput: the spec is not a text spec with a vocabulary.
    """
    if spec.modality != "text" or not spec.vocabulary:
        raise IncompatibleInput(
            "The spec has no vocabulary, so text cannot be tokenised.",
            "Add a vocabulary to the spec, or upload token ids as .npy/.npz.",
        )
    index: dict[str, int] = {}
    for i, tok in enumerate(spec.vocabulary):
        index.setdefault(tok, i)
    return index


def tokenize(text: str, spec: InputSpec) -> list[int]:
    """Token ids (length ``input_shape[0]``) for one text.

    Lower-cases if ``spec.lowercase``, splits into words (``[\\w']+``) and
    punctuation marks, maps words to vocabulary ids (unknown words to
    ``<unk>``; punctuation not in the vocabulary is dropped), prepends
    ``cls_token`` when set, then pads with ``<pad>`` or truncates (ids from `special_token_ids`).
    """
    return encode(text, spec, vocab_index(spec))


def encode(text: str, spec: InputSpec, index: dict[str, int]) -> list[int]:
    """`tokenize` with a prebuilt `vocab_index` (for many texts)."""
    length = spec.input_shape[0]
    pad_id, unk_id = special_token_ids(spec)
    if spec.tokenizer:  # the model's own Hugging Face tokenizer, special tokens included
        ids = list(_hf_tokenizer(spec.tokenizer).encode(text).ids)
        if len(ids) > length:  # truncated: keep the closing special token, as the tokenizer's own truncation does
            ids = ids[: length - 1] + ids[-1:]
        return ids + [pad_id] * (length - len(ids))
    if spec.lowercase:
        text = text.lower()
    ids = [index.get(spec.cls_token, unk_id)] if spec.cls_token else []
    if _is_wordpiece(spec, index):  # a BERT vocabulary (Hugging Face): WordPiece, [CLS] ... [SEP]
        for tok in _BERT_TOKEN.findall(text):
            ids.extend(_wordpiece(tok, index, unk_id))
        ids = ids[: length - 1] + [index["[SEP]"]]
        return ids + [pad_id] * (length - len(ids))
    for tok in _TOKEN.findall(text):
        if tok in index:
            ids.append(index[tok])
        elif tok[0].isalnum() or tok[0] in "_'":
            ids.append(unk_id)
    ids = ids[:length]
    return ids + [pad_id] * (length - len(ids))


def check_tokenizer_size(tokenizer_json: str | bytes) -> None:
    """Refuse a ``tokenizer.json`` over `explain.config.max_tokenizer_bytes` (before it is parsed)."""
    size, cap = len(tokenizer_json), config.max_tokenizer_bytes()
    if size > cap:
        raise TooLarge(f"tokenizer.json is {size / 2**20:.0f} MiB, over the {cap / 2**20:.0f} MiB limit.",
                       "An operator can raise it with GLASSBOX_MAX_TOKENIZER_MB.")


def tokenizer_vocab(tokenizer_json: str | bytes, vocab_size: int | None = None) -> dict[str, int]:
    """Token -> id of a Hugging Face ``tokenizer.json`` (added tokens included), bounded.

    The file is size-checked before it is parsed, and every id must be below
    ``vocab_size`` (the model's embedding rows) and `explain.config.max_vocabulary`,
    so a table built from the ids (a vocabulary list) is never larger than those.

    Raises:
        TooLarge: the file or the vocabulary is over its cap.
        CorruptFile: not a tokenizer, or an id at or above ``vocab_size``.
    """
    from tokenizers import Tokenizer

    check_tokenizer_size(tokenizer_json)
    text = tokenizer_json.decode("utf-8", errors="replace") if isinstance(tokenizer_json, bytes) else tokenizer_json
    try:
        vocab = Tokenizer.from_str(text).get_vocab(with_added_tokens=True)
    except Exception as exc:
        raise CorruptFile(f"tokenizer.json cannot be read ({_first_line(exc)}).") from None
    cap = config.max_vocabulary()
    if len(vocab) > cap:
        raise TooLarge(f"tokenizer.json holds {len(vocab):,} tokens, over the {cap:,} limit.",
                       "An operator can raise it with GLASSBOX_MAX_VOCABULARY.")
    top = max(vocab.values(), default=-1)
    if vocab_size is not None and top >= vocab_size:
        raise CorruptFile(f"tokenizer.json has the id {top:,}, but the model's vocabulary has {vocab_size:,} entries.")
    if top >= cap:
        raise TooLarge(f"tokenizer.json has the id {top:,}, over the {cap:,}-token vocabulary limit.",
                       "An operator can raise it with GLASSBOX_MAX_VOCABULARY.")
    return vocab


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:200]


@functools.lru_cache(maxsize=4)
def _hf_tokenizer(tokenizer_json: str):
    from tokenizers import Tokenizer

    check_tokenizer_size(tokenizer_json)
    tok = Tokenizer.from_str(tokenizer_json)
    tok.no_truncation()
    tok.no_padding()
    return tok


def _is_wordpiece(spec: InputSpec, index: dict[str, int]) -> bool:
    return spec.cls_token == "[CLS]" and "[SEP]" in index and spec.input_shape[0] >= 2


def _wordpiece(word: str, index: dict[str, int], unk_id: int, max_chars: int = 100) -> list[int]:
    """BERT's greedy longest-match-first WordPiece: ``playing`` -> ``play`` ``##ing``; no match -> unk."""
    if word in index:
        return [index[word]]
    if len(word) > max_chars:
        return [unk_id]
    pieces, start = [], 0
    while start < len(word):
        end = len(word)
        while end > start:
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in index:
                pieces.append(index[piece])
                break
            end -= 1
        if end == start:
            return [unk_id]
        start = end
    return pieces


def detokenize(ids: Sequence[int] | np.ndarray, spec: InputSpec) -> list[str]:
    """One token per id, aligned with positions (padding reads ``<pad>``).

    Ids outside the vocabulary read ``<id N>``.
    """
    vocab = spec.vocabulary or []
    pad_id = special_token_ids(spec)[0]
    out = []
    for i in (int(v) for v in np.asarray(ids).reshape(-1)):
        out.append(vocab[i] if 0 <= i < len(vocab) else ("<pad>" if i == pad_id else f"<id {i}>"))
    return out


def special_token_ids(spec: InputSpec | None) -> tuple[int, int]:
    """(pad id, unk id): the positions of the first of `PAD_TOKENS` / `UNK_TOKENS` in the spec's
    vocabulary (``<pad>``, or ``[PAD]`` as BERT-style vocabularies write it), else `PAD_ID` and `UNK_ID`.

    The one answer to "which id is padding / unknown" for tokenising, padding
    masks and text reference inputs (`explain.output.baselines.text_reference`).
    """
    vocab = list(spec.vocabulary or []) if spec is not None else []
    pad = next((vocab.index(t) for t in PAD_TOKENS if t in vocab), PAD_ID)
    unk = next((vocab.index(t) for t in UNK_TOKENS if t in vocab), UNK_ID)
    return pad, unk


def padding_mask(ids: Sequence[int] | np.ndarray, spec: InputSpec | None = None) -> np.ndarray:
    """True where a position is padding: the token id is the spec's pad id, at any position.

    This is the one definition of padding: the id the text models mask as an attention key
    (``src_key_padding_mask = ids == pad_id``), wherever in the row it stands. The pad id is
    ``<pad>``'s position in the spec's vocabulary, else `PAD_ID` (`special_token_ids`). A spec that is not a text spec has no padding (all False).

    Args:
        ids: token ids of any shape ([L] one row, [N, L] a batch).
        spec: the model's spec; None means the ids are text.

    Returns:
        A bool array of ``ids``' shape.
    """
    ids = np.asarray(ids)
    if spec is not None and spec.modality != "text":
        return np.zeros(ids.shape, dtype=bool)
    return ids == special_token_ids(spec)[0]


def real_positions(ids: Sequence[int] | np.ndarray, spec: InputSpec | None = None) -> list[int]:
    """Positions of one row that are not padding (`padding_mask`); all of them for an all-padding row."""
    pad = padding_mask(np.asarray(ids).reshape(-1), spec)
    return np.flatnonzero(~pad).tolist() or list(range(pad.size))


def real_length(ids: Sequence[int] | np.ndarray, spec: InputSpec | None = None) -> int:
    """Length of one row without its trailing padding (`padding_mask`), at least 1."""
    real = np.flatnonzero(~padding_mask(np.asarray(ids).reshape(-1), spec))
    return int(real[-1] + 1) if real.size else 1


def tokens_for_display(ids: Sequence[int] | np.ndarray, spec: InputSpec) -> list[str]:
    """`detokenize` without the padding positions (what a person reads)."""
    flat = np.asarray(ids).reshape(-1)
    return [t for t, pad in zip(detokenize(flat, spec), padding_mask(flat, spec)) if not pad]
