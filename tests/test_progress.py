"""Progress and cancel have one home (`explain.progress`): one type, one cancel (the callback raises)."""
import inspect
import re
from pathlib import Path

import pytest

import explain.errors
from explain.dataset.run import explain_dataset
from explain.progress import Cancelled, report_progress

ROOT = Path(__file__).resolve().parents[1]


def test_progress_fn_is_defined_once_and_cancelled_is_the_error_class():
    definitions = [p.relative_to(ROOT).as_posix() for p in (ROOT / "explain").rglob("*.py")
                   if re.search(r"^\w*ProgressFn = ", p.read_text(), re.M)]
    assert definitions == ["explain/progress.py"]
    assert Cancelled is explain.errors.Cancelled


def test_nothing_polls_a_cancel_flag():
    assert "cancelled" not in inspect.signature(explain_dataset).parameters
    sources = "".join(p.read_text() for p in (ROOT / "explain").rglob("*.py"))
    assert "CancelledFn" not in sources


def test_report_progress_calls_the_callback_and_lets_its_cancel_through():
    seen = []
    report_progress(None, 1, 2)  # no callback: nothing happens
    report_progress(lambda d, t: seen.append((d, t)), 1, 2)
    assert seen == [(1, 2)]

    def stop(d, t):
        raise Cancelled("stop")

    with pytest.raises(Cancelled):
        report_progress(stop, 1, 2)

