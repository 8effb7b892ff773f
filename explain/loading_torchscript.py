"""TorchScript archives, opened first in a sandboxed child process.

``torch.jit.load`` has no safe mode and its C++ deserializer can crash or hang
on a malformed archive. So Glassbox opens the bytes first in a short-lived
child Python (memory and CPU-time limits via ``resource.setrlimit``, a wall
clock timeout), which loads the archive and, when the spec is known, runs one
forward pass on zeros. Only when the child exits cleanly does this process
call ``torch.jit.load`` itself. A crash or a timeout costs the child, never the
server.
"""
from __future__ import annotations

import io
import json
import math
import os
import signal
import subprocess
import sys

import torch

from . import config
from .errors import CorruptFile, IncompatibleInput, TooLarge, UnsafeFile
from .loading_common import LoadedParts, find_member, first_line, open_zip, read_zip_member, spec_from_text
from .spec import SPEC_FILENAME, InputSpec

#: The child's program. argv: memory budget (bytes, on top of what importing torch
#: mapped), CPU seconds, spec JSON or "".
#: Reads the archive from stdin, prints one JSON line, exits 0 only on success.
CHILD_CODE = r"""
import json, sys
data = sys.stdin.buffer.read()
import io, torch
try:  # limits apply to loading and running the model, on top of what importing torch mapped
    import resource
    with open("/proc/self/status") as _fh:
        _vm = next((int(l.split()[1]) * 1024 for l in _fh if l.startswith("VmSize:")), 0)
    for _lim, _val in ((resource.RLIMIT_AS, _vm + int(sys.argv[1])), (resource.RLIMIT_CPU, int(sys.argv[2]))):
        try:
            resource.setrlimit(_lim, (_val, _val))
        except (ValueError, OSError):
            pass
except (ImportError, OSError):
    pass
phase = "load"
try:
    torch.set_num_threads(1)
    module = torch.jit.load(io.BytesIO(data), map_location="cpu")
    shape = None
    spec = json.loads(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[3] else None
    if spec:
        phase = "forward"
        dtype = torch.int64 if str(spec.get("dtype", "float32")).startswith("int") else torch.float32
        x = torch.zeros((1, *spec["input_shape"]), dtype=dtype)
        with torch.no_grad():
            out = module.eval()(x)
        shape = list(out.shape) if isinstance(out, torch.Tensor) else None
    print(json.dumps({"ok": True, "output_shape": shape}))
except BaseException as exc:
    lines = [l.strip() for l in str(exc).splitlines() if l.strip()] or [""]
    print(json.dumps({"ok": False, "phase": phase, "error": (type(exc).__name__ + ": " + lines[-1])[:300]}))
    sys.exit(1)
"""


def is_torchscript(names: list[str]) -> bool:
    """True for a zip whose members look like a TorchScript archive."""
    return find_member(names, "constants.pkl") is not None or any("/code/" in n for n in names)


def load_torchscript_parts(data: bytes, spec: InputSpec | None) -> LoadedParts:
    """Probe the archive in a sandboxed child, then load it here.

    Args:
        data: the archive bytes.
        spec: the caller's spec; when None the embedded ``glassbox_spec.json``
            (if any) is used for the child's test forward pass.

    Raises:
        CorruptFile: the child crashed or could not load the archive.
        UnsafeFile: the child ran past its time limit.
        TooLarge: the child ran out of its memory limit.
        IncompatibleInput: the model fails on a zero input of the spec's shape.
    """
    zf = open_zip(data, "TorchScript", config.max_upload_bytes() * 2)
    names = zf.namelist()
    member = find_member(names, f"extra/{SPEC_FILENAME}")
    embedded = spec_from_text(read_zip_member(zf, member, "TorchScript")) if member else None
    probe_in_child(data, spec or embedded)
    extra = {SPEC_FILENAME: ""}
    try:
        module = torch.jit.load(io.BytesIO(data), map_location="cpu", _extra_files=extra)
    except Exception as exc:
        raise CorruptFile(f"The TorchScript file cannot be loaded ({first_line(exc)}).") from None
    if embedded is None and extra.get(SPEC_FILENAME):
        embedded = spec_from_text(extra[SPEC_FILENAME])
    return LoadedParts(module.eval(), "torchscript", embedded_spec=embedded)


def probe_in_child(data: bytes, spec: InputSpec | None) -> dict:
    """Load ``data`` with ``torch.jit.load`` in a limited child process.

    Returns:
        The child's report (``{"ok": True, "output_shape": [...] | None}``).
    """
    timeout = config.sandbox_timeout_s()
    argv = [
        sys.executable, "-I", "-c", CHILD_CODE,
        str(config.sandbox_memory_bytes()), str(int(math.ceil(timeout)) + 1),
        json.dumps({"input_shape": list(spec.input_shape), "dtype": spec.dtype}) if spec else "",
    ]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")  # the child never touches a GPU
    try:
        proc = subprocess.run(argv, input=data, capture_output=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise UnsafeFile(
            f"Opening the TorchScript file did not finish within {timeout:.0f} s, so it was stopped.",
            "Upload a torch.export .pt2 or safetensors file instead.",
        ) from None
    report = _parse_report(proc.stdout)
    if proc.returncode == 0 and report.get("ok"):
        return report
    if proc.returncode < 0:
        sig = _signal_name(-proc.returncode)
        if sig == "SIGXCPU":
            raise UnsafeFile("Opening the TorchScript file used up its CPU-time limit, so it was stopped.")
        raise CorruptFile(
            f"The TorchScript file crashed the loader ({sig}); it was opened in a separate "
            "process, so nothing else was affected.",
            "The file is malformed; export the model again.",
        )
    error = str(report.get("error") or first_line(RuntimeError(proc.stderr.decode(errors="replace"))))
    if "alloc" in error.lower() or "MemoryError" in error:
        raise TooLarge(f"The TorchScript model needs more memory than the loader allows ({error}).")
    if report.get("phase") == "forward":
        raise IncompatibleInput(
            f"The TorchScript model fails on an input of shape {[1, *spec.input_shape]} ({error}).",
            "Check the spec's input_shape and dtype.",
        )
    raise CorruptFile(f"The TorchScript file cannot be loaded ({error}).")


def _parse_report(stdout: bytes) -> dict:
    for line in reversed(stdout.decode(errors="replace").strip().splitlines()):
        try:
            report = json.loads(line)
        except ValueError:
            continue
        if isinstance(report, dict):
            return report
    return {}


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
