"""Text tokenisation for text specs: the vocabulary is the spec's, ids are positions in it.

By convention id 0 is ``<pad>`` and id 1 is ``<unk>``; ``cls_token`` (when
set) is prepended. Words are ``[\\w']+`` runs; punctuation marks are separate
tokens, kept only when the vocabulary has them. A Hugging Face ``tokenizer.json``
is size-capped before it is parsed and its ids checked against the vocabulary
size before anything is built from them (`tokenizer_vocab`).

Showing tokens has one rule, `token_display` (`display_tokens`, `display_text`,
`tokens_for_display` and `detokenize` go through it): word-boundary markers (byte-level
BPE ``Ġ`` / ``Ċ``, SentencePiece ``▁``, WordPiece ``##``) are stripped, byte-level
characters decoded (by the spec's tokenizer's decoder when it has one), one label per id;
the ids themselves never change (`raw_tokens` are the vocabulary's strings).
"""
from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from explain import config
from explain.errors import CorruptFile, IncompatibleInput, TooLarge, one_line
from explain.spec import InputSpec

PAD_ID, UNK_ID = 0, 1
#: names a vocabulary gives its padding / unknown token, in order of preference.
PAD_TOKENS = ("<pad>", "[PAD]")
UNK_TOKENS = ("<unk>", "[UNK]")
_TOKEN = re.compile(r"[\w']+|[^\w\s]")
#: BERT's basic split: runs of letters / digits, every other non-space character alone.
_BERT_TOKEN = re.compile(r"[^\W_]+|\S")


def spec_vocabulary(spec: InputSpec | None) -> Sequence[str] | None:
    """The spec's tokens by id: its ``vocabulary``, else its ``tokenizer``'s (a spec written for a
    TorchScript or ``.pt2`` text model may carry only the model's ``tokenizer.json``), else None.

    The one answer for tokenising, the pad / unk ids and the id range of token-id inputs."""
    if spec is None:
        return None
    if spec.vocabulary:
        return spec.vocabulary
    return _tokenizer_tokens(spec.tokenizer) if spec.tokenizer else None


@functools.lru_cache(maxsize=4)
def _tokenizer_tokens(tokenizer_json: str) -> tuple[str, ...]:
    """A ``tokenizer.json``'s tokens by id (added tokens included; a gap reads ``[unusedN]``), bounded
    by `tokenizer_vocab`."""
    vocab = tokenizer_vocab(tokenizer_json)
    tokens = [f"[unused{i}]" for i in range(max(vocab.values(), default=-1) + 1)]
    for token, i in vocab.items():
        tokens[i] = token
    return tuple(tokens)


def vocab_index(spec: InputSpec) -> dict[str, int]:
    """Token -> id for the spec's vocabulary (first occurrence wins).

    Raises:
        IncompatibleInput: the spec is not a text spec with a vocabulary.
    """
    vocab = spec_vocabulary(spec) if spec.modality == "text" else None
    if not vocab:
        raise IncompatibleInput(
            "The spec has no vocabulary, so text cannot be tokenised.",
            "Add a vocabulary (or the model's tokenizer.json as 'tokenizer') to the spec, or upload token ids as .npy/.npz.",
        )
    index: dict[str, int] = {}
    for i, tok in enumerate(vocab):
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
        with tokenizer_panics():
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


@contextlib.contextmanager
def tokenizer_panics() -> Iterator[None]:
    """A panic of the Rust ``tokenizers`` as one line (`CorruptFile`): a ``tokenizer.json``'s regex that
    Oniguruma stops (its backtracking limit) on a text panics, and pyo3's ``PanicException`` is a
    ``BaseException`` that would pass every ``except Exception`` (a job's, a worker thread's) on its way out."""
    try:
        yield
    except BaseException as exc:
        if type(exc).__name__ != "PanicException":
            raise
        raise CorruptFile(f"The model's tokenizer failed on this text ({one_line(str(exc), 200)}).",
                          "Its tokenizer.json has a pattern that backtracks without end on such text: fix its "
                          "regex, or give token ids.") from None


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
        with tokenizer_panics():
            vocab = Tokenizer.from_str(text).get_vocab(with_added_tokens=True)
    except Exception as exc:
        raise CorruptFile(f"tokenizer.json cannot be read ({one_line(exc, 200, typed=False)}).") from None
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
    """One readable label per id, aligned with positions (`display_tokens`; padding reads ``<pad>``).

    Ids outside the vocabulary read ``<id N>``. The vocabulary's own strings, markers
    and all, are `raw_tokens`.
    """
    return display_tokens(ids, spec)


def raw_tokens(ids: Sequence[int] | np.ndarray, spec: InputSpec) -> list[str]:
    """The vocabulary's string per id (``Ġgreat``, ``##ing``), aligned with positions.

    Padding outside the vocabulary reads ``<pad>``, other ids outside it ``<id N>``;
    a spec with a tokenizer but no vocabulary asks the tokenizer.
    """
    vocab = spec.vocabulary or []
    pad_id = special_token_ids(spec)[0]
    tok = _hf_tokenizer(spec.tokenizer) if spec.tokenizer and not vocab else None
    out = []
    for i in (int(v) for v in np.asarray(ids).reshape(-1)):
        raw = vocab[i] if 0 <= i < len(vocab) else (tok.id_to_token(i) if tok is not None and i >= 0 else None)
        out.append(raw if raw is not None else ("<pad>" if i == pad_id else f"<id {i}>"))
    return out


def special_token_ids(spec: InputSpec | None) -> tuple[int, int]:
    """(pad id, unk id): the positions of the first of `PAD_TOKENS` / `UNK_TOKENS` in the spec's
    vocabulary (``<pad>``, or ``[PAD]`` as BERT-style vocabularies write it), else `PAD_ID` and `UNK_ID`.

    The one answer to "which id is padding / unknown" for tokenising, padding
    masks and text reference inputs (`explain.output.baselines.text_reference`).
    """
    vocab = list(spec_vocabulary(spec) or []) if spec is not None else []
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
    """`display_tokens` without the padding positions (what a person reads)."""
    flat = np.asarray(ids).reshape(-1)
    return [t for t, pad in zip(display_tokens(flat, spec), padding_mask(flat, spec)) if not pad]


# --------------------------------------------------------------------------
# display: the one place a token id becomes something a person reads
# --------------------------------------------------------------------------
#: word-boundary markers: byte-level BPE's space / newline, SentencePiece's space, WordPiece's continuation.
BYTE_LEVEL_SPACE, BYTE_LEVEL_NEWLINE, SENTENCEPIECE_SPACE, WORDPIECE_CONTINUATION = "\u0120", "\u010a", "\u2581", "##"
#: a label that would be blank shows its whitespace: newline, tab, space.
_VISIBLE = {"\n": "\u21b5", "\t": "\u21e5", "\r": ""}
_BLANK = "\u2423"
#: tokens shown as they are and standing alone: <s>, </s>, <pad>, <|endoftext|>, [CLS], [SEP]...
_SPECIAL = re.compile(r"<[^<>\s]{1,40}>|\[[A-Za-z_]{1,20}\]")
_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@dataclass(frozen=True)
class DisplayToken:
    """One token as a person reads it.

    Attributes:
        label: the token without its word-boundary marker, bytes decoded (``great`` for ``Ġgreat``,
            ``ing`` for ``##ing``, ``é`` for ``Ã©``); whitespace-only tokens show ``↵`` / ``⇥`` / ``␣``.
        joins: True when the token continues the previous word (no space before it in a sentence).
        special: a special token (``<s>``, ``[CLS]``, padding): shown as it is, standing alone.
        pad: a padding position (`padding_mask`).
    """

    label: str
    joins: bool = False
    special: bool = False
    pad: bool = False


def display_tokens(ids: Sequence[int] | np.ndarray, spec: InputSpec) -> list[str]:
    """One readable label per id, aligned with positions, padding included (`token_display`)."""
    return [t.label for t in token_display(ids, spec)]


def display_text(ids: Sequence[int] | np.ndarray, spec: InputSpec) -> str:
    """One row of ids as one line of text, padding left out: subwords joined into their words.

    With the spec's tokenizer each run of ordinary tokens is decoded by the tokenizer's own
    decoder (so a character split over several byte-level tokens comes out whole); special
    tokens stand alone, separated by spaces. Newlines read ``↵``.
    """
    flat = np.asarray(ids).reshape(-1)
    shown = token_display(flat, spec)
    raws = raw_tokens(flat, spec)
    scheme, decoder = _scheme(spec), _decoder(spec)
    parts: list[str] = []
    run: list[int] = []

    def flush() -> None:
        if run:
            parts.append(_decode_run([raws[i] for i in run], [shown[i] for i in run], scheme, decoder))
            run.clear()

    for i, t in enumerate(shown):
        if t.pad:
            continue
        if t.special:
            flush()
            parts.append(t.label)
        else:
            run.append(i)
    flush()
    return " ".join(p for p in parts if p)


def token_display(ids: Sequence[int] | np.ndarray, spec: InputSpec) -> list[DisplayToken]:
    """A `DisplayToken` per id, aligned with positions: the one rule for showing tokens.

    Markers are the vocabulary's: the scheme (byte-level BPE ``Ġ`` / ``Ċ``, SentencePiece ``▁``,
    WordPiece ``##``) is the marker most tokens of the vocabulary carry. With the spec's
    ``tokenizer`` a token's text is its decoder's (`tokenizers` decoders: byte-level bytes, byte
    fallback, replacements); without one, byte-level characters are mapped back to bytes with
    GPT-2's table and a token reads as its UTF-8 text. A token whose bytes are part of a character
    shows them escaped (``\\xc3``). The ids are never changed: one label per id.
    """
    flat = np.asarray(ids).reshape(-1)
    raws = raw_tokens(flat, spec)
    pads = padding_mask(flat, spec)
    scheme, decoder, specials = _scheme(spec), _decoder(spec), _special_ids(spec)
    known = len(spec.vocabulary) if spec.vocabulary else (_hf_tokenizer(spec.tokenizer).get_vocab_size() if spec.tokenizer else 0)
    out: list[DisplayToken] = []
    previous_special = True
    for i, raw, pad in zip(flat.tolist(), raws, pads.tolist()):
        if pad or i in specials or not 0 <= i < known or (
                not spec.tokenizer and _SPECIAL.fullmatch(raw) and not _BYTE_FALLBACK.fullmatch(raw)):
            out.append(DisplayToken(raw, special=True, pad=bool(pad)))
            previous_special = True
            continue
        starts, text = _starts_word(raw, scheme), _token_text(raw, scheme, decoder)
        out.append(DisplayToken(_visible(text), joins=not starts and not previous_special))
        previous_special = False
    return out


def _starts_word(raw: str, scheme: str) -> bool:
    """Whether a token begins a word: its marker says so, else the scheme's default for unmarked tokens."""
    if raw.startswith((BYTE_LEVEL_SPACE, SENTENCEPIECE_SPACE, BYTE_LEVEL_NEWLINE)) or _BYTE_FALLBACK.fullmatch(raw):
        return True
    if raw.startswith(WORDPIECE_CONTINUATION) and len(raw) > 2:
        return scheme != "wordpiece"
    return scheme in ("wordpiece", "plain")


def _token_text(raw: str, scheme: str, decoder) -> str:
    """A token's text without its marker (its surrounding spaces are stripped by `_visible`)."""
    if scheme == "wordpiece" and raw.startswith(WORDPIECE_CONTINUATION) and len(raw) > 2:
        return raw[2:]
    byte = _BYTE_FALLBACK.fullmatch(raw)
    if byte:
        return bytes([int(byte.group(1), 16)]).decode("utf-8", errors="backslashreplace")
    if decoder is not None:
        try:
            with tokenizer_panics():  # a regex decoder's panic: the rule below
                text = decoder.decode([raw])
        except Exception:  # a decoder that cannot take one token alone: the marker rule below
            text = None
        if text is not None and "\ufffd" not in text:
            return text.removeprefix(WORDPIECE_CONTINUATION) if scheme == "wordpiece" else text
    if scheme == "byte_level":
        data = _byte_level_bytes(raw)
        if data is not None:
            return data.decode("utf-8", errors="backslashreplace")
    if scheme == "sentencepiece":
        return raw.replace(SENTENCEPIECE_SPACE, " ")
    return raw


def _decode_run(raws: list[str], shown: list[DisplayToken], scheme: str, decoder) -> str:
    """A run of ordinary tokens as text: the tokenizer's decoder, else bytes or labels joined at word starts."""
    if decoder is not None:
        try:
            with tokenizer_panics():  # a regex decoder's panic: the rule below
                text = decoder.decode(raws)
        except Exception:
            text = None
        if text is not None:
            text = text.removeprefix(WORDPIECE_CONTINUATION) if scheme == "wordpiece" else text
            return _one_line(text)
    if scheme == "byte_level":
        data = [_byte_level_bytes(r) for r in raws]
        if all(d is not None for d in data):
            return _one_line(b"".join(data).decode("utf-8", errors="replace"))
    text = ""
    for i, t in enumerate(shown):
        text += t.label if (i == 0 or t.joins) else " " + t.label
    return text


def _one_line(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return re.sub(r"[ \t]*\n[ \t]*", " \u21b5 ", text).strip()


def _visible(text: str) -> str:
    """A label: surrounding spaces stripped; newlines and tabs as symbols; any other character that prints
    nothing (a control byte \\x1b, \\x7f, a soft hyphen, a zero-width space) escaped as Python writes it, as
    a byte that is part of a character is (it drew as an empty box, or nothing, on the Generate page);
    blank as ``␣``."""
    text = text.strip(" ")
    for char, symbol in _VISIBLE.items():
        text = text.replace(char, symbol)
    if not text.isprintable():
        text = "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode("ascii") for c in text)
    return text or _BLANK


def _scheme(spec: InputSpec) -> str:
    """``byte_level`` | ``sentencepiece`` | ``wordpiece`` | ``plain``: the marker most tokens of the vocabulary carry."""
    vocab = spec.vocabulary
    if not vocab and spec.tokenizer:
        return _tokenizer_scheme(spec.tokenizer)
    if not vocab:
        return "plain"
    key = id(vocab)
    hit = _SCHEMES.get(key)
    if hit is not None and hit[0] is vocab and hit[1] == len(vocab):
        return hit[2]
    scheme = _vocab_scheme(vocab)
    if len(_SCHEMES) >= 8:
        _SCHEMES.pop(next(iter(_SCHEMES)))
    _SCHEMES[key] = (vocab, len(vocab), scheme)  # the list itself is held, so its id is not reused
    return scheme


_SCHEMES: dict[int, tuple[Sequence[str], int, str]] = {}


def _vocab_scheme(vocab: Sequence[str]) -> str:
    counts = {"byte_level": 0, "sentencepiece": 0, "wordpiece": 0}
    for tok in vocab:
        if tok.startswith(BYTE_LEVEL_SPACE):
            counts["byte_level"] += 1
        elif tok.startswith(SENTENCEPIECE_SPACE):
            counts["sentencepiece"] += 1
        elif tok.startswith(WORDPIECE_CONTINUATION) and len(tok) > 2:
            counts["wordpiece"] += 1
    best = max(counts, key=counts.__getitem__)
    return best if counts[best] else "plain"


@functools.lru_cache(maxsize=4)
def _tokenizer_scheme(tokenizer_json: str) -> str:
    return _vocab_scheme(list(_hf_tokenizer(tokenizer_json).get_vocab(with_added_tokens=False)))


def _decoder(spec: InputSpec):
    """The spec's tokenizer's decoder (None without a tokenizer or when it has none)."""
    return _hf_tokenizer(spec.tokenizer).decoder if spec.tokenizer else None


def _special_ids(spec: InputSpec) -> frozenset[int]:
    """Ids of the tokenizer's special tokens (none without a tokenizer: the `_SPECIAL` shapes decide)."""
    return _tokenizer_specials(spec.tokenizer) if spec.tokenizer else frozenset()


@functools.lru_cache(maxsize=4)
def _tokenizer_specials(tokenizer_json: str) -> frozenset[int]:
    added = _hf_tokenizer(tokenizer_json).get_added_tokens_decoder()
    return frozenset(i for i, tok in added.items() if tok.special)


@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level table reversed: the printable character standing for each byte -> the byte."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1), *range(ord("\u00ae"), ord("\u00ff") + 1)]
    chars = list(kept)
    shifted = 0
    for b in range(256):
        if b not in kept:
            kept.append(b)
            chars.append(256 + shifted)
            shifted += 1
    return {chr(c): b for b, c in zip(kept, chars)}


def _byte_level_bytes(raw: str) -> bytes | None:
    """A byte-level token's bytes; None when it holds a character outside the table (not a byte-level token)."""
    table = _byte_decoder()
    try:
        return bytes(table[c] for c in raw)
    except KeyError:
        return None
