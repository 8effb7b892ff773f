"""Token attributions grouped into words or sentences (LIT's sequence salience), by summing.

A text's positions (prompt + generated, as the columns of a generation's matrix) are cut into
contiguous groups:

- ``token``: every token is its own group;
- ``word``: a word starts at every token that does not join the one before it (the one rule for
  that, `explain.inputs.text.token_display`: a byte-level ``Ġ``, a SentencePiece ``▁``, a WordPiece
  token without ``##``; for a word-level tokenizer every token); a special token (``<s>``) and a
  newline stand alone;
- ``sentence``: a sentence ends after a token whose text ends with ``.``, ``!`` or ``?`` or holds a
  newline (the blank tokens right after it still belong to it); a special token stands alone.

Group g covers positions ``spans[g, 0] .. spans[g, 1] - 1``. `group_values` sums a matrix's columns
into its groups, so each row's sum is kept exactly (additive methods: the sum of a group's token
attributions is the group's). This module reads the tokenizer only (the server's side).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from explain.errors import UsageError
from explain.inputs.text import display_text, token_display
from explain.spec import InputSpec

#: How a text's positions may be grouped.
GRANULARITIES = ("token", "word", "sentence")
#: A token ending in one of these ends a sentence (a newline too).
SENTENCE_ENDS = (".", "!", "?")
_NEWLINE = "\u21b5"  # how `token_display` shows a newline
_BLANKS = {"\u2423", "\u21b5", "\u21e5"}  # a blank, a newline, a tab


def group_spans(ids: Sequence[int] | np.ndarray, spec: InputSpec, granularity: str) -> np.ndarray:
    """int64 [G, 2]: the (start, end) positions of each group of ``ids`` [L], in order, covering all L.

    Raises:
        UsageError: an unknown granularity.
    """
    if granularity not in GRANULARITIES:
        raise UsageError(f"Unknown granularity {granularity!r}; use one of {', '.join(GRANULARITIES)}.")
    shown = token_display(np.asarray(ids).reshape(-1), spec)
    starts: list[int] = []
    ended = True  # the first position starts a group
    for i, token in enumerate(shown):
        blank = granularity == "sentence" and not token.special and set(token.label) <= _BLANKS
        if granularity == "token" or token.special or (ended and not (blank and i and not shown[i - 1].special)):
            starts.append(i)
        elif granularity == "word" and (not token.joins or set(token.label) == {_NEWLINE}):
            starts.append(i)
        if granularity == "sentence":
            ended = token.special or token.label.endswith(SENTENCE_ENDS) or _NEWLINE in token.label or (blank and ended)
        else:  # a special token and a newline stand alone
            ended = token.special or (granularity == "word" and set(token.label) == {_NEWLINE})
    ends = starts[1:] + [len(shown)]
    return np.asarray(list(zip(starts, ends)), dtype=np.int64).reshape(-1, 2)


def group_values(values: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """float64 [..., G]: the columns of ``values`` [..., L] summed over each group of ``spans`` [G, 2]."""
    values = np.asarray(values, dtype=np.float64)
    if spans.size == 0:
        return np.zeros(values.shape[:-1] + (0,))
    if int(spans[-1, 1]) != values.shape[-1]:
        raise ValueError(f"spans cover {int(spans[-1, 1])} positions, the values {values.shape[-1]}")
    return np.add.reduceat(values, spans[:, 0], axis=-1)


def group_labels(ids: Sequence[int] | np.ndarray, spec: InputSpec, spans: np.ndarray) -> list[str]:
    """One label per group: its tokens decoded as one text (`display_text`), or ``␣`` when blank."""
    flat = np.asarray(ids).reshape(-1)
    return [display_text(flat[start:end], spec).strip() or "\u2423" for start, end in spans.tolist()]


def position_groups(spans: np.ndarray, length: int) -> np.ndarray:
    """int64 [length]: the group of each position (a feature mask, as Captum's ``feature_mask``)."""
    mask = np.zeros(length, np.int64)
    for g, (start, end) in enumerate(spans.tolist()):
        mask[start:end] = g
    return mask


def shared_group_values(values: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """float64 [..., G]: each group's one value, where every position of a group holds it (occlusion's
    values: the drop when the group is replaced, Captum's ``FeatureAblation`` convention)."""
    values = np.asarray(values, dtype=np.float64)
    return values[..., spans[:, 0]] if spans.size else np.zeros(values.shape[:-1] + (0,))
