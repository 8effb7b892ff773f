"""One lock per loaded model, for the queue's worker threads of one process.

The process's model cache (`explain.service.models.shared_models`) hands every worker thread the
same model object. Two jobs on one model must not interleave their hooked work: Grad-CAM's layer
hook or FLOPs counting installed by one thread would fire in the other's forward pass (the engine's
embedding hook on a text model acts in its own session's passes only). So a job holds its models'
locks while it runs (`Holding`, one per job): alone, or shared with other jobs whose work is
forward and backward passes only (an explanation by methods that `Explainer.shares_model`;
`explain.service.runners.job_shares_models`), which then run on the model at once.

    holding = Holding(MODEL_LOCKS)
    holding.take(model)            # JobContext.model, after loading: blocks while another job holds it
    holding.pause(run_waiting)     # between chunks (no hook on any model): waiters go first
    holding.release_all()          # the job ended

Work on a model outside a job (a page's layer table, attention maps, Grad-CAM, layer attribution,
generation: anything that hooks the model object the worker shares) holds its lock too:

    with hold_model(model):                 # exclusive: waits for a running job on this model
        table = build_layer_table(model, x)
    with hold_model(model, shared=True):    # a forward pass alone: beside jobs that share the model
        probs = model.predict_proba(x)

A job that needs a second model while holding one never waits holding it (it lets go of all and
takes them all in key order), so two jobs on the same two models cannot deadlock. Between chunks a
batch job `pause`\\s: it lets go of its models, runs what ``during()`` does (the worker runs waiting
interactive jobs there), lets every thread that waited for its models go first, and takes them back.
Model processes (a user's graph) serialise their own requests; the lock costs them nothing.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from explain.model import LoadedModel


class ModelLock:
    """A shared / exclusive lock on one model, held per thread (re-entrant in the mode first taken),
    that knows who waits for it. Exclusive waiters go before new shared holders (no starving)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._owner: int | None = None  # the exclusive holder
        self._depth = 0
        self._shared: dict[int, int] = {}  # shared holders -> depth
        self.waiting = 0  # threads blocked in `acquire`, either mode
        self.waiting_exclusive = 0

    def _busy(self, me: int, shared: bool, polite: bool) -> bool:
        """Whether ``me`` must wait for this mode (``me`` holds nothing here yet)."""
        if self._owner is not None:
            return True
        if shared:  # beside other shared holders, unless an exclusive taker waits
            return self.waiting_exclusive > 0
        return bool(self._shared) or (polite and self.waiting > 0)

    def acquire(self, blocking: bool = True, polite: bool = False, shared: bool = False) -> bool:
        """Take the lock, ``shared`` or exclusive (``polite``: also after the threads already waiting
        that this mode would block); False when not ``blocking`` and it is taken.

        Raises:
            RuntimeError: this thread holds it in the other mode.
        """
        me = threading.get_ident()
        with self._cond:
            if (shared and self._owner == me) or (not shared and me in self._shared):
                raise RuntimeError("a model lock is taken in one mode per thread")
            if self._owner == me or (shared and me in self._shared):
                self._enter(me, shared)
                return True
            if not blocking and self._busy(me, shared, False):
                return False
            if not polite:
                self.waiting += 1
                self.waiting_exclusive += not shared
            try:
                while self._busy(me, shared, polite):
                    self._cond.wait()
            finally:
                if not polite:
                    self.waiting -= 1
                    self.waiting_exclusive -= not shared
            self._enter(me, shared)
            return True

    def _enter(self, me: int, shared: bool) -> None:
        if shared:
            self._shared[me] = self._shared.get(me, 0) + 1
        else:
            self._owner, self._depth = me, self._depth + 1

    def release(self) -> None:
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                self._depth -= 1
                if self._depth == 0:
                    self._owner = None
            elif me in self._shared:
                self._shared[me] -= 1
                if not self._shared[me]:
                    del self._shared[me]
            else:
                raise RuntimeError("release of a model lock this thread does not hold")
            self._cond.notify_all()

    def release_all(self) -> int:
        """Let go however deep this thread holds it; how deep that was (0: not held)."""
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                depth, self._owner, self._depth = self._depth, None, 0
            else:
                depth = self._shared.pop(me, 0)
            self._cond.notify_all()
            return depth

    def held_exclusively(self) -> bool:
        """True when this thread holds the lock exclusively."""
        with self._cond:
            return self._owner == threading.get_ident()

    def blocks_others(self) -> bool:
        """True when a thread waits that this thread's hold keeps out (a pause would let it in)."""
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                return self.waiting > 0
            return me in self._shared and self.waiting_exclusive > 0


class ModelLocks:
    """The locks of one process's models, by the model file's sha256 (one file: one lock)."""

    def __init__(self) -> None:
        self._locks: dict[str, ModelLock] = {}
        self._guard = threading.Lock()

    def get(self, key: str) -> ModelLock:
        with self._guard:
            return self._locks.setdefault(key, ModelLock())


#: this process's model locks (its worker threads share them, as they share the model cache)
MODEL_LOCKS = ModelLocks()


@contextmanager
def hold_model(model: LoadedModel, shared: bool = False, locks: ModelLocks | None = None) -> Iterator[None]:
    """Hold ``model``'s lock for the work in the block, as a job holds it: exclusive (hooked work: no
    job's hook fires in it, none of its hooks in a job's passes), or ``shared`` (forward and backward
    passes alone, beside jobs that share the model, never inside an exclusive job's hooks). A thread
    that holds the lock exclusively already (a nested call) holds it deeper, whichever is asked."""
    lock = (locks or MODEL_LOCKS).get(model.sha256)
    lock.acquire(shared=shared and not lock.held_exclusively())
    try:
        yield
    finally:
        lock.release()


class Holding:
    """The model locks one job holds, on the thread that runs it. ``shares``: the job's work is
    forward and backward passes only (`explain.service.runners.job_shares_models`), so it holds a
    model shared with other such jobs: a text model too, whose embedding the engine hooks for the
    session's own thread alone (`explain.output.model_function.ModelFunction.session`); a model in
    its own process (`LoadedModel.process`) serves one request at a time there."""

    def __init__(self, locks: ModelLocks = MODEL_LOCKS, shares: bool = False):
        self.locks = locks
        self.shares = shares
        self.held: dict[str, tuple[ModelLock, bool]] = {}  # key -> (lock, shared)
        self.remote: set[str] = set()  # keys of held models that run in a model process

    def take(self, model: LoadedModel) -> None:
        """Hold ``model`` for this job; without waiting while holding another (all are let go and
        taken again in key order)."""
        key = model.sha256
        if key in self.held:
            return
        if model.process is not None:
            self.remote.add(key)
        shared = self.shares
        lock = self.locks.get(key)
        if lock.acquire(blocking=not self.held, shared=shared):
            self.held[key] = (lock, shared)
            return
        others, remote = dict(self.held), set(self.remote)
        self.release_all()
        self.held, self.remote = {**others, key: (lock, shared)}, remote
        for k in sorted(self.held):
            self.held[k][0].acquire(shared=self.held[k][1])

    @property
    def pausable_in_method(self) -> bool:
        """True when this job holds models, each shared and run in this process: nothing it does hooks
        them, and no request to a model process waits on its progress callback (where it would pause)."""
        return bool(self.held) and all(shared for _, shared in self.held.values()) and not self.remote

    @property
    def wanted(self) -> bool:
        """True when another thread waits for a model this job holds (and keeps it out)."""
        return any(lock.blocks_others() for lock, _ in self.held.values())

    def pause(self, during: Callable[[], None] = lambda: None) -> None:
        """Let go of every model, run ``during()``, let the threads that wait for them go first,
        then take them back (in key order). Only between chunks: no hook may be on a model."""
        depths = {k: lock.release_all() for k, (lock, _) in self.held.items()}
        try:
            during()
        finally:
            for k in sorted(self.held):
                lock, shared = self.held[k]
                lock.acquire(polite=True, shared=shared)
                for _ in range(depths[k] - 1):
                    lock.acquire(shared=shared)

    def release_all(self) -> None:
        for lock, _ in self.held.values():
            lock.release_all()
        self.held.clear()
        self.remote.clear()
