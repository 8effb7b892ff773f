"""A new user's own Hugging Face files, saved by transformers 5 and zipped by their own tools (task U1).

Known answers: the logits transformers itself computes on the same weights. The uploads are what a user
has, not what Glassbox's `folder_as_zip` makes: `shutil.make_archive`'s zip is deflated, so a
``pytorch_model.bin`` in it is inflated (`source.Archive.window`), in the model process too, where no file
can be written.
"""
from __future__ import annotations

import shutil

import pytest
import torch
from causal_models import one_thread, write_hf_gpt2  # noqa: F401 - one_thread: a fixture

from explain.loading.loader import load_model

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")
IDS = torch.tensor([[5, 9, 12, 3], [7, 7, 2, 40]])  # [N=2, L=4]


@pytest.fixture(scope="module")
def gpt2_bin_zip(tmp_path_factory):
    """A GPT-2 folder whose weights are ``torch.save(model.state_dict())`` (tied head: both keys over one
    storage), zipped deflated by ``shutil.make_archive``; and the model itself."""
    folder = write_hf_gpt2(tmp_path_factory.mktemp("user") / "gpt2")
    model = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    (folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return shutil.make_archive(str(folder), "zip", root_dir=folder), model


def test_a_deflated_zip_of_a_bin_loads_in_the_model_process(gpt2_bin_zip):
    """The model process (no writable files) inflated the .bin into a temporary file: PermissionError."""
    path, reference = gpt2_bin_zip
    model = load_model(path)
    assert model.process is not None  # read in its sandboxed model process, where the refusal was
    with torch.no_grad():
        ours = torch.as_tensor(model.module(IDS))  # [N, V]: the next token's logits
        want = reference(input_ids=IDS).logits[:, -1]
    assert ours.shape == want.shape and torch.allclose(ours, want, atol=1e-5)
