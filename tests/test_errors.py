"""One error table and one line: `explain.errors.CODES` and `explain.errors.one_line`, and every caller through them."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from explain import errors
from explain.errors import (
    CODES,
    Cancelled,
    CorruptFile,
    GlassboxError,
    IncompatibleInput,
    InputRefused,
    NotFound,
    PermissionDenied,
    QueueFull,
    TooLarge,
    UnsafeFile,
    UsageError,
    exit_code,
    http_status,
    one_line,
)

ROOT = Path(__file__).resolve().parent.parent

#: what a torch 2.x TorchScript graph raises (message of torch.jit's RuntimeError, verbatim shape)
TORCHSCRIPT = (
    "The following operation failed in the TorchScript interpreter.\n"
    "Traceback of TorchScript (most recent call last):\n"
    '  File "model.py", line 4, in forward\n'
    "    return torch.mm(x, self.w)\n"
    "           ~~~~~~~~ <--- HERE\n"
    "RuntimeError: mat1 and mat2 shapes cannot be multiplied (1x3 and 4x2)\n"
)


def test_the_table_pins_each_class_to_its_exit_code_and_http_status():
    assert {cls.__name__: code for cls, code in CODES.items()} == {
        "UsageError": (2, 400), "NotFound": (2, 404), "InputRefused": (3, 422), "PermissionDenied": (3, 403),
        "QueueFull": (3, 429), "GlassboxError": (3, 422), "Exception": (3, 500)}
    # subclasses take their nearest listed ancestor's row
    for cls, code in [(CorruptFile, (3, 422)), (UnsafeFile, (3, 422)), (TooLarge, (3, 422)),
                      (IncompatibleInput, (3, 422)), (Cancelled, (3, 422)), (RuntimeError, (3, 500)),
                      (MemoryError, (3, 500)), (NotFound, (2, 404))]:
        assert (exit_code(cls("x")), http_status(cls("x"))) == code, cls
    from explain.workspace.jobs import QueueFull as jobs_queue_full  # the class the queue raises
    assert jobs_queue_full is QueueFull


def test_one_line_takes_the_torchscript_cause_and_cuts():
    assert one_line(RuntimeError(TORCHSCRIPT)) == "RuntimeError: mat1 and mat2 shapes cannot be multiplied (1x3 and 4x2)"
    assert one_line(RuntimeError(TORCHSCRIPT), typed=False) == "mat1 and mat2 shapes cannot be multiplied (1x3 and 4x2)"
    assert one_line(TORCHSCRIPT) == "mat1 and mat2 shapes cannot be multiplied (1x3 and 4x2)"
    wrapped = IncompatibleInput(f"The model fails on [1, 3] ({one_line(RuntimeError(TORCHSCRIPT), 200)}).")
    assert one_line(wrapped) == "The model fails on [1, 3] (RuntimeError: mat1 and mat2 shapes cannot be multiplied (1x3 and 4x2))."
    assert one_line(ValueError("line one\n  line two")) == "ValueError: line one"
    assert one_line(MemoryError()) == "MemoryError"
    assert one_line(CorruptFile("Bad  file.", "Try another.")) == "Bad file. Try another."
    long = one_line("x" * 1000, limit=250)
    assert len(long) == 250 and long.endswith("…")
    assert len(one_line("y" * 1000)) == errors.LIMIT


def test_a_real_torchscript_error_gives_its_cause():
    torch = pytest.importorskip("torch")

    class Mm(torch.nn.Module):
        def forward(self, x):
            return torch.mm(x, torch.ones(4, 2))

    with pytest.raises(RuntimeError) as info:
        torch.jit.script(Mm())(torch.zeros(1, 3))
    assert "TorchScript interpreter" in str(info.value)
    assert one_line(info.value) == "RuntimeError: mat1 and mat2 shapes cannot be multiplied (1x3 and 4x2)"


def test_each_surface_gives_the_same_line():
    """The worker's job error, the report's failed section, the API's body and the CLI's stderr."""
    from explain.report.document import Section

    exc = RuntimeError(TORCHSCRIPT)
    line = one_line(exc)
    assert Section.failed("Attributions", exc).error == line
    assert Section.failed("Attributions", TORCHSCRIPT).error == one_line(TORCHSCRIPT)


def test_the_cli_maps_errors_through_the_table(monkeypatch, capsys):
    from explain.cli import attention as attention_cli
    from explain.cli import main

    for exc, code, prefix in [(UsageError("bad flag"), 2, "error: bad flag"), (NotFound("no run"), 2, "error: no run"),
                              (CorruptFile("bad"), 3, "refused: bad"), (PermissionDenied("no"), 3, "error: no"),
                              (RuntimeError(TORCHSCRIPT), 3, "error: attention failed (RuntimeError: mat1 and mat2")]:
        def explode(args, exc=exc):
            raise exc

        monkeypatch.setattr(attention_cli, "run", explode)
        assert main(["attention", "m.pt", "--inputs", "x.npy", "--out", "a.npz"]) == code == exit_code(exc)
        assert capsys.readouterr().err.startswith(prefix)


#: modules that turn failures into lines or codes: each goes through explain.errors
CALLERS = {
    "explain/cli/__init__.py": {"one_line", "exit_code"},
    "explain/service/api.py": {"one_line", "http_status"},
    "explain/service/worker.py": {"one_line"},
    "explain/report/document.py": {"one_line"},
    "explain/report/sections.py": {"one_line"},
    "explain/loading/source.py": {"one_line"},
    "explain/loading/loader.py": {"one_line"},
    "explain/loading/model_host.py": {"one_line"},
    "ui/state.py": {"one_line"},
}


@pytest.mark.parametrize("path", sorted(CALLERS))
def test_every_caller_imports_the_one_function(path):
    tree = ast.parse((ROOT / path).read_text())
    names = {a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module == "explain.errors"
             for a in node.names}
    assert CALLERS[path] <= names, f"{path} should import {CALLERS[path] - names} from explain.errors"


def test_no_copy_of_one_line_or_the_code_table_is_left():
    """No second `one_line` / `first_line`, no exception's first line taken or cut by hand, no status mapping by
    hand."""
    copies = re.compile(r"def _?(one_line|first_line)\(\s*(exc|text: str, limit)|str\(exc\)[^\n]*\.splitlines\(\)"
                        r"|str\((exc|err|error|message)\)\[:\d+\]"
                        r"|isinstance\(exc, (PermissionDenied|NotFound|QueueFull)\)")
    found = []
    for folder in ("explain", "ui", "pages"):
        for path in (ROOT / folder).rglob("*.py"):
            if path == ROOT / "explain" / "errors.py":
                continue
            for number, text in enumerate(path.read_text().splitlines(), 1):
                if copies.search(text):
                    found.append(f"{path.relative_to(ROOT)}:{number}: {text.strip()}")
    assert not found, "\n".join(found)


def test_errors_stays_light():
    tree = ast.parse((ROOT / "explain" / "errors.py").read_text())
    imported = {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"__future__", "re"}
    assert issubclass(QueueFull, GlassboxError) and issubclass(CorruptFile, InputRefused)
