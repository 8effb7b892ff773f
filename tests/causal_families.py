"""A new user's own causal LMs, one per decoder family transformers ships, saved the way a user's would be.

`write_family(directory, family)` writes a tiny (2 layers, width 32, vocabulary under 500) model of
``family`` with ``save_pretrained`` and a tokenizer built by the ``tokenizers`` library, and returns
the path a user would hand Glassbox (a folder or a zip). Each family is saved differently, so the
formats are covered once each:

- qwen2: qkv bias, grouped-query attention; byte-level BPE with added special tokens (<|im_start|>,
  <|im_end|>) and a ChatML template in tokenizer_config.json; tied head; sharded safetensors + index.
- qwen3: RMSNorm on q and k; the same tokenizer, its template in chat_template.jinja; untied;
  a weights-only pytorch_model.bin (as transformers 4's ``save_pretrained(safe_serialization=False)``).
- mistral: a sliding window (4) shorter than the prompts; a sentencepiece-like Unigram over Metaspace
  with <s> first; untied; a zip with a folder inside.
- phi3: fused qkv and gate_up; Unigram, <|endoftext|> pads; untied; a zip of sharded safetensors at its root.
- gemma2: attention and final-logit soft-capping, embeddings scaled in the model; Gemma's special ids
  (<pad> 0, <eos> 1, <bos> 2); tied; a zip with a folder holding a pytorch_model.bin.
- gemma3: the embedding module scales (``Gemma3TextScaledWordEmbedding``), q/k norm; tied; model.safetensors.
- gpt_neox: parallel residual, partial rotary (0.25); byte-level BPE; untied; sharded safetensors.
- opt: learned positions (offset 2); byte-level BPE with </s> first, as OPT's; tied; pytorch_model.bin.

Weights are seeded (no training), so generations are arbitrary; the tokenizers' training may merge differently
from run to run, so every check compares with transformers' own model of the same files.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import torch
from causal_models import CORPUS, _bpe

FAMILIES = ("qwen2", "qwen3", "mistral", "phi3", "gemma2", "gemma3", "gpt_neox", "opt")
#: A chat template as Qwen's (ChatML), kept short.
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _unigram(special: list[str], bos: str | None):
    """A sentencepiece-like tokenizer: Unigram over Metaspace pieces ("▁the"), ``bos`` put first."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    unk = next(t for t in special if "unk" in t)
    tok.train_from_iterator(CORPUS, trainers.UnigramTrainer(vocab_size=120, special_tokens=special, unk_token=unk))
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))])
    return tok


def _chat_bpe():
    """Byte-level BPE with added special tokens (ChatML's), as Qwen's: no BOS, <|endoftext|> pads and ends."""
    from tokenizers import AddedToken

    tok = _bpe(["<|endoftext|>"], bos=None, vocab_size=300)
    tok.add_special_tokens([AddedToken("<|im_start|>", special=True), AddedToken("<|im_end|>", special=True)])
    return tok


def _config(family: str, tok):
    import transformers

    ids = {name: tok.token_to_id(name) for name in ("<s>", "</s>", "<pad>", "<bos>", "<eos>", "<|endoftext|>")}
    common = dict(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=64)
    gqa = dict(num_key_value_heads=2, **common)
    end = ids["<|endoftext|>"]
    gemma = dict(head_dim=8, bos_token_id=ids["<bos>"], eos_token_id=ids["<eos>"], pad_token_id=ids["<pad>"],
                 query_pre_attn_scalar=8, sliding_window=4, tie_word_embeddings=True, **gqa)
    return {
        "qwen2": lambda: transformers.Qwen2Config(bos_token_id=end, eos_token_id=end, tie_word_embeddings=True, **gqa),
        "qwen3": lambda: transformers.Qwen3Config(head_dim=8, bos_token_id=end, eos_token_id=end,
                                                  tie_word_embeddings=False, **gqa),
        "mistral": lambda: transformers.MistralConfig(sliding_window=4, bos_token_id=ids["<s>"], eos_token_id=ids["</s>"],
                                                      tie_word_embeddings=False, **gqa),
        "phi3": lambda: transformers.Phi3Config(bos_token_id=ids["<s>"], eos_token_id=end, pad_token_id=end,
                                                tie_word_embeddings=False, **gqa),
        "gemma2": lambda: transformers.Gemma2Config(final_logit_softcapping=3.0, attn_logit_softcapping=5.0, **gemma),
        "gemma3": lambda: transformers.Gemma3TextConfig(**gemma),
        "gpt_neox": lambda: transformers.GPTNeoXConfig(
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
            use_parallel_residual=True, bos_token_id=end, eos_token_id=end, tie_word_embeddings=False, **common),
        "opt": lambda: transformers.OPTConfig(
            vocab_size=tok.get_vocab_size(), hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
            word_embed_proj_dim=32, max_position_embeddings=64, bos_token_id=ids["</s>"], eos_token_id=ids["</s>"],
            pad_token_id=ids["<pad>"], tie_word_embeddings=True),
    }[family]()


def _tokenizer(family: str):
    if family in ("qwen2", "qwen3"):
        return _chat_bpe(), {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    if family == "mistral":
        return _unigram(["<unk>", "<s>", "</s>"], "<s>"), {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    if family == "phi3":
        return (_unigram(["<unk>", "<s>", "</s>", "<|endoftext|>"], "<s>"),
                {"bos_token": "<s>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<unk>"})
    if family in ("gemma2", "gemma3"):  # Gemma's ids: <pad> 0, <eos> 1, <bos> 2, <unk> 3
        return (_unigram(["<pad>", "<eos>", "<bos>", "<unk>"], "<bos>"),
                {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"})
    if family == "opt":  # OPT's ids: <s> 0, <pad> 1, </s> 2, <unk> 3; </s> starts every text
        return _bpe(["<s>", "<pad>", "</s>", "<unk>"], bos="</s>", vocab_size=300), {"bos_token": "</s>", "eos_token": "</s>",
                                                                       "pad_token": "<pad>", "unk_token": "<unk>"}
    return _bpe(["<|endoftext|>"], bos=None, vocab_size=300), {"eos_token": "<|endoftext|>"}


def build_family(family: str):
    """(transformers model, tokenizer, tokenizer_config) of ``family``, seeded."""
    from transformers import AutoModelForCausalLM

    tok, tok_cfg = _tokenizer(family)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config(family, tok)).eval()
    with torch.no_grad():  # larger weights than the init's: a more peaked next-token distribution
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    return model, tok, tok_cfg


def write_family(directory: Path, family: str) -> Path:
    """Write ``family``'s model under ``directory`` as its user would hand it over (see the table); the path."""
    directory = Path(directory)
    model, tok, tok_cfg = build_family(family)
    folder = directory / family
    if family in ("qwen3", "gemma2", "opt"):  # weights only, as transformers 4's save_pretrained(safe_serialization=False)
        model.config.architectures = [type(model).__name__]
        model.config.save_pretrained(folder)
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    else:
        model.save_pretrained(folder, max_shard_size="40KB" if family in ("qwen2", "phi3", "gpt_neox") else "50GB")
    tok.save(str(folder / "tokenizer.json"))
    if family == "qwen2":
        tok_cfg = {**tok_cfg, "chat_template": CHATML}
    if family == "qwen3":
        (folder / "chat_template.jinja").write_text(CHATML)
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    if family not in ("mistral", "phi3", "gemma2"):
        return folder
    archive = directory / f"{family}.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.iterdir()):
            zf.write(path, path.name if family == "phi3" else f"{family}/{path.name}")
    return archive  # the folder stays beside it, for `reference_model`


def reference_model(directory: Path, family: str):
    """transformers' own model (eager attention) of what `write_family` wrote under ``directory``."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(Path(directory) / family, attn_implementation="eager").eval()
