"""`python -m explain training LOG...`: one JSON object, exit codes 0 / 2 / 3."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import training_curves as curves

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "explain", "training", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_cli_json_on_a_keras_log(tmp_path):
    frame = curves.overfitting(0, onset=30).frame  # epoch, loss, val_loss, lr
    frame.to_csv(tmp_path / "keras.csv", index=False)
    proc = run_cli(tmp_path / "keras.csv", "--role", "lr=")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["series"] == {"loss": 60, "val_loss": 60, "lr": 60}
    assert out["roles"]["val_loss"] == "val_loss" and out["roles"]["lr"] is None
    kinds = [f["kind"] for f in out["findings"]]
    assert kinds == ["overfitting", "best_epoch"]
    over = out["findings"][0]
    assert set(over) == {"kind", "severity", "message", "epochs", "evidence"} and abs(over["epochs"][0] - 30) <= 2
    assert out["evidence"] == [f["evidence"] for f in out["findings"]]  # the older top-level list, kept
    assert out["x"] == "epoch" and out["points"] == 60
    from explain.finding import severity_rank  # worst first, in the order the pages show

    ranks = [severity_rank(f["severity"]) for f in out["findings"]]
    assert ranks == sorted(ranks, reverse=True)


def test_cli_unreadable_log_exits_3_with_one_line(tmp_path):
    (tmp_path / "broken.jsonl").write_text('{"loss": 1.0}\n{"loss": oops}\n')
    proc = run_cli(tmp_path / "broken.jsonl")
    assert proc.returncode == 3 and proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0 and "line 2" in proc.stderr  # one line, a clear reason


def test_cli_in_process_tensorboard_missing_file_and_usage(tmp_path, capsys):
    from torch.utils.tensorboard import SummaryWriter

    from explain.cli import main

    w = SummaryWriter(str(tmp_path / "tb"))
    for step in range(10):
        w.add_scalar("train/loss", 1.0 / (step + 1), step)
    w.close()
    assert main(["training", str(tmp_path / "tb")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["series"] == {"train/loss": 10} and out["x"] == "step"
    assert main(["training", str(tmp_path / "missing.csv")]) == 3
    assert "No such file" in capsys.readouterr().err  # the wording of every missing user file
    assert main(["training", str(tmp_path / "tb"), "--role", "banana=loss"]) == 2
    assert "--role" in capsys.readouterr().err


def test_cli_deeply_nested_json_exits_3_with_one_line(tmp_path):
    (tmp_path / "deep.json").write_bytes(b"[" * 100_000 + b"]" * 100_000)
    proc = run_cli(tmp_path / "deep.json")
    assert proc.returncode == 3 and proc.stdout == "", proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "nests JSON more than 32 levels deep" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_reports_a_truncated_event_file_in_warnings(tmp_path, capsys):
    from torch.utils.tensorboard import SummaryWriter

    from explain.cli import main

    w = SummaryWriter(str(tmp_path / "tb"))
    for step in range(30):
        w.add_scalar("train/loss", 1.0 / (step + 1), step)
    w.close()
    event_file = next((tmp_path / "tb").glob("events.out.tfevents.*"))
    event_file.write_bytes(event_file.read_bytes()[:-30])  # cut inside the last records
    assert main(["training", str(tmp_path / "tb")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 0 < out["series"]["train/loss"] < 30
    assert len(out["warnings"]) == 1 and "truncated in record" in out["warnings"][0]


def test_cli_several_runs_of_the_same_series_are_diagnosed_each(tmp_path):
    from explain.cli import main

    curves.overfitting(0, onset=30).frame.to_csv(tmp_path / "baseline.csv", index=False)
    curves.diverging(1, at=40, nan_from=45).frame.to_csv(tmp_path / "bigger_lr.csv", index=False)
    out = main_json(main, [str(tmp_path / "baseline.csv"), str(tmp_path / "bigger_lr.csv")])
    assert [r["name"] for r in out["runs"]] == ["baseline", "bigger_lr"]  # as the page and the report read them
    kinds = {r["name"]: [f["kind"] for f in r["findings"]] for r in out["runs"]}
    assert "overfitting" in kinds["baseline"] and "divergence" not in kinds["baseline"]
    assert kinds["bigger_lr"][0] == "divergence"
    assert set(out["series"]) == {"loss", "val_loss", "lr", "loss (bigger_lr)",
                                  "val_loss (bigger_lr)"}  # the merged reading stays at the top level
    single = main_json(main, [str(tmp_path / "baseline.csv")])
    assert [r["name"] for r in single["runs"]] == ["baseline"] and single["runs"][0]["findings"] == single["findings"]


def main_json(main, args: list[str]) -> dict:
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["training", *args]) == 0
    return json.loads(buffer.getvalue())
