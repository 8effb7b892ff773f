"""Models Glassbox did not make, saved the way their authors would: no spec anywhere.

`write_foreign_models(directory)` writes them with model-ready inputs next to them:

- ``cnn.ts.pt`` — ``torch.jit.script`` of a small conv net (image, 3×8×8, 3 classes); ``img.npy`` float [2, 3, 8, 8]
- ``mlp.pt2`` — ``torch.export`` of an MLP with a dynamic batch (tabular, 5 features); ``tab.npy`` float [3, 5]
- ``txt.ts.pt`` — TorchScript embedding + ``nn.MultiheadAttention`` + linear over int64 ids; ``ids.npy`` int64 [2, 6]
- ``txt.pt2`` — ``torch.export`` of embedding + mean + linear, batch *and* length dynamic

`write_hf_resnet(directory)` writes a tiny Hugging Face ResNet folder whose ``preprocessor_config.json``
is not transformers' default (64 px, its own mean / std), as a user's fine-tuned model would be.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

VOCAB = 20


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, 3, H, W] -> [N, 3]
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


class AttentionText(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc = nn.Linear(8, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # [N, L] int64 -> [N, 2]
        h = self.emb(ids)
        a, _ = self.attn(h, h, h)
        return self.fc(a.mean(1))


class BagOfWords(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 8)
        self.fc = nn.Linear(8, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # [N, L] int64 -> [N, 2]
        return self.fc(self.emb(ids).mean(1))


def write_foreign_models(directory: Path) -> Path:
    """Write the models and inputs above into ``directory``; returns it."""
    directory = Path(directory)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    torch.jit.script(SmallCNN().eval()).save(str(directory / "cnn.ts.pt"))
    np.save(directory / "img.npy", rng.random((2, 3, 8, 8), dtype=np.float32))

    mlp = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.export.save(torch.export.export(mlp, (torch.randn(4, 5),), dynamic_shapes=({0: batch},)),
                      str(directory / "mlp.pt2"))
    np.save(directory / "tab.npy", rng.normal(size=(3, 5)).astype(np.float32))

    torch.jit.script(AttentionText().eval()).save(str(directory / "txt.ts.pt"))
    np.save(directory / "ids.npy", rng.integers(0, VOCAB, size=(2, 6)).astype(np.int64))

    length = torch.export.Dim("length", min=2, max=512)
    ids = torch.randint(0, VOCAB, (4, 6))
    torch.export.save(torch.export.export(BagOfWords().eval(), (ids,), dynamic_shapes=({0: batch, 1: length},)),
                      str(directory / "txt.pt2"))
    return directory


#: The tiny ResNet's own preprocessing: shorter side to 64 / 0.875, centre crop 64 x 64, its mean / std.
HF_RESNET_PREPROCESSOR = {
    "image_processor_type": "ConvNextImageProcessor", "size": {"shortest_edge": 64}, "crop_pct": 0.875,
    "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
    "image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.25, 0.3], "resample": 3,
}


def write_hf_resnet(directory: Path) -> Path:
    """A Hugging Face ResNet image classifier folder (3 classes) with `HF_RESNET_PREPROCESSOR`; returns it."""
    from transformers import ResNetConfig, ResNetForImageClassification

    directory = Path(directory)
    torch.manual_seed(0)
    labels = ["cat", "dog", "car"]
    config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                          num_labels=3, id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    ResNetForImageClassification(config).eval().save_pretrained(directory)
    (directory / "preprocessor_config.json").write_text(json.dumps(HF_RESNET_PREPROCESSOR))
    return directory


#: Texts the tiny RoBERTa's byte-level BPE tokenizer is trained on (words outside its merges split).
ROBERTA_CORPUS = ["the movie was very good", "bad awful movie", "not a great film at all", "what a lovely story"] * 5


def write_hf_roberta(directory: Path) -> Path:
    """A Hugging Face RoBERTa sequence classifier folder with its own byte-level BPE ``tokenizer.json``
    (``<s>`` ... ``</s>``, pad id 1, tokens like ``Ġgreat``); returns it."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import RobertaConfig, RobertaForSequenceClassification

    directory = Path(directory)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(ROBERTA_CORPUS, trainers.BpeTrainer(vocab_size=120, special_tokens=["<s>", "<pad>", "</s>", "<unk>"]))
    tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")))
    torch.manual_seed(0)
    cfg = RobertaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=40, pad_token_id=1, bos_token_id=0,
                        eos_token_id=2, id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
    RobertaForSequenceClassification(cfg).eval().save_pretrained(directory)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"cls_token": "<s>", "model_max_length": 32}))
    return directory


class ColourNet(nn.Module):
    """A small CNN for 3 x 16 x 16 pictures trained (by its author) on ImageNet-normalised pixels."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, 3, 16, 16] -> [N, 3]
        h = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(h.mean(dim=(2, 3)))


def write_ts_colour_net(directory: Path) -> Path:
    """``colournet.ts.pt``: `ColourNet` as TorchScript, no spec (the spec form gives 3, 16, 16 and ImageNet's
    mean / std); returns the file."""
    torch.manual_seed(1)
    path = Path(directory) / "colournet.ts.pt"
    torch.jit.script(ColourNet().eval()).save(str(path))
    return path
