"""Attack A1 (stop 31): a save killed between its blob and its row left a stored file nothing names, for
ever (the last stop's attackers counted 2 after 12 SQLite kills, 7 after 10 PostgreSQL kills). A start's
recovery now sweeps them (`Workspace.sweep_blobs` from `recover_now`), past an age, so a save in flight
keeps its blob. The children are killed exactly between blob and row (and inside a blob's write), so
every run of the test has the orphans to sweep."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
from sqlalchemy import String

from explain.workspace import Actor, RunRecord, open_workspace
from explain.workspace.schema import BLOB_COLUMNS, NOT_BLOBS, Base
from tests.test_workspace_stress import _child, arrays_for

pytest_plugins = ["tests.workspace_db"]

OP = Actor("cli:tester", operator=True)

#: Saves one run whole, then a second killed where ``STOP`` says: "row" after both blobs are written and
#: before the row, "write" inside a blob's write (fsync: only the blob store calls os.fsync here).
KILLED_SAVER = '''
import os, sys, time
from explain.workspace import Actor, RunRecord, open_workspace
from explain.workspace.runs import Runs
from tests.test_workspace_stress import arrays_for
url, home, prefix, stop = sys.argv[1:5]
ws = open_workspace(url, home=home)

def save(i):
    title = f"{prefix}-{i}"
    inputs, results = arrays_for(title, 1000)
    return ws.runs.save(Actor("eddie"), RunRecord(page="output", model="m", version=1, title=title, method="saliency",
                                                  params={"title": title, "n": 1000}, target=i, inputs=inputs,
                                                  results=results, summary={"i": i}))

print("saved", save(0).id, flush=True)

def hang(*args, **kwargs):
    print("killing point", flush=True)
    time.sleep(600)

if stop == "row":
    Runs._insert = hang
else:
    os.fsync = hang
save(1)
'''


def _files(home: Path) -> set[str]:
    return {p.name for p in (home / "blobs").rglob("*") if p.is_file()}


def _age_everything(home: Path, seconds: float) -> None:
    then = time.time() - seconds
    for path in (home / "blobs").rglob("*"):
        if path.is_file():
            os.utime(path, (then, then))


def _recover(ws) -> list:
    """`recover_now`, and its sweep (a thread of its own) waited for."""
    import threading

    from explain.service.worker import recover_now

    back = recover_now(ws)
    for thread in threading.enumerate():
        if thread.name == "glassbox-blob-sweep":
            thread.join(120)
    return back


def test_a_restart_sweeps_what_killed_saves_left_and_every_run_still_opens(db_url, tmp_path):

    home = tmp_path / "home"
    ws = open_workspace(db_url, home=home)
    ws.users.add(OP, "alice", "admin")
    ws.users.add(OP, "eddie", "editor")
    ws.registry.register(OP, "m", b"model-one", "m.safetensors")
    ws.close()
    saved = []
    for k, stop in enumerate(("row", "write")):
        child = _child(KILLED_SAVER, db_url, str(home), f"k{k}", stop, hang_guard_s=300)
        try:
            first = child.stdout.readline().split()
            assert first[:1] == ["saved"], child.stderr.read()[-800:]
            saved.append(first[1])
            assert child.stdout.readline().strip() == "killing point", child.stderr.read()[-800:]
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
            child.stdout.close()
            child.stderr.close()

    ws = open_workspace(db_url, home=home)  # the restart
    try:
        named = {ws.registry.version(OP, "m", 1).sha256}
        for run_id in saved:
            info = ws.runs.info(OP, run_id)
            inputs, results = arrays_for(info.title, 1000)
            named |= {ws.core.blobs.put_arrays(inputs), ws.core.blobs.put_arrays(results)}  # the same bytes
        orphans = _files(home) - named
        assert len([n for n in orphans if n.endswith(".tmp")]) == 1  # the killed write
        assert len([n for n in orphans if not n.endswith(".tmp")]) >= 2  # the killed row's two blobs
        assert _recover(ws) == [] and _files(home) == named | orphans  # young files: perhaps a save in flight
        _age_everything(home, 7200)
        _recover(ws)  # a start an hour later
        assert _files(home) == named  # no orphan left, every named blob kept
        assert [r.id for r in ws.runs.list(OP)] and sorted(r.id for r in ws.runs.list(OP)) == sorted(saved)
        for run_id in saved:
            run = ws.runs.open(OP, run_id)
            inputs, results = arrays_for(run.info.title, 1000)
            assert all(np.array_equal(run.inputs[key], inputs[key]) for key in inputs)
            assert all(np.array_equal(run.results[key], results[key]) for key in results)
        assert ws.registry.file(OP, "m", 1)[0] == b"model-one"
    finally:
        ws.close()


def test_a_blob_stored_again_or_in_flight_is_kept(workspace, tmp_path):
    """The sweep's races with a save: bytes stored before and no longer named, saved again (`put` touches
    them); a blob whose row is not written yet; a blob put while the sweep runs (renamed aside, then touched);
    a sweep killed with a blob aside."""
    ws, home = workspace, tmp_path / "home"
    ws.users.add(OP, "alice", "admin")
    ws.registry.register(OP, "m", b"model-one", "m.safetensors")
    x = {"x": np.arange(6, dtype=np.float32)}
    orphan = ws.core.blobs.put_arrays(x)
    _age_everything(home, 7200)
    again = ws.core.blobs.put_arrays(x)  # a new save of the same arrays: its row comes next
    assert again == orphan and ws.sweep_blobs(3600) == []
    run = ws.runs.save(OP, RunRecord(page="output", model="m", version=1, title="t", inputs=x, results=x))
    _age_everything(home, 7200)
    assert ws.sweep_blobs(3600) == [] and ws.runs.open(OP, run.id).inputs["x"].tolist() == list(range(6))

    lone = ws.core.blobs.put(b"a blob whose row never came")
    _age_everything(home, 7200)

    def named_while_a_save_reuses_it():  # the sweep has listed the old files; a save touches `lone` now
        assert ws.core.blobs.put(b"a blob whose row never came") == lone
        return {ws.registry.version(OP, "m", 1).sha256, orphan}

    assert ws.core.blobs.sweep(named_while_a_save_reuses_it, 3600) == [] and ws.core.blobs.exists(lone)
    _age_everything(home, 7200)
    path = ws.core.blobs.path(lone)
    aside = path.with_name(f".{lone}.sweep")
    os.rename(path, aside)  # a sweep killed after setting it aside
    assert ws.sweep_blobs(3600) == [] and ws.core.blobs.get(lone) == b"a blob whose row never came"
    _age_everything(home, 7200)
    assert ws.sweep_blobs(3600) == [lone] and not ws.core.blobs.exists(lone) and not aside.exists()
    assert ws.core.blobs.put(b"a blob whose row never came") == lone and ws.core.blobs.exists(lone)  # stored anew


def test_every_sha256_column_is_a_named_blob_or_known_not_to_be():
    columns = {(c.table.name, c.name) for c in BLOB_COLUMNS} | {(c.table.name, c.name) for c in NOT_BLOBS}
    found = {(t.name, c.name) for t in Base.metadata.tables.values() for c in t.columns
             if "sha256" in c.name and isinstance(c.type, String)}
    assert found == columns


def test_two_sweeps_at_once_remove_each_orphan_once_and_keep_the_rest(tmp_path):
    """Two sweeps of one store at once (a server and a worker starting together): each orphan removed
    once, by one of them, and neither fails on a file the other moved."""
    import threading

    from explain.workspace.blobs import BlobStore

    store = BlobStore(tmp_path / "blobs")
    kept = {store.put(f"named {i}".encode()) for i in range(50)}
    orphans = {store.put(f"orphan {i}".encode()) for i in range(300)}
    _age_everything(tmp_path, 7200)
    found, errors = [], []

    def sweep():
        try:
            found.append(store.sweep(lambda: kept, 3600))
        except Exception as exc:  # collected: the assertion names it
            errors.append(repr(exc))

    threads = [threading.Thread(target=sweep) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    removed = [name for names in found for name in names]
    assert sorted(removed) == sorted(orphans)  # each once
    assert _files(tmp_path) == kept and all(store.get(sha) for sha in kept)
