"""Crafted TorchScript and .pt2 files must never touch the filesystem (security issue 9).

Every uploaded TorchScript archive is checked statically (`explain.loading.script_check`)
and every .pt2 graph against the same operator allowlist (`explain.loading.op_allowlist`)
before torch loads anything. Each attack here is a working payload on torch 2.13:
the tests check it is refused by name and that its victim file is untouched.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from explain.errors import CorruptFile, UnsafeFile
from explain.loading.loader import load_model
from explain.loading.script_check import check_torchscript_archive
from explain.spec import SPEC_FILENAME, InputSpec

ROOT = Path(__file__).resolve().parent.parent
SPEC = InputSpec("tabular", (4,), name="evil")
VICTIM_BYTES = b"precious data\n"


@pytest.fixture
def victim(tmp_path) -> Path:
    """A file the payloads try to overwrite or read."""
    path = tmp_path / "victim.txt"
    path.write_bytes(VICTIM_BYTES)
    return path


def _untouched(victim: Path, marker: Path | None = None) -> None:
    assert victim.read_bytes() == VICTIM_BYTES
    assert marker is None or not marker.exists()


def _script_bytes(module: nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buf, _extra_files={SPEC_FILENAME: SPEC.to_json()})
    return buf.getvalue()


class Relu(nn.Module):
    """A harmless module whose code an attacker edits (``torch.relu(x)`` is the placeholder)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)


def _edit_code(data: bytes, old: str, new: str) -> bytes:
    """Replace text in the archive's code files, as an attacker with a zip tool would."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            body = zin.read(info)
            if info.filename.endswith(".py"):
                body = body.replace(old.encode(), new.encode())
            zout.writestr(info.filename, body)
    return out.getvalue()


# --------------------------------------------------------------------------
# TorchScript payloads scripted with torch.jit.script
# --------------------------------------------------------------------------
class FromFileWriter(nn.Module):
    """forward() maps the victim writable and overwrites it."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.from_file(self.path, shared=True, size=4, dtype=torch.uint8)
        return x + t.fill_(65).sum().float() * 0


class FromFileReader(nn.Module):
    """forward() reads any readable file into the output."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.from_file(self.path, shared=False, size=4, dtype=torch.uint8)
        return x + t.float().sum()


class SetStateWriter(nn.Module):
    """torch.jit.load itself runs __setstate__, which overwrites the victim."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.w = torch.ones(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.w

    @torch.jit.export
    def __getstate__(self) -> tuple[str, torch.Tensor, bool]:
        return (self.path, self.w, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, torch.Tensor, bool]) -> None:
        self.path = state[0]
        self.training = state[2]
        t = torch.from_file(self.path, shared=True, size=4, dtype=torch.uint8)
        self.w = state[1] + t.fill_(66).sum().float() * 0


class Saver(nn.Module):
    """forward() writes a file with torch.save (TorchScript compiles it to aten::save)."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.save(x, self.path)
        return x


def test_from_file_write_in_forward_is_refused_before_loading(victim):
    with pytest.raises(UnsafeFile, match="aten::from_file") as info:
        load_model(_script_bytes(FromFileWriter(str(victim))), filename="evil.pt")
    assert "torch.export" in str(info.value)  # the hint says what to upload instead
    _untouched(victim)


def test_from_file_write_in_scripted_setstate_is_refused_before_loading(victim):
    with pytest.raises(UnsafeFile, match="aten::from_file"):
        load_model(_script_bytes(SetStateWriter(str(victim))), filename="evil.pt")
    _untouched(victim)


def test_from_file_read_is_refused(victim):
    with pytest.raises(UnsafeFile, match="aten::from_file"):
        load_model(_script_bytes(FromFileReader(str(victim))), filename="evil.pt")
    _untouched(victim)


def test_torch_save_in_forward_is_refused(tmp_path, victim):
    marker = tmp_path / "written.pt"
    with pytest.raises(UnsafeFile, match="aten::save"):
        load_model(_script_bytes(Saver(str(marker))), filename="evil.pt")
    _untouched(victim, marker)


def test_any_setstate_is_refused_even_without_operators():
    class Stateful(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.ones(2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.w

        @torch.jit.export
        def __getstate__(self) -> tuple[torch.Tensor, bool]:
            return (self.w, self.training)

        @torch.jit.export
        def __setstate__(self, state: tuple[torch.Tensor, bool]) -> None:
            self.w = state[0]
            self.training = state[1]

    with pytest.raises(UnsafeFile, match="__getstate__|__setstate__"):
        check_torchscript_archive(_script_bytes(Stateful()))


@torch.library.custom_op("glassbox_evil::touch", mutates_args=())
def _touch(x: torch.Tensor, path: str) -> torch.Tensor:
    Path(path).write_bytes(b"pwned")
    return x.clone()


class Custom(nn.Module):
    """forward() calls an operator registered with torch.library (it writes a file)."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.glassbox_evil.touch(x, self.path)


def test_custom_namespace_operator_is_refused(tmp_path, victim):
    marker = tmp_path / "touched"
    with pytest.raises(UnsafeFile, match="glassbox_evil::touch"):
        load_model(_script_bytes(Custom(str(marker))), filename="evil.pt")
    _untouched(victim, marker)


# --------------------------------------------------------------------------
# TorchScript payloads written into the code by hand
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "code, named",
    [
        ('torch.save(x, "{m}")', "aten::save"),
        ('torch.load("{v}")', "aten::load"),
        ('torch.from_file("{v}", True, 4, dtype=0)', "aten::from_file"),
        ('torch.autograd.from_file("{v}", True, 4, dtype=0)', "aten::from_file"),
        ('ops.aten.from_file("{v}", True, 4, dtype=0)', "aten::from_file"),
        ('torch.ops.aten.from_file("{v}", True, 4, dtype=0)', "aten::from_file"),
        ("ops.foo.bar(x)", "foo::bar"),
        ("torch.ops.foo.bar(x)", "foo::bar"),
        ("ops.prim.Print(x)", "prim::Print"),
        ("torch.set_(x, torch.untyped_storage(x))", "aten::set_"),
        ("torch.relu(x).untyped_storage()", "untyped_storage"),
        ('getattr(x, "storage")()', "storage"),
        ("torch.data_ptr(x)", "aten::data_ptr"),
        ("torch.empty([4])", "aten::empty"),
        ("torch.manual_seed(0)", "aten::manual_seed"),
        ("print(x)", "'print'"),
        ("fork(torch.relu, x)", "'fork'"),
        ("__torch__.torch.classes.foo.Bar(x)", "__torch__.torch.classes.foo.Bar"),
        ("__torch__.os.system(x)", "__torch__.os.system"),
        ("[torch.relu(y) for y in [x]][0]", "ListComp"),
        ("(lambda y: y)(x)", "Lambda"),
        ("eval(x)", "'eval'"),
    ],
)
def test_hand_written_payloads_are_refused_by_name(tmp_path, victim, code, named):
    marker = tmp_path / "marker"
    data = _edit_code(_script_bytes(Relu()), "torch.relu(x)", code.format(m=marker, v=victim))
    with pytest.raises(UnsafeFile, match=named.replace("(", r"\(").replace(")", r"\)")):
        load_model(data, filename="evil.pt")
    _untouched(victim, marker)


@pytest.mark.parametrize(
    "old, new, named",
    [
        ("    return torch.relu(x)", "    t = torch\n    return t.relu(x)", "'torch' as a value"),
        ("    return torch.relu(x)", "    f = x.untyped_storage\n    return f()", "untyped_storage"),
        ("    return torch.relu(x)", "    fork = torch.relu\n    return fork(x)", "reserved name 'fork'"),
        ("    return torch.relu(x)", "    y = z\n    z = x\n    return y", "'z' before binding"),
        ("  def forward(", "  def __setstate__(self, s: int) -> NoneType:\n    return None\n  def forward(",
         "__setstate__"),
        ("class Relu(Module):", "import os\nclass Relu(Module):", "Import"),
        ("class Relu(Module):", "@torch.jit.unused\nclass Relu(Module):", "decorators"),
        ("    return torch.relu(x)", '    return torch.relu(x) # \\\n    """', "line continuation"),
        ("    return torch.relu(x)", "    return torch.relu(x)\r    torch.save(x, 'f')", "control character"),
    ],
)
def test_code_tricks_are_refused(old, new, named):
    data = _edit_code(_script_bytes(Relu()), old, new)
    with pytest.raises(UnsafeFile, match=named):
        check_torchscript_archive(data)


def test_pickled_globals_other_than_tensor_helpers_are_refused(victim):
    def edit(data: bytes) -> bytes:
        out = io.BytesIO()
        with zipfile.ZipFile(io.BytesIO(data)) as zin, zipfile.ZipFile(out, "w") as zout:
            for info in zin.infolist():
                body = zin.read(info)
                if info.filename.endswith("data.pkl"):
                    body = body.replace(b"collections\nOrderedDict\n", b"posix\nsystem\n")
                zout.writestr(info.filename, body)
        return out.getvalue()

    data = edit(_script_bytes(nn.Linear(4, 2)))
    with pytest.raises(UnsafeFile, match="posix.system"):
        load_model(data, filename="evil.pt")
    _untouched(victim)


def test_archives_without_code_duplicate_entries_and_extra_files():
    clean = _script_bytes(Relu())
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(clean)) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            if "/code/" not in info.filename:
                zout.writestr(info.filename, zin.read(info))
    with pytest.raises(CorruptFile, match="no code"):
        check_torchscript_archive(out.getvalue())
    evil = _edit_code(clean, "torch.relu(x)", "torch.save(x, 'f')")
    with zipfile.ZipFile(io.BytesIO(evil)) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".py") and b"torch.save" in zf.read(n))
        body = zf.read(name)
    dup = io.BytesIO(clean)
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(dup, "a") as zf:
        zf.writestr(name, body)  # two entries with one name: whichever torch reads, both are checked
    with pytest.raises(UnsafeFile, match="aten::save"):
        check_torchscript_archive(dup.getvalue())
    extra = io.BytesIO(clean)
    with zipfile.ZipFile(extra, "a") as zf:  # extra files are data; a folder named extra inside code/ is code
        zf.writestr(name.split("/")[0] + "/extra/notes.py", "import os\n")
    check_torchscript_archive(extra.getvalue())
    with zipfile.ZipFile(extra, "a") as zf:
        zf.writestr(name.split("/")[0] + "/code/__torch__/extra/x.py", "import os\n")
    with pytest.raises(UnsafeFile, match="Import"):
        check_torchscript_archive(extra.getvalue())


# --------------------------------------------------------------------------
# .pt2 graphs
# --------------------------------------------------------------------------
def _edit_pt2(tmp_path: Path, edit, name: str = "evil.pt2") -> Path:
    """Copy the cancer sample's .pt2 with its program JSON edited (``edit(program) -> None``)."""
    src = ROOT / "sample_models" / "cancer" / "model.pt2"
    dst = tmp_path / name
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            body = zin.read(info)
            if info.filename.endswith("models/model.json"):
                program = json.loads(body)
                edit(program)
                body = json.dumps(program).encode()
            zout.writestr(info.filename, body)
    return dst


@pytest.mark.parametrize(
    "target",
    ["torch.ops.aten.save.default", "torch.ops.aten.from_file.default", "torch.ops.aten.set_.source_Storage",
     "torch.ops.glassbox_evil.touch.default", "torch.ops.higher_order.call_torchbind", "torch.ops.prims.foo.default"],
)
def test_pt2_operators_outside_the_allowlist_are_refused_by_name(tmp_path, victim, target):
    def edit(program):
        program["graph_module"]["graph"]["nodes"][0]["target"] = target

    with pytest.raises(UnsafeFile, match=target.replace(".", r"\.")):
        load_model(_edit_pt2(tmp_path, edit))
    _untouched(victim)


BOMB_CHILD = r"""
import json, sys, time, zipfile
from explain.errors import UnsafeFile
from explain.loading.loader import load_model
for path in sys.argv[1:]:
    start = time.perf_counter()
    try:
        load_model(path)
        outcome = "loaded"
    except UnsafeFile as exc:
        outcome = "refused: " + exc.reason
    print(json.dumps({"path": path, "seconds": time.perf_counter() - start, "outcome": outcome}), flush=True)
"""


def test_pt2_shape_expression_bombs_are_refused_within_two_seconds(tmp_path):
    paths = []
    for i, bomb in enumerate(["s77 + 0*9**9**8", "9**9**9", "Pow(9, Pow(9, 9))"]):
        def edit(program, bomb=bomb):
            text = json.dumps(program).replace("Symbol('s77', positive=True, integer=True)", bomb)
            program.clear()
            program.update(json.loads(text))
            (bounds,) = program["range_constraints"].values()
            program["range_constraints"] = {bomb: bounds}

        paths.append(str(_edit_pt2(tmp_path, edit, f"bomb{i}.pt2")))
    # a child process: were the check missing, sympy would hold the GIL here forever
    proc = subprocess.run([sys.executable, "-c", BOMB_CHILD, *paths], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(results) == 3, proc.stderr[-2000:]
    for result in results:
        assert result["outcome"].startswith("refused") and "shape expression" in result["outcome"], result
        assert result["seconds"] < 2.0, result


# --------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------
def test_cli_inspect_refuses_the_payload_with_exit_3(tmp_path, victim):
    evil = tmp_path / "evil.pt"
    evil.write_bytes(_script_bytes(FromFileWriter(str(victim))))
    proc = subprocess.run([sys.executable, "-m", "explain", "inspect", str(evil)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)), check=False)
    assert proc.returncode == 3, proc.stderr
    assert "aten::from_file" in proc.stderr and proc.stdout.strip() == ""
    assert len(proc.stderr.strip().splitlines()) == 1
    _untouched(victim)
