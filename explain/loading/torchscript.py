"""TorchScript archives, opened first in the sandbox.

``torch.jit.load`` has no safe mode, its C++ deserializer can crash or hang on
a malformed archive, and a TorchScript program can allocate or loop as much as
it likes, depending on the batch size. So Glassbox opens the bytes first in a
locked-down child process (`explain.loading.sandbox`: no file writes, no network,
unprivileged, memory / CPU / wall-clock limits) that loads the archive and,
when the spec is known, runs forward and backward passes at every batch size
the engine may use (`explain.loading.vetting`). Only when the child succeeds is
the archive loaded, again in a child: the model's own process
(`explain.loading.model_process`), where it stays and runs; the server never
calls ``torch.jit.load``. A crash, a bomb or a timeout costs the child, never
the server.
"""
from __future__ import annotations

from explain.loading.model_process import load_remote_parts
from explain.loading.script_check import check_torchscript_archive
from explain.loading.source import MAX_SPEC_BYTES, Archive, LoadedParts, find_member, open_archive, spec_from_text
from explain.loading.vetting import VettingMemory, probe_torchscript
from explain.spec import SPEC_FILENAME, InputSpec


def is_torchscript(names: list[str]) -> bool:
    """True for a zip whose members look like a TorchScript archive."""
    return find_member(names, "constants.pkl") is not None or any("/code/" in n for n in names)


def load_torchscript_parts(data: bytes, spec: InputSpec | None, archive: Archive | None = None,
                           vetted: VettingMemory | None = None) -> LoadedParts:
    """Probe the archive in a sandboxed child, then load it in its own model process.

    Args:
        data: the archive bytes.
        spec: the caller's spec; when None the embedded ``glassbox_spec.json``
            (if any) is used for the child's test forward pass.
        archive: ``data`` already opened (`explain.loading.source.open_archive`).
        vetted: vetting outcomes kept across processes (`explain.loading.vetting.probe_graph`).

    Raises:
        CorruptFile: the child crashed or could not load the archive.
        UnsafeFile: the child ran past its time limit.
        TooLarge: the child ran out of its memory limit.
        IncompatibleInput: the model fails on a random input of the spec's shape.
    """
    archive = archive or open_archive(data, "TorchScript")
    member = archive.find(f"extra/{SPEC_FILENAME}")
    embedded = spec_from_text(archive.read(member, MAX_SPEC_BYTES)) if member else None
    check_torchscript_archive(archive.zf)  # operators on the allowlist before any torch.jit.load, child included
    probe = probe_torchscript(data, spec or embedded, vetted)
    return load_remote_parts(data, "torchscript", embedded, probe)

