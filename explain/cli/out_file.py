"""Every ``--out`` of the command line is written whole or not at all.

A subcommand writes to a temporary file next to the destination and renames
it into place only when writing finished (``os.replace`` is atomic on one file
system): a crash, an interrupt or a full disk never leaves a half-written
file, and an existing file keeps its old content until the new one is whole.
"""
from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from explain.errors import UsageError


@contextlib.contextmanager
def replace_atomically(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path next to ``path``, renamed onto it when the block succeeds.

    The temporary name keeps ``path``'s suffix (``np.savez`` would otherwise
    append ``.npz``) and starts with a dot. On any failure it is removed and the
    destination is left as it was.

    Args:
        path: the destination; missing parent folders are created.

    Yields:
        the temporary path to write to.

    Raises:
        UsageError: the folder cannot be created or the file cannot be written.
    """
    out = Path(path)
    tmp = out.with_name(f".{out.stem}.{secrets.token_hex(4)}.tmp{out.suffix}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, out)
    except OSError as exc:
        raise UsageError(f"Cannot write {out} ({exc.strerror or exc}).") from None
    finally:
        with contextlib.suppress(OSError):  # gone already, or its folder never existed
            tmp.unlink()
