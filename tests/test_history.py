"""Reading training logs of every supported shape into one `TrainingHistory`."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import training_curves as curves

from explain.errors import CorruptFile, IncompatibleInput, InputRefused, UnsafeFile
from explain.training.findings import diagnose
from explain.training.history import guess_roles, merge_histories, read_histories, read_history, smooth_ema

ROOT = Path(__file__).resolve().parent.parent

LIGHTNING_CSV = """epoch,step,train_loss_step,val_loss,val_acc,train_loss_epoch,lr-Adam
0,49,0.9,,,,0.001
0,99,0.8,,,,0.001
0,99,,0.85,0.6,,
0,99,,,,0.85,
1,149,0.7,,,,0.001
1,199,nan,,,,0.001
1,199,,0.75,0.7,,
1,199,,,,0.72,
"""
KERAS_CSV = """epoch,accuracy,loss,lr,val_accuracy,val_loss
0,0.50,1.00,0.001,0.55,0.90
1,0.60,0.80,0.001,0.60,0.85
2,0.70,0.60,0.0001,0.62,0.84
"""


# -- role heuristics -------------------------------------------------------------------
@pytest.mark.parametrize("columns, role, expected", [
    (["loss", "val_loss"], "val_loss", "val_loss"),
    (["train/loss", "valid/loss"], "val_loss", "valid/loss"),
    (["loss/train", "loss/val"], "val_loss", "loss/val"),
    (["loss/train", "loss/val"], "train_loss", "loss/train"),
    (["loss", "eval_loss"], "val_loss", "eval_loss"),
    (["loss", "learning_rate"], "lr", "learning_rate"),
    (["loss", "lr-Adam"], "lr", "lr-Adam"),
    (["loss", "lr"], "lr", "lr"),
    (["loss", "acc", "val_acc"], "train_metric", "acc"),
    (["loss", "accuracy", "val_accuracy"], "val_metric", "val_accuracy"),
    (["loss", "val_f1"], "val_metric", "val_f1"),
    (["train_loss_step", "train_loss_epoch"], "train_loss", "train_loss_epoch"),
    (["Loss_train/Loss", "Loss_val/Loss"], "val_loss", "Loss_val/Loss"),
    (["train/epoch_loss", "validation/epoch_loss"], "val_loss", "validation/epoch_loss"),
    (["val_accuracy", "val_f1"], "val_metric", "val_accuracy"),
])
def test_guess_roles(columns, role, expected):
    assert guess_roles(columns)[role] == expected


def test_guess_roles_leaves_unknown_roles_empty():
    roles = guess_roles(["loss", "weird_thing"])
    assert roles == {"train_loss": "loss", "val_loss": None, "train_metric": None, "val_metric": None, "lr": None}


# -- CSV ------------------------------------------------------------------------------------
def test_lightning_sparse_csv(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text(LIGHTNING_CSV)
    h = read_history(path)
    assert h.x_columns == ["epoch", "step"]
    assert h.roles["train_loss"] == "train_loss_epoch" and h.roles["val_loss"] == "val_loss"
    assert h.roles["val_metric"] == "val_acc" and h.roles["lr"] == "lr-Adam"
    per_epoch = h.by_epoch()
    assert per_epoch.index.tolist() == [0.0, 1.0]
    assert per_epoch["val_loss"].tolist() == [0.85, 0.75]  # sparse rows aligned per epoch
    assert per_epoch["train_loss_epoch"].tolist() == [0.85, 0.72]
    assert per_epoch["train_loss_step"].iloc[0] == pytest.approx(0.85)  # per-step values averaged
    assert np.isinf(per_epoch["train_loss_step"].iloc[1])  # a logged NaN stays non-finite
    assert h.series_lengths()["train_loss_step"] == 4 and h.series_lengths()["val_loss"] == 2
    assert h.x_positions([1.0], "epoch", "step") == [199.0]


def test_keras_csv():
    h = read_history(KERAS_CSV.encode(), filename="training.log.csv")
    assert h.roles == {"train_loss": "loss", "val_loss": "val_loss", "train_metric": "accuracy",
                       "val_metric": "val_accuracy", "lr": "lr"}
    assert h.series("val_loss").to_dict() == {0.0: 0.90, 1.0: 0.85, 2.0: 0.84}
    f = [x for x in diagnose(h) if x.kind == "best_epoch"][0]
    assert f.epochs == [2.0] and f.evidence["best_value"] == pytest.approx(0.84)


def test_table_without_x_column_is_numbered_by_epoch():
    h = read_history(b"train_loss;val_loss\n1.0;1.1\n0.5;0.7\n", filename="log.txt")
    assert h.frame["epoch"].tolist() == [0.0, 1.0] and h.series("val_loss").tolist() == [1.1, 0.7]


def test_lightning_style_log_with_known_overfitting_end_to_end(tmp_path):
    """A sparse metrics.csv built from the overfitting curve: the onset survives the format."""
    h = curves.overfitting(0, onset=30)
    lines = ["epoch,step,train_loss,val_loss"]
    for e, (t, v) in enumerate(zip(h.frame["loss"], h.frame["val_loss"])):
        lines += [f"{e},{e * 10 + 9},{t},", f"{e},{e * 10 + 9},,{v}"]
    path = tmp_path / "metrics.csv"
    path.write_text("\n".join(lines) + "\n")
    f = [x for x in diagnose(read_history(path)) if x.kind == "overfitting"]
    assert len(f) == 1 and abs(f[0].epochs[0] - 30) <= 2


# -- JSON ------------------------------------------------------------------------------------
def test_json_lines_with_nested_records(tmp_path):
    rows = [{"epoch": e, "train": {"loss": 1.0 / (e + 1)}, "val": {"loss": 1.2 / (e + 1), "acc": 0.5 + e / 10}}
            for e in range(5)]
    path = tmp_path / "log.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    h = read_history(path)
    assert h.roles["train_loss"] == "train/loss" and h.roles["val_loss"] == "val/loss"
    assert h.roles["val_metric"] == "val/acc"
    assert h.series("val/loss").iloc[-1] == pytest.approx(0.24)


def test_json_lines_nan_is_a_logged_non_finite_value():
    data = b'{"step": 1, "loss": 1.0}\n{"step": 2, "loss": NaN}\n{"step": 3, "lr": 0.1}\n'
    h = read_history(data, filename="log.jsonl")
    loss = h.frame["loss"].tolist()
    assert loss[0] == 1.0 and np.isinf(loss[1]) and np.isnan(loss[2])  # logged NaN vs not logged
    assert h.series_lengths() == {"loss": 2, "lr": 1}


def test_keras_history_dict_and_hf_trainer_state():
    keras = json.dumps({"loss": [1.0, 0.5], "val_loss": [1.1, 0.8]}).encode()
    h = read_history(keras, filename="history.json")
    assert h.roles["val_loss"] == "val_loss" and h.series("loss").tolist() == [1.0, 0.5]
    state = {"log_history": [{"epoch": 1.0, "step": 10, "loss": 0.9, "learning_rate": 1e-4},
                             {"epoch": 1.0, "step": 10, "eval_loss": 0.95},
                             {"epoch": 2.0, "step": 20, "loss": 0.7, "learning_rate": 5e-5},
                             {"epoch": 2.0, "step": 20, "eval_loss": 0.9}]}
    h = read_history(json.dumps(state).encode(), filename="trainer_state.json")
    assert h.roles["val_loss"] == "eval_loss" and h.roles["lr"] == "learning_rate"
    assert h.by_epoch()["eval_loss"].tolist() == [0.95, 0.9]


def test_bad_json_line_is_corrupt_with_the_line_number():
    with pytest.raises(CorruptFile, match="line 2"):
        read_history(b'{"loss": 1}\n{"loss": \n', filename="log.jsonl")


# -- TensorBoard -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tb_dirs(tmp_path_factory):
    from torch.utils.tensorboard import SummaryWriter

    root = tmp_path_factory.mktemp("tb")
    w = SummaryWriter(str(root / "plain"))
    for step in range(20):
        w.add_scalar("Loss/train", 1.0 / (step + 1), step)
        w.add_scalar("Loss/val", 1.5 / (step + 1), step)
        w.add_scalar("lr", 0.1 if step < 10 else 0.01, step)
    w.add_scalar("Loss/train", float("nan"), 20)
    w.close()
    for split, scale in (("train", 1.0), ("validation", 1.2)):  # Keras' TensorBoard callback layout
        w = SummaryWriter(str(root / "keras" / split))
        for epoch in range(6):
            w.add_scalar("epoch_loss", scale / (epoch + 1), epoch)
        w.close()
    return root


def test_tensorboard_event_file_written_by_summarywriter(tb_dirs):
    h = read_history(tb_dirs / "plain")
    assert h.x_columns == ["step", "wall_time"]
    assert h.roles["train_loss"] == "Loss/train" and h.roles["val_loss"] == "Loss/val" and h.roles["lr"] == "lr"
    assert h.series_lengths() == {"Loss/train": 21, "Loss/val": 20, "lr": 20}
    assert h.series("Loss/val").iloc[3] == pytest.approx(1.5 / 4, rel=1e-6)
    assert np.isinf(h.series("Loss/train").iloc[20])
    assert (h.frame["wall_time"] >= 0).all()
    event_file = next((tb_dirs / "plain").glob("events.out.tfevents.*"))
    same = read_history(event_file.read_bytes(), filename=event_file.name)  # an upload
    assert same.series_lengths() == h.series_lengths()
    assert read_history(event_file).series("lr").tolist() == h.series("lr").tolist()


def test_tensorboard_folder_of_runs_keras_layout(tb_dirs):
    h = read_history(tb_dirs / "keras")
    assert h.default_x == "epoch"  # every tag is epoch_*: the step is the epoch
    assert h.roles["train_loss"] == "train/epoch_loss" and h.roles["val_loss"] == "validation/epoch_loss"
    assert h.series("validation/epoch_loss").tolist() == pytest.approx([1.2 / (e + 1) for e in range(6)])


def test_garbage_event_file_is_corrupt():
    with pytest.raises(CorruptFile):
        read_history(b"\x00\x01garbage" * 50, filename="events.out.tfevents.123.host")


def test_folder_without_event_files_is_refused(tmp_path):
    with pytest.raises(IncompatibleInput, match="no TensorBoard event files"):
        read_history(tmp_path)


# -- checkpoints ---------------------------------------------------------------------------------
def _save(obj, path: Path) -> bytes:
    torch.save(obj, path)
    return path.read_bytes()


def test_checkpoint_history_weights_only(tmp_path):
    history = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "lr": 0.1} for e in range(1, 6)]
    data = _save({"model_state_dict": {"w": torch.ones(2)}, "epoch": 5, "history": history}, tmp_path / "c.pt")
    h = read_history(data, filename="epoch_05.pt")
    assert h.roles["train_loss"] == "train_loss" and h.series("val_loss").tolist() == pytest.approx(
        [1.2 / e for e in range(1, 6)])
    data = _save({"state_dict": {}, "history": {"loss": torch.tensor([1.0, 0.5])}}, tmp_path / "d.pt")
    assert read_history(data, filename="d.pt").series("loss").tolist() == [1.0, 0.5]  # tensors become numbers


class _NotAllowed:  # a pickled class: needs code execution to load
    pass


def test_checkpoint_needing_code_execution_is_refused(tmp_path):
    data = _save({"history": [{"loss": 1.0}], "obj": _NotAllowed()}, tmp_path / "bad.pt")
    with pytest.raises(UnsafeFile, match="code execution"):
        read_history(data, filename="bad.pt")


def test_checkpoint_without_history_and_truncated_checkpoint(tmp_path):
    data = _save({"model_state_dict": {"w": torch.ones(2)}}, tmp_path / "c.pt")
    with pytest.raises(IncompatibleInput, match="no training history"):
        read_history(data, filename="c.pt")
    with pytest.raises(CorruptFile, match="not a readable torch checkpoint"):
        read_history(data[: len(data) // 2], filename="c.pt")


# -- errors, merging, smoothing --------------------------------------------------------------------------
@pytest.mark.parametrize("data, name, error, match", [
    (b"", "log.csv", CorruptFile, "empty"),
    (b"   \n", "log.csv", CorruptFile, "empty"),
    (b"\xff\xfe\x00\x01\x02", "log.csv", CorruptFile, "not a text file"),
    (b"name,comment\nrun1,hello\n", "log.csv", IncompatibleInput, "no numeric series"),
    (b"[1, 2, 3]", "log.json", IncompatibleInput, "list of JSON objects"),
])
def test_bad_files_have_clear_reasons(data, name, error, match):
    with pytest.raises(error, match=match):
        read_history(data, filename=name)


def test_missing_path_is_refused(tmp_path):
    with pytest.raises(InputRefused, match="No such file"):  # the wording of a missing model or inputs file
        read_history(tmp_path / "nope.csv")


def test_logs_and_checkpoints_obey_the_upload_cap_with_a_models_wording(tmp_path, monkeypatch):
    """Every user file goes through explain.loading.source.read_source: the same cap, the same words."""
    from explain.errors import TooLarge
    from explain.loading.loader import load_model
    from explain.model import LoadedModel
    from explain.report.sections import build_report
    from explain.spec import InputSpec
    from explain.training.checkpoints import read_checkpoint, read_checkpoints

    log = tmp_path / "train_log.csv"
    log.write_text("epoch,loss\n" + "".join(f"{e},{1 / (e + 1):.6f}\n" for e in range(400)))
    ckpt = tmp_path / "epoch_3.pt"
    torch.save({"model_state_dict": {"fc.weight": torch.zeros(64, 64)}, "epoch": 3}, ckpt)
    tb = tmp_path / "tb"
    tb.mkdir()
    (tb / "events.out.tfevents.1.host").write_bytes(b"\x00" * 4096)
    model_file = tmp_path / "model.safetensors"
    model_file.write_bytes(b"\x00" * 4096)
    for path in (log, ckpt, model_file):
        assert path.stat().st_size > 2048
    assert read_history(log).series_lengths() == {"loss": 400}  # under the default cap: read

    monkeypatch.setenv("GLASSBOX_MAX_UPLOAD_MB", "0.002")  # about 2 KiB

    def refusal(call) -> str:
        with pytest.raises(TooLarge) as info:
            call()
        return info.value.message

    def wording(message: str) -> str:  # the message without the file's name and size
        return re.sub(r"^\S+ is [0-9.]+ MiB", "<file> is <size> MiB", message)

    as_model = wording(refusal(lambda: load_model(model_file)))
    assert as_model == "<file> is <size> MiB, over the 0 MiB limit. An operator can raise it with GLASSBOX_MAX_UPLOAD_MB."
    tiny = LoadedModel(module=torch.nn.Linear(2, 2), format="safetensors", sha256="0" * 64,
                       spec=InputSpec("tabular", (2,)), name="tiny")
    calls = {
        "log path": lambda: read_history(log),
        "log upload": lambda: read_history(log.read_bytes(), filename=log.name),
        "log pair": lambda: read_histories([(log.name, log.read_bytes())]),
        "TensorBoard folder": lambda: read_history(tb),
        "checkpoint path": lambda: read_checkpoint(ckpt),
        "checkpoint upload": lambda: read_checkpoints([(ckpt.name, ckpt.read_bytes())]),
        "checkpoint history": lambda: read_history(ckpt),
        "report log": lambda: build_report(tiny, None, logs=[log], methods=[]),
        "report checkpoint": lambda: build_report(tiny, None, checkpoints=[ckpt], methods=[]),
    }
    for what, call in calls.items():
        message = refusal(call)
        assert wording(message) == as_model, what
        assert message.startswith(("train_log.csv is", "epoch_3.pt is", "events.out.tfevents.1.host is")), what


def test_merge_train_and_validation_files(tmp_path):
    (tmp_path / "train.csv").write_text("epoch,train_loss\n0,1.0\n1,0.5\n")
    (tmp_path / "val.csv").write_text("epoch,val_loss\n0,1.1\n1,0.7\n")
    (tmp_path / "again.csv").write_text("epoch,val_loss\n0,9\n1,9\n")
    h = merge_histories(read_histories([tmp_path / "train.csv", tmp_path / "val.csv"]))
    assert h.roles["train_loss"] == "train_loss" and h.roles["val_loss"] == "val_loss"
    assert h.by_epoch()["val_loss"].tolist() == [1.1, 0.7]
    h = merge_histories(read_histories([tmp_path / "val.csv", tmp_path / "again.csv"]))
    assert h.by_epoch()["val_loss"].tolist() == [1.1, 0.7]  # a second run's values are never averaged in
    assert h.by_epoch()["val_loss (again)"].tolist() == [9.0, 9.0]


def test_with_roles_edits_and_validates():
    h = read_history(KERAS_CSV.encode(), filename="k.csv")
    edited = h.with_roles(val_loss=None, train_metric="val_accuracy")
    assert edited.roles["val_loss"] is None and edited.roles["train_metric"] == "val_accuracy"
    assert h.roles["val_loss"] == "val_loss"  # the original is untouched
    with pytest.raises(IncompatibleInput):
        h.with_roles(val_loss="nope")
    with pytest.raises(IncompatibleInput):
        h.with_roles(banana="loss")


def test_smooth_ema_is_tensorboards_debiased_average():
    assert smooth_ema([1.0, 2.0, 3.0], 0.5).tolist() == pytest.approx([1.0, 5 / 3, 2.125 / 0.875])
    assert smooth_ema([4.0, 5.0], 0.0).tolist() == [4.0, 5.0]
    out = smooth_ema([1.0, np.inf, 1.0], 0.9)
    assert out[0] == 1.0 and np.isinf(out[1]) and out[2] == pytest.approx(1.0)
    assert smooth_ema(np.full(50, 3.0), 0.99) == pytest.approx(np.full(50, 3.0))  # no bias towards 0


# -- the sample models' logs ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["shapes", "cancer", "sentiment"])
def test_sample_model_logs(name):
    log = ROOT / "sample_models" / name / "train_log.csv"
    h = read_history(log)
    assert h.roles == {"train_loss": "train_loss", "val_loss": "val_loss", "train_metric": "train_acc",
                       "val_metric": "val_acc", "lr": "lr"}
    assert h.frame["epoch"].iloc[0] == 1.0
    findings = diagnose(h)
    assert {"divergence", "underfitting", "plateau"}.isdisjoint(f.kind for f in findings)
    assert [f.kind for f in findings].count("best_epoch") == 1
    ckpts = sorted((log.parent / "checkpoints").glob("epoch_*.pt"))
    from_ckpt = read_history(ckpts[-1])
    assert from_ckpt.by_epoch()["val_loss"].tolist() == pytest.approx(h.by_epoch()["val_loss"].tolist(), rel=1e-5)


@pytest.mark.parametrize("data, what", [(b"this is not a model\n", "a text file"),
                                        (b"\x89PNG\r\n\x1a\n" + bytes(64), "an image"),
                                        (b"", "empty (0 bytes)")])
def test_a_wrong_file_is_named_alike_as_model_checkpoint_and_log(data, what):
    """One wording for one fault: the sidebar's ("is a text file") for the same file given as a
    checkpoint or as a log, not "truncated or damaged"."""
    from explain.errors import CorruptFile
    from explain.loading.loader import load_model
    from explain.training.checkpoints import read_checkpoint
    from explain.training.history import read_history

    for reader, expected in ((load_model, f"notamodel.pt (named .pt) is {what}, not a model."),
                             (read_checkpoint, f"notamodel.pt is {what}, not a torch checkpoint."),
                             (read_history, f"notamodel.pt is {what}, not a torch checkpoint.")):
        with pytest.raises(CorruptFile) as info:
            reader(data, filename="notamodel.pt")
        if not data:  # an empty upload is refused by the one capped reader before any format is tried
            assert "empty" in info.value.reason
        else:
            assert info.value.reason == expected
            assert "truncated" not in str(info.value)


def test_an_event_folder_as_data_reads_as_the_folder_does(tb_dirs):
    """What a report job carries to a worker: the folder's event files with their relative paths."""
    from explain.training.history import EventFolder

    folder = EventFolder.read(tb_dirs / "keras")
    assert sorted(rel.split("/")[0] for rel, _ in folder.files) == ["train", "validation"]
    on_disk, as_data = read_history(tb_dirs / "keras"), read_history(folder)
    assert as_data.sources == on_disk.sources == [str(tb_dirs / "keras")]
    __import__("pandas").testing.assert_frame_equal(as_data.frame, on_disk.frame)


def test_cli_report_with_a_tensorboard_folder_is_built_by_the_job_as_locally(tb_dirs, tmp_path, capsys, monkeypatch):
    import json

    from explain.cli import main
    from explain.report.sections import build_report
    from sample_models import load_sample

    monkeypatch.setenv("GLASSBOX_HOME", str(tmp_path / "home"))
    code = main(["report", "cancer", "--logs", str(tb_dirs / "keras"), "--metrics", "none",
                 "--out", str(tmp_path / "r.html")])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["run"] and "Training" in out["sections"]
    local = build_report(load_sample("cancer"), None, logs=[tb_dirs / "keras"], quality=[])
    expected = read_report_data_of(local)["sections"]["Training"]
    assert _section_data((tmp_path / "r.html").read_text(), "Training") == expected


def read_report_data_of(report) -> dict:
    from explain.report.document import read_report_data

    return read_report_data(report.to_html())


def _section_data(html: str, title: str) -> dict:
    from explain.report.document import read_report_data

    return read_report_data(html)["sections"][title]
