"""A user's own model as weights only (issue 20, item 5): an architecture Glassbox does not know.

One message says what the file is (tensor count, a name or two as evidence) and the ways out
(TorchScript, a .pt2, a Hugging Face folder or zip): whole on the command line (exit 3), once on
the page, with no spec form (a spec cannot build a model whose code is missing).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from streamlit.testing.v1 import AppTest
from torch import nn

from explain.cli import EXIT_REFUSED, main
from explain.loading import architectures
from explain.loading.loader import load_model
from explain.loading.weights import MAX_MESSAGE, WeightsRefused
from ui.state import UploadedBlob

ROOT = Path(__file__).resolve().parent.parent
WAYS_OUT = ("torch.jit.script(model).save", "torch.export", "Hugging Face folder or zip")
DUMP_WORDS = ("missing keys", "unexpected keys", "shape mismatch", "shapes_resnet", "tabular_mlp", "text_transformer")


class MyNet(nn.Module):
    """Nobody registered this architecture."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3)
        self.norm = nn.BatchNorm2d(8)
        self.classifier_with_a_long_name_for_the_evidence_list = nn.Linear(8, 5)

    def forward(self, x):
        return self.classifier_with_a_long_name_for_the_evidence_list(self.norm(self.conv1(x)).mean((2, 3)))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("own_weights")
    state = MyNet().state_dict()
    torch.save(state, root / "mynet.pth")
    torch.save({"epoch": 3, "model_state_dict": state}, root / "mynet_ckpt.pt")
    save_file({k: v.contiguous() for k, v in state.items()}, str(root / "mynet.safetensors"))
    resized = architectures.build_architecture("tabular_mlp", {"in_features": 7}).state_dict()
    torch.save(resized, root / "mlp7.pth")  # a registered architecture's names, another config's sizes
    return root


def _refusal(path: Path) -> WeightsRefused:
    with pytest.raises(WeightsRefused) as info:
        load_model(path)
    return info.value


@pytest.mark.parametrize("name, what", [("mynet.pth", "a state dict of 9 tensors"),
                                        ("mynet_ckpt.pt", "a checkpoint with a state dict of 9 tensors"),
                                        ("mynet.safetensors", "a safetensors file of 9 tensors")])
def test_the_message_names_the_file_and_the_ways_out_not_the_key_dump(files, name, what):
    exc = _refusal(files / name)
    assert exc.reason.startswith(f"The file is {what} (")
    assert exc.reason.endswith(", …) that fit none of the registered architectures.")
    evidence = exc.reason[exc.reason.index("(") + 1:exc.reason.index(", …)")].split(", ")
    keys = [k for k in MyNet().state_dict() if "running" not in k and "batches" not in k]  # weights, not buffers
    assert 1 <= len(evidence) <= 3 and all(any(k == e or k.startswith(e.rstrip("…")) for k in keys) for e in evidence)
    assert all(len(e) <= 40 for e in evidence)  # a long name is elided
    assert all(way in exc.hint for way in WAYS_OUT), exc.hint
    assert not [w for w in DUMP_WORDS if w in exc.message], exc.message
    assert len(exc.message) <= MAX_MESSAGE and "\n" not in exc.message


def test_names_of_a_registered_architecture_with_other_sizes_ask_for_its_config(files):
    exc = _refusal(files / "mlp7.pth")
    assert exc.reason == ("The file is a state dict of 6 tensors named as in architecture 'tabular_mlp' but sized "
                          "otherwise (body.0.weight: file [64, 7], tabular_mlp [64, 30]).")
    assert "glassbox.config" in exc.hint


def test_the_cli_prints_the_whole_message_and_exits_3(files, capsys):
    code = main(["inspect", str(files / "mynet.pth")])
    out, err = capsys.readouterr()
    assert code == EXIT_REFUSED == 3 and out == ""
    assert err == f"refused: {_refusal(files / 'mynet.pth').message}\n"  # whole: the CLI cuts nothing
    assert err.rstrip().endswith("or upload a Hugging Face folder or zip.")
    assert all(way in err for way in WAYS_OUT)


def test_the_page_shows_the_message_once_and_no_spec_form(files):
    data = (files / "mynet.pth").read_bytes()
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.session_state["gb_source"] = "upload"
    at.session_state["gb_model_upload"] = UploadedBlob("mynet.pth", data, hashlib.sha256(data).hexdigest())
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert [t.value for t in at.title] == ["Your model"]
    exc = _refusal(files / "mynet.pth")
    shown = [e.value.replace("\\", "") for kind in ("error", "warning", "info", "caption", "markdown")
             for e in at.get(kind)]
    assert sum(exc.reason in text for text in shown) == 1, shown  # once: the main area, not the sidebar too
    assert [e.value.replace("\\", "") for e in at.main.error] == [f"mynet.pth does not load: {exc.reason}"]
    assert [e.value.replace("\\", "") for e in at.sidebar.error] == ["mynet.pth does not load."]
    assert [i.value.replace("\\", "") for i in at.main.info] == [exc.hint]  # the ways out
    assert not [w for w in at.get("selectbox") if w.key and w.key.startswith("gb_spec_form")]  # no spec form
    assert not at.get("form")
