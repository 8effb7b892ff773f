"""explain.inputs.text's display rule: token ids read as words, markers stripped, ids unchanged (issue 20, item 8)."""
from __future__ import annotations

import re

import numpy as np
import pytest

from explain.inputs.text import (
    detokenize,
    display_text,
    display_tokens,
    raw_tokens,
    token_display,
    tokenize,
    tokens_for_display,
)
from explain.spec import InputSpec


def _vocab_list(vocab: dict[str, int]) -> list[str]:
    tokens = [""] * (max(vocab.values()) + 1)
    for token, i in vocab.items():
        tokens[i] = token
    return tokens


@pytest.fixture(scope="module")
def byte_level():
    """A RoBERTa-like byte-level BPE tokenizer.json (<s> ... </s>, pad id 1), built here, and its vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    corpus = ["the movie was very good", "bad awful movie café", "not a great film at all\nwhat a lovely story"] * 5
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return tok.to_str(), _vocab_list(tok.get_vocab())


def test_byte_level_bpe_tokens_read_as_words_with_the_tokenizers_decoder(byte_level):
    tokenizer, vocab = byte_level
    spec = InputSpec("text", (12,), vocabulary=vocab, tokenizer=tokenizer, cls_token="<s>")
    ids = tokenize("a great café\nfilm", spec)
    raw = raw_tokens(ids, spec)
    assert raw[:10] == ["<s>", "a", "Ġg", "reat", "Ġcaf", "Ã©", "Ċ", "fi", "lm", "</s>"]  # what the vocabulary holds
    labels = display_tokens(ids, spec)
    assert labels == ["<s>", "a", "g", "reat", "caf", "é", "↵", "fi", "lm", "</s>", "<pad>", "<pad>"]
    assert len(labels) == len(ids) and tokenize("a great café\nfilm", spec) == ids  # one label per id, ids untouched
    assert [t.joins for t in token_display(ids, spec)][:9] == [False, False, False, True, False, True, False, True, True]
    assert display_text(ids, spec) == "<s> a great café ↵ film </s>"
    assert tokens_for_display(ids, spec) == labels[:10]  # padding (id 1, RoBERTa's <pad>) left out
    assert detokenize(ids, spec) == labels
    assert not any("Ġ" in t or "Ċ" in t or "Ã" in t for t in labels)


def test_a_byte_token_that_prints_nothing_reads_escaped(byte_level):
    """Byte-level tokens of control bytes (an untrained causal LM generates them: found on the Generate page, where
    \\x1b drew as an empty box) and a soft hyphen read as Python writes them; tab and newline keep their symbols."""
    tokenizer, vocab = byte_level
    spec = InputSpec("text", (12,), vocabulary=vocab, tokenizer=tokenizer, cls_token="<s>")
    from explain.inputs.text import _byte_level_bytes

    by_byte = {_byte_level_bytes(t): i for i, t in enumerate(vocab) if len(t) == 1 and _byte_level_bytes(t)}
    ids = [by_byte[bytes([b])] for b in (0x00, 0x1B, 0x7F, 0x09, 0x0A)] + [by_byte[b"\xc2"], by_byte[b"\xad"]]
    assert display_tokens(ids, spec)[:5] == ["\\x00", "\\x1b", "\\x7f", "\u21e5", "\u21b5"]
    assert display_tokens(ids, spec)[5:] == ["\\xc2", "\\xad"]  # parts of a character, escaped as before
    soft_hyphen = InputSpec("text", (4,), vocabulary=["<pad>", "co\u00adop", "a b"])
    assert display_tokens([1, 2], soft_hyphen) == ["co\\xadop", "a b"]


def test_byte_level_vocabulary_without_a_tokenizer_uses_the_marker_rule(byte_level):
    """Only a vocabulary (no tokenizer.json): Ġ / Ċ markers and GPT-2's byte table decide, with the same result."""
    _, vocab = byte_level
    with_tok = InputSpec("text", (12,), vocabulary=vocab, tokenizer=byte_level[0], cls_token="<s>")
    ids = tokenize("a great café\nfilm", with_tok)
    spec = InputSpec("text", (12,), vocabulary=vocab)
    assert display_tokens(ids, spec) == display_tokens(ids, with_tok)
    assert display_text(ids, spec) == "<s> a great café ↵ film </s>"
    half = vocab.index("Ã")  # the first byte of é alone: shown escaped, one label for its one id
    assert display_tokens([0, half, 2], spec) == ["<s>", "\\xc3", "</s>"]
    assert display_tokens([0, half, 2], with_tok) == ["<s>", "\\xc3", "</s>"]
    assert display_tokens([0, vocab.index("Ġ"), 2], spec) == ["<s>", "␣", "</s>"]  # a lone space stays visible


def test_wordpiece_continuations_join_their_word():
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "play", "##ing", "the", "game", "##s", ","]
    spec = InputSpec("text", (8,), vocabulary=vocab, cls_token="[CLS]")
    ids = [2, 4, 5, 6, 7, 8, 3, 0]
    assert display_tokens(ids, spec) == ["[CLS]", "play", "ing", "the", "game", "s", "[SEP]", "[PAD]"]
    assert [t.joins for t in token_display(ids, spec)][:7] == [False, False, True, False, False, True, False]
    assert display_text(ids, spec) == "[CLS] playing the games [SEP]"
    assert raw_tokens(ids, spec)[2] == "##ing"


def test_wordpiece_with_its_tokenizer_json_is_decoded_by_its_decoder():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "play", "##ing", "the", "game", "##s", ","]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
    spec = InputSpec("text", (9,), vocabulary=vocab, tokenizer=tok.to_str(), cls_token="[CLS]")
    ids = tokenize("Playing the games,", spec)
    assert ids == [2, 4, 5, 6, 7, 8, 9, 3, 0]
    assert display_tokens(ids, spec) == ["[CLS]", "play", "ing", "the", "game", "s", ",", "[SEP]", "[PAD]"]
    assert display_text(ids, spec) == "[CLS] playing the games, [SEP]"  # the decoder's own clean-up of " ,"


def test_sentencepiece_markers_become_spaces():
    vocab = ["<pad>", "<unk>", "<s>", "▁great", "▁fil", "m", "▁New▁York", "<0x0A>", "▁"]
    spec = InputSpec("text", (9,), vocabulary=vocab)
    ids = [2, 3, 4, 5, 7, 6, 8, 0, 0]
    assert display_tokens(ids, spec) == ["<s>", "great", "fil", "m", "↵", "New York", "␣", "<pad>", "<pad>"]
    assert display_text(ids, spec) == "<s> great film ↵ New York ␣"


def test_sentencepiece_tokenizer_json_with_metaspace_decoder():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = [("<pad>", 0.0), ("<unk>", 0.0), ("▁great", -1.0), ("▁fil", -2.0), ("m", -2.0), ("▁", -3.0)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=1))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.add_special_tokens(["<pad>"])
    spec = InputSpec("text", (6,), vocabulary=[t for t, _ in vocab], tokenizer=tok.to_str())
    ids = tokenize("great film", spec)
    assert ids == [2, 3, 4, 0, 0, 0]
    assert display_tokens(ids, spec) == ["great", "fil", "m", "<pad>", "<pad>", "<pad>"]
    assert display_text(ids, spec) == "great film"


def test_a_plain_vocabulary_reads_as_before():
    vocab = ["<pad>", "<unk>", "<cls>", "not", "good", "bad", "!"]
    spec = InputSpec("text", (6,), vocabulary=vocab, cls_token="<cls>")
    ids = tokenize("Not good!", spec)
    assert display_tokens(ids, spec) == ["<cls>", "not", "good", "!", "<pad>", "<pad>"]
    assert display_text(ids, spec) == "<cls> not good !"
    assert display_tokens([9], spec) == ["<id 9>"] and display_tokens(np.array([[3, 4]]), spec) == ["not", "good"]


def test_read_text_and_the_highlights_show_readable_tokens(byte_level):
    """What the Output page and the report draw: the batch's display tokens and the highlighted spans."""
    from explain.inputs.reading import read_inputs
    from explain.inputs.text import padding_mask
    from explain.viz.attribution import text_attribution_html

    tokenizer, vocab = byte_level
    spec = InputSpec("text", (12,), vocabulary=vocab, tokenizer=tokenizer, cls_token="<s>")
    batch = read_inputs(b"a great film\n", spec, filename="r.txt")
    assert batch.display == [["<s>", "a", "g", "reat", "fi", "lm", "</s>"]]  # raw: <s> a Ġg reat Ġfi lm </s>
    assert display_text(batch.array[0], spec) == "<s> a great film </s>"
    row = batch.array[0]
    html = text_attribution_html(detokenize(row, spec), np.ones(row.size), padding=padding_mask(row, spec))
    assert "Ġ" not in html and ">reat<" in html


def _spans(html: str) -> list[tuple[str, str]]:
    """(style, text) of each token span."""
    return re.findall(r'<span title="[^"]*" style="([^"]*)">([^<]*)</span>', html)


def test_word_pieces_touch_their_word_when_joins_are_given(byte_level):
    """Issue 20: "a great film" is <s> a Ġg reat Ġfi lm </s>; with `joins` (from `token_display`) "reat"
    and "lm" have no gap before them (no margin or padding on the side where they meet, square corners
    there) and each word stays on one line; a token standing alone keeps its margin on both sides."""
    from explain.inputs.reading import read_inputs
    from explain.inputs.text import padding_mask
    from explain.viz.attribution import text_attribution_html

    tokenizer, vocab = byte_level
    spec = InputSpec("text", (12,), vocabulary=vocab, tokenizer=tokenizer, cls_token="<s>")
    row = read_inputs(b"a great film\n", spec, filename="r.txt").array[0]
    joins = [t.joins for t in token_display(row, spec)]
    assert joins[:7] == [False, False, False, True, False, True, False]
    args = (detokenize(row, spec), np.linspace(-1, 1, row.size))
    apart = text_attribution_html(*args, padding=padding_mask(row, spec))
    together = text_attribution_html(*args, padding=padding_mask(row, spec), joins=joins)
    assert [t for _, t in _spans(apart)] == [t for _, t in _spans(together)] == [
        "&lt;s&gt;", "a", "g", "reat", "fi", "lm", "&lt;/s&gt;"]
    assert all("padding:2px 4px;margin:1px;border-radius:4px" in s for s, _ in _spans(apart))
    assert "gb-word" not in apart
    styles = dict((t, s) for s, t in _spans(together))
    assert "padding:2px 0 2px 4px;margin:1px 0 1px 1px;border-radius:4px 0 0 4px" in styles["g"]  # open on its right
    assert "padding:2px 4px 2px 0;margin:1px 1px 1px 0;border-radius:0 4px 4px 0" in styles["reat"]  # open on its left
    assert "margin:1px 0 1px 1px" in styles["fi"] and "margin:1px 1px 1px 0" in styles["lm"]
    assert "padding:2px 4px;margin:1px;border-radius:4px" in styles["a"]  # a word of one token: as before
    assert together.count('<span class="gb-word" style="white-space:nowrap">') == 2  # "great" and "film"
    words = re.findall(r'<span class="gb-word"[^>]*>((?:<span [^>]*>[^<]*</span>)+)</span>', together)
    assert [re.findall(r">([^<]*)</span>", w) for w in words] == [["g", "reat"], ["fi", "lm"]]


def test_joins_never_glue_across_hidden_padding():
    from explain.viz.attribution import text_attribution_html

    html = text_attribution_html(["a", "<pad>", "b"], np.ones(3), padding=[False, True, False], joins=[False, False, True])
    assert "gb-word" not in html and html.count("margin:1px;") == 2
    assert text_attribution_html(["a", "b"], np.ones(2), joins=[False]) == text_attribution_html(["a", "b"], np.ones(2))
