"""Checkpoint evolution: per-layer weight change and attribution drift."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from explain.errors import IncompatibleInput, UnsafeFile
from explain.loading.architectures import build_architecture
from explain.model import LoadedModel
from explain.spec import InputSpec
from explain.training.checkpoints import (
    Checkpoint,
    checkpoint_label,
    checkpoint_sort_key,
    final_checkpoint,
    read_checkpoint,
    read_checkpoints,
    sort_checkpoints,
)
from explain.training.evolution import (
    compute_attribution_drift,
    compute_checkpoint_drift,
    compute_weight_changes,
    model_at,
    spearman,
)

ROOT = Path(__file__).resolve().parent.parent
CONFIG = {"in_features": 6, "hidden": [16], "num_classes": 2, "dropout": 0.0}
SPEC = InputSpec("tabular", (6,), class_names=["neg", "pos"], feature_names=[f"f{i}" for i in range(6)])


def _ckpt(label: str, **tensors) -> Checkpoint:
    return Checkpoint(label, None, {k: torch.as_tensor(v, dtype=torch.float32) for k, v in tensors.items()}, label)


def test_weight_change_known_numbers():
    a = _ckpt("a", **{"fc.weight": np.ones((2, 2)), "fc.bias": np.zeros(2), "bn.weight": np.ones(2),
                      "bn.running_mean": np.zeros(2)})
    b = _ckpt("b", **{"fc.weight": 2 * np.ones((2, 2)), "fc.bias": np.zeros(2), "bn.weight": np.ones(2),
                      "bn.running_mean": np.full(2, 100.0)})
    c = _ckpt("c", **{"fc.weight": 2 * np.ones((2, 2)), "fc.bias": np.ones(2), "bn.weight": np.full(2, 1.5),
                      "bn.running_mean": np.zeros(2)})
    change = compute_weight_changes([a, b, c])
    assert change.layers == ["fc", "bn"]  # running statistics are buffers, not weights
    assert change.intervals == ["a → b", "b → c"]
    # fc: ||2 - 1|| over 4 ones / ||4 ones|| = 2 / 2 = 1; then ||bias 0 -> 1|| = sqrt(2) over ||W|| = 4
    assert change.values[0].tolist() == pytest.approx([1.0, np.sqrt(2) / 4])
    assert change.values[1].tolist() == pytest.approx([0.0, 0.5])
    assert change.norms[0].tolist() == pytest.approx([2.0, 4.0, np.sqrt(18)])


def test_weight_change_refuses_different_models():
    a = _ckpt("a", **{"fc.weight": np.ones((2, 2))})
    b = _ckpt("b", **{"fc.weight": np.ones((3, 2))})
    with pytest.raises(IncompatibleInput, match="not a checkpoint of the same model"):
        compute_weight_changes([a, b])
    with pytest.raises(IncompatibleInput, match="at least 2"):
        compute_weight_changes([a])


def test_spearman():
    assert spearman(np.array([1, 2, 3, 4]), np.array([10, 20, 30, 400])) == pytest.approx(1.0)
    assert spearman(np.array([1, 2, 3, 4]), np.array([4, 3, 2, 1])) == pytest.approx(-1.0)
    assert np.isnan(spearman(np.ones(4), np.arange(4)))
    a, b = np.array([3.0, 1.0, 1.0, 2.0, 5.0]), np.array([1.0, 0.0, 2.0, 2.0, 9.0])  # ties: average ranks
    ra, rb = np.array([3.0, 0.5, 0.5, 2.0, 4.0]), np.array([1.0, 0.0, 2.5, 2.5, 4.0])
    assert spearman(a, b) == pytest.approx(np.corrcoef(ra, rb)[0, 1])


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    """A tiny MLP trained on a linear rule, checkpointed like the samples (epochs 1, 3, 6, 12)."""
    directory = tmp_path_factory.mktemp("ckpts")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 6, generator=g)
    y = (x[:, 0] - 2 * x[:, 1] + 0.5 * x[:, 2] > 0).long()
    torch.manual_seed(0)
    model = build_architecture("tabular_mlp", CONFIG)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    history = []
    for epoch in range(1, 13):
        model.train()
        for i in range(0, 512, 64):
            loss = F.cross_entropy(model(x[i : i + 64]), y[i : i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
        history.append({"epoch": epoch, "train_loss": loss.item()})
        if epoch in (1, 3, 6, 12):
            torch.save({"model_state_dict": {k: v.clone() for k, v in model.state_dict().items()}, "epoch": epoch,
                        "history": list(history), "architecture": "tabular_mlp", "config": CONFIG,
                        "spec": SPEC.to_dict()}, directory / f"epoch_{epoch:02d}.pt")
    final = LoadedModel(module=model.eval(), format="checkpoint", sha256="x", spec=SPEC, name="standin")
    return directory, final, x[:16].numpy()


def test_read_checkpoints_orders_by_epoch(standin):
    directory, _, _ = standin
    ckpts = read_checkpoints(sorted(directory.glob("*.pt"), reverse=True))
    assert [c.epoch for c in ckpts] == [1.0, 3.0, 6.0, 12.0]
    assert [c.label for c in ckpts] == ["epoch 1", "epoch 3", "epoch 6", "epoch 12"]
    assert "0.weight" in ckpts[0].state_dict or any(k.endswith("weight") for k in ckpts[0].state_dict)
    assert len(ckpts[-1].meta["history"]) == 12


def test_model_at_fits_the_reference_or_loads_on_its_own(standin):
    directory, final, x = standin
    ckpt = read_checkpoint(directory / "epoch_12.pt")
    via_reference = model_at(ckpt, final)
    assert via_reference.module is not final.module
    np.testing.assert_allclose(via_reference.predict_logits(x), final.predict_logits(x), atol=1e-6)
    alone = model_at(ckpt, None)  # explain.loading rebuilds the architecture named in the file
    np.testing.assert_allclose(alone.predict_logits(x), final.predict_logits(x), atol=1e-5)


def test_attribution_drift_final_correlates_best_and_first_least(standin):
    directory, final, x = standin
    ckpts = read_checkpoints(sorted(directory.glob("*.pt")))
    seen = []
    drift = compute_checkpoint_drift(ckpts, final, x, steps=16, progress=lambda d, t: seen.append((d, t)))
    assert drift.values.shape == (4, 16, 6) and drift.correlation.shape == (4, 16)
    assert drift.correlation[-1] == pytest.approx(np.ones(16))
    mean = drift.mean_correlation
    assert int(np.argmin(mean)) == 0 and int(np.argmax(mean)) == 3
    assert np.all(np.diff(mean) > 0), mean  # explanations converge as training goes on
    assert seen[-1][0] == seen[-1][1] and all(d <= t for d, t in seen)
    assert drift.labels == ["epoch 1", "epoch 3", "epoch 6", "epoch 12"]
    np.testing.assert_array_equal(drift.target, final.predict_logits(x).argmax(1))


def test_drift_needs_two_models(standin):
    _, final, x = standin
    with pytest.raises(IncompatibleInput):
        compute_attribution_drift([final], x)


class Thing:  # a pickled class: needs code execution to load
    pass


# -- which checkpoint is final: one order for the page, the overview and the report ---------------------
def _save_ckpt(path: Path, epoch: int | None = None) -> Path:
    obj = {"model_state_dict": {"fc.weight": torch.zeros(2, 2)}}
    if epoch is not None:
        obj["epoch"] = epoch
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("with_epochs", [False, True])
def test_ckpt_10_comes_after_ckpt_9(tmp_path, with_epochs):
    """A name's number is compared as a number (the old page took the largest name, ckpt_9)."""
    files = [_save_ckpt(tmp_path / f"ckpt_{n}.pt", n if with_epochs else None) for n in (10, 9, 2)]
    ordered = read_checkpoints(files)
    assert [c.source for c in ordered] == ["ckpt_2.pt", "ckpt_9.pt", "ckpt_10.pt"]
    assert final_checkpoint(ordered).source == "ckpt_10.pt"
    uploads = read_checkpoints([(p.name, p.read_bytes()) for p in files])  # uploads: the same order
    assert [c.source for c in uploads] == [c.source for c in ordered]


def test_stored_epoch_wins_over_the_file_name(tmp_path):
    files = [_save_ckpt(tmp_path / "ckpt_1.pt", epoch=20), _save_ckpt(tmp_path / "ckpt_2.pt", epoch=5),
             _save_ckpt(tmp_path / "last.pt")]
    ordered = read_checkpoints(files)
    assert [c.source for c in ordered] == ["ckpt_2.pt", "ckpt_1.pt", "last.pt"]  # by epoch; no number: last
    assert final_checkpoint(ordered).source == final_checkpoint(reversed(ordered)).source == "last.pt"
    with pytest.raises(IncompatibleInput):
        final_checkpoint([])


def test_the_report_reads_the_final_checkpoints_history(tmp_path):
    from explain.report.analysis import read_training_history

    for n in (9, 10):
        torch.save({"model_state_dict": {"fc.weight": torch.zeros(2, 2)},
                    "history": [{"epoch": e, "loss": 1.0 / e} for e in range(1, n + 1)]}, tmp_path / f"ckpt_{n}.pt")
    history, origin = read_training_history([], [tmp_path / "ckpt_9.pt", tmp_path / "ckpt_10.pt"])
    assert origin == "checkpoint ckpt_10.pt" and history.series_lengths() == {"loss": 10}


def test_checkpoint_sort_key_and_label_from_names():
    names = ["run_b.pt", "epoch_10.pt", "ckpt_9.pt", "epoch_2.pt", "step=100.pt", "run_a.pt", "model_v2_ep7.pt"]
    assert sorted(names, key=checkpoint_sort_key) == [
        "epoch_2.pt", "model_v2_ep7.pt", "ckpt_9.pt", "epoch_10.pt", "step=100.pt", "run_a.pt", "run_b.pt"]
    assert checkpoint_sort_key("ckpt_9.pt", epoch=50.0) > checkpoint_sort_key("ckpt_10.pt")  # a stored epoch wins
    assert checkpoint_label("epoch_07.pt") == "epoch 7" and checkpoint_label("ckpt_9.pt") == "ckpt_9"
    assert checkpoint_label("ckpt_9.pt", 9.0) == "epoch 9" and checkpoint_label("x.pt", 2.5) == "x"
    a, b = _ckpt("b.pt", w=np.zeros(1)), _ckpt("a.pt", w=np.zeros(1))
    assert [c.source for c in sort_checkpoints([a, b])] == ["a.pt", "b.pt"]


def test_unsafe_checkpoint_refused(tmp_path):
    torch.save({"model_state_dict": {"w": torch.ones(1)}, "thing": Thing()}, tmp_path / "bad.pt")
    with pytest.raises(UnsafeFile):
        read_checkpoint(tmp_path / "bad.pt")


@pytest.mark.parametrize("name", ["shapes", "cancer", "sentiment"])
def test_sample_checkpoints_drift(name):
    directory = ROOT / "sample_models" / name / "checkpoints"
    from sample_models import load_sample, sample_inputs

    model = load_sample(name)
    ckpts = read_checkpoints(sorted(directory.glob("epoch_*.pt")))
    assert len(ckpts) >= 2
    change = compute_weight_changes(ckpts)
    assert np.all(np.isfinite(change.values)) and np.all(change.values >= 0)
    inputs = sample_inputs(name)["inputs"][: 4 if name == "shapes" else 16]  # text/tabular: cheap, noisier per input
    drift = compute_checkpoint_drift(ckpts, model, inputs, steps=16)
    mean = drift.mean_correlation
    assert drift.correlation[-1] == pytest.approx(np.ones(len(inputs)))  # the final maps with themselves
    assert int(np.argmin(mean)) == 0, mean  # the first checkpoint agrees least
    assert np.all(np.diff(mean) > 0), mean  # and agreement grows checkpoint by checkpoint


class _OwnNet(torch.nn.Module):
    """A user's own class, known to no registry: its checkpoints fit only the TorchScript model loaded."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU())
        self.head = torch.nn.Linear(8, 2)

    def forward(self, x):  # [N, 6] -> [N, 2]
        return self.head(self.body(x))


@pytest.fixture(scope="module")
def own_run(tmp_path_factory):
    """Epochs 1-3 of one run: plain state dicts, Lightning .ckpt dicts and TorchScript, and the final model."""
    root = tmp_path_factory.mktemp("own_run")
    torch.manual_seed(0)
    x = torch.randn(64, 6)
    y = (x[:, 0] > 0).long()
    net = _OwnNet()
    opt = torch.optim.SGD(net.parameters(), 0.5)
    for epoch in (1, 2, 3):
        for _ in range(5):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
        torch.save(net.state_dict(), root / f"model_epoch{epoch}.pt")
        torch.save({"epoch": epoch, "state_dict": {f"model.{k}": v for k, v in net.state_dict().items()},
                    "optimizer_states": [opt.state_dict()]}, root / f"epoch={epoch}-step={epoch * 5}.ckpt")
        torch.jit.save(torch.jit.script(net), str(root / f"scripted_epoch{epoch}.pt"))
    from explain.loading.loader import load_model

    model = load_model(root / "scripted_epoch3.pt", spec=SPEC)
    return root, model, x[:4].numpy()


def test_a_torchscript_epoch_reads_as_the_weights_it_holds(own_run):
    root, _, _ = own_run
    script = read_checkpoint(root / "scripted_epoch2.pt")
    plain = torch.load(root / "model_epoch2.pt", weights_only=True)
    assert script.epoch == 2 and list(script.state_dict) == list(plain)
    assert all(torch.equal(script.state_dict[k], plain[k]) for k in plain)


@pytest.mark.parametrize("pattern", ["model_epoch*.pt", "epoch=*.ckpt"])
def test_state_dicts_of_a_torchscript_model_drift_as_its_scripted_epochs_do(own_run, pattern):
    root, model, inputs = own_run
    scripted = compute_checkpoint_drift(read_checkpoints(sorted(root.glob("scripted_epoch*.pt"))), model, inputs,
                                        target=0, steps=8)
    drift = compute_checkpoint_drift(read_checkpoints(sorted(root.glob(pattern))), model, inputs, target=0, steps=8)
    np.testing.assert_allclose(drift.correlation, scripted.correlation, atol=1e-6)
    assert drift.correlation[-1] == pytest.approx(np.ones(len(inputs)))
    assert drift.mean_correlation[0] < 0.99  # the weights did change


def test_a_state_dict_of_another_model_is_refused_against_a_torchscript_model(own_run):
    _, model, _ = own_run
    with pytest.raises(IncompatibleInput, match=r"does not fit the current model .*head.weight"):
        model_at(_ckpt("other.pt", **{"body.0.weight": np.zeros((8, 6)), "body.0.bias": np.zeros(8),
                                      "head.weight": np.zeros((3, 8)), "head.bias": np.zeros(3)}), model)


def test_a_torchscript_checkpoint_naming_any_other_global_is_refused_unread(own_run):
    import io
    import zipfile

    from explain.loading.script_tensors import read_script_state

    root, _, _ = own_run
    source = zipfile.ZipFile(root / "scripted_epoch1.pt")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for info in source.infolist():
            evil = b"\x80\x02cposix\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03."  # os.system("true")
            zf.writestr(info, evil if info.filename.endswith("/data.pkl") else source.read(info))
    with pytest.raises(UnsafeFile, match="references posix.system"):
        read_script_state(out.getvalue(), "evil.pt")


def test_lightning_checkpoints_name_the_layers_without_the_wrapper_prefix(own_run):
    root, _, _ = own_run
    change = compute_weight_changes(read_checkpoints(sorted(root.glob("epoch=*.ckpt"))))
    plain = compute_weight_changes(read_checkpoints(sorted(root.glob("model_epoch*.pt"))))
    assert change.layers == plain.layers == ["body.0", "head"]
    np.testing.assert_allclose(change.values, plain.values)
