"""Content-addressed file storage: uploaded files and result arrays under ``blobs/``.

A blob's name is the sha256 of its bytes (`explain.digest.digest_bytes`), in a two-character
fan-out folder (``blobs/ab/abcdef...``). A write goes to a temporary name in the same
folder, is flushed to disk, then renamed: a crash leaves at most a ``.tmp`` file, never a
half blob under a real name. The same bytes are stored once. The workspace writes a blob
*before* the row that names it, so no row ever points at a missing blob. Folders are ``0700``
and blobs ``0600``: only the account running Glassbox reads them (`explain.workspace.files`).
"""
from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np

from explain.digest import digest_bytes
from explain.errors import CorruptFile, NotFound
from explain.workspace.files import PRIVATE_DIR, private_dir, private_tree


class BlobStore:
    def __init__(self, root: Path):
        self.root = private_dir(Path(root))
        private_tree(self.root)  # a store made before folders were private: tightened, blobs too

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise NotFound(f"No stored file {sha256[:80]!r}.")
        return self.root / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def put(self, data: bytes) -> str:
        """Store ``data`` (once); its sha256."""
        sha = digest_bytes(data)
        final = self.path(sha)
        if final.is_file():
            return sha
        final.parent.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
        # mkstemp creates 0600 (whatever the umask), and the rename keeps the mode
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{sha[:12]}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return sha

    def get(self, sha256: str) -> bytes:
        path = self.path(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise NotFound(f"The stored file {sha256[:12]}… is missing from {self.root}.") from None
        if digest_bytes(data) != sha256:
            raise CorruptFile(f"The stored file {sha256[:12]}… does not match its sha256 (damaged on disk).")
        return data

    # -- arrays --------------------------------------------------------------
    def put_arrays(self, arrays: dict[str, np.ndarray]) -> str:
        """Store named arrays as one ``.npz``; its sha256. None values are left out; an array
        that would need a pickle (dtype object) is refused, so reading never unpickles."""
        kept = {k: np.asarray(v) for k, v in arrays.items() if v is not None}
        for key, value in kept.items():
            if value.dtype == object:
                raise TypeError(f"Array {key!r} has dtype object; store numbers or strings.")
        buf = io.BytesIO()
        np.savez_compressed(buf, **kept)
        return self.put(buf.getvalue())

    def get_arrays(self, sha256: str) -> dict[str, np.ndarray]:
        with np.load(io.BytesIO(self.get(sha256)), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
