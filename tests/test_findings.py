"""Training diagnosis on synthetic curves with known events (tests/training_curves.py)."""
from __future__ import annotations

import numpy as np
import pytest
import training_curves as curves

from explain.training.findings import KINDS, diagnose
from explain.training.history import TrainingHistory, guess_roles

SEEDS = range(6)


def kinds(findings) -> list[str]:
    return [f.kind for f in findings]


def only(findings, kind: str):
    found = [f for f in findings if f.kind == kind]
    assert found, f"no {kind} finding in {kinds(findings)}"
    return found


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n", [15, 60, 300])
def test_healthy_noisy_curve_gives_only_best_epoch(seed, n):
    findings = diagnose(curves.healthy(seed, n=n))
    assert kinds(findings) == ["best_epoch"], [f.message for f in findings]


@pytest.mark.parametrize("seed", SEEDS)
def test_healthy_curve_with_heavier_noise_gives_only_best_epoch(seed):
    rng = np.random.default_rng(100 + seed)
    e = np.arange(80, dtype=float)
    train = 2.3 / (1 + e / 3) ** 0.7  # power-law decay
    h = curves.to_history(e, loss=train * (1 + 0.05 * rng.standard_normal(80)),
                          val_loss=(train * 1.1 + 0.05) * (1 + 0.08 * rng.standard_normal(80)))
    assert kinds(diagnose(h)) == ["best_epoch"]


@pytest.mark.parametrize("seed", SEEDS)
def test_overfitting_onset_found_within_two_epochs(seed):
    findings = diagnose(curves.overfitting(seed, onset=30))
    f = only(findings, "overfitting")[0]
    assert abs(f.epochs[0] - 30) <= 2
    assert f.severity == "warning"
    assert f.evidence["gap_final"] > f.evidence["gap_at_onset"]  # the gap grows
    assert f.evidence["train_final"] < f.evidence["train_at_onset"]  # training loss kept falling
    best = only(findings, "best_epoch")[0]
    assert abs(best.epochs[0] - 30) <= 2
    assert best.evidence["early_stop"] == best.evidence["best"] + 5  # patience 5 after the best epoch


@pytest.mark.parametrize("seed", SEEDS)
def test_plateau_found_with_its_start_and_end(seed):
    f = only(diagnose(curves.plateau(seed, start=10, end=30)), "plateau")
    assert len(f) == 1
    start, end = f[0].epochs
    assert abs(start - 10) <= 2 and abs(end - 30) <= 2
    assert {"overfitting", "divergence", "instability", "underfitting"}.isdisjoint(kinds(diagnose(curves.plateau(seed))))


@pytest.mark.parametrize("seed", SEEDS)
def test_spike_found_at_its_epoch(seed):
    findings = diagnose(curves.spike(seed, at=37))
    f = only(findings, "instability")
    assert [e for x in f for e in x.epochs] == [37.0]
    assert f[0].evidence["max_relative_jump"] > 0.5
    assert "divergence" not in kinds(findings)


@pytest.mark.parametrize("seed", SEEDS)
def test_lr_drop_lines_up_with_the_decay(seed):
    findings = diagnose(curves.lr_drop(seed, at=30))
    drops = [f for f in only(findings, "lr_effect") if f.evidence["effect"] == "drop"]
    assert len(drops) == 1 and abs(drops[0].epochs[0] - 30) <= 2
    assert drops[0].evidence["lr_before"] == pytest.approx(1e-2)
    assert drops[0].evidence["lr_after"] == pytest.approx(1e-3)
    assert drops[0].evidence["loss_after"] < 0.75 * drops[0].evidence["loss_before"]


@pytest.mark.parametrize("seed", SEEDS)
def test_oscillation_under_a_high_rate(seed):
    found = [f for f in only(diagnose(curves.oscillating(seed, at=25)), "lr_effect")
             if f.evidence["effect"] == "oscillation"]
    assert len(found) == 1 and found[0].epochs == [25.0]
    assert found[0].evidence["roughness_before"] > 3 * found[0].evidence["roughness_after"]


@pytest.mark.parametrize("seed", SEEDS)
def test_divergence_found_where_the_loss_turns_up(seed):
    findings = diagnose(curves.diverging(seed, at=40))
    f = only(findings, "divergence")
    assert len(f) == 1 and abs(f[0].epochs[0] - 40) <= 2 and f[0].severity == "error"
    assert "underfitting" not in kinds(findings) and "overfitting" not in kinds(findings)


def test_nan_loss_is_divergence_at_the_first_nan():
    findings = diagnose(curves.diverging(0, at=40, nan_from=48))
    f = only(findings, "divergence")
    assert len(f) == 1 and f[0].epochs == [48.0]
    assert "NaN" in f[0].message


def test_transient_nan_is_instability_not_divergence():
    h = curves.healthy(0)
    h.frame.loc[[20, 21], "loss"] = np.inf  # logged NaN
    findings = diagnose(h)
    f = only(findings, "instability")
    assert f[0].severity == "error" and f[0].epochs == [20.0, 21.0]
    assert "divergence" not in kinds(findings)


@pytest.mark.parametrize("seed", SEEDS)
def test_underfitting(seed):
    f = only(diagnose(curves.underfitting(seed)), "underfitting")
    assert f[0].evidence["relative_drop"] < 0.2


def test_underfitting_from_a_low_training_accuracy():
    e = np.arange(30, dtype=float)
    loss = 2.0 * np.exp(-e / 5) + 0.5  # the loss falls ...
    h = curves.to_history(e, loss=loss, accuracy=0.2 + 0.2 * (1 - np.exp(-e / 5)))  # ... accuracy stays low
    f = only(diagnose(h), "underfitting")
    assert f[0].evidence["metric"] == "accuracy" and f[0].evidence["final"] < 0.6


def test_best_epoch_uses_validation_metric_when_no_validation_loss():
    e = np.arange(20, dtype=float)
    acc = 0.5 + 0.03 * np.minimum(e, 12) - 0.01 * np.maximum(0, e - 12)  # best at 12
    h = curves.to_history(e, val_accuracy=acc)
    best = only(diagnose(h), "best_epoch")[0]
    assert best.epochs == [12.0] and "highest" in best.message


def test_findings_are_ordered_and_of_known_kinds():
    findings = diagnose(curves.overfitting(0))
    assert all(f.kind in KINDS for f in findings)
    assert [KINDS.index(k) for k in kinds(findings)] == sorted(KINDS.index(k) for k in kinds(findings))
    assert all(f.epochs for f in findings)


def test_no_roles_no_findings():
    import pandas as pd

    h = TrainingHistory(pd.DataFrame({"epoch": [0.0, 1.0], "something": [1.0, 2.0]}), guess_roles(["something"]))
    assert diagnose(h) == []


def test_long_step_logs_are_binned_and_still_diagnosed():
    import pandas as pd

    rng = np.random.default_rng(0)
    steps = np.arange(20000, dtype=float)
    loss = (0.2 + 2 * np.exp(-steps / 3000)) * (1 + 0.03 * rng.standard_normal(len(steps)))
    h = TrainingHistory(pd.DataFrame({"step": steps, "train/loss": loss}), guess_roles(["train/loss"]))
    findings = diagnose(h)
    assert kinds(findings) == ["best_epoch"]
    assert findings[0].evidence["x"] == "step"


# -- the one order of findings (page, overview and report) ------------------------------------
def test_severities_and_sort_findings_worst_first():
    from explain.finding import SEVERITIES, Finding, severity_rank, sort_findings

    assert SEVERITIES == ("info", "warning", "error")  # mildest first
    assert [severity_rank(s) for s in ("info", "warning", "error", "unknown")] == [0, 1, 2, -1]
    given = [Finding("a", "info", ""), Finding("b", "error", ""), Finding("c", "odd", ""),
             Finding("d", "warning", ""), Finding("e", "error", ""), Finding("f", "info", "")]
    assert [f.kind for f in sort_findings(given)] == ["b", "e", "d", "a", "f", "c"]  # stable within a severity
    assert [f.kind for f in given] == ["a", "b", "c", "d", "e", "f"]  # a new list: the input is untouched


def test_report_lists_findings_in_the_one_order():
    from explain.finding import sort_findings
    from explain.model import LoadedModel
    from explain.report.analysis import build_training_section
    from explain.spec import InputSpec

    history = curves.diverging(0)
    model = LoadedModel(module=None, format="safetensors", sha256="0" * 64, spec=InputSpec("tabular", (2,)),
                        name="m", extra={"history": history.frame.to_dict("records")})
    section = build_training_section(model, [], [])
    listed = [(f["kind"], f["severity"]) for f in section.data["findings"]]
    expected = [(f.kind, f.severity) for f in sort_findings(diagnose(history))]
    assert listed == expected and len({s for _, s in listed}) >= 2


# -- one plain form and one icon set (issue 21) ----------------------------------------------------
def test_finding_round_trips_through_its_plain_json_form():
    import json

    from explain.finding import Finding

    f = Finding("overfitting", "warning", "val loss rises", [np.float64(30)], {"gap": np.float32(0.5), "n": np.int64(3)})
    data = json.loads(json.dumps(f.to_dict()))  # plain JSON values, numpy numbers included
    assert data == {"kind": "overfitting", "severity": "warning", "message": "val loss rises", "epochs": [30.0],
                    "evidence": {"gap": 0.5, "n": 3}}
    assert Finding.from_dict(data) == Finding("overfitting", "warning", "val loss rises", [30.0], {"gap": 0.5, "n": 3})
    assert Finding.from_dict({"kind": "k", "severity": "info", "message": "m"}).epochs == []  # an older saved run


def test_one_icon_per_severity_for_pages_and_report():
    from pathlib import Path

    from explain.finding import SEVERITIES, SEVERITY_ICONS, Finding
    from explain.report.analysis import _finding_data, _findings_html

    assert set(SEVERITY_ICONS) == set(SEVERITIES)
    f = Finding("divergence", "error", "loss became NaN", [4.0])
    assert f.icon == SEVERITY_ICONS["error"] and Finding("x", "odd", "m").icon not in SEVERITY_ICONS.values()
    assert _findings_html([f]).startswith(f"<ul class=\"findings\"><li>{SEVERITY_ICONS['error']} ")
    assert _finding_data(f, "run 2") == {"run": "run 2", **f.to_dict()}
    # no other severity -> icon map and no hand-built finding dict in the library, the UI or the pages
    root = Path(__file__).resolve().parents[1]
    for path in [*root.glob("explain/**/*.py"), *root.glob("ui/*.py"), *root.glob("pages/**/*.py")]:
        name = path.relative_to(root).as_posix()
        if name == "explain/finding.py":
            continue
        text = path.read_text()
        assert "🛑" not in text and "⛔" not in text and '"severity": f.severity' not in text, name
