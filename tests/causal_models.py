"""Tiny causal LMs saved the way their authors would: Hugging Face folders built from configs (no hub).

- `write_hf_llama(directory)`: a 2-layer Llama with grouped-query attention (4 heads, 2 key/value
  heads), untied head, a byte-level BPE ``tokenizer.json`` whose post-processor puts ``<s>`` first
  (as Llama's does), and a ``tokenizer_config.json`` with a chat template;
- `write_hf_gpt2(directory)`: a 2-layer GPT-2 (``GPT2LMHeadModel``, tied head) with a byte-level
  BPE ``tokenizer.json`` and no pad token (GPT-2 pads with ``<|endoftext|>``).

Both are trained on nothing: their weights are seeded, so greedy generations are arbitrary but
deterministic, which is all the known-answer tests need.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

#: What the tokenizers are trained on.
CORPUS = ["the cat sat on the mat", "a dog ran to the park", "the sun is warm and bright",
          "she reads a book at night", "two plus two is four"] * 4
CHAT_TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"


def _bpe(special: list[str], bos: str | None, vocab_size: int = 96):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>" if "<unk>" in special else None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))])
    return tok


def write_hf_llama(directory: Path) -> Path:
    """A tiny Llama causal LM folder (config.json, model.safetensors, tokenizer.json, tokenizer_config.json)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = Path(directory)
    tok = _bpe(["<unk>", "<s>", "</s>"], bos="<s>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      bos_token_id=tok.token_to_id("<s>"), eos_token_id=tok.token_to_id("</s>"),
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # larger weights than the init's: a more peaked, less tied next-token distribution
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    model.save_pretrained(directory)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "chat_template": CHAT_TEMPLATE}))
    return directory


def write_hf_gpt2(directory: Path) -> Path:
    """A tiny GPT-2 causal LM folder (config.json, model.safetensors, tokenizer.json)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    directory = Path(directory)
    tok = _bpe(["<|endoftext|>"], bos=None)
    eos = tok.token_to_id("<|endoftext|>")
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=tok.get_vocab_size(), n_embd=32, n_layer=2, n_head=4, n_positions=64,
                     bos_token_id=eos, eos_token_id=eos)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    model.save_pretrained(directory)
    tok.save(str(directory / "tokenizer.json"))
    return directory


def reference_attentions(ref, prompts: list[list[int]]):
    """transformers' own ``output_attentions`` of ``ref`` for ``prompts`` padded to the longest (padding masked):
    [layers, N, heads, L, L] as a NumPy array."""
    longest = max(map(len, prompts))
    ids = torch.zeros(len(prompts), longest, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, : len(p)], mask[i, : len(p)] = torch.as_tensor(p), 1
    with torch.no_grad():
        return torch.stack(ref(input_ids=ids, attention_mask=mask, output_attentions=True).attentions).numpy()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: threads only contend on a shared machine (the model processes inherit the count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
