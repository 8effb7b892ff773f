"""The workspace under abuse, on SQLite and on a real PostgreSQL server: a saving process killed
with SIGKILL at random moments, and eight sessions saving and commenting at once.

Both use child processes (``python -c``) on the same database and blob folder as the test.
The arrays a child saves are derived from the run's title (`ARRAYS`), so the test can tell a
whole run from a damaged one without asking the child.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from explain.workspace import Actor, open_workspace

pytest_plugins = ["tests.workspace_db"]

ROOT = Path(__file__).resolve().parent.parent
OP = Actor("cli:tester", operator=True)

#: Shared by the children and the test: what a run titled ``title`` holds.
ARRAYS = '''
import hashlib
import numpy as np

def arrays_for(title, n):
    rng = np.random.default_rng(int(hashlib.sha256(title.encode()).hexdigest()[:12], 16))
    inputs = {"x": rng.standard_normal(n).astype(np.float32), "title": np.frombuffer(title.encode(), np.uint8)}
    results = {"attr": rng.standard_normal(n).astype(np.float32), "order": rng.permutation(64)}
    return inputs, results
'''
_ns: dict = {}
exec(ARRAYS, _ns)
arrays_for = _ns["arrays_for"]

#: Saves runs ``PREFIX-0``, ``PREFIX-1``, ... until killed; prints each id once it is committed.
SAVER = ARRAYS + '''
import sys
from explain.workspace import Actor, RunRecord, open_workspace
url, home, prefix, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
ws = open_workspace(url, home=home)
print("ready", flush=True)
i = 0
while True:
    title = f"{prefix}-{i}"
    inputs, results = arrays_for(title, n)
    info = ws.runs.save(Actor("eddie"), RunRecord(page="output", model="m", version=1, title=title,
                                                  method="saliency", params={"title": title, "n": n},
                                                  target=i, inputs=inputs, results=results,
                                                  summary={"i": i}))
    print("saved", info.id, title, flush=True)
    i += 1
'''

#: One of eight sessions: registers its own file, saves runs, comments on its own and others' runs.
SESSION = ARRAYS + '''
import json, os, random, sys, time
from explain.workspace import Actor, RunRecord, open_workspace
url, home, k, go, n_runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
ws = open_workspace(url, home=home)
print("ready", flush=True)
me = Actor(f"user{k}")
while not os.path.exists(go):
    time.sleep(0.01)
done = {"k": k, "runs": [], "comments": []}
version = ws.registry.register(me, "shared", f"model file of session {k}".encode(), f"s{k}.safetensors").version
done["version"] = version
for j in range(n_runs):
    title = f"s{k}-r{j}"
    inputs, results = arrays_for(title, 256)
    run = ws.runs.save(me, RunRecord(page="output", model="shared", version=version, title=title,
                                     method="saliency", params={"k": k, "j": j}, target=j,
                                     inputs=inputs, results=results))
    done["runs"].append([run.id, title])
    c = ws.review.post(me, run.id, f"user{k} on {title}", anchor_kind="input", anchor=str(j))
    done["comments"].append([c.id, run.id, c.body])
rng = random.Random(k)
others = [r for r in ws.runs.list(me, model="shared") if not r.title.startswith(f"s{k}-")]
for run in rng.sample(others, min(5, len(others))):
    opened = ws.runs.open(me, run.id)  # a row another session is committing is whole when seen
    assert opened.inputs["title"].tobytes() == run.title.encode(), run.title
    c = ws.review.post(me, run.id, f"user{k} on {run.title}")
    done["comments"].append([c.id, run.id, c.body])
    if c.id % 2:
        r = ws.review.post(me, run.id, f"user{k} on {run.title} (reply)", parent_id=c.id)
        done["comments"].append([r.id, run.id, r.body])
print(json.dumps(done), flush=True)
'''


def _child(code: str, *args: str, hang_guard_s: float = 600) -> subprocess.Popen:
    """``python -c code args`` with pipes; killed after ``hang_guard_s`` so a hung child fails the test
    instead of hanging it (a guard, not a timing assertion)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    guard = threading.Timer(hang_guard_s, proc.kill)
    guard.daemon = True
    guard.start()
    return proc


def _check_every_blob_is_whole(home: Path) -> None:
    """No file under a real blob name holds anything but the bytes its name says."""
    for path in (home / "blobs").rglob("*"):
        if path.is_file() and not path.name.endswith(".tmp"):
            assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name, f"half a blob at {path}"


def _check_runs_whole(ws, n: int) -> dict[str, str]:
    """Every saved run loads and holds exactly what its title says; {id: title}."""
    found = {}
    audited = {e.object_id for e in ws.audit.rows(OP) if e.action == "run.save"}
    for info in ws.runs.list(OP, limit=10_000):
        saved = ws.runs.open(OP, info.id)  # both blobs exist, match their sha256 and load
        inputs, results = arrays_for(info.title, n)
        for got, want in ((saved.inputs, inputs), (saved.results, results)):
            assert sorted(got) == sorted(want)
            for key in want:
                assert got[key].dtype == want[key].dtype and got[key].tobytes() == want[key].tobytes(), info.title
        assert info.params == {"title": info.title, "n": n}
        assert info.summary == {"i": info.target} and info.title.endswith(f"-{info.target}")
        assert info.id in audited, "a run without its audit row"
        found[info.id] = info.title
    return found


def test_a_process_killed_while_saving_leaves_whole_runs_or_none(db_url, tmp_path):
    home, n = tmp_path / "home", 600_000  # two 2.4 MB float32 arrays per run
    ws = open_workspace(db_url, home=home)
    ws.users.add(OP, "alice", "admin")
    ws.users.add(OP, "eddie", "editor")
    ws.registry.register(OP, "m", b"model-one", "m.safetensors")
    ws.close()

    rng = random.Random(1234)
    reported: dict[str, str] = {}
    for attempt in range(3):
        child = _child(SAVER, db_url, str(home), f"k{attempt}", str(n))
        try:
            lines = []
            while True:  # wait until it has saved once, then kill it at a random moment
                line = child.stdout.readline()
                assert line, f"the saving child died: {child.stderr.read()[-800:]}"
                lines.append(line.split())
                if line.startswith("saved"):
                    break
            time.sleep(rng.uniform(0.0, 1.5))
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        out, _ = child.communicate()
        lines += [line.split() for line in out.splitlines()]
        reported.update({parts[1]: parts[2] for parts in lines if parts and parts[0] == "saved"})

        ws = open_workspace(db_url, home=home)  # it opens
        try:
            found = _check_runs_whole(ws, n)
            _check_every_blob_is_whole(home)
        finally:
            ws.close()
        # A commit the child saw is never lost; a run it did not report is whole (checked above) or absent.
        assert set(reported) <= set(found)
        assert all(found[i] == t for i, t in reported.items())
        assert len(found) - len(reported) <= attempt + 1
    assert len(reported) >= 3


def test_eight_sessions_saving_and_commenting_at_once(db_url, tmp_path):
    home, sessions, n_runs = tmp_path / "home", 8, 3
    go = tmp_path / "go"
    # The eight open the empty database together (eight migrations at once), then wait for `go`.
    children = [_child(SESSION, db_url, str(home), str(k), str(go), str(n_runs)) for k in range(sessions)]
    for k, child in enumerate(children):
        assert child.stdout.readline().strip() == "ready", f"session {k} did not open: {child.stderr.read()[-800:]}"
    ws = open_workspace(db_url, home=home)
    ws.users.add(OP, "alice", "admin")
    for k in range(sessions):
        ws.users.add(OP, f"user{k}", "editor")
    ws.close()
    go.touch()
    reports = {}
    for k, child in enumerate(children):
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, f"session {k} failed: {err.strip().splitlines()[-1:] or err}"
        reports[k] = json.loads(out.strip().splitlines()[-1])

    ws = open_workspace(db_url, home=home)
    try:
        versions = ws.registry.list(OP, "shared")
        assert sorted(v.version for v in versions) == list(range(1, sessions + 1))  # unique, no gaps
        by_number = {v.version: v for v in versions}
        for k, rep in reports.items():
            v = by_number[rep["version"]]
            assert (v.sha256, v.created_by) == (hashlib.sha256(f"model file of session {k}".encode()).hexdigest(),
                                                f"user{k}")

        runs = {r.id: r for r in ws.runs.list(OP, limit=10_000)}
        assert len(runs) == sessions * n_runs
        for k, rep in reports.items():
            for run_id, title in rep["runs"]:
                info = runs[run_id]
                assert (info.title, info.author, info.version) == (title, f"user{k}", rep["version"])
                assert info.params == {"k": k, "j": int(title.split("-r")[1])}
                saved = ws.runs.open(OP, run_id)
                inputs, results = arrays_for(title, 256)
                assert all(saved.inputs[key].tobytes() == inputs[key].tobytes() for key in inputs)
                assert all(saved.results[key].tobytes() == results[key].tobytes() for key in results)

        comments = {}
        for run_id in runs:
            for c in ws.review.comments(OP, run_id):
                comments[c.id] = c
        reported = [c for rep in reports.values() for c in rep["comments"]]
        assert len(comments) == len(reported) and len({c[0] for c in reported}) == len(reported)
        for k, rep in reports.items():
            for comment_id, run_id, body in rep["comments"]:
                c = comments[comment_id]
                assert (c.run_id, c.author, c.body) == (run_id, f"user{k}", body)
                assert body.startswith(f"user{k} on {runs[run_id].title}")  # on the run it names
                if c.parent_id is not None:
                    assert comments[c.parent_id].run_id == run_id and comments[c.parent_id].author == f"user{k}"

        audit = ws.audit.rows(OP)
        assert sorted(e.object_id for e in audit if e.action == "run.save") == sorted(runs)
        assert sorted(int(e.object_id) for e in audit if e.action == "comment.post") == sorted(comments)
        assert all(e.actor == comments[int(e.object_id)].author for e in audit if e.action == "comment.post")
        _check_every_blob_is_whole(home)
    finally:
        ws.close()


def test_eight_sessions_registering_one_model_at_the_same_instant(db_url, tmp_path):
    """Eight Workspace objects (eight engines) released by one barrier: distinct files get distinct
    numbers 1..8, the same file one version, and nobody fails on a numbering collision."""
    sessions = [open_workspace(db_url, home=tmp_path / "home") for _ in range(8)]
    try:
        for round_, file_of in (("distinct", lambda k: f"file {k}".encode()), ("same", lambda k: b"one file")):
            barrier, got, errors = threading.Barrier(8), {}, []

            def register(k, file_of=file_of, round_=round_, barrier=barrier, got=got, errors=errors):
                barrier.wait()
                try:
                    got[k] = sessions[k].registry.register(OP, f"m-{round_}", file_of(k), "m.safetensors")
                except Exception as exc:  # collected: the assertion below names it
                    errors.append(repr(exc)[:300])

            threads = [threading.Thread(target=register, args=(k,)) for k in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            assert errors == []
            if round_ == "distinct":
                assert sorted(v.version for v in got.values()) == list(range(1, 9))
                assert all(v.sha256 == hashlib.sha256(f"file {k}".encode()).hexdigest() for k, v in got.items())
            else:
                assert {v.version for v in got.values()} == {1}
                assert len(sessions[0].registry.list(OP, "m-same")) == 1

        # the same alias moved and the same tag added by all eight at once
        barrier, errors = threading.Barrier(8), []

        def edit(k):
            barrier.wait()
            try:
                sessions[k].registry.set_alias(OP, "m-distinct", "candidate", k + 1)
                sessions[k].registry.add_tag(OP, "m-distinct", 1, "reviewed")
            except Exception as exc:
                errors.append(repr(exc)[:300])

        threads = [threading.Thread(target=edit, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert errors == []
        moves = [e for e in sessions[0].audit.rows(OP) if e.action == "alias.set"]
        assert len(moves) == 8 and moves[0].before is None
        assert all(b.before == a.after for a, b in zip(moves, moves[1:]))  # each move saw the one before
        assert sessions[0].registry.resolve(OP, "m-distinct@candidate").version == moves[-1].after["version"]
        assert sessions[0].registry.version(OP, "m-distinct", 1).tags == ["reviewed"]
        assert [e.action for e in sessions[0].audit.rows(OP)].count("tag.add") == 1
    finally:
        for ws in sessions:
            ws.close()
