"""Token attributions grouped into words and sentences (issue 22, LIT's sequence salience): spans on a
GPT-2-style byte-level BPE built here with `tokenizers`, sums kept, and the CLI's ``--granularity``."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("tokenizers")

from causal_models import CORPUS, one_thread, write_hf_llama  # noqa: E402, F401 - one_thread: a fixture

from explain.cli import main  # noqa: E402
from explain.errors import UsageError  # noqa: E402
from explain.generation.granularity import group_labels, group_spans, group_values, position_groups  # noqa: E402
from explain.generation.prompts import decode_ids, encode_texts  # noqa: E402
from explain.spec import InputSpec  # noqa: E402

TEXT = "the cat sat on the mat. a dog ran to the park!\ntwo plus two"


@pytest.fixture(scope="module")
def bpe_spec():
    """A GPT-2-style tokenizer (byte-level BPE, merges learned, ``<s>`` put first) and a causal-LM spec with it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS + [TEXT], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<unk>", "<s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    spec = InputSpec(modality="text", input_shape=(64,), dtype="int64", task="causal_lm", lowercase=False,
                     tokenizer=tok.to_str())
    return tok, spec


def test_words_and_sentences_of_a_byte_level_bpe(bpe_spec):
    tok, spec = bpe_spec
    ids = encode_texts(["the catnap sat. a dog ran!\ntwo"], spec)[0]
    pieces = [tok.id_to_token(int(i)) for i in ids]
    assert pieces[2:6] == ["Ġcat", "n", "a", "p"]  # a word in four pieces: the spans must join them
    words = group_spans(ids, spec, "word")
    assert words[:3].tolist() == [[0, 1], [1, 2], [2, 6]]
    assert group_labels(ids, spec, words) == ["<s>", "the", "catnap", "sat.", "a", "dog", "ran!", "\u21b5", "two"]
    for (start, end), word in zip(words.tolist()[1:], ["the", " catnap", " sat.", " a", " dog", " ran!"]):
        assert decode_ids(ids[start:end], spec) == word  # each span is exactly its word's tokens
    sentences = group_spans(ids, spec, "sentence")
    assert [decode_ids(ids[a:b], spec) for a, b in sentences.tolist()] == ["<s>", "the catnap sat.", " a dog ran!\n", "two"]
    tokens = group_spans(ids, spec, "token")
    assert tokens.tolist() == [[i, i + 1] for i in range(len(ids))]
    for spans in (words, sentences, tokens):  # contiguous, in order, covering every position
        assert spans[0, 0] == 0 and spans[-1, 1] == len(ids) and (spans[1:, 0] == spans[:-1, 1]).all()
    assert position_groups(sentences, len(ids)).tolist() == sum(([g] * (b - a) for g, (a, b) in enumerate(sentences.tolist())), [])


def test_a_word_level_tokenizer_makes_each_token_a_word():
    vocab = ["<pad>", "<unk>", "the", "cat", "sat", "."]
    spec = InputSpec(modality="text", input_shape=(8,), dtype="int64", vocabulary=vocab)
    ids = np.array([2, 3, 4, 5, 2, 3])
    assert group_spans(ids, spec, "word").tolist() == [[i, i + 1] for i in range(6)]
    assert group_spans(ids, spec, "sentence").tolist() == [[0, 4], [4, 6]]  # "the cat sat ." | "the cat"


def test_grouping_sums_each_group_and_keeps_each_row_sum():
    values = np.array([[1.0, 2.0, 0.5, -1.0, 4.0], [0.25, 0.0, 3.0, 0.0, 0.0]], np.float32)  # [T, L]
    spans = np.array([[0, 1], [1, 3], [3, 5]])
    grouped = group_values(values, spans)
    np.testing.assert_array_equal(grouped, [[1.0, 2.5, 3.0], [0.25, 3.0, 0.0]])
    rng = np.random.default_rng(0)
    big = rng.normal(size=(4, 40)).astype(np.float32)
    cuts = np.array(sorted(rng.choice(np.arange(1, 40), 9, replace=False)))
    spans = np.stack([np.r_[0, cuts], np.r_[cuts, 40]], 1)
    np.testing.assert_allclose(group_values(big, spans).sum(-1), big.astype(np.float64).sum(-1), rtol=0, atol=1e-12)
    with pytest.raises(UsageError, match="granularity"):
        group_spans([1, 2], InputSpec(modality="text", input_shape=(4,), dtype="int64"), "paragraph")


@pytest.mark.usefixtures("one_thread")
def test_cli_generate_granularity_keeps_token_values_and_adds_the_groups(tmp_path, capsys):
    folder = write_hf_llama(tmp_path / "llama")
    prompts = tmp_path / "p.txt"
    prompts.write_text("the cat sat. on the\ntwo plus two is\n")
    out = tmp_path / "g.npz"
    assert main(["generate", str(folder), "--prompts", str(prompts), "--max-new-tokens", "3", "--method",
                 "input_x_gradient", "--granularity", "sentence", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    g = np.load(out)
    assert printed["granularity"] == "sentence" and printed["groups"][0][:2] == ["<s>", "the cat sat."]
    for i in range(2):
        spans = g["group_spans"][i][g["group_spans"][i, :, 0] >= 0]
        assert spans[-1, 1] == g["prompt_length"][i] + g["generated_length"][i]
        np.testing.assert_allclose(g["group_values"][i, :, : len(spans)], group_values(g["values"][i, :, : spans[-1, 1]], spans),
                                   atol=1e-6)
        np.testing.assert_allclose(g["group_values"][i].sum(-1), g["values"][i].sum(-1), atol=1e-5)


def test_a_targets_files_continuations_keep_their_leading_space(bpe_spec, tmp_path):
    """``generate --targets`` reads each line as the text that follows its prompt: " cat" is GPT-2's ``Ġcat``
    (stripped, the continuation was "cat", glued to the prompt's last word); blank lines skipped, prompts stripped."""
    from explain.generation.prompts import encode_texts, read_token_lists

    tok, spec = bpe_spec
    path = tmp_path / "t.txt"
    path.write_text(" cat sat\n\n  \ncat \n")
    got = read_token_lists(path, spec, special_tokens=False, what="targets", keep_spaces=True)
    assert [g.tolist() for g in got] == [e.tolist() for e in encode_texts([" cat sat", "cat "], spec, special_tokens=False)]
    assert got[0][0] == tok.token_to_id("Ġcat")
    assert read_token_lists(path, spec, special_tokens=False)[0][0] == tok.token_to_id("cat")  # prompts: stripped


def test_alternatives_keep_their_leading_space(bpe_spec, tmp_path):
    from explain.generation.contrastive import read_alternatives

    tok, spec = bpe_spec
    path = tmp_path / "b.txt"
    path.write_text(" cat\ncat\n\n")
    assert read_alternatives(path, spec) == [tok.token_to_id("Ġcat"), tok.token_to_id("cat")]  # GPT-2's two "cat"s
    path.write_text(" catnap\n")
    with pytest.raises(UsageError, match="Alternative is 4 tokens"):
        read_alternatives(path, spec)
