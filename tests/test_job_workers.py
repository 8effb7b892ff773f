"""Several queue workers in one process (`explain.service.worker.WorkerPool`), on SQLite and
PostgreSQL: the one rule of a job's class (`job_priority`), jobs running side by side, a model
held by one job at a time (`explain.service.model_locks`), and a batch job that lets interactive
work run between its chunks and ends with the numbers of an uninterrupted run."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import explain.dataset.run as dataset_run
import explain.service.worker as worker_module
from explain.dataset.job import dataset_job
from explain.dataset.reading import Dataset
from explain.service.model_locks import Holding, ModelLocks
from explain.service.runners import RUNNERS, explain_job
from explain.service.worker import Worker, WorkerPool
from explain.workspace import Actor
from explain.workspace.jobs import INTERACTIVE_ROWS, job_priority
from sample_models import load_sample, sample_inputs, sample_registry_files

pytest_plugins = ["tests.workspace_db"]

OP = Actor("cli:tester", operator=True)
ALICE = Actor("alice")


@pytest.fixture
def team(workspace):
    workspace.seed(sample_registry_files())
    workspace.users.add(OP, "alice", "admin")
    return workspace


@pytest.fixture(scope="module")
def cancer():
    x = sample_inputs("cancer")["inputs"]  # [32, 30]
    return load_sample("cancer"), np.concatenate([x, 0.5 * x + 0.1]).astype(np.float32)  # [64, 30]


def _wait_for(condition, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_job_priority_is_decided_by_kind_and_rows_in_one_rule():
    assert job_priority("explain", 1) == "interactive"
    assert job_priority("explain", INTERACTIVE_ROWS) == "interactive"
    assert job_priority("explain", INTERACTIVE_ROWS + 1) == "batch"  # large: batch however asked
    assert job_priority("dataset", 1) == "batch"  # a dataset is batch work
    assert job_priority("explain", 1, "batch") == "batch"  # asking for less is always allowed


def test_submit_applies_the_rule(team, cancer):
    model, x = cancer
    for rows, want in ((2, "interactive"), (INTERACTIVE_ROWS + 1, "batch")):
        params, arrays, title = explain_job(model, "cancer", 1, x[:rows], {"method": "saliency"})
        job = team.jobs.submit(ALICE, "explain", params, title=title, inputs=arrays, priority="interactive")
        assert job.priority == want


def test_a_pool_runs_jobs_side_by_side(team, monkeypatch):
    both = threading.Barrier(2, timeout=60)  # passes only when two jobs run at once

    def meet(ctx):
        both.wait()
        raise RuntimeError("met")

    monkeypatch.setitem(RUNNERS, "meet", meet)
    jobs = [team.jobs.submit(ALICE, "meet", {}) for _ in range(2)]
    pool = WorkerPool(team, 2, name="w").start()
    try:
        _wait_for(lambda: all(team.jobs.get(OP, j.id).status == "failed" for j in jobs), "jobs did not end")
    finally:
        pool.shutdown()
    assert {team.jobs.get(OP, j.id).error for j in jobs} == {"RuntimeError: met"}  # neither broke the barrier
    assert sorted(w.name for w in pool.workers) == ["w:0", "w:1"]


def test_two_jobs_on_one_model_never_hold_it_together(team, monkeypatch):
    locks = ModelLocks()
    inside, release, log = threading.Event(), threading.Event(), []

    def hold(ctx):
        ctx.model("cancer", 1)  # takes the model's lock for the job
        log.append(("in", ctx.job.title))
        if ctx.job.title == "first":
            inside.set()
            assert release.wait(60)
        log.append(("out", ctx.job.title))
        raise RuntimeError("done")

    monkeypatch.setitem(RUNNERS, "hold", hold)
    first = team.jobs.submit(ALICE, "hold", {}, title="first")
    workers = [Worker(team, name=f"w{i}", locks=locks) for i in range(2)]
    one = threading.Thread(target=workers[0].run_once)
    one.start()
    assert inside.wait(60)
    team.jobs.submit(ALICE, "hold", {}, title="second")
    two = threading.Thread(target=workers[1].run_once)
    two.start()
    lock = locks.get(load_sample("cancer").sha256)
    _wait_for(lambda: lock.waiting == 1, "the second job never waited for the model")
    assert log == [("in", "first")]
    release.set()
    one.join(60)
    two.join(60)
    assert log == [("in", "first"), ("out", "first"), ("in", "second"), ("out", "second")]
    assert team.jobs.get(OP, first.id).status == "failed"


def test_holding_a_second_model_never_waits_while_holding_the_first():
    class M:  # what Holding reads of a model
        process = None

        def __init__(self, sha):
            self.sha256 = sha

    locks, a, b = ModelLocks(), M("a"), M("b")
    mine, other = Holding(locks), Holding(locks)
    mine.take(b)
    took = threading.Event()

    def take_a_then_b():
        other.take(a)
        other.take(b)  # b is mine: it lets go of a while it waits
        took.set()
        other.release_all()

    thread = threading.Thread(target=take_a_then_b)
    thread.start()
    _wait_for(lambda: locks.get("b").waiting == 1, "the other job never waited for b")
    mine.take(a)  # would deadlock if the other job still held a
    mine.release_all()
    assert took.wait(60)
    thread.join(60)


def _dataset(model, x) -> Dataset:
    return Dataset("rows", model.spec, [f"r{i}" for i in range(len(x))], None, lambda a, b: x[a:b])


def _submit_dataset(ws, model, x):
    params, arrays, title = dataset_job(model, "cancer", 1, _dataset(model, x), "integrated_gradients",
                                        {"steps": 16}, None, shard_rows=8)
    return ws.jobs.submit(ALICE, "dataset", params, title=title, inputs=arrays, priority="batch")


def test_a_batch_job_lets_an_interactive_job_run_between_its_chunks_and_ends_as_if_uninterrupted(
        team, cancer, monkeypatch):
    model, x = cancer
    x = x[:48]  # 6 shards of 8 rows
    shards = []
    real_shard = dataset_run.explain_shard
    monkeypatch.setattr(dataset_run, "explain_shard", lambda *a, **k: shards.append(1) or real_shard(*a, **k))
    real_runner, asked = RUNNERS["dataset"], {}

    def dataset_then_ask(ctx):  # after the first shard is published, someone asks an interactive question
        publish = ctx.publish

        def ask(arrays):
            publish(arrays)
            if not asked:
                params, arrays_, title = explain_job(model, "cancer", 1, x[:1], {"method": "integrated_gradients"})
                asked["job"] = team.jobs.submit(ALICE, "explain", params, title=title, inputs=arrays_,
                                                priority="interactive")
                asked["shards"] = len(shards)
        ctx.publish = ask
        return real_runner(ctx)

    monkeypatch.setitem(RUNNERS, "dataset", dataset_then_ask)
    real_explain, notes = RUNNERS["explain"], []

    def explain_and_look(ctx):  # what the Queue page says of the batch job meanwhile
        notes.append(team.jobs.get(OP, batch.id))
        return real_explain(ctx)

    monkeypatch.setitem(RUNNERS, "explain", explain_and_look)
    batch = _submit_dataset(team, model, x)
    worker = Worker(team, name="only", serves_queue=True)  # one worker: the interactive job can only run in the batch job's pause
    assert worker.run_once().status == "done"
    interactive = team.jobs.get(OP, asked["job"].id)
    done = team.jobs.get(OP, batch.id)
    assert interactive.status == "done" and interactive.worker == "only"
    assert interactive.finished < done.finished  # answered before the batch job ended
    assert asked["shards"] == 1 and len(shards) == 6  # no shard computed twice
    (meanwhile,) = notes
    assert meanwhile.status == "running" and meanwhile.error == "paused between chunks: interactive work runs first"
    assert done.error is None
    assert worker.run_once() is None

    monkeypatch.setitem(RUNNERS, "dataset", real_runner)
    straight = _submit_dataset(team, model, x)
    assert Worker(team, name="again").run_once().status == "done"
    paused, uninterrupted = team.runs.open(OP, done.run).results, team.runs.open(OP, straight.id).results
    for key in ("values", "completeness_error", "targets", "probabilities"):
        np.testing.assert_array_equal(paused[key], uninterrupted[key])


def test_a_batch_job_between_chunks_lets_a_thread_waiting_for_its_model_go_first():
    class M:
        sha256, process = "m", None

    locks = ModelLocks()
    batch, order = Holding(locks), []
    batch.take(M())

    def interactive():
        took = Holding(locks)
        took.take(M())
        order.append("interactive")
        took.release_all()

    thread = threading.Thread(target=interactive)
    thread.start()
    _wait_for(lambda: batch.wanted, "the interactive job never waited")
    batch.pause()  # between two chunks
    order.append("batch again")
    thread.join(60)
    assert order == ["interactive", "batch again"]
    batch.release_all()


def test_a_large_explain_job_pauses_between_its_methods(team, cancer, monkeypatch):
    model, x = cancer  # 64 rows: batch work
    asked = {}

    def ask_once(done, total, forward):
        forward(done, total)
        if not asked:
            params, arrays, title = explain_job(model, "cancer", 1, x[:1], {"method": "saliency"})
            asked["job"] = team.jobs.submit(ALICE, "explain", params, title=title, inputs=arrays,
                                            priority="interactive")

    real = RUNNERS["explain"]

    def run(ctx):
        if ctx.job.priority == "batch":
            forward = ctx.progress
            ctx.progress = lambda done, total: ask_once(done, total, forward)
        return real(ctx)

    def submit_big():
        params, arrays, title = explain_job(model, "cancer", 1, x, {"method": "saliency"})
        params["methods"].append({"method": "input_x_gradient", "params": {}})
        params.update(method="saliency,input_x_gradient", fresh=True)  # computed again, not from the cache
        return team.jobs.submit(ALICE, "explain", params, title=title, inputs=arrays, priority="interactive")

    monkeypatch.setitem(RUNNERS, "explain", run)
    big = submit_big()
    assert big.priority == "batch"
    assert Worker(team, name="only", serves_queue=True).run_once().status == "done"
    small, done = team.jobs.get(OP, asked["job"].id), team.jobs.get(OP, big.id)
    assert small.status == "done" and small.finished < done.finished
    monkeypatch.setitem(RUNNERS, "explain", real)
    again = submit_big()
    Worker(team, name="again").run_once()
    paused, straight = team.runs.open(OP, big.id).results, team.runs.open(OP, again.id).results
    assert sorted(paused) == sorted(straight)
    for key in paused:
        np.testing.assert_array_equal(paused[key], straight[key])


def test_a_clis_own_worker_never_runs_someone_elses_job_in_its_pauses(team, cancer, monkeypatch):
    """`client.run_here`'s worker (``serves_queue=False``) runs only the job it was given."""
    model, x = cancer
    real_runner, asked = RUNNERS["dataset"], {}

    def dataset_then_ask(ctx):
        publish = ctx.publish

        def ask(arrays):
            publish(arrays)
            if not asked:
                params, arrays_, title = explain_job(model, "cancer", 1, x[:1], {"method": "saliency"})
                asked["job"] = team.jobs.submit(ALICE, "explain", params, title=title, inputs=arrays_,
                                                priority="interactive")
        ctx.publish = ask
        return real_runner(ctx)

    monkeypatch.setitem(RUNNERS, "dataset", dataset_then_ask)
    batch = _submit_dataset(team, model, x[:32])
    cli = Worker(team, name="cli")
    cli.run_job(team.jobs.claim("cli", only=batch.id))
    assert team.jobs.get(OP, batch.id).status == "done"
    assert team.jobs.get(OP, asked["job"].id).status == "queued"  # left for the team's workers


# -- shared holds: jobs that only run forward and backward passes share a model ---------------------
def test_shared_holders_overlap_and_an_exclusive_taker_waits_for_them_and_goes_before_new_ones():
    from explain.service.model_locks import ModelLock

    lock, order = ModelLock(), []
    lock.acquire(shared=True)  # this thread: one shared holder
    other_in, other_out = threading.Event(), threading.Event()

    def shared_too():
        lock.acquire(shared=True)  # beside this thread's hold
        other_in.set()
        assert other_out.wait(60)
        lock.release()

    def exclusive():
        lock.acquire()
        order.append("exclusive")
        lock.release()

    def late_shared():
        lock.acquire(shared=True)
        order.append("late shared")
        lock.release()

    threads = [threading.Thread(target=shared_too)]
    threads[0].start()
    assert other_in.wait(60)
    threads.append(threading.Thread(target=exclusive))
    threads[1].start()
    _wait_for(lambda: lock.waiting_exclusive == 1, "the exclusive taker never waited")
    assert lock.blocks_others()  # a shared holder keeps the exclusive taker out
    threads.append(threading.Thread(target=late_shared))
    threads[2].start()
    _wait_for(lambda: lock.waiting == 2, "the late shared taker never waited behind the exclusive one")
    lock.release()
    other_out.set()
    for t in threads:
        t.join(60)
    assert order == ["exclusive", "late shared"]
    lock.acquire(shared=True)
    with pytest.raises(RuntimeError, match="one mode per thread"):
        lock.acquire()
    lock.release()


def test_which_jobs_share_their_models(team, cancer):
    from explain.output.importance_job import importance_job
    from explain.service.runners import job_shares_models

    model, x = cancer

    def explain(methods, metrics=None, **given):
        params, _, _ = explain_job(model, "cancer", 1, x[:2], {"method": methods[0], **given})
        params["methods"] += [{"method": m, "params": {}} for m in methods[1:]]
        params["metrics"] = metrics or []
        return team.jobs.submit(ALICE, "explain", params)

    assert job_shares_models(explain(["integrated_gradients", "saliency", "occlusion"]))
    assert not job_shares_models(explain(["integrated_gradients", "grad_cam"]))  # a layer hook
    assert not job_shares_models(explain(["integrated_gradients"], [{"metric": "deletion", "params": {}}]))
    assert not job_shares_models(explain(["saliency"], device="cpu"))  # may move the shared model
    assert job_shares_models(_submit_dataset(team, model, x[:8]))
    params, arrays, title = importance_job(model, "cancer", 1, x[:2], depth=1, steps=4)
    assert not job_shares_models(team.jobs.submit(ALICE, "importance", params, inputs=arrays))


def test_two_explain_jobs_run_on_one_tabular_model_at_once_with_the_numbers_of_one_at_a_time(team, cancer,
                                                                                             monkeypatch):
    from explain.output.methods import get_method

    model, x = cancer
    both = threading.Barrier(2, timeout=60)  # passes only while both jobs are inside the model
    real = RUNNERS["explain"]

    def meet(ctx):
        forward, met = ctx.progress, []

        def progress(done, total):
            if not met:
                met.append(both.wait())
            forward(done, total)
        ctx.progress = progress
        return real(ctx)

    monkeypatch.setitem(RUNNERS, "explain", meet)
    jobs = []
    for rows in (slice(0, 3), slice(3, 6)):
        params, arrays, title = explain_job(model, "cancer", 1, x[rows], {"method": "integrated_gradients",
                                                                          "steps": 16})
        params["fresh"] = True
        jobs.append(team.jobs.submit(ALICE, "explain", params, title=title, inputs=arrays, priority="interactive"))
    pool = WorkerPool(team, 2, name="w").start()
    try:
        _wait_for(lambda: all(team.jobs.get(OP, j.id).status not in ("queued", "running") for j in jobs), "stuck")
    finally:
        pool.shutdown()
    for job, rows in zip(jobs, (slice(0, 3), slice(3, 6))):
        done = team.jobs.get(OP, job.id)
        assert done.status == "done", done.error  # a broken barrier would have failed it
        want = get_method("integrated_gradients").explain(model, x[rows], steps=16, use_cache=False)
        np.testing.assert_allclose(team.runs.open(OP, done.run).results["0/values"], want.values, rtol=0, atol=1e-6)


def test_an_interactive_job_runs_inside_a_text_models_batch_job_with_the_numbers_of_each_alone(team, monkeypatch):
    """A text model's embedding hook acts in its own thread's passes only, so a batch job on the
    sentiment model holds it shared: an interactive job on it runs at once on the pool's other worker
    (issue 23: it waited for the batch job's shard, 4-6x its idle latency). Both are inside their
    engine sessions, hooks installed, while the other computes (a barrier at each one's first chunk;
    one worker would break it), and each gives the numbers it gives alone."""

    model, x = load_sample("sentiment"), sample_inputs("sentiment")["inputs"][:16]  # [16, 16] token ids
    both, asked = threading.Barrier(2, timeout=60), {}
    real_dataset, real_explain = RUNNERS["dataset"], RUNNERS["explain"]

    def meeting(real, ask=False):
        def run(ctx):
            forward, met = ctx.progress, []

            def progress(done, total):
                if not met:
                    if ask:  # asked while the batch job is inside its first shard, its hook on the model
                        params, arrays, title = explain_job(model, "sentiment", 1, x[:2], {
                            "method": "integrated_gradients", "steps": 16, "batch_size": 8})
                        params["fresh"] = True
                        asked["job"] = team.jobs.submit(ALICE, "explain", params, title=title, inputs=arrays,
                                                        priority="interactive")
                    met.append(both.wait())  # both sessions open: the rest of each runs beside the other's hook
                forward(done, total)
            ctx.progress = progress
            return real(ctx)
        return run

    def submit_batch():
        params, arrays, title = dataset_job(model, "sentiment", 1, _dataset(model, x), "integrated_gradients",
                                            {"steps": 16, "batch_size": 16}, None, shard_rows=8)  # 8 chunks a shard
        return team.jobs.submit(ALICE, "dataset", params, title=title, inputs=arrays, priority="batch")

    monkeypatch.setitem(RUNNERS, "dataset", meeting(real_dataset, ask=True))
    monkeypatch.setitem(RUNNERS, "explain", meeting(real_explain))
    batch = submit_batch()
    pool = WorkerPool(team, 2, name="w", poll_s=0.05).start()
    try:
        _wait_for(lambda: "job" in asked and all(team.jobs.get(OP, j.id).status not in ("queued", "running")
                                                 for j in (batch, asked["job"])), "stuck")
    finally:
        pool.shutdown()
    done, interactive = team.jobs.get(OP, batch.id), team.jobs.get(OP, asked["job"].id)
    assert done.status == "done" and interactive.status == "done", (done.error, interactive.error)
    assert interactive.worker != done.worker and interactive.finished < done.finished
    monkeypatch.setitem(RUNNERS, "dataset", real_dataset)
    _each_as_alone(team, model, x, interactive, done, submit_batch)


def _each_as_alone(team, model, x, interactive, done, submit_batch) -> None:
    """The interactive job's values equal its two inputs explained alone, and the batch job's result a run
    of the same job with nothing beside it (≤ 1e-6; targets exact)."""
    from explain.output.methods import get_method

    alone = get_method("integrated_gradients").explain(model, x[:2], steps=16, use_cache=False)
    np.testing.assert_allclose(team.runs.open(OP, interactive.run).results["0/values"], alone.values,
                               rtol=0, atol=1e-6)
    straight = submit_batch()
    assert Worker(team, name="alone").run_once().status == "done"
    beside, uninterrupted = team.runs.open(OP, done.run).results, team.runs.open(OP, straight.id).results
    for key in ("values", "completeness_error", "probabilities"):
        np.testing.assert_allclose(beside[key], uninterrupted[key], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(beside["targets"], uninterrupted["targets"])


def test_a_text_models_batch_job_pauses_inside_a_shard_for_an_interactive_job_run_on_its_own_thread(
        team, monkeypatch):
    """One worker: the interactive job runs in the batch job's pause between two engine chunks of
    its first shard, on the batch job's thread while that job's embedding hook is on the model (it
    acts only inside its own passes), and each gives the numbers it gives alone."""

    model, x = load_sample("sentiment"), sample_inputs("sentiment")["inputs"][:16]  # [16, 16] token ids
    asked, published, calls = {}, [], []
    real_dataset, real_explain = RUNNERS["dataset"], RUNNERS["explain"]
    monkeypatch.setattr(worker_module, "INTERACTIVE_LOOK_S", 0.0)  # a look at every chunk, whatever the clock

    def dataset_asking(ctx):
        forward, publish = ctx.progress, ctx.publish

        def progress(done, total):
            calls.append(done)
            if len(calls) == 2:  # after the first shard's first engine chunk (8 rows x 16 steps, chunks of 16)
                params, arrays, title = explain_job(model, "sentiment", 1, x[:2], {
                    "method": "integrated_gradients", "steps": 16, "batch_size": 8})
                params["fresh"] = True
                asked["job"] = team.jobs.submit(ALICE, "explain", params, title=title, inputs=arrays,
                                                priority="interactive")
            forward(done, total)
        ctx.progress = progress
        ctx.publish = lambda arrays: (published.append(1), publish(arrays))
        return real_dataset(ctx)

    def explain_counting(ctx):
        asked["shards_before"] = len(published)
        return real_explain(ctx)

    def submit_batch():
        params, arrays, title = dataset_job(model, "sentiment", 1, _dataset(model, x), "integrated_gradients",
                                            {"steps": 16, "batch_size": 16}, None, shard_rows=8)
        return team.jobs.submit(ALICE, "dataset", params, title=title, inputs=arrays, priority="batch")

    monkeypatch.setitem(RUNNERS, "dataset", dataset_asking)
    monkeypatch.setitem(RUNNERS, "explain", explain_counting)
    batch = submit_batch()
    worker = Worker(team, name="only", serves_queue=True)
    assert worker.run_once().status == "done"
    done, interactive = team.jobs.get(OP, batch.id), team.jobs.get(OP, asked["job"].id)
    assert interactive.status == "done", interactive.error
    assert interactive.worker == "only" and asked["shards_before"] == 0  # inside the first shard
    monkeypatch.setitem(RUNNERS, "dataset", real_dataset)
    _each_as_alone(team, model, x, interactive, done, submit_batch)


def test_a_batch_job_that_hooks_nothing_pauses_inside_its_method_for_jobs_that_hook_nothing(team, cancer,
                                                                                            monkeypatch):
    """One method, so no boundary between methods: the pause comes between two engine chunks, and
    only for interactive jobs that share the model (a Rank-layers job, which hooks layers, waits)."""
    from explain.output.importance_job import importance_job

    model, x = cancer
    asked = {}

    def ask_once(done, total, forward):
        if 0 < done < total and not asked:
            params, arrays, title = explain_job(model, "cancer", 1, x[:1], {"method": "integrated_gradients"})
            asked["shares"] = team.jobs.submit(ALICE, "explain", params, title=title, inputs=arrays,
                                               priority="interactive")
            params, arrays, title = importance_job(model, "cancer", 1, x[:2], depth=1, steps=4)
            asked["hooks"] = team.jobs.submit(ALICE, "importance", params, title=title, inputs=arrays,
                                              priority="interactive")
            asked["at"] = done
        forward(done, total)

    real = RUNNERS["explain"]

    def run(ctx):
        if ctx.job.priority == "batch":
            forward = ctx.progress
            ctx.progress = lambda done, total: ask_once(done, total, forward)
        return real(ctx)

    def submit_big():
        params, arrays, title = explain_job(model, "cancer", 1, x, {"method": "integrated_gradients", "steps": 16,
                                                                    "batch_size": 64, "tolerance": 0.0})
        params["fresh"] = True
        return team.jobs.submit(ALICE, "explain", params, title=title, inputs=arrays, priority="batch")

    monkeypatch.setitem(RUNNERS, "explain", run)
    big = submit_big()  # 64 rows x 16 steps in chunks of 64 points: 16 chunks
    worker = Worker(team, name="only", serves_queue=True)
    assert worker.run_once().status == "done"
    done, shares = team.jobs.get(OP, big.id), team.jobs.get(OP, asked["shares"].id)
    assert shares.status == "done" and shares.finished < done.finished and 0 < asked["at"] < 1000
    assert team.jobs.get(OP, asked["hooks"].id).status == "queued"  # not inside the batch job's method
    assert worker.run_once().id == asked["hooks"].id
    monkeypatch.setitem(RUNNERS, "explain", real)
    again = submit_big()
    Worker(team, name="again").run_once()
    np.testing.assert_array_equal(team.runs.open(OP, big.id).results["0/values"],
                                  team.runs.open(OP, again.id).results["0/values"])


def test_only_shared_holds_of_models_in_this_process_pause_inside_a_method():
    class M:
        def __init__(self, sha, modality="tabular", process=None):
            self.sha256, self.modality, self.process = sha, modality, process

    def pausable(*models, shares=True):
        holding = Holding(ModelLocks(), shares=shares)
        for m in models:
            holding.take(m)
        try:
            return holding.pausable_in_method
        finally:
            holding.release_all()

    assert pausable(M("a"), M("b"))
    assert not pausable()  # nothing held yet
    assert not pausable(M("a"), shares=False)  # a job that may hook its model
    assert pausable(M("a", "text"))  # the engine's embedding hook acts in its own thread's passes only
    # a model process's request waits on the progress callback: no other request may go to it then
    assert not pausable(M("a"), M("b", "text", process=object()))


# -- a page's work on a model holds its lock as a job does (`model_locks.hold_model`) ------------------
def _in_thread(fn) -> tuple[threading.Thread, threading.Event, list]:
    done, out = threading.Event(), []
    thread = threading.Thread(target=lambda: (out.append(fn()), done.set()), daemon=True)
    thread.start()
    return thread, done, out


def _running_job(model, shares: bool = False) -> tuple[threading.Event, threading.Thread]:
    """A job holding ``model`` in the process's locks (the worker's `Holding`) until the event is set."""
    from explain.service.model_locks import MODEL_LOCKS

    took, release = threading.Event(), threading.Event()

    def run():
        holding = Holding(MODEL_LOCKS, shares=shares)
        holding.take(model)
        took.set()
        release.wait(60)
        holding.release_all()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert took.wait(60)
    return release, thread


def test_a_page_computation_waits_for_a_running_job_on_its_model_and_not_for_another_models(cancer):
    """The Overview's layer table (probes, FLOP counting: hooks) and map on the model object the queue's
    worker shares wait while a job holds that model, and not while a job holds another model."""
    from explain.report import overview

    model, x = cancer
    shapes, xs = load_sample("shapes"), sample_inputs("shapes")["inputs"]
    fresh = (x[:1] * 1.0001).astype(np.float32)  # [1, 30] no answer remembered for it
    release, job = _running_job(shapes)  # another model's job: nothing waits for it
    try:
        assert len(overview.layer_overview(model, fresh).frame) > 0
        assert overview.explain_input(model, fresh, "saliency").values.shape == (1, 30)
    finally:
        release.set()
        job.join(60)
    release, job = _running_job(model)
    try:
        thread, done, out = _in_thread(lambda: overview.layer_overview(model, fresh * 1.0001))
        thread2, done2, _ = _in_thread(lambda: overview.explain_input(model, fresh * 1.0002, "saliency"))
        assert not done.wait(0.5) and not done2.is_set()  # the job runs: the page's hooks wait
        assert overview.explain_input(shapes, xs[:1] * 1.0001, "saliency").values.shape[0] == 1  # another model
    finally:
        release.set()
        job.join(60)
    assert done.wait(60) and done2.wait(60) and len(out[0].frame) > 0
    thread.join(60)
    thread2.join(60)


def test_a_pages_forward_pass_runs_beside_a_sharing_job_but_not_inside_an_exclusive_ones(cancer):
    from explain.report import overview
    from explain.service.model_locks import MODEL_LOCKS, hold_model

    model, x = cancer
    release, job = _running_job(model, shares=True)  # forward and backward passes only (not a text model)
    try:
        assert overview.probabilities(model, x[:3] * 1.0002).shape == (3, 2)  # shared: at once
    finally:
        release.set()
        job.join(60)
    release, job = _running_job(model)
    try:
        thread, done, _ = _in_thread(lambda: overview.probabilities(model, x[:3] * 1.0003))
        assert not done.wait(0.5)  # inside the exclusive job's hooks it would not be
    finally:
        release.set()
        job.join(60)
    assert done.wait(60)
    thread.join(60)
    with hold_model(model), hold_model(model, shared=True):  # nested in an exclusive hold: deeper, no error
        assert MODEL_LOCKS.get(model.sha256).held_exclusively()
    assert not MODEL_LOCKS.get(model.sha256).held_exclusively()
