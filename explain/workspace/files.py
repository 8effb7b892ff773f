"""The workspace's files belong to the account that runs Glassbox, and to nobody else.

``GLASSBOX_HOME`` holds the database (every saved run, comment, password hash and token
digest), the blobs (uploaded models, inputs, results) and the key that signs sign-in cookies:
a reader of any of them reads the team's work or signs in as anyone. So folders are created
``0700`` and files ``0600`` (the SQLite database first, so its ``-wal`` / ``-shm`` / ``-journal``
files, which SQLite creates with the database file's mode, are too), whatever the umask, and a
workspace created before this rule (a ``0755`` home, a ``0644`` database, ``0755`` blob folders
with ``0644`` blobs) is tightened when it is opened. Tightening only removes group and other bits; a file that is not ours to change is left
as it is with a warning in the log.
"""
from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("glassbox.workspace")

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
#: What SQLite keeps next to a database file.
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")
#: Files of ``GLASSBOX_HOME`` besides the database and the blobs.
HOME_FILES = ("session_key",)


def tighten(path: Path, mode: int) -> bool:
    """Take from ``path`` every permission bit ``mode`` does not have (a missing path is fine);
    True when it had some."""
    try:
        current = stat.S_IMODE(os.stat(path).st_mode)
        if current & ~mode:
            os.chmod(path, current & mode)
            return True
    except FileNotFoundError:
        pass
    except PermissionError as exc:
        log.warning("Could not make %s private to its owner (%s).", path, exc)
    return False


def private_tree(folder: Path) -> None:
    """A folder of folders of files (the blob store) private: each subfolder that was not is
    tightened with every file in it. A store already private costs one ``stat`` per subfolder."""
    with os.scandir(folder) as entries:
        subfolders = [Path(e.path) for e in entries if e.is_dir(follow_symlinks=False)]
    for sub in subfolders:
        if tighten(sub, PRIVATE_DIR):
            with os.scandir(sub) as files:
                for entry in files:
                    if entry.is_file(follow_symlinks=False):
                        tighten(Path(entry.path), PRIVATE_FILE)


def private_dir(path: Path) -> Path:
    """``path`` as a folder only its owner may enter: created ``0700``, or tightened to it."""
    path = Path(path)
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    tighten(path, PRIVATE_DIR)
    return path


def private_file(path: Path) -> Path:
    """``path`` as a file only its owner may read: created empty ``0600`` if missing, else tightened."""
    path = Path(path)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE))
    except FileExistsError:
        tighten(path, PRIVATE_FILE)
    return path


def private_sqlite(database: Path) -> None:
    """A SQLite database file and the files SQLite keeps beside it, private; a missing folder is
    created ``0700`` (an existing one is the operator's choice, unless it is ``GLASSBOX_HOME``)."""
    database = Path(database).expanduser()
    if not database.parent.exists():
        private_dir(database.parent)
    private_file(database)
    for suffix in SQLITE_SIDE_FILES:
        tighten(database.with_name(database.name + suffix), PRIVATE_FILE)


def private_home(home: Path) -> Path:
    """``GLASSBOX_HOME`` private: the folder, its ``blobs/`` folders and its key files."""
    home = private_dir(home)
    for name in HOME_FILES:
        tighten(home / name, PRIVATE_FILE)
    return home
