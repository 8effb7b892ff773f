"""The workspace's files are its owner's alone (`explain.workspace.files`): GLASSBOX_HOME and the blob
folders 0700, the SQLite database with its -wal / -shm files, the blobs and the cookie key 0600, whatever
the umask; and an older workspace (a 0755 home, a 0644 database) is tightened when it is opened."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from explain.workspace import Actor, RunRecord, open_workspace
from explain.workspace.files import private_file, tighten
from sample_models import sample_registry_files

OP = Actor("cli:tester", operator=True)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    """Run with a permissive umask (what a careless service account might have); restored after."""
    old = os.umask(0o000)
    yield
    os.umask(old)


def _use(ws) -> None:
    """Write something of each kind: rows (so the -wal file exists), blobs, the session key."""
    ws.seed(sample_registry_files())
    ws.runs.save(OP, RunRecord(page="output", model="cancer", version=1, title="t",
                               inputs={"inputs": np.arange(6, dtype=np.float32)}))
    ws.session_key()


def _private_files(home: Path, db: Path) -> dict[str, int]:
    blobs = home / "blobs"
    fanout = [p for p in blobs.iterdir() if p.is_dir()]
    files = [f for d in fanout for f in d.iterdir()]
    assert fanout and files
    modes = {"home": _mode(home), "blobs": _mode(blobs), "session_key": _mode(home / "session_key"),
             "db": _mode(db)}
    for suffix in ("-wal", "-shm"):
        assert Path(f"{db}{suffix}").exists()  # while the workspace is open
        modes[suffix] = _mode(Path(f"{db}{suffix}"))
    modes.update({f"blobs/{d.name}": _mode(d) for d in fanout})
    modes.update({f"blob {f.name[:8]}": _mode(f) for f in files})
    return modes


def _want(modes: dict[str, int]) -> dict[str, int]:
    folders = {"home", "blobs"} | {k for k in modes if k.startswith("blobs/")}
    return {k: 0o700 if k in folders else 0o600 for k in modes}


def test_a_new_workspace_is_created_private_whatever_the_umask(tmp_path, umask, monkeypatch):
    home = tmp_path / "glassbox"
    monkeypatch.setenv("GLASSBOX_HOME", str(home))
    monkeypatch.delenv("GLASSBOX_DATABASE_URL", raising=False)
    monkeypatch.delenv("GLASSBOX_SESSION_KEY", raising=False)
    ws = open_workspace()  # the default: SQLite in GLASSBOX_HOME
    try:
        _use(ws)
        modes = _private_files(home, home / "glassbox.db")
        assert modes == _want(modes)
    finally:
        ws.close()


def test_an_older_open_workspace_is_tightened_when_opened(tmp_path, monkeypatch):
    home, db = tmp_path / "home", tmp_path / "elsewhere" / "team.db"
    url = f"sqlite:///{db}"
    monkeypatch.delenv("GLASSBOX_SESSION_KEY", raising=False)
    ws = open_workspace(url, home=home)
    _use(ws)
    # as a workspace made before the rule looked: readable by everyone
    blobs = home / "blobs"
    loose = [home, blobs, *blobs.iterdir(), *blobs.glob("*/*"), home / "session_key", db,
             Path(f"{db}-wal"), Path(f"{db}-shm")]
    for path in loose:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    assert _mode(home) == 0o755 and _mode(db) == 0o644
    again = open_workspace(url, home=home)
    try:
        modes = _private_files(home, db)
        assert modes == _want(modes)
        assert again.runs.list(OP)  # still the same workspace
    finally:
        again.close()
        ws.close()


def test_a_custom_databases_existing_folder_is_left_as_it_is(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    ws = open_workspace(f"sqlite:///{shared / 'team.db'}", home=tmp_path / "home")
    try:
        assert _mode(shared) == 0o755 and _mode(shared / "team.db") == 0o600
    finally:
        ws.close()
    fresh = tmp_path / "new" / "db"
    ws = open_workspace(f"sqlite:///{fresh / 'team.db'}", home=tmp_path / "home")
    try:
        assert _mode(fresh) == 0o700  # a folder it creates is private
    finally:
        ws.close()


def test_tightening_only_removes_bits_and_never_fails_on_a_missing_file(tmp_path):
    path = private_file(tmp_path / "k")
    assert _mode(path) == 0o600
    os.chmod(path, 0o400)
    tighten(path, 0o600)
    assert _mode(path) == 0o400  # never widened
    tighten(tmp_path / "missing", 0o600)
