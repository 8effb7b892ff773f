"""Tied ``.bin`` weights count once (`source.weights_only_shapes` counts each storage's bytes once): the model's
own count (``parameters()``, `hf_sizing.check_exact_size`) counts a tied embedding / LM head once, and
`hf_sizing.estimate_parameters` counts the embedding alone (no LM head), so a legitimate tied checkpoint (what
transformers 4.x's ``save_pretrained(safe_serialization=False)`` wrote: both keys over one storage) still loads,
while 400 views of one 1 MB storage no longer count 400 times its values toward what config.json may ask for."""
from __future__ import annotations

import json

import pytest
import torch

from explain.errors import CorruptFile
from explain.loading.hf_sizing import weight_shapes
from explain.loading.huggingface import folder_as_zip, load_huggingface_parts, read_huggingface
from explain.loading.source import open_archive

transformers = pytest.importorskip("transformers")

_CONFIG = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": 16, "n_layer": 1, "n_head": 2,
           "vocab_size": 64, "n_positions": 32, "tie_word_embeddings": True, "bos_token_id": 0, "eos_token_id": 0}


def _folder(tmp_path, config: dict, weights: dict[str, torch.Tensor]) -> bytes:
    (tmp_path / "config.json").write_text(json.dumps(config))
    torch.save(weights, tmp_path / "pytorch_model.bin")
    return folder_as_zip(tmp_path)[0]


@pytest.fixture(scope="module")
def tied_gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**_CONFIG)).eval()


def test_a_tied_bin_counts_its_embedding_once_and_loads(tmp_path, tied_gpt2):
    state = tied_gpt2.state_dict()
    assert state["lm_head.weight"].untyped_storage().data_ptr() == state["transformer.wte.weight"].untyped_storage().data_ptr()
    data = _folder(tmp_path, _CONFIG, state)
    upload = read_huggingface(data)
    archive = open_archive(data, "Hugging Face")
    shapes, values = weight_shapes(archive, upload.weights)
    parameters = sum(p.numel() for p in tied_gpt2.parameters())  # 4,848: the 64 x 16 embedding once
    assert (values, parameters) == (4_848, 4_848)
    assert sum(torch.Size(s).numel() for s in shapes.values()) == values + 64 * 16  # both keys' shapes kept
    ids = torch.tensor([[1, 2, 3, 4]])
    wrapper = load_huggingface_parts(data).module
    assert torch.allclose(wrapper(ids), tied_gpt2(input_ids=ids).logits[:, -1], atol=1e-6)


def test_400_views_of_one_storage_count_its_values_once(tmp_path):
    base = torch.zeros(2**18)  # 1 MiB: 262,144 values
    views = {f"w{i}": base for i in range(400)}
    archive = open_archive(_folder(tmp_path, _CONFIG, views), "Hugging Face")
    _, values = weight_shapes(archive, {"pytorch_model.bin": "pytorch_model.bin"})
    assert values == 2**18  # counted per view: 104,857,600
    # a config asking for 10x the values held (counted per view, it would have been 40x fewer than held)
    big = {**_CONFIG, "n_embd": 512, "vocab_size": 5_000}  # estimate: 5,000 x 512 + 512 x 512 = 2,822,144
    with pytest.raises(CorruptFile, match=r"asks for at least 2,822,144 parameters, but the weights hold 262,144 values"):
        read_huggingface(_folder(tmp_path, big, views))
