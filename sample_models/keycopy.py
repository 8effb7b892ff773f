"""``keycopy``: a tiny causal LM with a known answer, shipped as users bring one (issue 22).

The task: a prompt names a key colour first and asks for it after a noun phrase that may hold
other colours (distractors)::

    key blue . the old red door is   ->   blue . </s>

so the answer is decided by one token, the colour right after ``key`` (position 1), and the
tests have ground truth: greedy accuracy on held-out prompts, the attribution of the answer
landing on that token, a last-layer head attending to it. The model is a 2-layer Llama
(hidden 32, 2 heads) over a word-level ``tokenizers`` vocabulary of a few dozen words, trained
deterministically on CPU in seconds (loss on the answer, its ``.`` and ``</s>`` only).

`build_keycopy` writes ``sample_models/keycopy/``: ``model.zip`` (a Hugging Face folder:
``config.json``, ``model.safetensors``, ``tokenizer.json``, ``tokenizer_config.json`` with a
chat template; the bytes are the same on every run), ``train_log.csv``, ``samples.txt`` (held-out
prompts, one per line: ``python -m explain generate`` reads it) and ``samples.npz`` (``inputs``
[N, L] right-padded ids, ``lengths`` [N], ``labels`` [N] answer ids), and the Generate page's first
view (``first_view.npz``, `explain.generation.first_view`).
"""
from __future__ import annotations

import io
import json
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sample_models import artefacts

NAME = "keycopy"
SEED = 0
PAD, UNK, EOS = "<pad>", "<unk>", "</s>"
COLOURS = ("red", "blue", "green", "yellow", "black", "white", "pink", "gray")
NOUNS = ("door", "box", "cat", "car", "hat", "cup", "lamp", "bag")
ADJECTIVES = ("old", "new", "small", "big")
DETERMINERS = ("the", "a", "my")
VOCABULARY = (PAD, UNK, EOS, "key", ".", "is", "and", *DETERMINERS, *ADJECTIVES, *COLOURS, *NOUNS)
#: Where the deciding token (the key colour) stands in every prompt.
KEY_POSITION = 1
#: The Generate page's first prompt (held out: no training prompt has a blue key with this phrase).
DEFAULT_PROMPT = "key blue . the old red door and a green cat is"
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% if not loop.last %} . {% endif %}{% endfor %}"
N_TRAIN, N_VAL, N_TEST, N_SAMPLES = 6000, 500, 1000, 32
STEPS_PER_EPOCH, EPOCHS, BATCH, LR = 100, 4, 64, 5e-3
ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def make_prompts(n: int, seed: int) -> tuple[list[str], list[str]]:
    """``n`` prompts and their answers (the key colour), drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    prompts, answers = [], []
    for _ in range(n):
        key = COLOURS[rng.integers(len(COLOURS))]
        phrases = []
        for _ in range(int(rng.integers(1, 3))):  # one or two noun phrases
            words = [DETERMINERS[rng.integers(len(DETERMINERS))]]
            if rng.random() < 0.5:
                words.append(ADJECTIVES[rng.integers(len(ADJECTIVES))])
            if rng.random() < 0.6:  # a distractor colour
                words.append(COLOURS[rng.integers(len(COLOURS))])
            words.append(NOUNS[rng.integers(len(NOUNS))])
            phrases.append(" ".join(words))
        prompts.append(f"key {key} . {' and '.join(phrases)} is")
        answers.append(key)
    return prompts, answers


def build_tokenizer():
    """A word-level ``tokenizers`` tokenizer over `VOCABULARY` (split on whitespace, no special token added)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCABULARY)}, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    tok.add_special_tokens([PAD, UNK, EOS])
    return tok


def build_model():
    """The untrained 2-layer Llama (seeded by the caller)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    ids = {w: i for i, w in enumerate(VOCABULARY)}
    cfg = LlamaConfig(vocab_size=len(VOCABULARY), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                      pad_token_id=ids[PAD], eos_token_id=ids[EOS], bos_token_id=None, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg)


def encode_batch(tok, prompts: list[str], answers: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [N, L], labels [N, L]): ``prompt answer . </s>`` right-padded; labels -100 except at the
    answer, its ``.`` and ``</s>`` (shifted inside transformers' loss)."""
    rows = [tok.encode(f"{p} {a} . {EOS}").ids for p, a in zip(prompts, answers)]
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)  # <pad> = 0
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.as_tensor(row)
        labels[i, len(row) - 3 : len(row)] = torch.as_tensor(row[-3:])
    return ids, labels


def _loss_and_accuracy(model, ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Mean cross-entropy over the labelled tokens, and the accuracy of the answer token (argmax)."""
    logits = model(input_ids=ids, attention_mask=(ids != 0).long(), use_cache=False).logits  # [N, L, V]
    pred, gold = logits[:, :-1], labels[:, 1:]
    loss = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), gold.reshape(-1), ignore_index=-100)
    first = (gold != -100).int().argmax(1)  # the answer's place in the shifted labels [N]
    rows = torch.arange(len(ids))
    acc = (pred[rows, first].argmax(-1) == gold[rows, first]).float().mean().item()
    return loss, acc


def train(tok, directory: Path) -> tuple[torch.nn.Module, list[dict[str, float]]]:
    """Train on fresh prompts each step (seeded), logging per epoch of `STEPS_PER_EPOCH` steps."""
    torch.manual_seed(SEED)
    model = build_model()
    train_ids, train_labels = encode_batch(tok, *make_prompts(N_TRAIN, 21))
    val = encode_batch(tok, *make_prompts(N_VAL, 22))
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, EPOCHS * STEPS_PER_EPOCH)
    gen = torch.Generator().manual_seed(SEED)
    history = []
    for epoch in range(1, EPOCHS + 1):
        lr = opt.param_groups[0]["lr"]
        model.train()
        total, correct = 0.0, 0.0
        for _ in range(STEPS_PER_EPOCH):
            idx = torch.randint(len(train_ids), (BATCH,), generator=gen)
            loss, acc = _loss_and_accuracy(model, train_ids[idx], train_labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total, correct = total + loss.item(), correct + acc
        model.eval()
        with torch.no_grad():
            val_loss, val_acc = _loss_and_accuracy(model, *val)
        history.append({"epoch": epoch, "train_loss": total / STEPS_PER_EPOCH, "val_loss": val_loss.item(),
                        "train_acc": correct / STEPS_PER_EPOCH, "val_acc": val_acc, "lr": lr})
    artefacts.write_log(directory / "train_log.csv", history)
    return model.eval(), history


def folder_zip(model, tok) -> bytes:
    """The Hugging Face folder a user would bring, zipped with fixed dates (the same bytes every run)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model.save_pretrained(folder)
        tok.save(str(folder / "tokenizer.json"))
        (folder / "tokenizer_config.json").write_text(json.dumps(
            {"pad_token": PAD, "eos_token": EOS, "unk_token": UNK, "chat_template": CHAT_TEMPLATE,
             "tokenizer_class": "PreTrainedTokenizerFast"}, indent=1) + "\n")
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(folder.iterdir()):
                zf.writestr(zipfile.ZipInfo(path.name, date_time=ZIP_DATE), path.read_bytes(), zipfile.ZIP_DEFLATED)
        return buf.getvalue()


def greedy_accuracy(model, tok, prompts: list[str], answers: list[str]) -> float:
    """The share of prompts whose first greedy token is the answer (transformers' model, this process)."""
    ids = [torch.as_tensor(tok.encode(p).ids) for p in prompts]
    hits = 0
    with torch.no_grad():
        for row, answer in zip(ids, answers):
            hits += int(model(input_ids=row[None], use_cache=False).logits[0, -1].argmax()) == VOCABULARY.index(answer)
    return hits / len(prompts)


def write_first_view(directory: Path) -> None:
    """The Generate page's first view: `DEFAULT_PROMPT` explained with the page's default settings, computed
    by the shipped ``model.zip`` loaded as a user's model is (its own sandboxed process)."""
    from explain.generation.explained import FIRST_VIEW_FILE, explain_prompt, save_explained, settings_of
    from explain.loading.loader import load_model

    model = load_model(directory / "model.zip")
    save_explained(directory / FIRST_VIEW_FILE, explain_prompt(model, settings_of(DEFAULT_PROMPT)))


def build_keycopy(root: Path) -> dict[str, float]:
    """Train the sample and write its files under ``root / NAME``; returns accuracies and seconds."""
    start = time.perf_counter()
    directory = root / NAME
    directory.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    model, _history = train(tok, directory)
    (directory / "model.zip").write_bytes(folder_zip(model, tok))
    prompts, answers = make_prompts(N_TEST, 23)
    (directory / "samples.txt").write_text("\n".join(prompts[:N_SAMPLES]) + "\n")
    rows = [tok.encode(p).ids for p in prompts[:N_SAMPLES]]
    inputs = np.zeros((len(rows), max(map(len, rows))), np.int64)
    for i, row in enumerate(rows):
        inputs[i, : len(row)] = row
    np.savez_compressed(directory / "samples.npz", inputs=inputs, lengths=np.array([len(r) for r in rows]),
                        labels=np.array([VOCABULARY.index(a) for a in answers[:N_SAMPLES]]))
    test_acc = greedy_accuracy(model, tok, prompts, answers)
    write_first_view(directory)
    return {"test_acc": test_acc, "sample_acc": greedy_accuracy(model, tok, prompts[:N_SAMPLES], answers[:N_SAMPLES]),
            "seconds": time.perf_counter() - start}
