"""Checkpoints of a Hugging Face model (issue 20, item 6): zips, folders and ``.pth`` state dicts.

A tiny BERT is saved twice (the weights moved in between) as ``save_pretrained`` folders, their zips
and ``torch.save(model.state_dict())`` files. The weight change equals a direct torch computation; the
drift of the ``.pth`` files (built in the loaded model's architecture, in a model process) equals the
zips' drift; a state dict of another model is one line, not a key dump.
"""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

pytest.importorskip("transformers")

from transformers import BertConfig, BertForSequenceClassification  # noqa: E402

from explain.cli import main  # noqa: E402
from explain.errors import CorruptFile, IncompatibleInput  # noqa: E402
from explain.loading.loader import load_model  # noqa: E402
from explain.output.methods import get_method  # noqa: E402
from explain.report.document import read_report_data  # noqa: E402
from explain.training.checkpoints import read_checkpoints  # noqa: E402
from explain.training.evolution import compute_checkpoint_drift, compute_weight_changes

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"the a good bad movie was great awful not very".split()]
STEPS = 4


def _bert(num_labels: int = 2) -> BertForSequenceClassification:
    cfg = BertConfig(vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=16, pad_token_id=0, num_labels=num_labels)
    return BertForSequenceClassification(cfg).eval()


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Two checkpoints of one tiny BERT as folders, zips and .pth state dicts (one with a wrapper prefix)."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("hf_ckpts")
    model = _bert()
    states = []
    for step in (100, 200):
        if step == 200:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.05 * torch.randn_like(p))
        folder = root / f"checkpoint-{step}"
        model.save_pretrained(folder)
        (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
        log = [{"epoch": e / 100, "step": e, "loss": 1.0 / e} for e in range(50, step + 1, 50)]
        (folder / "trainer_state.json").write_text(json.dumps({"epoch": step / 100, "global_step": step, "log_history": log}))
        with zipfile.ZipFile(root / f"checkpoint-{step}.zip", "w") as zf:  # zipped with its folder, as people do
            for f in sorted(folder.iterdir()):
                zf.write(f, f"checkpoint-{step}/{f.name}")
        state = {k: v.clone() for k, v in model.state_dict().items()}
        states.append(state)
        torch.save(state, root / f"epoch_{step // 100}.pth")
        torch.save({f"model.{k}": v for k, v in state.items()}, root / f"wrapped_epoch_{step // 100}.pth")
        save_file({k: v.contiguous() for k, v in state.items()}, str(root / f"step_{step}.safetensors"))
    torch.save(_bert(num_labels=3).state_dict(), root / "other_model.pth")
    ids = np.zeros((2, 16), dtype=np.int64)
    ids[0, :6] = [2, 5, 7, 9, 13, 3]
    ids[1, :4] = [2, 6, 8, 3]
    np.save(root / "ids.npy", ids)
    return {"root": root, "states": states, "ids": ids}


@pytest.fixture(scope="module")
def reference(ckpts):
    """The loaded model: the final checkpoint's folder (a Hugging Face model, in its model process)."""
    return load_model(ckpts["root"] / "checkpoint-200")


def _direct_change(states) -> dict[str, float]:
    """||W2 - W1|| / ||W1|| per module (its weight and bias together), computed with torch alone."""
    groups: dict[str, list[str]] = {}
    for name in states[0]:
        groups.setdefault(name.rsplit(".", 1)[0], []).append(name)
    change = {}
    for layer, names in groups.items():
        w1 = torch.cat([states[0][n].reshape(-1).double() for n in names])
        w2 = torch.cat([states[1][n].reshape(-1).double() for n in names])
        change[layer] = float((w2 - w1).norm() / w1.norm())
    return change


def test_zips_and_folders_are_read_as_checkpoints_with_their_epoch(ckpts):
    root = ckpts["root"]
    read = read_checkpoints([root / "checkpoint-200", root / "checkpoint-100.zip"])
    assert [c.source for c in read] == ["checkpoint-100.zip", "checkpoint-200.zip"]  # training order
    assert [c.epoch for c in read] == [1.0, 2.0]  # from trainer_state.json
    assert [c.label for c in read] == ["epoch 1", "epoch 2"]
    assert read[0].meta["format"] == "huggingface" and read[0].meta["architecture"] == "BertForSequenceClassification"
    for checkpoint, state in zip(read, ckpts["states"]):
        assert set(checkpoint.state_dict) == set(state)
        assert all(torch.equal(checkpoint.state_dict[k], state[k]) for k in state)


def test_weight_change_of_zips_and_pth_equals_torch(ckpts):
    root = ckpts["root"]
    want = _direct_change(ckpts["states"])
    for files in (["checkpoint-100.zip", "checkpoint-200.zip"], ["epoch_1.pth", "epoch_2.pth"],
                  ["wrapped_epoch_1.pth", "checkpoint-200.zip"],  # a wrapper prefix on one side only
                  ["step_100.safetensors", "step_200.safetensors"]):
        change = compute_weight_changes(read_checkpoints([root / f for f in files]))
        assert set(change.layers) == set(want), files
        got = dict(zip(change.layers, change.values[:, 0]))
        np.testing.assert_allclose([got[k] for k in want], list(want.values()), rtol=1e-9, err_msg=str(files))
    zipped = compute_weight_changes(read_checkpoints([root / "checkpoint-100.zip", root / "checkpoint-200.zip"]))
    assert zipped.layers[0].startswith("bert.embeddings") and zipped.layers[-1] == "classifier"  # in layer order


def test_report_cli_takes_zip_and_folder_checkpoints(ckpts, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GLASSBOX_HOME", str(tmp_path / "home"))
    root = ckpts["root"]
    out = tmp_path / "r.html"
    code = main(["report", str(root / "checkpoint-200"), "--inputs", str(root / "ids.npy"), "--max-inputs", "1",
                 "--steps", str(STEPS), "--metrics", "none", "--checkpoints", str(root / "checkpoint-100.zip"),
                 str(root / "checkpoint-200"), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    payload = json.loads(captured.out)
    assert "Checkpoint evolution" in payload["sections"] and "Checkpoint evolution" not in payload["failed"]
    assert not payload["failed"], payload["failed"]  # the Training section reads the Trainer's log_history
    data = read_report_data(out.read_text())["sections"]["Checkpoint evolution"]
    assert data["checkpoints"] == ["epoch 1", "epoch 2"]
    want = _direct_change(ckpts["states"])
    got = dict(zip(data["layers"], np.asarray(data["weight_change"], dtype=float)[:, 0]))
    assert set(got) == set(want)
    np.testing.assert_allclose([got[k] for k in want], list(want.values()), rtol=1e-3)
    drift = np.asarray(data["drift_correlation"], dtype=float)
    assert drift.shape == (2, 1) and drift[-1, 0] == 1.0  # --max-inputs 1, each checkpoint against the final


def test_drift_of_pth_state_dicts_is_the_drift_of_the_zips(ckpts, reference):
    root, ids = ckpts["root"], ckpts["ids"]
    zipped = read_checkpoints([root / "checkpoint-100.zip", root / "checkpoint-200.zip"])
    by_zip = compute_checkpoint_drift(zipped, reference, ids, steps=STEPS)
    ig = get_method("integrated_gradients")
    first = ig.explain(load_model(root / "checkpoint-100.zip"), ids, by_zip.target, steps=STEPS).values
    np.testing.assert_allclose(by_zip.values[0], first, atol=1e-6)  # checkpoint 1's own model, its own IG
    assert by_zip.labels == ["epoch 1", "epoch 2"]
    np.testing.assert_allclose(by_zip.correlation[-1], 1.0)
    for names in (["epoch_1.pth", "epoch_2.pth"], ["wrapped_epoch_1.pth", "epoch_2.pth"]):  # with a prefix or not
        by_pth = compute_checkpoint_drift(read_checkpoints([root / n for n in names]), reference, ids, steps=STEPS)
        np.testing.assert_allclose(by_pth.values, by_zip.values, atol=1e-6, err_msg=str(names))
        np.testing.assert_array_equal(by_pth.target, by_zip.target)


def test_a_state_dict_of_another_model_is_one_line(ckpts, reference):
    root = ckpts["root"]
    checkpoints = read_checkpoints([root / "epoch_1.pth", root / "other_model.pth"])
    with pytest.raises(IncompatibleInput) as info:
        compute_checkpoint_drift(checkpoints, reference, ckpts["ids"], steps=STEPS)
    message = info.value.message
    assert message.startswith("other_model.pth does not fit the current model ")
    assert "BertForSequenceClassification" in message and "2 shaped otherwise" in message
    assert "\n" not in message and len(message) < 300 and "missing keys" not in message


def test_a_zip_that_is_no_checkpoint_says_what_it_is(tmp_path):
    path = tmp_path / "notes.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("notes.txt", "hello")
    with pytest.raises(CorruptFile, match="neither a torch.save checkpoint nor a Hugging Face model"):
        read_checkpoints([path])
    torch.jit.script(torch.nn.Linear(3, 2)).save(str(tmp_path / "graph.pt"))  # a TorchScript: its weights, as data
    assert {k: tuple(v.shape) for k, v in read_checkpoints([tmp_path / "graph.pt"])[0].state_dict.items()} == {
        "weight": (2, 3), "bias": (2,)}


def test_a_trainer_checkpoint_carries_its_log_history(ckpts, tmp_path):
    from explain.errors import IncompatibleInput
    from explain.training.history import read_checkpoint_history

    zipped = ckpts["root"] / "checkpoint-200.zip"
    history = read_checkpoint_history(zipped.read_bytes(), "checkpoint-200.zip")
    loss = history.frame.dropna(subset=["loss"])
    assert loss["step"].tolist() == [50, 100, 150, 200]
    np.testing.assert_allclose(loss["loss"].to_numpy(), [1 / 50, 1 / 100, 1 / 150, 1 / 200])
    bare = tmp_path / "bare.zip"
    with zipfile.ZipFile(zipped) as src, zipfile.ZipFile(bare, "w") as dst:
        for name in src.namelist():
            if not name.endswith("trainer_state.json"):
                dst.writestr(name, src.read(name))
    with pytest.raises(IncompatibleInput, match="without trainer_state.json stores no training history"):
        read_checkpoint_history(bare.read_bytes(), "bare.zip")
