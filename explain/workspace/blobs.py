"""Content-addressed file storage: uploaded files and result arrays under ``blobs/``.

A blob's name is the sha256 of its bytes (`explain.digest.digest_bytes`), in a two-character
fan-out folder (``blobs/ab/abcdef...``). A write goes to a temporary name in the same
folder, is flushed to disk, then renamed: a crash leaves at most a ``.tmp`` file, never a
half blob under a real name. The same bytes are stored once. The workspace writes a blob
*before* the row that names it, so no row ever points at a missing blob. Folders are ``0700``
and blobs ``0600``: only the account running Glassbox reads them (`explain.workspace.files`).

A process killed between a blob and its row leaves a blob nothing names (or a ``.tmp``): `sweep`
removes those older than an age, so a save in flight keeps its blob. A `put` of bytes already
stored touches the file, so its age is the age of its newest save.
"""
from __future__ import annotations

import io
import os
import tempfile
import time
from collections.abc import Callable, Collection
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
        if not _is_sha(sha256):
            raise NotFound(f"No stored file {sha256[:80]!r}.")
        return self.root / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def put(self, data: bytes) -> str:
        """Store ``data`` (once); its sha256."""
        sha = digest_bytes(data)
        final = self.path(sha)
        try:
            os.utime(final)  # stored already: it is this save's now, so no `sweep` takes it before its row
            return sha
        except FileNotFoundError:  # not stored, or a sweep has just taken it away: written again
            pass
        except PermissionError:  # stored by another account (group-shared store): kept as it is
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

    # -- sweeping ------------------------------------------------------------
    def sweep(self, named: Callable[[], Collection[str]], min_age_s: float) -> list[str]:
        """Remove the blobs that no row names and the temporary files of killed writes, each untouched
        for ``min_age_s`` seconds; the names removed.

        ``named()`` is read after the files are listed, so a row committed before it keeps its blob; a
        blob stored again (`put` touches it) or written after the listing is younger than ``min_age_s``.
        A blob is renamed aside before it is removed and kept when a `put` touched it meanwhile; one a
        killed sweep left aside goes back under its name (the next sweep decides again).
        """
        cutoff = time.time() - min_age_s
        old: list[Path] = []
        for sub in os.scandir(self.root):
            if len(sub.name) != 2 or not sub.is_dir(follow_symlinks=False):
                continue
            with os.scandir(sub.path) as entries:
                old += [Path(e.path) for e in entries
                        if e.is_file(follow_symlinks=False) and e.stat(follow_symlinks=False).st_mtime < cutoff]
        keep = set(named())
        removed = []
        for path in old:
            try:  # a file another sweep (another process) moved meanwhile is that sweep's
                if self._sweep_one(path, keep, cutoff):
                    removed.append(path.name)
            except FileNotFoundError:
                continue
        return removed

    @staticmethod
    def _sweep_one(path: Path, keep: set[str], cutoff: float) -> bool:
        name = path.name
        if name.startswith(".") and name.endswith(_ASIDE):
            if _is_sha(name[1:-len(_ASIDE)]):
                os.replace(path, path.with_name(name[1:-len(_ASIDE)]))
            return False
        if name.endswith(".tmp"):
            path.unlink()
            return True
        if not _is_sha(name) or name in keep:
            return False
        aside = path.with_name(f".{name}{_ASIDE}")
        os.rename(path, aside)  # a `put` from now on writes it again
        if aside.stat().st_mtime >= cutoff:  # a `put` touched it before the rename: its row follows
            os.replace(aside, path)
            return False
        aside.unlink()
        return True


_ASIDE = ".sweep"


def _is_sha(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)
