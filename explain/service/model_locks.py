"""One lock per loaded model, for the queue's worker threads of one process.

The process's model cache (`explain.service.models.shared_models`) hands every worker thread the
same model object. Two jobs on one model must not interleave their hooked work: a text model's
embedding hook, Grad-CAM's layer hook or FLOPs counting installed by one thread would fire in the
other's forward pass. So a job holds its models' locks while it runs (`Holding`, one per job):

    holding = Holding(MODEL_LOCKS)
    holding.take(model)            # JobContext.model, after loading: blocks while another job holds it
    holding.pause(run_waiting)     # between chunks (no hook on any model): waiters go first
    holding.release_all()          # the job ended

A job that needs a second model while holding one never waits holding it (it lets go of all and
takes them all in key order), so two jobs on the same two models cannot deadlock. Between chunks a
batch job `pause`\\s: it lets go of its models, runs what ``during()`` does (the worker runs waiting
interactive jobs there), lets every thread that waited for its models go first, and takes them back.
Model processes (a user's graph) serialise their own requests; the lock costs them nothing.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

from explain.model import LoadedModel


class ModelLock:
    """A lock one thread holds (re-entrant), that knows how many threads wait for it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._owner: int | None = None
        self._depth = 0
        self.waiting = 0  # threads blocked in `acquire`

    def acquire(self, blocking: bool = True, polite: bool = False) -> bool:
        """Take the lock (``polite``: also after every thread already waiting for it); False when
        not ``blocking`` and another thread holds it."""
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                self._depth += 1
                return True
            if not blocking and self._owner is not None:
                return False
            if not polite:
                self.waiting += 1
            try:
                while self._owner is not None or (polite and self.waiting > 0):
                    self._cond.wait()
            finally:
                if not polite:
                    self.waiting -= 1
            self._owner, self._depth = me, 1
            return True

    def release(self) -> None:
        with self._cond:
            if self._owner != threading.get_ident():
                raise RuntimeError("release of a model lock this thread does not hold")
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._cond.notify_all()

    def release_all(self) -> int:
        """Let go however deep this thread holds it; how deep that was (0: not held)."""
        with self._cond:
            if self._owner != threading.get_ident():
                return 0
            depth, self._owner, self._depth = self._depth, None, 0
            self._cond.notify_all()
            return depth


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


class Holding:
    """The model locks one job holds, on the thread that runs it."""

    def __init__(self, locks: ModelLocks = MODEL_LOCKS):
        self.locks = locks
        self.held: dict[str, ModelLock] = {}

    def take(self, model: LoadedModel) -> None:
        """Hold ``model`` for this job; without waiting while holding another (all are let go and
        taken again in key order)."""
        key = model.sha256
        if key in self.held:
            return
        lock = self.locks.get(key)
        if lock.acquire(blocking=not self.held):
            self.held[key] = lock
            return
        others = dict(self.held)
        self.release_all()
        self.held = {**others, key: lock}
        for k in sorted(self.held):
            self.held[k].acquire()

    @property
    def wanted(self) -> bool:
        """True when another thread waits for a model this job holds."""
        return any(lock.waiting for lock in self.held.values())

    def pause(self, during: Callable[[], None] = lambda: None) -> None:
        """Let go of every model, run ``during()``, let the threads that wait for them go first,
        then take them back (in key order). Only between chunks: no hook may be on a model."""
        depths = {k: lock.release_all() for k, lock in self.held.items()}
        try:
            during()
        finally:
            for k in sorted(self.held):
                self.held[k].acquire(polite=True)
                for _ in range(depths[k] - 1):
                    self.held[k].acquire()

    def release_all(self) -> None:
        for lock in self.held.values():
            lock.release_all()
        self.held.clear()
